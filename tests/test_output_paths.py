"""Issue 35, third pass: every path a stage writes is checked (class 2), errors at the write and read boundary that
are no OSError (class 5) and one job at a time on an output or resume folder (class 6)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from advdistill import cli, runs
from advdistill.errors import ConfigError, OutputError
from advdistill.io import (
    ARTEFACT_MARKER,
    RESUME_MARKER,
    atomic_directory,
    check_replaceable,
    claim_resume_folder,
    folder_writer,
    hold_output,
    write_json,
    write_parquet,
)
from advdistill.metrics import evaluation_metrics
from advdistill.paths import lock_file
from tests.helpers import REPO, file_stamps, files_under, run_cli


def one_line_error(code: int, err: str, stage: str, progress: bool = False) -> str:
    """The message of a one-line error of ``stage``: exit 2, nothing but that line on stderr (after the progress
    bars of a stage that got to work, with ``progress``), no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and (len(lines) == 1 or progress and all("it/s]" in line for line in lines[:-1])), err
    line = lines[-1]
    assert line.startswith(f"advdistill {stage}: error: "), line
    return line.removeprefix(f"advdistill {stage}: error: ")


def model_of(stage: str, folder: Path, output: str = "--out") -> Path:
    """A finished model folder as ``stage`` writes it (its marker names the stage)."""
    with atomic_directory(folder, stage, output) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Stand-in input files (the checks run before any is read) and a trained model and a teacher."""
    for name in ("rows.parquet", "samples.parquet", "release.jsonl", "user.txt"):
        (tmp_path / name).write_text(name)
    model_of("train", tmp_path / "train" / "student-sft")
    model_of("bootstrap-model", tmp_path / "models" / "teacher")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.json").symlink_to(tmp_path / "user.txt")
    return tmp_path


SCORE = ("score", "--rows", "{t}/rows.parquet", "--samples", "{t}/samples.parquet")
CASES = {
    "prepare --report at its own --source": (
        ("prepare", "--dataset", "gsm8k", "--source", "{t}/release.jsonl", "--split", "test", "--out",
         "{t}/rows-out.parquet", "--report", "{t}/release.jsonl"),
        "--report {t}/release.jsonl is, holds or lies inside --source {t}/release.jsonl: a stage never writes over "
        "its own inputs"),
    "score --summary at its --rows": (
        (*SCORE, "--out", "{t}/scored.parquet", "--summary", "{t}/rows.parquet"),
        "--summary {t}/rows.parquet is, holds or lies inside --rows {t}/rows.parquet: a stage never writes over"),
    "score --out and --summary one file": (
        (*SCORE, "--out", "{t}/x", "--summary", "{t}/x"),
        "--summary {t}/x is, holds or lies inside --out {t}/x: two outputs of one stage would overwrite each other"),
    "evaluate --metrics at its --rows": (
        ("evaluate", "--model", "org/model", "--rows", "{t}/rows.parquet", "--out", "{t}/responses.parquet",
         "--metrics", "{t}/rows.parquet"),
        "--metrics {t}/rows.parquet is, holds or lies inside --rows {t}/rows.parquet"),
    "evaluate --metrics at its own unjudged responses": (
        ("evaluate", "--model", "org/model", "--rows", "{t}/rows.parquet", "--out", "{t}/responses.parquet",
         "--metrics", "{t}/responses.raw.parquet"),
        "the unjudged responses of --out {t}/responses.raw.parquet is, holds or lies inside --metrics "
        "{t}/responses.raw.parquet"),
    "report --out-dir at a trained model": (
        ("report", "--plan", '{{"models": [], "testsets": [], "evaluations": [], "scored": {{}}}}', "--out-dir",
         "{t}/train/student-sft"),
        "--out-dir {t}/train/student-sft was written by advdistill train (--out), not as the --out-dir of report: a "
        "stage replaces only folders of its own kind"),
    "report --out-dir around a file its plan reads": (
        ("report", "--plan", '{{"models": [], "testsets": [], "evaluations": [], "scored": {{"arith": '
         '"{t}/train/scored.parquet"}}}}', "--out-dir", "{t}/train"),
        "--out-dir {t}/train is, holds or lies inside --plan scored.arith {t}/train/scored.parquet"),
    "bootstrap-tokenizer --out at the teacher": (
        ("bootstrap-tokenizer", "--rows", "{t}/rows.parquet", "--out", "{t}/models/teacher"),
        "--out {t}/models/teacher was written by advdistill bootstrap-model (--out), not as the --out of "
        "bootstrap-tokenizer"),
    "a FIFO at --summary": (
        (*SCORE, "--out", "{t}/scored.parquet", "--summary", "{t}/fifo"),
        "--summary {t}/fifo exists and is a FIFO (named pipe): a stage writes only regular files of its own"),
    "a device at --summary": (
        (*SCORE, "--out", "{t}/scored.parquet", "--summary", "/dev/null"),
        "--summary /dev/null exists and is a character device: a stage writes only regular files of its own"),
    "a symbolic link at --metrics": (
        ("evaluate", "--model", "org/model", "--rows", "{t}/rows.parquet", "--out", "{t}/responses.parquet",
         "--metrics", "{t}/link.json"),
        "--metrics {t}/link.json exists and is a symbolic link (to {t}/user.txt)"),
    "the manifest beside --out at a FIFO": (
        ("merge-samples", "{t}/samples.parquet", "--out", "{t}/fi"),
        "the manifest of --out {t}/fi.manifest.json exists and is a FIFO"),
    "score --summary inside the teacher's folder": (
        (*SCORE, "--out", "{t}/scored.parquet", "--summary", "{t}/models/teacher/config.json"),
        "--summary {t}/models/teacher/config.json lies inside {t}/models/teacher, the --out of advdistill "
        "bootstrap-model, which is replaced or deleted as a whole"),
    "train --checkpoints at another stage's resume folder": (
        ("train", "--model", "{t}/models/teacher", "--rows", "{t}/rows.parquet", "--scored", "{t}/samples.parquet",
         "--objective", "sft", "--checkpoints", "{t}/.samples-out.parquet.parts", "--out", "{t}/student"),
        "--checkpoints {t}/.samples-out.parquet.parts is a resume folder of advdistill sample, not of train"),
}


@pytest.mark.failure_mode(
    "a path a stage writes (--out, --summary, --metrics, --report, --out-dir, the manifest beside the output, the "
    "sampling shards, train's --checkpoints and --tracker-dir) that is an input, another output of the job, inside "
    "another stage's folder, a FIFO, device, socket or symbolic link, or a folder another stage wrote",
    sees="one line naming the option, the path and what it collides with, exit 2, no traceback",
    kept="every file as it was: the input, the other stage's model, the FIFO and the linked file; nothing is written")
@pytest.mark.parametrize("case", CASES)
def test_every_path_a_stage_writes_is_checked_before_it_starts(capsys, inputs, case):
    argv, message = CASES[case]
    os.mkfifo(inputs / "fi.manifest.json")
    claim_resume_folder(inputs / ".samples-out.parquet.parts", "fp", "sample")
    before = file_stamps(inputs)
    code, err = run_cli(capsys, *(arg.format(t=inputs) for arg in argv))
    assert one_line_error(code, err, argv[0]).startswith(message.format(t=inputs))
    assert file_stamps(inputs) == before
    assert sorted(p.name for p in inputs.iterdir() if p.name.startswith(".")) == [".samples-out.parquet.parts"]
    assert (inputs / "user.txt").read_text() == "user.txt" and (inputs / "fifo").is_fifo()


PREPARE = ("prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", "test", "--out", "{t}/test.parquet")
EVALUATE = ("evaluate", "--model", "org/model", "--rows", "{t}/rows.parquet", "--out", "{t}/answers.parquet",
            "--metrics", "{t}/metrics.json")


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


USERS_FILES = {
    "a JSON file at the manifest": (
        PREPARE, "test.parquet.manifest.json", b'{"stage": "prepare", "notes": "which release I used"}\n',
        "the manifest of --out"),
    "a text file at the manifest": (
        EVALUATE, "answers.parquet.manifest.json", b"notes on the answers\n", "the manifest of --out"),
    "a JSON file at prepare's default --report": (
        PREPARE, "test.report.json", b'{"dataset": "synthetic", "rows_kept": 16}', "the skipped-rows report of --out"),
    "a table at evaluate's unjudged responses": (
        EVALUATE, "answers.raw.parquet",
        parquet_bytes(pl.DataFrame({"prompt_id": ["q1"], "response": ["my own answer"], "grade": [5]})),
        "the unjudged responses of --out"),
    "a text file at evaluate's unjudged responses": (
        EVALUATE, "answers.raw.parquet", b"PAR1 not a parquet file", "the unjudged responses of --out"),
}


@pytest.mark.failure_mode(
    "a file of the user's at a path a stage derives from --out, not named on the command line: the manifest "
    "<out>.manifest.json, prepare's default --report <stem>.report.json, evaluate's unjudged responses "
    "<stem>.raw.parquet (which evaluate deletes once it is done)",
    sees="one line naming the path, what the stage would have written there and the way out, exit 2, no traceback "
         "(was: exit 0, the file overwritten, and evaluate's deleted)",
    kept="the file, byte for byte; nothing is written")
@pytest.mark.parametrize("case", USERS_FILES)
def test_a_users_file_at_a_derived_path_is_refused(capsys, tmp_path, case):
    argv, name, content, option = USERS_FILES[case]
    (tmp_path / "rows.parquet").write_text("rows")  # evaluate's input (the check runs before it is read)
    (tmp_path / name).write_bytes(content)
    before = file_stamps(tmp_path)
    code, err = run_cli(capsys, *(arg.format(t=tmp_path) for arg in argv))
    assert one_line_error(code, err, argv[0]) == (
        f"{option} {tmp_path / name} exists and is not a file advdistill wrote: a stage overwrites or deletes only "
        "what it can prove it wrote; move it away or choose another --out")
    assert (tmp_path / name).read_bytes() == content and file_stamps(tmp_path) == before


def test_a_stage_reruns_over_the_derived_files_it_wrote(capsys, monkeypatch, tmp_path, tiny_model_dir,
                                                        synthetic_rows):
    """prepare's default report and manifest, an older advdistill's manifest (fewer keys) and the unjudged responses
    that an evaluation killed before judging them left are the stage's own: a rerun replaces them."""
    import advdistill.evaluate as evaluate_module

    prepare = [arg.format(t=tmp_path) for arg in PREPARE]
    assert run_cli(capsys, *prepare)[0] == 0
    assert run_cli(capsys, *prepare)[0] == 0
    manifest = tmp_path / "test.parquet.manifest.json"
    first_version = ("stage", "settings_sha256", "settings", "package_version", "git_commit", "container", "host",
                     "seed", "inputs", "started_unix", "wall_seconds")
    write_json({key: json.loads(manifest.read_text())[key] for key in first_version}, manifest)
    assert run_cli(capsys, *prepare)[0] == 0
    assert "environment" in json.loads(manifest.read_text())

    class Killed(BaseException):
        """The job killed once its responses are sampled, before it judges them."""

    def killed(*args):
        raise Killed

    write_parquet(synthetic_rows[1], tmp_path / "arith.parquet")
    evaluate = ("evaluate", "--model", tiny_model_dir, "--rows", tmp_path / "arith.parquet", "--settings",
                json.dumps({"max_new_tokens": 4, "max_prompts": 2}), "--out", tmp_path / "answers.parquet",
                "--metrics", tmp_path / "metrics.json")
    monkeypatch.setattr(evaluate_module, "judge", killed)
    with pytest.raises(Killed):
        cli.main([str(arg) for arg in evaluate])
    assert pl.read_parquet(tmp_path / "answers.raw.parquet").height == 2
    monkeypatch.undo()
    code, err = run_cli(capsys, *evaluate)
    assert code == 0, err
    assert pl.read_parquet(tmp_path / "answers.parquet").height == 2
    assert not (tmp_path / "answers.raw.parquet").exists()


def test_a_stage_replaces_its_own_kind_and_an_old_marker_only_where_safe(tmp_path):
    """A folder of this stage and option is replaced; one an older advdistill wrote (no stage in its marker) only
    where its content tells the kind: a tracker folder by its words, a folder without model or tokenizer files as a
    report. A model or tokenizer of unknown stage is refused to every stage."""
    model_of("train", tmp_path / "m")
    check_replaceable(tmp_path / "m", "train")
    with pytest.raises(OutputError, match="written by advdistill train \\(--out\\), not as the --tracker-dir of"):
        check_replaceable(tmp_path / "m", "train", "--tracker-dir")
    assert folder_writer(tmp_path / "m") == ("train", "--out")
    old = {"old-model": ("written by advdistill; the pipeline may replace this folder\n", "config.json"),
           "old-tokenizer": ("written by advdistill; the pipeline may replace this folder\n", "tokenizer.json"),
           "old-report": ("written by advdistill; the pipeline may replace this folder\n", "accuracy.md"),
           "old-trackers": ("tracker files of one advdistill training run; the next run from step 0 empties this "
                            "folder\n", "events.out.tfevents.1")}
    for name, (marker, content) in old.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / ARTEFACT_MARKER).write_text(marker)
        (tmp_path / name / content).write_text("x")
    for name in ("old-model", "old-tokenizer"):
        assert folder_writer(tmp_path / name) is None
        for stage in ("train", "bootstrap-model", "bootstrap-tokenizer", "standin", "report"):
            with pytest.raises(OutputError, match="written by an older advdistill that did not record which stage"):
                check_replaceable(tmp_path / name, stage)
    check_replaceable(tmp_path / "old-report", "report", "--out-dir")
    with pytest.raises(OutputError, match="not as the --out of train"):
        check_replaceable(tmp_path / "old-report", "train")
    check_replaceable(tmp_path / "old-trackers", "train", "--tracker-dir")
    with pytest.raises(OutputError, match="not as the --out-dir of report"):
        check_replaceable(tmp_path / "old-trackers", "report", "--out-dir")


@pytest.mark.failure_mode(
    "a symbolic link, FIFO or other non-regular file at a log or benchmark path of the run (Snakemake writes through "
    "it)",
    sees="planning stops before any job with one line naming the path and what it is",
    kept="the linked file and everything else; no job runs")
def test_planning_refuses_a_link_at_a_benchmark_or_log_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    benchmarks = tmp_path / "results" / "default" / "benchmarks" / "score"
    benchmarks.mkdir(parents=True)
    (benchmarks / "arith.tsv").write_text("s\n1.0\n")
    (tmp_path / "results" / "default" / "logs").mkdir()
    runs.check_job_records("default")  # regular files and folders
    runs.check_job_records("absent")
    (tmp_path / "thesis.tex").write_text("years of work")
    (benchmarks / "gsm8k.tsv").symlink_to(tmp_path / "thesis.tex")
    with pytest.raises(ConfigError, match=r"config run_name: results/default/benchmarks/score/gsm8k.tsv is a symbolic "
                                          r"link \(to .*thesis.tex\); Snakemake writes a job's benchmark there"):
        runs.check_job_records("default")
    (benchmarks / "gsm8k.tsv").unlink()
    os.mkfifo(tmp_path / "results" / "default" / "logs" / "report.log")
    with pytest.raises(ConfigError, match="logs/report.log is a FIFO; Snakemake writes a job's log there"):
        runs.check_job_records("default")
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


# ---- class 5: the write and read boundary ----


def a_safetensors_full_disk(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def a_torch_full_disk(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                       "file write failed")


@pytest.mark.failure_mode(
    "disk full while a model folder is saved, reported by the writing library in its own error type (safetensors' "
    "SafetensorError, torch's RuntimeError 'PytorchStreamWriter failed' / 'unexpected pos', tokenizers' Exception)",
    sees="one line 'cannot write <model folder>: No space left on device' (torch: 'the write failed (...); is the "
         "disk full?'), exit 2, no traceback",
    kept="no model folder, no temporary folder, no manifest; an earlier model of the same stage until replaced")
@pytest.mark.parametrize("writer, reason", [
    (a_safetensors_full_disk, "No space left on device"),
    (a_torch_full_disk, "the write failed (PytorchStreamWriter failed writing file data/0: file write failed); is the "
                        "disk full?")])
def test_a_full_disk_while_saving_a_model_is_one_line(capsys, monkeypatch, tmp_path, rows_file, writer, reason):
    import transformers.modeling_utils

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", writer)
    code, err = run_cli(capsys, "standin", "--like", "Qwen/Qwen2.5-1.5B", "--rows", rows_file, "--out",
                        tmp_path / "qwen")
    assert one_line_error(code, err, "standin", progress=True) == f"cannot write {tmp_path / 'qwen'}: {reason}"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_anywhere_else_is_one_line_naming_the_outputs(capsys, monkeypatch, tmp_path):
    """Outside the writers that name their file, a library's full-disk error still ends in one line, naming the
    stage's outputs; any other exception stays a bug with its traceback."""
    def full(args):
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(cli, "run", full)
    (tmp_path / "rows.parquet").write_text("rows")
    code, err = run_cli(capsys, "score", "--rows", tmp_path / "rows.parquet", "--samples", tmp_path / "rows.parquet",
                        "--out", tmp_path / "o" / "s", "--summary", tmp_path / "o" / "m")
    assert one_line_error(code, err, "score") == (
        f"cannot write the outputs of this stage ({tmp_path / 'o' / 's'}, {tmp_path / 'o' / 'm'}, "
        f"{tmp_path / 'o' / 's.manifest.json'}): No space left on device")


def test_a_full_disk_while_saving_a_checkpoint_removes_the_cut_off_one(tmp_path):
    """The trainer saves its checkpoints through torch and safetensors; a refused save is named with the checkpoint
    folder and the checkpoint it cut off is removed (its bytes would only fill the disk further); sealed ones stay."""
    from types import SimpleNamespace

    from advdistill.training.checkpoints import seal_checkpoint
    from advdistill.training.trainer import fit

    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-1").mkdir(parents=True)
    (checkpoints / "checkpoint-1" / "model.safetensors").write_bytes(b"w")
    seal_checkpoint(checkpoints / "checkpoint-1")

    def train(resume_from_checkpoint):
        (checkpoints / "checkpoint-2").mkdir()
        (checkpoints / "checkpoint-2" / "optimizer.pt").write_bytes(b"half")
        a_torch_full_disk()

    trainer = SimpleNamespace(is_world_process_zero=lambda: True, tracker_dir=None, train=train,
                              accelerator=SimpleNamespace(wait_for_everyone=lambda: None),
                              add_callback=lambda callback: None)
    with pytest.raises(OutputError, match=rf"^cannot write a checkpoint into {checkpoints}: the write failed "
                                          r"\(PytorchStreamWriter failed writing file data/0: file write failed\); "
                                          r"is the disk full\?$"):
        fit(trainer, checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1"]


def report_plan(tmp_path: Path) -> dict:
    """A plan of one evaluation and one trained run, with its files written."""
    frame = pl.DataFrame({"prompt_id": ["p0", "p1"], "sample_idx": [0, 0], "response": ["a", "b"], "n_tokens": [3, 4],
                          "truncated": [False, False], "predicted": ["1", "2"], "correct": [True, False],
                          "format_ok": [True, True]})
    folder = tmp_path / "evaluate"
    write_parquet(frame, folder / "responses.parquet")
    write_json(evaluation_metrics(frame), folder / "metrics.json")
    trained = tmp_path / "train" / "student-sft"
    write_json({"global_step": 3, "train_runtime": 1.0, "train_items": 6,
                "log_history": [{"step": 1, "loss": 1.0}]}, trained / "train_metrics.json")
    benchmark = tmp_path / "benchmarks" / "score.tsv"
    benchmark.parent.mkdir()
    benchmark.write_text("s\th:m:s\tmax_rss\tcpu_time\n1.5\t0:00:01\t10.0\t1.0\n")
    write_json({"stage": "score", "seed": 7}, tmp_path / "scored.parquet.manifest.json")
    return {"models": ["student-sft"], "testsets": ["arith"], "scored": {},
            "evaluations": [{"model": "student-sft", "testset": "arith", "metrics": str(folder / "metrics.json"),
                             "responses": str(folder / "responses.parquet")}],
            "trained": [{"train_set": "arith", "model": "student-sft", "student": "student", "objective": "sft",
                         "path": str(trained)}],
            "benchmarks": {"score": [str(benchmark)]}, "provenance": [str(tmp_path / "scored.parquet")]}


DAMAGED = {
    "metrics.json cut off": ("evaluate/metrics.json", '{"accuracy": 0.5, "n"', "not valid JSON ("),
    "metrics.json an array": ("evaluate/metrics.json", "[0.5, 2]", "holds a JSON array, expected a JSON object"),
    "metrics.json accuracy a string": ("evaluate/metrics.json", '{"accuracy": "high", "n": 2}',
                                       "'accuracy' is string \"high\", expected a number or null"),
    "metrics.json pass_at_k an array": ("evaluate/metrics.json", '{"accuracy": 0.5, "pass_at_k": [1]}',
                                        "'pass_at_k' is array [1], expected an object of numbers"),
    "metrics.json without accuracy": ("evaluate/metrics.json", '{"n": 2, "verbosity_ratio": 1.0}',
                                      "no key(s) 'accuracy' (numbers), which every evaluation's metrics.json has"),
    "train_metrics.json empty": ("train/student-sft/train_metrics.json", "", "not valid JSON ("),
    "train_metrics.json log_history an object": ("train/student-sft/train_metrics.json", '{"log_history": {"a": 1}}',
                                                 "'log_history' is object"),
    "train_metrics.json not UTF-8": ("train/student-sft/train_metrics.json", b"\xff\xfe{", "cannot read it ("),
    "manifest a string": ("scored.parquet.manifest.json", '"score"', "holds a JSON string, expected a JSON object"),
    "manifest environment a list": ("scored.parquet.manifest.json", '{"environment": ["x"]}', "'environment' is array"),
    "benchmark TSV empty": ("benchmarks/score.tsv", "", "not a readable Snakemake benchmark TSV ("),
}


@pytest.mark.failure_mode(
    "a damaged input JSON or TSV of the report: metrics.json, train_metrics.json or a manifest cut off, not UTF-8, "
    "or valid JSON of the wrong shape (an array, a string where a number belongs), an empty benchmark TSV",
    sees="one line naming the file and what is wrong with it (the key and what it must be), exit 2, no traceback",
    kept="the inputs; no report folder, no temporary folder")
@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_input_of_the_report_is_named(capsys, tmp_path, case):
    name, content, message = DAMAGED[case]
    plan = report_plan(tmp_path / "in")
    path = tmp_path / "in" / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    code, err = run_cli(capsys, "report", "--plan", json.dumps(plan), "--out-dir", tmp_path / "report")
    assert one_line_error(code, err, "report").startswith(f"{path}: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_the_report_plan_of_the_damage_test_is_sound(capsys, tmp_path):
    plan = report_plan(tmp_path / "in")
    assert run_cli(capsys, "report", "--plan", json.dumps(plan), "--out-dir", tmp_path / "report")[0] == 0


@pytest.mark.failure_mode(
    "a launcher variable that is not a number or a yes/no word (RANK=abc, WORLD_SIZE=two, ACCELERATE_USE_FSDP=maybe)",
    sees="one line naming the variable and its value, exit 2, no traceback (was: a ValueError deep in accelerate or "
         "'internal error (a bug)')",
    kept="everything; nothing is read or written")
@pytest.mark.parametrize("name, value, expected", [
    ("RANK", "abc", "environment variable RANK='abc' is not a whole number (at least -1)"),
    ("WORLD_SIZE", "0", "environment variable WORLD_SIZE='0' is not a whole number (at least 1)"),
    ("LOCAL_RANK", "", "environment variable LOCAL_RANK='' is not a whole number (at least -1)"),
    ("ACCELERATE_USE_FSDP", "maybe", "environment variable ACCELERATE_USE_FSDP='maybe' is not a yes/no word")])
def test_a_bad_launcher_variable_is_named(capsys, monkeypatch, tmp_path, name, value, expected):
    monkeypatch.setenv(name, value)
    code, err = run_cli(capsys, "prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", "test",
                        "--out", tmp_path / "rows.parquet")
    assert one_line_error(code, err, "prepare").startswith(expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.failure_mode(
    "temporary files and folders (.<name>.tmp-XXXXXXXX) left beside an output, or inside a resume folder, by a job "
    "killed with SIGKILL while writing",
    sees="nothing: the next job of the stage that writes that output removes them (logged at INFO)",
    kept="every other file, also ones that look alike but do not match the pattern exactly")
def test_a_killed_jobs_temporaries_are_removed_by_the_next_job_of_that_output(capsys, tmp_path):
    out = tmp_path / "rows.parquet"
    stale = [tmp_path / ".rows.parquet.tmp-k3_9zq0a", tmp_path / ".rows.report.json.tmp-00000000",
             tmp_path / ".rows.parquet.manifest.json.tmp-x1y2z3w4"]  # --out, its default --report, its manifest
    kept = [tmp_path / ".rows.parquet.tmp-short", tmp_path / ".rows.parquet.tmp-ABCDEFGH",
            tmp_path / ".rows.parquet.report.json.tmp-abcdefgh",
            tmp_path / ".rows.parquet.tmp-abcdefghi", tmp_path / "rows.parquet.tmp-abcdefgh",
            tmp_path / ".other.parquet.tmp-abcdefgh", tmp_path / "notes.txt"]
    for path in stale + kept:
        path.write_text("partial")
    (tmp_path / ".model.tmp-abcdefgh").mkdir()  # another output's: not this stage's to remove
    code, _ = run_cli(capsys, "prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", "test",
                      "--out", out)
    assert code == 0
    assert not any(path.exists() for path in stale) and all(path.read_text() == "partial" for path in kept)
    assert (tmp_path / ".model.tmp-abcdefgh").is_dir() and not lock_file(out).exists()

    parts = tmp_path / ".samples.parquet.parts"
    claim_resume_folder(parts, "fp", "sample")
    (parts / "shard-00000.parquet").write_text("finished shard")
    (parts / ".shard-00001.parquet.tmp-abcdefgh").write_text("cut off")
    claim_resume_folder(parts, "fp", "sample")
    assert sorted(p.name for p in parts.iterdir()) == [RESUME_MARKER, "shard-00000.parquet"]
    (tmp_path / ".model.tmp-abcdefgh" / "weights").write_text("half")
    with atomic_directory(tmp_path / "model", "train") as folder:
        (folder / "weights").write_text("whole")
    assert (tmp_path / ".model.tmp-abcdefgh").is_dir()  # only a job holding the output removes its temporaries


def test_a_damaged_shard_is_redone_and_a_damaged_resume_stamp_stops_the_stage_untouched(tmp_path):
    from advdistill.config import SamplingConfig
    from advdistill.sampling.base import Completion, GenerationParams, SamplingBackend
    from advdistill.sampling.shards import sample_prompts

    class Echo(SamplingBackend):
        calls = 0

        def generate(self, prompts, params, seed):
            Echo.calls += 1
            return [[Completion(p, 1, False)] for p in prompts]

    def sample():
        return sample_prompts(Echo(), ["a", "b", "c"], ["a", "b", "c"], GenerationParams(1, 1.0, 1.0, 4),
                              SamplingConfig(batch_size=1, shard_size=1), 0, tmp_path / "s.parquet", "fp")

    reference = sample()
    parts = tmp_path / ".s.parquet.parts"
    claim_resume_folder(parts, "fp", "sample")
    write_parquet(reference.head(1), parts / "shard-00000.parquet")
    (parts / "shard-00001.parquet").write_bytes(b"PAR1 cut off")
    Echo.calls = 0
    assert sample().equals(reference) and Echo.calls == 2  # shard 0 kept, the damaged shard 1 sampled again
    claim_resume_folder(parts, "fp", "sample")
    (parts / "shard-00000.parquet").write_text("kept?")
    (parts / RESUME_MARKER).write_text('{"stage": "sample", "fing')
    with pytest.raises(OutputError, match="not one advdistill writes"):  # nothing proves the folder ours: kept
        claim_resume_folder(parts, "fp", "sample")
    assert sorted(p.name for p in parts.iterdir()) == [RESUME_MARKER, "shard-00000.parquet"]


# ---- class 6: one job per output ----

HOLDER = """
import sys, time
from pathlib import Path
from advdistill.io import hold_output
with hold_output(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def holding(path: Path) -> subprocess.Popen:
    """Another job: a process that holds ``path`` as a stage does and then sleeps."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.failure_mode(
    "two jobs on one output or resume folder at once (two sample runs with the same --out and different seeds, two "
    "trainings on one --checkpoints folder, two evaluations with one --out)",
    sees="the second stops at once: one line naming the output and the process and host of the job that holds it, "
         "exit 2 (was: exit 0 with samples of the first run mixed into its own, and the first died)",
    kept="the first job's output and resume folder, untouched; the lock is released when the first job ends, also "
         "when it is killed with SIGKILL")
@pytest.mark.parametrize("stage", ["sample", "train", "evaluate"])
def test_a_second_job_on_a_held_output_stops_at_once(capsys, tmp_path, stage):
    for name in ("rows.parquet", "scored.parquet"):
        (tmp_path / name).write_text(name)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    argv, held = {
        "sample": (("sample", "--model", tmp_path / "model", "--rows", tmp_path / "rows.parquet", "--seed", "2",
                    "--out", tmp_path / "samples.parquet"), tmp_path / "samples.parquet"),
        "train": (("train", "--model", tmp_path / "model", "--rows", tmp_path / "rows.parquet", "--scored",
                   tmp_path / "scored.parquet", "--objective", "sft", "--checkpoints", tmp_path / "ck", "--out",
                   tmp_path / "second"), tmp_path / "ck"),
        "evaluate": (("evaluate", "--model", tmp_path / "model", "--rows", tmp_path / "rows.parquet", "--out",
                      tmp_path / "responses.parquet", "--metrics", tmp_path / "m.json"),
                     tmp_path / ".responses.raw.parquet.parts"),
    }[stage]
    claim_resume_folder(held if stage != "sample" else tmp_path / ".samples.parquet.parts", "first", stage)
    holder = holding(held)
    try:
        before = file_stamps(tmp_path)
        code, err = run_cli(capsys, *argv)
        message = one_line_error(code, err, stage)
        assert message.startswith(f"{held} is held by another job (process {holder.pid} on ")
        assert message.endswith("which is writing it: two jobs on one output would mix their work; wait for that job "
                                "to end or choose another output path")
        assert file_stamps(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_file(held).exists()  # a killed job leaves its lock file, but the kernel dropped its lock
    with hold_output(held):
        pass
    assert not lock_file(held).exists()


def test_locks_are_exclusive_between_processes_and_refuse_a_linked_lock_file(tmp_path):
    out = tmp_path / "samples.parquet"
    with hold_output(out) as path:
        assert path == out and lock_file(out).is_file()
        done = subprocess.run([sys.executable, "-c", HOLDER, str(out)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 1 and f"OutputError: {out} is held by another job (process {os.getpid()}" in (
            done.stderr)
    assert files_under(tmp_path) == set()
    (tmp_path / "thesis.tex").write_text("years of work")
    lock_file(out).symlink_to(tmp_path / "thesis.tex")
    with pytest.raises(OutputError, match="the lock file of .* is a symbolic link"):
        with hold_output(out):
            pass
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
