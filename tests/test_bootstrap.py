"""Bootstrapped models: a run that also keeps its earlier weights as snapshots (a ``source: snapshot`` student)."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from advdistill.bootstrap import run_bootstrap_model, train_tokenizer
from advdistill.cli import main
from advdistill.config import BootstrapConfig, ModelShape, OptimConfig, PromptConfig, TokenizerConfig
from advdistill.errors import TrainingError
from advdistill.model_folders import model_folder_problem
from advdistill.paths import snapshot_folder

SHAPE = ModelShape(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                   intermediate_size=64)


def bootstrap_settings(max_steps: int) -> BootstrapConfig:
    return BootstrapConfig(train_rows=32, shape=SHAPE,
                           optim=OptimConfig(learning_rate=3e-3, max_steps=max_steps, per_device_batch_size=8,
                                             gradient_accumulation_steps=1, max_seq_length=256, logging_steps=1))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, synthetic_rows):
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(synthetic_rows[0].to_dicts(), TokenizerConfig(vocab_size=320)).save_pretrained(path)
    return path


def test_snapshots_are_the_runs_own_weights_at_those_steps(tmp_path, rows_file, tokenizer_dir):
    out = tmp_path / "teacher"
    metrics = run_bootstrap_model(rows_file, tokenizer_dir, bootstrap_settings(3), PromptConfig(), 5, out,
                                  snapshot_steps=(1, 3))
    assert metrics["global_step"] == 3 and metrics["snapshot_steps"] == [1, 3]
    final = load_file(out / "model.safetensors")
    last, first = (load_file(snapshot_folder(out, step) / "model.safetensors") for step in (3, 1))
    assert sorted(last) == sorted(final)  # tied weights saved once, as in the model's own folder
    assert all(torch.equal(last[name], final[name]) for name in final)
    assert not all(torch.equal(first[name], final[name]) for name in final)
    for step in (1, 3):
        assert model_folder_problem(snapshot_folder(out, step)) is None
    loaded = AutoModelForCausalLM.from_pretrained(snapshot_folder(out, 1))
    assert torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, first["model.embed_tokens.weight"])
    # a run without snapshots ends with the same weights: keeping them does not disturb the run
    plain = tmp_path / "plain"
    run_bootstrap_model(rows_file, tokenizer_dir, bootstrap_settings(3), PromptConfig(), 5, plain)
    assert not (plain / "snapshots").exists()
    assert all(torch.equal(t, final[n]) for n, t in load_file(plain / "model.safetensors").items())


@pytest.mark.failure_mode(
    "a snapshot step that the bootstrap run never reaches (a run given in epochs)",
    sees="the bootstrap job fails naming the step and the steps the run took",
    kept="no model folder is written")
def test_snapshot_step_beyond_the_run_stops_the_job(tmp_path, rows_file, tokenizer_dir):
    out = tmp_path / "teacher"
    with pytest.raises(TrainingError, match=r"snapshot step\(s\) 5 not reached: the bootstrap run took 2 steps"):
        run_bootstrap_model(rows_file, tokenizer_dir, bootstrap_settings(2), PromptConfig(), 5, out,
                            snapshot_steps=(1, 5))
    assert not out.exists()


@pytest.mark.failure_mode(
    "rows parquet for bootstrap-tokenizer, bootstrap-model or standin without a solution column, with a mistyped "
    "column, without rows, or (bootstrap) without any reference solution",
    sees="one line naming the file and the column, or 'no row with a reference solution to pretrain on' ('... to "
         "train the tokenizer on'; standin: 'no row to train the tokenizer on'), exit 2",
    kept="everything; no tokenizer or model is built")
def test_bootstrap_rows_without_what_the_stage_learns_from_are_refused(tmp_path, synthetic_rows, tokenizer_dir,
                                                                       capsys):
    rows, path, out = synthetic_rows[0], tmp_path / "rows.parquet", tmp_path / "out"
    stages = {"bootstrap-tokenizer": ["bootstrap-tokenizer", "--rows", str(path), "--out", str(out)],
              "bootstrap-model": ["bootstrap-model", "--rows", str(path), "--tokenizer", str(tokenizer_dir),
                                  "--out", str(out)],
              "standin": ["standin", "--like", "Qwen/Qwen2.5-1.5B", "--rows", str(path), "--out", str(out)]}

    def refused(stage: str) -> str:
        assert main(stages[stage]) == 2
        assert not out.exists()
        return capsys.readouterr().err.splitlines()[-1]

    rows.drop("solution").write_parquet(path)
    for stage in stages:
        assert refused(stage) == (f"advdistill {stage}: error: {path}: no column(s) solution (found: id, split, "
                                  "question, answer, kind, choices)")
    rows.with_columns(question=pl.lit(7)).write_parquet(path)
    for stage in stages:
        assert refused(stage) == (f"advdistill {stage}: error: {path}: column 'question' has type Int32, expected "
                                  "String")
    for empty in (rows.clear(), rows.with_columns(solution=pl.lit(" ")),
                  rows.with_columns(solution=pl.lit(None, dtype=pl.String))):
        empty.write_parquet(path)
        assert refused("bootstrap-tokenizer") == (f"advdistill bootstrap-tokenizer: error: {path}: no row with a "
                                                  "reference solution to train the tokenizer on")
        assert refused("bootstrap-model") == (f"advdistill bootstrap-model: error: {path}: no row with a reference "
                                              "solution to pretrain on")
    rows.clear().write_parquet(path)
    assert refused("standin") == f"advdistill standin: error: {path}: no row to train the tokenizer on"


def test_standin_refuses_a_negative_number_of_pretraining_rows(tmp_path, rows_file, capsys):
    """A negative count would slice from the end: -15 of 64 rows pretrained on 49."""
    with pytest.raises(SystemExit) as raised:
        main(["standin", "--like", "Qwen/Qwen2.5-1.5B", "--rows", str(rows_file), "--pretrain-rows", "-15",
              "--out", str(tmp_path / "m")])
    assert raised.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("advdistill standin: error: argument --pretrain-rows: "
                                                        "expected 0 or more, got -15")
    assert not (tmp_path / "m").exists()
