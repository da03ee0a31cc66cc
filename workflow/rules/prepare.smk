rule prepare:
    input:
        source=lambda wc: dataset_source_input(wc.dataset, wc.split),
    output:
        rows=out("prepare/{dataset}/{split}.parquet"),
        report=out("prepare/{dataset}/{split}.report.json"),
    log:
        out("logs/prepare/{dataset}/{split}.log"),
    benchmark:
        out("benchmarks/prepare/{dataset}/{split}.tsv")
    params:
        adapter=lambda wc: config["datasets"][wc.dataset]["adapter"],
        source=lambda wc: dataset_source(wc.dataset, wc.split),
        source_digest=lambda wc: dataset_source_digest(wc.dataset, wc.split),
        options=lambda wc: as_json(config["datasets"][wc.dataset].get("options", {})),
        code=stage_code("prepare"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill prepare --dataset {params.adapter:q} --source {params.source:q}"
        " --split {wildcards.split:q} --options {params.options:q} --name {wildcards.dataset:q}"
        " --out {output.rows:q} --report {output.report:q} > {log:q} 2>&1"
