"""Fast workflow checks: lint, and the DAG the default configuration plans on a fresh directory."""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from advdistill.cli import build_parser
from tests.helpers import PAPER_CONFIGS, REPO, assert_clean_stop


def run_snakemake(*args, cwd):
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_lint_reports_nothing():
    result = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_default_config_plans_the_whole_dag(tmp_path):
    result = run_snakemake("--dry-run", "--configfile", str(REPO / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    # one bootstrap run: the student base is a snapshot of the teacher's (no run of its own)
    expected = [("prepare", 4), ("bootstrap_tokenizer", 1), ("bootstrap_model", 1), ("sample", 1),
                ("merge_samples", 1), ("score", 1), ("train", 2), ("evaluate", 8), ("report", 1)]
    for rule, count in expected:
        assert f"{rule} " in stats and stats.split(f"\n{rule}")[1].split()[0] == str(count), (rule, stats)


@pytest.mark.failure_mode(
    "experiment naming a test set that is not a configured dataset",
    sees="the run stops before any job, naming experiments.<name>.testsets",
    kept="everything")
def test_dangling_dataset_reference_names_the_key(tmp_path):
    config = (REPO / "config.yaml").read_text().replace("testsets: [arith, arith_ood]", "testsets: [arith, gsm9k]")
    (tmp_path / "bad.yaml").write_text(config)
    result = run_snakemake("--dry-run", "--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert "config experiments.arith.testsets: 'gsm9k' is not a dataset with a 'test' split" in assert_clean_stop(
        result)


def test_default_teacher_run_saves_the_student_snapshot_and_training_loads_it(tmp_path):
    result = run_snakemake("--dry-run", "--printshellcmds", "--configfile", str(REPO / "config.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--snapshot-steps=300 --out results/default/models/teacher" in result.stdout
    assert "--model results/default/models/teacher/snapshots/step-300" in result.stdout


def test_a_bootstrapped_model_without_snapshots_gets_a_command_its_parser_takes(tmp_path):
    """Snakemake's ``:q`` writes an empty value as nothing at all: ``--snapshot-steps --out X`` took ``--out`` as
    the steps, and every bootstrap job of a model no snapshot points at failed."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["students"][0].update(source="bootstrap", bootstrap=config["teacher"]["bootstrap"])
    del config["students"][0]["snapshot"]
    (tmp_path / "bootstrapped.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake("--dry-run", "--printshellcmds", "--configfile", str(tmp_path / "bootstrapped.yaml"),
                           cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    commands = [line[line.index("advdistill bootstrap-model"):] for line in result.stdout.splitlines()
                if "advdistill bootstrap-model" in line]
    parsed = [build_parser().parse_args(shlex.split(command.split(" > ")[0])[1:]) for command in commands]
    assert sorted(Path(args.out).name for args in parsed) == ["student", "teacher"]
    assert all(args.snapshot_steps == () for args in parsed)


def test_only_untrained_models_are_evaluated_with_the_base_few_shot_turns(tmp_path):
    """A model's role comes from the configured names, not from a '-base' ending: a variant called 'tau-base'
    trains a student like any other variant and is evaluated with prompt.few_shot."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["evaluation"]["base_few_shot"] = 3
    config["variants"] = {"tau-base": {"objectives": ["advdistill"], "training": {}}}
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake("--dry-run", "--printshellcmds", "--configfile", str(tmp_path / "variant.yaml"),
                           cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    few_shot = {}
    for line in result.stdout.splitlines():
        if "advdistill evaluate" in line:
            args = build_parser().parse_args(shlex.split(line[line.index("advdistill evaluate"):].split(" > ")[0])[1:])
            few_shot[Path(args.out).parent.parent.name] = json.loads(args.prompt)["few_shot"]
    assert few_shot == {"teacher": 3, "student-base": 3, "student-sft": 0, "student-advdistill": 0,
                        "student-advdistill@tau-base": 0}, few_shot


def planned_commands(config: dict, tmp_path: Path, name: str) -> dict[str, str]:
    """Each planned job's shell command by its output, for ``config`` planned in ``tmp_path``."""
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake("--dry-run", "--printshellcmds", "--configfile", str(tmp_path / f"{name}.yaml"),
                           cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    commands = [line[line.index("advdistill "):] for line in result.stdout.splitlines() if "advdistill " in line
                and line.lstrip().startswith(("Shell command:", "advdistill "))]
    return {command.split(" --out ")[1].split()[0]: command for command in commands if " --out " in command}


@pytest.mark.parametrize(("section", "key", "value", "unchanged"), [
    ("prompt", "few_shot", 2, "models/teacher"),
    ("evaluation", "base_few_shot", 1, "student-advdistill/arith/responses.parquet"),
])
def test_a_setting_a_stage_does_not_use_leaves_its_command_as_it_was(tmp_path, section, key, value, unchanged):
    """A rule reruns when its command's settings change: the teacher's pretraining does not see prompt.few_shot,
    and a trained student's evaluation does not see evaluation.base_few_shot (only base models' prompts do)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    before = planned_commands(config, tmp_path, "before")
    config[section][key] = value
    after = planned_commands(config, tmp_path, "after")
    [output] = [output for output in before if output.endswith(unchanged)]
    assert after[output] == before[output]
    assert after != before  # the setting still reaches the jobs that use it


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_plan_the_full_dag_without_downloading(config, tmp_path):
    result = run_snakemake("--dry-run", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    n_testsets = len(yaml.safe_load(config.read_text())["experiments"].popitem()[1]["testsets"])
    # teacher, 1.5B base/SFT/AdvDistill, 3B base/SFT on every test set; no bootstrap rules
    assert stats.split("\nevaluate")[1].split()[0] == str(6 * n_testsets)
    assert stats.split("\ntrain")[1].split()[0] == "3"
    assert "bootstrap" not in stats


def test_sampling_jobs_plan_one_job_per_prompt_range(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["sampling"]["jobs"] = 3
    (tmp_path / "split.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake("--dry-run", "--configfile", str(tmp_path / "split.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--part 2/3" in result.stdout or "part-2.parquet" in result.stdout
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    assert stats.split("\nsample")[1].split()[0] == "3"


def test_a_dry_run_without_the_image_plans_on_and_names_it(tmp_path):
    """A run stops instead (tests/test_containers.py); a CPU run's rules use the CPU image alone."""
    result = run_snakemake("--dry-run", "--sdm", "apptainer", "--configfile", str(REPO / "config.yaml"), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert "config containers.cpu (containers/advdistill-cpu_0.1.0.sif): image not found" in output
    assert "apptainer build --fakeroot containers/advdistill-cpu_0.1.0.sif containers/advdistill-cpu.def" in output
    assert "This dry run goes on; a run would stop here." in output and "containers.gpu" not in output


@pytest.mark.failure_mode(
    "profile set-resources naming a rule that does not exist",
    sees="the run stops before any job, naming the rule and the known ones",
    kept="everything")
def test_unknown_rule_in_profile_resources_is_named(tmp_path):
    result = run_snakemake("--dry-run", "--configfile", str(REPO / "config.yaml"), "--set-resources",
                           "trian:mem_mb=1000", cwd=tmp_path)
    assert "profile set-resources/set-threads name unknown rule(s) trian; rules are: all, bootstrap_model" in \
        assert_clean_stop(result)


def test_slurm_profile_names_only_existing_rules(tmp_path):
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    rules = {"prepare", "bootstrap_tokenizer", "bootstrap_model", "sample", "merge_samples", "score", "train",
             "evaluate", "report"}
    assert set(profile["set-resources"]) <= rules
    assert profile["executor"] == "slurm" and profile["software-deployment-method"] == "apptainer"


APPTAINER_ARGS = re.compile(r"""apptainer-args(?::\s*|[ =])(["'])(.*?)\1""")
"""``apptainer-args: "..."`` in a profile, ``--apptainer-args "..."`` (or ``='...'``) in a doc or a comment."""


def text_files(root: Path) -> list[Path]:
    """Docs, configs, profiles and scripts of the checkout: no hidden folder (.venv, .git), no results."""
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d != "results" and (not d.startswith(".") or d == ".test")]
        files += [Path(folder) / n for n in names if n.endswith((".md", ".yaml", ".yml", ".sh", ".def"))]
    return files


def test_every_documented_apptainer_args_keeps_nv():
    """A command-line --apptainer-args replaces the profile's value as a whole: one without --nv hides the GPUs."""
    found = {(path.relative_to(REPO).as_posix(), value) for path in text_files(REPO)
             for _, value in APPTAINER_ARGS.findall(path.read_text(errors="replace"))}
    assert {path for path, _ in found} >= {"docs/paper-runs.md", "profiles/slurm/config.yaml",
                                           "profiles/default/config.yaml"}, found
    assert [(path, value) for path, value in sorted(found) if "--nv" not in value.split()] == []
    for name in ("default", "slurm"):
        profile = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        assert "--nv" in profile["apptainer-args"].split(), name


def local_sources_config(tmp_path, model_dir, **changes):
    """``local_sources`` for config/paper/gsm8k.yaml: a usable model folder (links to ``model_dir``) per hub model and
    the dataset fixtures, then ``changes``."""
    fixtures = REPO / "tests" / "fixtures" / "datasets"
    sources = {"openai/gsm8k": {"train": str(fixtures / "gsm8k.jsonl"), "test": str(fixtures / "gsm8k_test.jsonl")},
               "qtli/GSM-Plus": str(fixtures / "gsm_plus.jsonl")}
    for hub_id in ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-3B"):
        sources[hub_id] = str(tmp_path / hub_id.split("/")[1])
        (tmp_path / hub_id.split("/")[1]).symlink_to(model_dir, target_is_directory=True)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({"local_sources": {**sources, **changes}}))
    return path


def test_the_offline_example_maps_every_hub_id_of_every_paper_config():
    example = yaml.safe_load((REPO / "config" / "paper" / "offline.example.yaml").read_text())["local_sources"]
    configs = [yaml.safe_load(path.read_text()) for path in PAPER_CONFIGS]
    models = {model["source"] for config in configs for model in [config["teacher"], *config["students"]]}
    datasets = [spec for config in configs for spec in config["datasets"].values()]
    assert set(example) == models | {spec["source"] for spec in datasets}  # each hub id used, and no other
    assert all(isinstance(example[hub_id], str) for hub_id in models)
    for spec in datasets:  # a mapping by split gives every split the configurations prepare
        assert not isinstance(example[spec["source"]], dict) or set(spec["splits"]) <= set(example[spec["source"]])


def test_local_sources_replace_hub_ids_without_editing_the_paper_config(tmp_path, tiny_model_dir):
    local = local_sources_config(tmp_path, tiny_model_dir)
    result = run_snakemake("--dry-run", "--configfile", str(REPO / "config/paper/gsm8k.yaml"), str(local),
                           cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Qwen/" not in result.stdout and "openai/gsm8k" not in result.stdout
    assert f"--model {tmp_path / 'Qwen2.5-7B'} " in result.stdout
    assert f"--source {REPO / 'tests/fixtures/datasets/gsm_plus.jsonl'} " in result.stdout
    # a mapped model folder is an input of the jobs that load it
    assert f"input: results/gsm8k/prepare/gsm8k/train.parquet, {tmp_path / 'Qwen2.5-7B'}\n" in result.stdout


@pytest.mark.failure_mode(
    "local_sources entry pointing at a missing file or folder, or at an empty or broken model folder",
    sees="the run stops before any job, naming local_sources.<id> and what the folder lacks",
    kept="everything")
@pytest.mark.failure_mode(
    "one local release file given for the training and the test split of an experiment whose adapter does not hold "
    "a test share out of one file (GSM8K: the students would train on all 1,319 test questions)",
    sees="the run stops before any job, naming the dataset key, the file and the experiment",
    kept="everything")
@pytest.mark.parametrize("change, message", [
    ({"Qwen/Qwen2.5-3B": "/nonexistent/qwen3b"},
     "config local_sources.Qwen/Qwen2.5-3B: model folder /nonexistent/qwen3b not found"),
    ({"Qwen/Qwen2.5-3B": "./empty-model"}, "config local_sources.Qwen/Qwen2.5-3B: model folder ./empty-model is empty"),
    ({"openai/gsm8k": {"train": "/nonexistent/train.jsonl", "test": "/nonexistent/test.jsonl"}},
     "config local_sources.openai/gsm8k.train: file /nonexistent/train.jsonl not found (datasets.gsm8k, split "),
    ({"qtli/GSM-Plus": {"train": str(REPO / "tests/fixtures/datasets/gsm_plus.jsonl")}},
     "config local_sources.qtli/GSM-Plus: no entry for split 'test' (datasets.gsm_plus prepares it)"),
    ({"openai/gsm8k": str(REPO / "tests/fixtures/datasets/gsm8k.jsonl")},
     f"config datasets.gsm8k.source: its test split reads {REPO / 'tests/fixtures/datasets/gsm8k.jsonl'}, the file "
     "the training split of datasets.gsm8k reads, and adapter 'gsm8k' does not hold a test share out of one file: "
     "the students would be trained on the test set (experiments.gsm8k)"),
], ids=["model-folder", "empty-model-folder", "dataset-file", "dataset-split", "one-file-for-both-splits"])
def test_missing_local_source_stops_before_any_job_naming_the_key(tmp_path, tiny_model_dir, change, message):
    (tmp_path / "empty-model").mkdir()
    local = local_sources_config(tmp_path, tiny_model_dir, **change)
    result = run_snakemake("--dry-run", "--configfile", str(REPO / "config/paper/gsm8k.yaml"), str(local),
                           cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
