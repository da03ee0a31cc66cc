rule report:
    input:
        metrics=evaluation_outputs("metrics.json"),
        responses=evaluation_outputs("responses.parquet"),
        scored=list(reported_scores().values()),
        trained=[run["path"] for run in reported_training()],
        upstream=upstream_outputs(),
    output:
        index=report(out("report/index.html"), caption="../report/index.rst", category="Report"),
        accuracy=report(out("report/accuracy.csv"), caption="../report/accuracy.rst", category="Tables"),
        plots=report(
            directory(out("report/plots")),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        out("logs/report.log"),
    benchmark:
        out("benchmarks/report.tsv")
    params:
        plan=as_json(report_plan()),
        out_dir=lambda wc, output: os.path.dirname(output.index),
        code=stage_code("report"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    container:
        container_for("cpu")
    shell:
        "advdistill report --plan {params.plan:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
