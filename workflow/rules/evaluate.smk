rule evaluate:
    input:
        rows=upstream("prepare/{testset}/test.parquet"),
        few_shot_rows=upstream("prepare/{dataset}/train.parquet"),
        model=lambda wc: evaluated_model_input(wc.dataset, wc.model),
    output:
        responses=out("evaluate/{dataset}/{model}/{testset}/responses.parquet"),
        metrics=out("evaluate/{dataset}/{model}/{testset}/metrics.json"),
    log:
        out("logs/evaluate/{dataset}/{model}/{testset}.log"),
    benchmark:
        out("benchmarks/evaluate/{dataset}/{model}/{testset}.tsv")
    params:
        model=lambda wc: evaluated_model_path(wc.dataset, wc.model),
        # base_few_shot reaches base models as their prompt's few_shot (evaluation_prompt), no run as a setting
        settings=as_json({k: v for k, v in config["evaluation"].items() if k != "base_few_shot"}),
        prompt=lambda wc: evaluation_prompt(wc.model),
        seed=config["seed"],
        device="cuda" if gpu_resources("evaluate") else "auto",  # no silent CPU fallback on a GPU run
        code=stage_code("evaluate"),
    # Greedy decoding of a small model is latency-bound: one thread is as fast as two, and lets two evaluations
    # run side by side (on a GPU the thread only feeds the device).
    threads: 1
    resources:
        mem_mb=8000,
        runtime=600,
        **gpu_resources("evaluate"),
    container:
        container_for("gpu" if gpu_resources("evaluate") else "cpu")
    shell:
        "advdistill evaluate --model {params.model:q} --rows {input.rows:q} --few-shot-rows {input.few_shot_rows:q}"
        " --settings {params.settings:q} --prompt {params.prompt:q} --seed {params.seed:q}"
        " --device {params.device:q} --out {output.responses:q} --metrics {output.metrics:q} > {log:q} 2>&1"
