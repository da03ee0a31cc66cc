rule report:
    input:
        metrics=evaluation_outputs("metrics.json"),
        responses=evaluation_outputs("responses.parquet"),
        scored=expand("results/score/{dataset}/scored.parquet", dataset=config["experiments"]),
        summaries=expand("results/score/{dataset}/summary.json", dataset=config["experiments"]),
    output:
        index=report("results/report/index.html", caption="../report/index.rst", category="Report"),
        accuracy=report("results/report/accuracy.csv", caption="../report/accuracy.rst", category="Tables"),
        plots=report(
            directory("results/report/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    params:
        plan=as_json({
            "models": evaluated_models(),
            "experiments": {name: e["testsets"] for name, e in config["experiments"].items()},
        }),
        code=code_version("advdistill/report.py", "advdistill/metrics.py"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill report --plan {params.plan:q} --results results --benchmarks benchmarks"
        " --out-dir results/report > {log} 2>&1"
