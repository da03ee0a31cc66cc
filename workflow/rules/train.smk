rule train:
    input:
        rows="results/prepare/{dataset}/train.parquet",
        scored="results/score/{dataset}/scored.parquet",
        model=lambda wc: model_input(TRAINED_RUNS[wc.trained].student),
    output:
        directory("results/train/{dataset}/{trained}"),
    log:
        "logs/train/{dataset}/{trained}.log",
    benchmark:
        "benchmarks/train/{dataset}/{trained}.tsv"
    params:
        model=lambda wc: model_path(TRAINED_RUNS[wc.trained].student),
        objective=lambda wc: TRAINED_RUNS[wc.trained].objective,
        settings=lambda wc: as_json(run_training(wc.trained)),
        prompt=as_json(config.get("prompt", {})),
        seed=lambda wc: TRAINED_RUNS[wc.trained].seed,
        few_shot_seed=config["seed"],  # the sampler's: the same few-shot turns in every replicate
        launcher=lambda wc: training_launcher(wc.trained),
        checkpoints=lambda wc: f"results/train/{wc.dataset}/.checkpoints/{wc.trained}",
        device="cuda" if gpu_resources("train") else "auto",  # no silent CPU fallback on a GPU run
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
        " --objective {params.objective:q} --settings {params.settings:q} --prompt {params.prompt:q}"
        " --seed {params.seed:q} --few-shot-seed {params.few_shot_seed:q} --device {params.device:q} --checkpoints {params.checkpoints:q}"
        " --out {output:q} > {log:q} 2>&1"
