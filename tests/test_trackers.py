"""Experiment trackers (``training.report_to``): a real TensorBoard run of each objective read back from its event
files, the tracker folder's life across runs, and the checks of tracker names and packages."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer

from advdistill.config import LossConfig, TrainingConfig
from advdistill.errors import ConfigError, OutputError
from advdistill.io import ARTEFACT_MARKER
from advdistill.trackers import check_report_to, start_tracker_folder
from advdistill.training.groups import build_groups
from advdistill.training.trainer import train_model
from tests.helpers import files_under, run_cli
from tests.test_train import TINY_OPTIM, scored_table, write_scored_table

TINY_SETTINGS = {"optim": {"learning_rate": 1e-3, "max_steps": 2, "per_device_batch_size": 2,
                           "gradient_accumulation_steps": 1, "max_seq_length": 128, "eval_steps": 1, "save_steps": 2,
                           "logging_steps": 1},
                 "validation_fraction": 0.25, "loss": {"backend": "torch"}, "report_to": "tensorboard"}
LOGGED_BY_BOTH = {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss"}
LOSS_TERMS = {"train/weighted_ce", "train/contrastive", "train/wrong_p_mean", "train/wrong_at_clamp"}


@pytest.mark.parametrize("objective", ["sft", "advdistill"])
def test_tensorboard_gets_loss_learning_rate_grad_norm_eval_loss_and_the_loss_terms(capsys, monkeypatch, tmp_path,
                                                                                   objective, tiny_model_dir,
                                                                                   synthetic_rows, rows_file):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = tmp_path / f"student-{objective}"
    code, err = run_cli(capsys, "train", "--model", tiny_model_dir, "--rows", rows_file, "--scored",
                        write_scored_table(tmp_path, synthetic_rows), "--objective", objective, "--settings",
                        json.dumps(TINY_SETTINGS), "--run-name", f"default/student-{objective}", "--out", out)
    assert code == 0, err
    trackers = tmp_path / f"student-{objective}.trackers"  # the default --tracker-dir, beside --out
    events = EventAccumulator(str(trackers))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert LOGGED_BY_BOTH <= scalars
    assert LOSS_TERMS <= scalars if objective == "advdistill" else not LOSS_TERMS & scalars
    history = json.loads((out / "train_metrics.json").read_text())["log_history"]
    for tag in ("train/loss", "train/grad_norm", *(sorted(LOSS_TERMS) if objective == "advdistill" else ())):
        logged = [(entry["step"], entry[tag.removeprefix("train/")]) for entry in history if "loss" in entry]
        assert [(event.step, pytest.approx(event.value, rel=1e-5)) for event in events.Scalars(tag)] == logged
    args = json.loads(events.Tensors("args/text_summary")[0].tensor_proto.string_val[0])
    assert args["run_name"] == f"default/student-{objective}" and args["report_to"] == ["tensorboard"]
    assert ARTEFACT_MARKER in files_under(trackers) and "TENSORBOARD_LOGGING_DIR" not in os.environ


def test_a_loss_term_without_a_value_is_left_out_of_the_logs(tiny_model_dir, synthetic_rows, tmp_path):
    """Groups without a wrong response have no mean p of wrong responses: the logs, which the trackers get, leave
    it out instead of carrying None (TensorBoard's callback would drop it with a warning each step)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scored = scored_table(synthetic_rows).with_columns(correct=pl.lit(True))
    groups, _ = build_groups({pid: f"prompt {pid}" for pid in scored["prompt_id"]}, scored, tokenizer, 128)
    cfg = TrainingConfig(optim=TINY_OPTIM, loss=LossConfig(backend="torch"))
    metrics = train_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, "advdistill", groups, cfg,
                          tmp_path, seed=0, save_checkpoints=False)
    logged = [entry for entry in metrics["log_history"] if "loss" in entry]
    assert logged and all("weighted_ce" in entry and "wrong_p_mean" not in entry for entry in logged)
    assert all(value is not None for entry in logged for value in entry.values())


def test_a_run_from_step_0_empties_the_tracker_folder_and_a_resumed_one_keeps_it(tmp_path):
    folder = tmp_path / "student-advdistill.trackers"
    start_tracker_folder(folder, ["tensorboard"], resuming=False)
    (folder / "events.out.tfevents.1").write_text("segment 1")
    start_tracker_folder(folder, ["tensorboard"], resuming=True)
    assert files_under(folder) == {ARTEFACT_MARKER, "events.out.tfevents.1"}
    start_tracker_folder(folder, ["tensorboard"], resuming=False)
    assert files_under(folder) == {ARTEFACT_MARKER}
    start_tracker_folder(folder, [], resuming=False)
    assert not folder.exists()
    start_tracker_folder(folder, ["wandb"], resuming=False)  # W&B writes where its own settings say
    assert not folder.exists()


def test_a_tracker_folder_of_the_users_own_is_left_alone(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for resuming in (False, True):
        with pytest.raises(OutputError, match="was not written by advdistill"):
            start_tracker_folder(folder, ["tensorboard"], resuming=resuming)
    assert files_under(folder) == {"notes.txt"}


@pytest.mark.failure_mode(
    "advdistill train --tracker-dir inside or around --out, --checkpoints or an input",
    sees="one line naming both options and paths, exit 2", kept="everything; nothing is read or written")
@pytest.mark.parametrize("tracker_dir, option", [("out/tensorboard", "--out"), ("model", "--model"),
                                                 ("out.checkpoints", "--checkpoints"), (".", "--out")])
def test_the_tracker_folder_keeps_clear_of_the_output_checkpoints_and_inputs(capsys, tmp_path, tracker_dir, option):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name in ("rows.parquet", "scored.parquet"):
        (tmp_path / name).write_text("x")
    before = files_under(tmp_path)
    code, err = run_cli(capsys, "train", "--model", model, "--rows", tmp_path / "rows.parquet", "--scored",
                        tmp_path / "scored.parquet", "--objective", "sft", "--tracker-dir", tmp_path / tracker_dir,
                        "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert f"--tracker-dir {tmp_path / tracker_dir} is, holds or lies inside {option} " in err
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("report_to, message", [
    ("tensorboardx", "config training.report_to: 'tensorboardx' is not a tracker transformers offers; the trackers: "
                     "azure_ml, clearml, "),
    (["tensorboard", "all"], "config training.report_to: 'all' reports to whichever trackers happen to be installed"),
    (["none", "tensorboard"], "config training.report_to: 'none' means no tracker and cannot be listed beside"),
    ("kubeflow", "config training.report_to: 'kubeflow' is turned on by transformers itself"),
    ("wandb", "config training.report_to: 'wandb' needs the Python package wandb, which is not installed here (pip "
              "install wandb); install it where the train jobs run"),
    ("dagshub", "'dagshub' needs the Python packages dagshub and mlflow, which are not installed here (pip install "
                "dagshub mlflow)"),
], ids=["unknown", "all", "none-beside-trackers", "kubeflow", "missing-package", "missing-packages"])
def test_tracker_names_and_packages_are_checked(monkeypatch, report_to, message):
    from transformers.integrations import integration_utils

    for name in ("is_wandb_available", "is_dagshub_available"):
        monkeypatch.setattr(integration_utils, name, lambda: False)
    with pytest.raises(ConfigError) as raised:
        check_report_to(report_to, "training.report_to")
    assert message in str(raised.value)


def test_installed_trackers_and_none_pass():
    for report_to in ("none", ["none"], "tensorboard", ["tensorboard"]):
        check_report_to(report_to, "training.report_to")
