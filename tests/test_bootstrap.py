"""Bootstrapped models: a run that also keeps its earlier weights as snapshots (a ``source: snapshot`` student)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from advdistill.bootstrap import run_bootstrap_model, train_tokenizer
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
