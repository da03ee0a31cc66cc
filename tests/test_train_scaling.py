"""Training at paper scale, rehearsed on CPU: precision of bf16 checkpoints, data-parallel processes
(gloo stands in for NCCL), FSDP and gradient checkpointing give the updates of a plain fp32 run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from advdistill.config import LossConfig, OptimConfig, PromptConfig, TrainingConfig
from advdistill.errors import ConfigError
from advdistill.planning import accelerate_launch_args
from advdistill.train import run_train
from advdistill.training.collators import GroupCollator, PairCollator
from advdistill.training.groups import best_pairs, build_groups
from advdistill.training.student import StudentWithLoss, load_student
from advdistill.training.trainer import SingleDeviceArguments, train_model, training_arguments
from tests.helpers import REPO, save_untrained_model

PAPER_LR = 5e-6


def scored_groups(train_rows, prompts: int, responses: int = 3) -> pl.DataFrame:
    """Kept groups with one correct response each (the first) and varied wrong ones."""
    rows = []
    for pid, answer in zip(train_rows["id"][:prompts], train_rows["answer"][:prompts]):
        for idx in range(responses):
            good = idx == 0
            rows.append({"prompt_id": pid, "sample_idx": idx, "kept": True, "correct": good,
                         "advantage": 1.0 if good else -0.5 * idx,
                         "response": f"<think>{'step ' * (idx + 1)}</think>\n"
                                     f"<answer>\\boxed{{{answer if good else idx}}}</answer>"})
    return pl.DataFrame(rows)


def write_scored_groups(folder: Path, train_rows, prompts: int) -> Path:
    """:func:`scored_groups` as the scored parquet that ``advdistill train`` reads."""
    path = folder / "scored.parquet"
    scored_groups(train_rows, prompts).write_parquet(path)
    return path


def training_items(model_dir: Path, train_rows, objective: str, prompts: int = 4):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scored = scored_groups(train_rows, prompts)
    groups, _ = build_groups({pid: f"question {pid}" for pid in scored["prompt_id"]}, scored, tokenizer, 96)
    return tokenizer, (best_pairs(groups) if objective == "sft" else groups)


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory, synthetic_rows) -> Path:
    """A tiny Qwen2 saved the way hub checkpoints are: bf16 safetensors, ``dtype`` bfloat16 in its config."""
    path = save_untrained_model(tmp_path_factory.mktemp("bf16") / "model", synthetic_rows[0], hidden_size=64)
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(torch.bfloat16).save_pretrained(path)
    assert all(t.dtype == torch.bfloat16 for t in load_file(path / "model.safetensors").values())
    return path


def weight_change(model, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: p.detach().double() - start[name].double() for name, p in model.named_parameters()}


def test_bf16_checkpoint_trains_like_fp32(bf16_checkpoint, synthetic_rows, tmp_path):
    """At the paper's lr, a bf16 checkpoint must move as far as the same weights trained in fp32.

    Loading it as saved (bf16 weights and AdamW state) moved 6 % of the weights for 40 steps; the
    update of each step (~lr) is below half a bf16 ulp of most weights and rounds away.
    """
    optim = OptimConfig(learning_rate=PAPER_LR, max_steps=6, per_device_batch_size=2, gradient_accumulation_steps=1,
                        warmup_ratio=0.0, lr_scheduler="constant", max_seq_length=96, logging_steps=1)
    tokenizer, items = training_items(bf16_checkpoint, synthetic_rows[0], "sft")

    def trained(precision: str):
        model, saved_dtype = load_student(str(bf16_checkpoint), precision)
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        train_model(model, tokenizer, "sft", items, TrainingConfig(optim=optim, precision=precision),
                    tmp_path / precision, seed=0, save_checkpoints=False)
        return model, weight_change(model, start), saved_dtype

    reference, reference_change, saved_dtype = trained("fp32")
    assert saved_dtype == torch.bfloat16 and reference.dtype == torch.float32
    _, change, _ = trained("bf16-mixed")
    for name, expected in reference_change.items():
        moved = (change[name] != 0).double().mean().item()
        assert moved > 0.99, f"only {moved:.1%} of {name} changed"
        ratio = change[name].norm() / expected.norm()
        assert 0.8 < ratio < 1.25, f"{name} moved {ratio:.2f}x as far as in fp32"


def test_saved_student_keeps_the_checkpoint_dtype(bf16_checkpoint, synthetic_rows, rows_file, tmp_path):
    scored = write_scored_groups(tmp_path, synthetic_rows[0], prompts=2)
    optim = OptimConfig(learning_rate=1e-3, max_steps=1, warmup_ratio=0.0, per_device_batch_size=2, max_seq_length=512)
    metrics = run_train(str(bf16_checkpoint), rows_file, scored, "sft", TrainingConfig(optim=optim, precision="fp32"),
                        PromptConfig(), 0, tmp_path / "out", tmp_path / "ck")
    assert metrics["precision"] == "fp32"
    assert AutoConfig.from_pretrained(tmp_path / "out").dtype == torch.bfloat16
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert saved and all(t.dtype == torch.bfloat16 for t in saved.values())
    base = load_file(bf16_checkpoint / "model.safetensors")
    assert any(not torch.equal(base[name], tensor) for name, tensor in saved.items())


def test_several_visible_gpus_never_mean_data_parallel(tmp_path):
    args = SingleDeviceArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    args._n_gpu = 4
    assert args.n_gpu == 1 and args.train_batch_size == args.per_device_train_batch_size


def loss_batch(tokenizer, items, objective: str) -> dict:
    """One micro-batch as the trainer feeds it to :class:`StudentWithLoss` (two pairs, or two groups)."""
    if objective == "sft":
        return PairCollator(tokenizer.pad_token_id)(items[:2])
    batch = GroupCollator(tokenizer.pad_token_id)(items[:2])
    batch.pop("group_ids")
    return batch


def gradients(model_dir: Path, train_rows, objective: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    tokenizer, items = training_items(model_dir, train_rows, objective, prompts=2)
    StudentWithLoss(model, objective, TrainingConfig().loss)(**loss_batch(tokenizer, items, objective)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("objective", ["sft", "advdistill"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, synthetic_rows, objective):
    plain = gradients(tiny_model_dir, synthetic_rows[0], objective, checkpointing=False)
    recomputed = gradients(tiny_model_dir, synthetic_rows[0], objective, checkpointing=True)
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def launch_train(processes: int, model: Path, rows: Path, scored: Path, objective: str, cfg: dict, out: Path,
                 timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The train rule's command (workflow/rules/common.smk, training_launcher) for ``processes``, run from the
    repository."""
    launcher = [sys.executable, "-m", "advdistill.cli"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", *accelerate_launch_args(processes), "-m", "advdistill.cli"]
    command = [*launcher, "train", "--model", str(model), "--rows", str(rows), "--scored", str(scored),
               "--objective", objective, "--settings", json.dumps(cfg), "--seed", "3", "--out", str(out)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_training(processes: int, model: Path, rows: Path, scored: Path, objective: str, optim: dict,
                 out: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    cfg = {"optim": optim, "validation_fraction": 0.0, "processes": processes}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = launch_train(processes, model, rows, scored, objective, cfg, out, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["processes"] == processes and not metrics["fsdp"]
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    return losses, load_file(out / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "advdistill"])
def test_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, synthetic_rows, rows_file, objective,
                                                             tmp_path):
    """DDP over gloo: 2 processes x half the micro-batches give the 1-process run's losses and weights, with 4
    prompts per optimiser step (responses for SFT, groups for AdvDistill) in micro-batches of 2 or of 1."""
    scored = write_scored_groups(tmp_path, synthetic_rows[0], prompts=8)
    base = {"learning_rate": 2e-3, "max_steps": 3, "warmup_ratio": 0.0, "max_seq_length": 512, "logging_steps": 1,
            "max_grad_norm": 0.5}
    single, double = {"per_device_batch_size": 2, "gradient_accumulation_steps": 2}, {
        "per_device_batch_size": 1, "gradient_accumulation_steps": 2}
    one = run_training(1, tiny_model_dir, rows_file, scored, objective, {**base, **single}, tmp_path / "one")
    two = run_training(2, tiny_model_dir, rows_file, scored, objective, {**base, **double}, tmp_path / "two")
    assert len(one[0]) == 3
    assert two[0] == pytest.approx(one[0], rel=1e-5)
    start = load_file(tiny_model_dir / "model.safetensors")
    for name, weight in one[1].items():
        assert not torch.equal(weight, start[name]), f"{name} did not train"
        torch.testing.assert_close(two[1][name], weight, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.failure_mode(
    "train launched with fewer or more processes than training.processes",
    sees="train stops naming training.processes and the launch command",
    kept="inputs; nothing trained")
def test_a_run_launched_with_other_processes_stops(tiny_model_dir, synthetic_rows, rows_file, tmp_path):
    scored = write_scored_groups(tmp_path, synthetic_rows[0], prompts=2)
    done = launch_train(1, tiny_model_dir, rows_file, scored, "sft", {"processes": 2}, tmp_path / "out")
    assert done.returncode == 2
    assert "training.processes is 2 but this run has 1 process" in done.stderr


@pytest.mark.failure_mode(
    "training.fsdp with one process",
    sees="config error naming training.fsdp and training.processes",
    kept="everything; no job starts")
def test_fsdp_shards_every_decoder_layer_with_full_state_saves(tmp_path):
    """accelerate enables FSDP only on GPUs, so on CPU its arguments are checked instead of a run."""
    cfg = TrainingConfig(processes=2, fsdp=True, precision="fp32")
    args = training_arguments(cfg, tmp_path, seed=0, has_eval=False, save_checkpoints=True,
                              layer_classes=["Qwen2DecoderLayer"])
    plugin = args.fsdp_plugin_args
    assert args.fsdp and plugin["fsdp_version"] == 2 and plugin["state_dict_type"] == "FULL_STATE_DICT"
    assert plugin["transformer_cls_names_to_wrap"] == "Qwen2DecoderLayer"
    assert plugin["reshard_after_forward"] is True
    with pytest.raises(ConfigError, match="training.fsdp shards"):
        TrainingConfig(fsdp=True)


@pytest.mark.slow
@pytest.mark.failure_mode(
    "training.fsdp where accelerate cannot shard (CPU)",
    sees="train stops: accelerate did not shard the model",
    kept="inputs; no model written")
def test_fsdp_without_sharding_stops_instead_of_running_ddp(tiny_model_dir, synthetic_rows, rows_file, tmp_path):
    scored = write_scored_groups(tmp_path, synthetic_rows[0], prompts=2)
    done = launch_train(2, tiny_model_dir, rows_file, scored, "advdistill", {"processes": 2, "fsdp": True},
                        tmp_path / "out")
    assert done.returncode != 0 and not (tmp_path / "out").exists()
    assert "training.fsdp is true but accelerate did not shard the model" in done.stderr


@pytest.mark.slow
def test_loss_inside_forward_sees_whole_weights_under_fsdp(tiny_model_dir, synthetic_rows, tmp_path):
    """Two FSDP2 processes, one group each, give the gradient of the mean loss over both groups."""
    _, groups = training_items(tiny_model_dir, synthetic_rows[0], "advdistill", prompts=2)
    torch.save(groups, tmp_path / "groups.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.workers.fsdp_student_gradients", str(tiny_model_dir), str(tmp_path / "groups.pt"),
               str(tmp_path / "grads.pt")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    sharded = torch.load(tmp_path / "grads.pt")

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    wrapper = StudentWithLoss(model, "advdistill", LossConfig(backend="torch"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    losses = [wrapper(**loss_batch(tokenizer, [group], "advdistill")) for group in groups]
    both = wrapper(**loss_batch(tokenizer, groups, "advdistill"))  # the two groups as one micro-batch
    assert both.item() == pytest.approx((sum(losses) / len(losses)).item(), rel=1e-6)
    (sum(losses) / len(losses)).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(sharded[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
