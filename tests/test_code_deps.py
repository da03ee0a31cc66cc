"""What reruns when code or a local source changes: each rule's code digest covers the sources its stage runs
(read from the imports, advdistill/code_deps.py), and a local dataset file is an input of its prepare job."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from advdistill.code_deps import CachedStageVersions, stage_code_version, stage_sources
from tests.helpers import REPO, copy_workflow


def names(stage: str) -> set[str]:
    return {path.relative_to(REPO).as_posix() for path in stage_sources(stage)}


def test_each_stage_runs_what_it_imports_and_not_the_other_stages():
    train, score, report = names("train"), names("score"), names("report")
    for shared in ("advdistill/cli.py", "advdistill/config.py", "advdistill/io.py", "advdistill/__init__.py"):
        assert shared in train and shared in score and shared in report, shared
    assert {"advdistill/train.py", "advdistill/losses.py", "advdistill/prompts.py", "advdistill/provenance.py",
            "kernels/advdistill_kernels/api.py", "kernels/advdistill_kernels/cpp/fused_loss.cpp"} <= train
    assert {"advdistill/score.py", "advdistill/rewards.py", "advdistill/advantages.py"} <= score
    assert {"advdistill/rewards.py", "advdistill/metrics.py", "advdistill/sampling/hf.py"} <= names("evaluate")
    report_package = {path.relative_to(REPO).as_posix() for path in (REPO / "advdistill" / "report").glob("*.py")}
    assert {"advdistill/report/__init__.py", "advdistill/report/plots.py"} <= report_package <= report
    assert not (report_package | {"advdistill/score.py", "advdistill/evaluate.py"}) & train
    assert not {"advdistill/train.py", "advdistill/sampling/__init__.py"} & score
    assert "advdistill/rewards.py" not in names("sample")
    # the backends the kernels load by name (importlib), and what they import: a Triton edit reruns training
    assert {"kernels/advdistill_kernels/backends/torch.py", "kernels/advdistill_kernels/backends/triton.py",
            "kernels/advdistill_kernels/triton_kernels/logits_to_grad.py"} <= train
    # the manifest's source digest finds the kernels without importing them: a kernel edit reruns no sampling
    assert not any(name.startswith("kernels/") for name in names("sample") | names("evaluate"))
    with pytest.raises(ValueError, match="no stage 'trian'"):
        stage_sources("trian")


def test_a_module_edit_changes_the_digest_of_exactly_the_stages_that_run_it(tmp_path):
    repo = copy_workflow(tmp_path / "repo")
    stages = ["prepare", "sample", "score", "train", "evaluate", "report"]
    before = {stage: stage_code_version(stage, repo) for stage in stages}

    def edited(module: str) -> set[str]:
        path = repo / module
        path.write_text(path.read_text() + "\n# edited\n")
        stage_sources.cache_clear()
        after = {stage: stage_code_version(stage, repo) for stage in stages}
        changed = {stage for stage in stages if after[stage] != before[stage]}
        before.update(after)
        return changed

    assert edited("advdistill/config.py") == set(stages)
    assert edited("advdistill/rewards.py") == {"score", "evaluate"}
    assert edited("advdistill/losses.py") == {"train"}
    kernel_edit = edited("kernels/advdistill_kernels/cpp/fused_loss.cpp")
    assert "train" in kernel_edit and not {"prepare", "score", "report"} & kernel_edit
    assert edited("advdistill/report/plots.py") == {"report"}


def test_cached_stage_versions_are_computed_again_after_any_edit(tmp_path):
    """Planning keeps the digests in .snakemake/advdistill (half a second a Snakemake call saved); an edited
    source makes the cache stale, whatever stage it belongs to."""
    repo, cache = copy_workflow(tmp_path / "repo"), tmp_path / "cache" / "code-versions.json"
    first = CachedStageVersions(cache, repo).version("score")
    assert first == stage_code_version("score", repo)
    assert CachedStageVersions(cache, repo).versions == {"score": first}
    rewards = repo / "advdistill" / "rewards.py"
    rewards.write_text(rewards.read_text() + "\n# edited\n")
    stage_sources.cache_clear()
    after_edit = CachedStageVersions(cache, repo)
    assert after_edit.versions == {} and after_edit.version("score") != first


@pytest.mark.slow
@pytest.mark.failure_mode(
    "local dataset file edited after prepare, or replaced by a changed one with an older modification time "
    "(cp -p, tar -x, a synced folder)",
    sees="the next run prepares that split again (reason: its input, or the file's content digest, a parameter)",
    kept="the other splits and stages")
def test_an_edited_local_dataset_file_reruns_its_prepare(tmp_path):
    """The file is an input (a newer file reruns) and its SHA-256 a parameter, cached by path, size and mtime
    (advdistill/digests.py), so a changed content under an older mtime reruns too."""
    workdir = copy_workflow(tmp_path / "run")
    data = workdir / "data"
    data.mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "datasets" / "gsm8k.jsonl", data / "gsm8k_test.jsonl")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["datasets"]["gsm8k"] = {"adapter": "gsm8k", "source": {"test": "data/gsm8k_test.jsonl"},
                                   "splits": ["test"]}
    (workdir / "local.yaml").write_text(yaml.safe_dump(config))

    def snakemake(*args: str) -> str:
        done = subprocess.run(["snakemake", "results/default/prepare/gsm8k/test.parquet", "--cores", "1", *args,
                               "--configfile", "local.yaml"], cwd=workdir, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout + done.stderr

    snakemake()
    assert "Nothing to be done" in snakemake("--dry-run")
    with open(data / "gsm8k_test.jsonl", "ab") as edit:
        edit.write(b"\n")
    assert "prepare" in snakemake("--dry-run").split("Job stats:")[1]
    snakemake()
    release = data / "gsm8k_test.jsonl"
    older = (workdir / "results/default/prepare/gsm8k/test.parquet").stat().st_mtime - 3600
    release.write_bytes(release.read_bytes().replace(b"Tom has 3 apples", b"Tom has 4 apples"))
    os.utime(release, (older, older))
    planned = snakemake("--dry-run")
    assert "prepare" in planned.split("Job stats:")[1] and "params" in planned.split("rule prepare:")[1]
    snakemake()
    assert "Nothing to be done" in snakemake("--dry-run")
