rule score:
    input:
        rows=out("prepare/{dataset}/train.parquet"),
        samples=out("sample/{dataset}/samples.parquet"),
    output:
        scored=out("score/{dataset}/scored.parquet"),
        summary=out("score/{dataset}/summary.json"),
    log:
        out("logs/score/{dataset}.log"),
    benchmark:
        out("benchmarks/score/{dataset}.tsv")
    params:
        settings=as_json(config["score"]),
        code=stage_code("score"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    container:
        container_for("cpu")
    shell:
        "advdistill score --rows {input.rows:q} --samples {input.samples:q}"
        " --settings {params.settings:q} --out {output.scored:q} --summary {output.summary:q} > {log:q} 2>&1"
