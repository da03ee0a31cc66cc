rule sample:
    input:
        rows=out("prepare/{dataset}/train.parquet"),
        model=lambda wc: model_input(config["teacher"]["name"]),
    output:
        temp(out("sample/{dataset}/parts/part-{part}.parquet")),
    log:
        out("logs/sample/{dataset}/part-{part}.log"),
    benchmark:
        out("benchmarks/sample/{dataset}/part-{part}.tsv")
    params:
        model=lambda wc: model_path(config["teacher"]["name"]),
        settings=as_json(config["sampling"]),
        prompt=as_json(config.get("prompt", {})),
        part=lambda wc: f"{wc.part}/{config['sampling']['jobs']}",
        device="cuda" if gpu_resources("sample") else "auto",  # no silent CPU fallback on a GPU run
        seed=config["seed"],
        code=stage_code("sample"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
        **gpu_resources("sample"),
    container:
        container_for("gpu" if gpu_resources("sample") else "cpu")
    shell:
        "advdistill sample --model {params.model:q} --rows {input.rows:q}"
        " --settings {params.settings:q} --prompt {params.prompt:q} --seed {params.seed:q}"
        " --device {params.device:q} --part {params.part:q} --out {output:q} > {log:q} 2>&1"


rule merge_samples:
    input:
        lambda wc: [out(f"sample/{wc.dataset}/parts/part-{i}.parquet") for i in range(config["sampling"]["jobs"])],
    output:
        out("sample/{dataset}/samples.parquet"),
    log:
        out("logs/sample/{dataset}/merge.log"),
    benchmark:
        out("benchmarks/sample/{dataset}/merge.tsv")
    params:
        code=stage_code("merge-samples"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill merge-samples {input:q} --out {output:q} > {log:q} 2>&1"
