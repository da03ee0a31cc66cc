# Models built by the pipeline itself (the embedded default): a tokenizer and tiny Qwen2 models.


rule bootstrap_tokenizer:
    input:
        rows=lambda wc: out(f"prepare/{config['tokenizer']['dataset']}/train.parquet"),
    output:
        directory(out("tokenizer")),
    log:
        out("logs/bootstrap/tokenizer.log"),
    benchmark:
        out("benchmarks/bootstrap/tokenizer.tsv")
    params:
        settings=as_json(without_dataset(config.get("tokenizer", {}))),
        code=stage_code("bootstrap-tokenizer"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    container:
        container_for("cpu")
    shell:
        "advdistill bootstrap-tokenizer --rows {input.rows:q} --settings {params.settings:q}"
        " --out {output:q} > {log:q} 2>&1"


rule bootstrap_model:
    input:
        rows=lambda wc: out(f"prepare/{models()[wc.model]['bootstrap']['dataset']}/train.parquet"),
        tokenizer=out("tokenizer"),
    output:
        directory(out("models/{model}")),
    log:
        out("logs/bootstrap/{model}.log"),
    benchmark:
        out("benchmarks/bootstrap/{model}.tsv")
    params:
        settings=lambda wc: as_json(without_dataset(models()[wc.model]["bootstrap"])),
        # pretraining renders the system prompt only: few-shot turns are for the models it builds
        prompt=as_json({"system_prompt": config.get("prompt", {}).get("system_prompt")}),
        seed=config["seed"],
        snapshot_steps=lambda wc: snapshot_steps(wc.model),
        code=stage_code("bootstrap-model"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    container:
        container_for("cpu")
    shell:
        "advdistill bootstrap-model --rows {input.rows:q} --tokenizer {input.tokenizer:q}"
        " --settings {params.settings:q} --prompt {params.prompt:q} --seed {params.seed:q}"
        " --snapshot-steps={params.snapshot_steps:q} --out {output:q} > {log:q} 2>&1"
