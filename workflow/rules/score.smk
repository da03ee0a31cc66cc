rule score:
    input:
        rows="results/prepare/{dataset}/train.parquet",
        samples="results/sample/{dataset}/samples.parquet",
    output:
        scored="results/score/{dataset}/scored.parquet",
        summary="results/score/{dataset}/summary.json",
    log:
        "logs/score/{dataset}.log",
    benchmark:
        "benchmarks/score/{dataset}.tsv"
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
