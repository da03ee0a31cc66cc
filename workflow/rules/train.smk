rule train:
    input:
        rows="results/prepare/{dataset}/train.parquet",
        scored="results/score/{dataset}/scored.parquet",
        model=lambda wc: model_input(wc.student),
    output:
        directory("results/train/{dataset}/{student}-{objective}"),
    log:
        "logs/train/{dataset}/{student}-{objective}.log",
    benchmark:
        "benchmarks/train/{dataset}/{student}-{objective}.tsv"
    wildcard_constraints:
        objective="sft|advdistill",
    params:
        model=lambda wc: model_path(wc.student),
        settings=as_json(config["training"]),
        prompt=as_json(config.get("prompt", {})),
        seed=config["seed"],
        launcher=training_launcher(),
        checkpoints=lambda wc: f"results/train/{wc.dataset}/.checkpoints/{wc.student}-{wc.objective}",
        code=stage_code("train"),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        **gpu_resources("train"),
    container:
        container_for("gpu" if gpu_resources("train") else "cpu")
    shell:
        "{params.launcher:q} train --model {params.model:q} --rows {input.rows:q} --scored {input.scored:q}"
        " --objective {wildcards.objective:q} --settings {params.settings:q} --prompt {params.prompt:q}"
        " --seed {params.seed:q} --checkpoints {params.checkpoints:q} --out {output:q} > {log:q} 2>&1"
