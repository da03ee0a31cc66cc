rule evaluate:
    input:
        rows="results/prepare/{testset}/test.parquet",
        few_shot_rows="results/prepare/{dataset}/train.parquet",
        model=lambda wc: evaluated_model_input(wc.dataset, wc.model),
    output:
        responses="results/evaluate/{dataset}/{model}/{testset}/responses.parquet",
        metrics="results/evaluate/{dataset}/{model}/{testset}/metrics.json",
    log:
        "logs/evaluate/{dataset}/{model}/{testset}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{model}/{testset}.tsv"
    params:
        model=lambda wc: evaluated_model_path(wc.dataset, wc.model),
        settings=as_json(config["evaluation"]),
        prompt=lambda wc: evaluation_prompt(wc.model),
        seed=config["seed"],
        code=code_version("advdistill/evaluate.py", "advdistill/metrics.py", "advdistill/answers.py", "advdistill/rewards.py", "advdistill/sampling", "advdistill/prompts.py"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
        **gpu_resources(),
    container:
        container_for("gpu" if gpu_resources() else "cpu")
    shell:
        "advdistill evaluate --model {params.model:q} --rows {input.rows} --few-shot-rows {input.few_shot_rows}"
        " --settings {params.settings:q} --prompt {params.prompt:q} --seed {params.seed}"
        " --out {output.responses} --metrics {output.metrics} > {log} 2>&1"
