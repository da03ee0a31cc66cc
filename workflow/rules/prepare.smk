rule prepare:
    output:
        rows="results/prepare/{dataset}/{split}.parquet",
        report="results/prepare/{dataset}/{split}.report.json",
    log:
        "logs/prepare/{dataset}/{split}.log",
    benchmark:
        "benchmarks/prepare/{dataset}/{split}.tsv"
    params:
        adapter=lambda wc: config["datasets"][wc.dataset]["adapter"],
        source=lambda wc: dataset_source(wc.dataset, wc.split),
        options=lambda wc: as_json(config["datasets"][wc.dataset].get("options", {})),
        code=code_version("advdistill/datasets"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill prepare --dataset {params.adapter} --source {params.source:q}"
        " --split {wildcards.split} --options {params.options:q} --name {wildcards.dataset}"
        " --out {output.rows} --report {output.report} > {log} 2>&1"
