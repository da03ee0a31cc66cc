rule report:
    input:
        metrics=evaluation_outputs("metrics.json"),
        responses=evaluation_outputs("responses.parquet"),
        scored=list(reported_scores().values()),
        trained=[run["path"] for run in reported_training()],
        upstream=upstream_outputs(),
    output:
        index=report(f"{REPORT_DIR}/index.html", caption="../report/index.rst", category="Report"),
        accuracy=report(f"{REPORT_DIR}/accuracy.csv", caption="../report/accuracy.rst", category="Tables"),
        plots=report(
            directory(f"{REPORT_DIR}/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        f"logs/report/{config['report_name']}.log",
    benchmark:
        f"benchmarks/report/{config['report_name']}.tsv"
    params:
        plan=as_json(report_plan()),
        benchmarks="benchmarks",
        out_dir=lambda wc, output: os.path.dirname(output.index),
        code=stage_code("report"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill report --plan {params.plan:q} --benchmarks {params.benchmarks:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
