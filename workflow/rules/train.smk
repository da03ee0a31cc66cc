rule train:
    input:
        rows=upstream("prepare/{dataset}/train.parquet"),
        scored=upstream("score/{dataset}/scored.parquet"),
        model=lambda wc: model_input(TRAINED_RUNS[wc.trained].student),
    output:
        directory(out("train/{dataset}/{trained}")),
    log:
        out("logs/train/{dataset}/{trained}.log"),
    benchmark:
        out("benchmarks/train/{dataset}/{trained}.tsv")
    params:
        model=lambda wc: model_path(TRAINED_RUNS[wc.trained].student),
        objective=lambda wc: TRAINED_RUNS[wc.trained].objective,
        settings=lambda wc: as_json(run_training(wc.trained)),
        prompt=as_json(config.get("prompt", {})),
        seed=lambda wc: TRAINED_RUNS[wc.trained].seed,
        few_shot_seed=config["seed"],  # the sampler's: the same few-shot turns in every replicate
        launcher=lambda wc: training_launcher(wc.trained),
        checkpoints=lambda wc: out(f"train/{wc.dataset}/.checkpoints/{wc.trained}"),
        # the trackers' name of this training (training.report_to) and the folder file-based ones write to
        run_name=lambda wc: f"{config['run_name']}/{wc.trained}",
        tracker_dir=lambda wc: out(f"trackers/{wc.dataset}/{wc.trained}"),
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
        " --run-name {params.run_name:q} --tracker-dir {params.tracker_dir:q}"
        " --out {output:q} > {log:q} 2>&1"
