rule sample:
    input:
        rows="results/prepare/{dataset}/train.parquet",
        model=lambda wc: model_input(config["teacher"]["name"]),
    output:
        "results/sample/{dataset}/samples.parquet",
    log:
        "logs/sample/{dataset}.log",
    benchmark:
        "benchmarks/sample/{dataset}.tsv"
    params:
        model=lambda wc: model_path(config["teacher"]["name"]),
        settings=as_json(config["sampling"]),
        prompt=as_json(config.get("prompt", {})),
        seed=config["seed"],
        code=code_version("advdistill/sampling", "advdistill/prompts.py"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
        **gpu_resources(),
    container:
        container_for("gpu" if gpu_resources() else "cpu")
    shell:
        "advdistill sample --model {params.model:q} --rows {input.rows}"
        " --settings {params.settings:q} --prompt {params.prompt:q} --seed {params.seed}"
        " --out {output} > {log} 2>&1"
