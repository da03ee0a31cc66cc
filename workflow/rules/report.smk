rule report:
    input:
        metrics=evaluation_outputs("metrics.json"),
        responses=evaluation_outputs("responses.parquet"),
        scored=expand("results/score/{dataset}/scored.parquet", dataset=config["experiments"]),
        summaries=expand("results/score/{dataset}/summary.json", dataset=config["experiments"]),
        trained=[f"results/train/{dataset}/{student['name']}-{objective}" for dataset in config["experiments"]
                 for student in config.get("students", []) for objective in student["objectives"]],
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
            "memory": plan_rows(MEMORY_PLAN),
        }),
        code=stage_code("report"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill report --plan {params.plan:q} --results results --benchmarks benchmarks"
        " --out-dir results/report > {log:q} 2>&1"
