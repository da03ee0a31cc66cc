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
        checkpoints=lambda wc: f"results/train/{wc.dataset}/.checkpoints/{wc.student}-{wc.objective}",
        code=code_version("advdistill/train.py", "advdistill/losses.py", "advdistill/prompts.py", "kernels/advdistill_kernels"),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        **gpu_resources(),
    container:
        container_for("gpu" if gpu_resources() else "cpu")
    shell:
        "advdistill train --model {params.model:q} --rows {input.rows} --scored {input.scored}"
        " --objective {wildcards.objective} --settings {params.settings:q} --prompt {params.prompt:q}"
        " --seed {params.seed} --checkpoints {params.checkpoints} --out {output} > {log} 2>&1"
