"""The report stage: the paper's result tables and figures, rebuilt from the pipeline's outputs.

Tables follow the layouts of the paper (arXiv 2507.00054): accuracy per model and test set (§5.1),
mean response length of correct and wrong answers (Appendix C.2, Table 7) with the verbosity ratio
(Figure 6), degeneracy of correct and wrong answers (Appendix C.1, Table 6), template adherence
(Figure 4) and the compute cost of each stage (Table 3, here measured by Snakemake benchmarks).
Figures show the advantages of the kept training groups (Figure 2a), the number of correct teacher
responses per group (Figure 2b), accuracy as grouped bars and response lengths of correct and wrong
answers. Each accuracy comes with its Wilson 95 % interval; an evaluation with several samples per prompt reports
pass@1 with a Student-t interval over prompts, its majority accuracy and pass@k (:mod:`advdistill.metrics`). Paired
comparisons of the trained students with each other, their base model and the teacher give the accuracy difference
with its 95 % interval and an exact McNemar p-value on the prompts both models answered (:mod:`advdistill.stats`;
a sampled prompt's outcome is the majority of its samples), and the first comparison per test set heads the page;
a training compute table lists optimizer steps, items and wall time per trained student.
Each table is written as Markdown and CSV, each figure as PNG (per trained run also its training and validation
loss and learning rate), and ``index.html`` shows them all on one page with the run manifests as provenance (the
stage outputs, the versions and machines of their jobs, the models they loaded). The page opens with a banner where
the run loaded stand-in models, the run's name, config files and build date, and a table of contents. Every file is
written to a temporary sibling and moved into place, so an interrupted run leaves no half-written artefact.

One concern a module:

- :mod:`.comparisons`: each model's role (teacher, base, trained run), the paired comparisons and their
  McNemar tests, the summary over seeds, the headline sentences;
- :mod:`.tables`: accuracy, behaviour, training compute, loss terms, the paper's numbers, stage costs, the memory
  plan and provenance (outputs, versions and machines, models, stand-ins) as data frames;
- :mod:`.plots`: the figures;
- :mod:`.page`: tables as Markdown, CSV and HTML, the captions and ``index.html``;
- :mod:`.build`: :func:`build_report` and :func:`run_report`, the stage that reads the run's outputs and writes
  all of the above.
"""

from advdistill.report.build import build_report, run_report

__all__ = ["build_report", "run_report"]
