"""FSDP checkpoints, rehearsed on CPU (two processes over gloo): saved in the ``save_pretrained`` layout alone, and a
run resumed from one ends with the weights of a run never interrupted (model, optimizer, scheduler, data order)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.helpers import REPO
from tests.test_train_scaling import training_items


def fsdp_run(model_dir: Path, groups: Path, checkpoints: Path, out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """:mod:`tests.workers.fsdp_checkpoint_resume` on two processes: its metrics and its trained state."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.workers.fsdp_checkpoint_resume", str(model_dir), str(groups), str(checkpoints), str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    return json.loads(out.with_suffix(".json").read_text()), torch.load(out)


@pytest.mark.slow
def test_an_fsdp_run_resumes_from_its_save_pretrained_checkpoint(tiny_model_dir, synthetic_rows, tmp_path):
    """4 steps of 2 groups (one per process), checkpoints at steps 2 and 4; the resumed run restarts at step 2
    of a copy of the first run's checkpoint-2, as after a kill between steps 2 and 4."""
    _, groups = training_items(tiny_model_dir, synthetic_rows[0], "advdistill", prompts=8)
    torch.save(groups, tmp_path / "groups.pt")
    whole, whole_state = fsdp_run(tiny_model_dir, tmp_path / "groups.pt", tmp_path / "whole", tmp_path / "whole.pt")
    assert whole["fsdp"] and whole["global_step"] == 4 and whole["resumed_from"] is None

    for step in (2, 4):  # one layout: what from_pretrained reads, no second copy in FSDP's own
        folder = tmp_path / "whole" / f"checkpoint-{step}"
        assert not list(folder.glob("pytorch_model_fsdp*")), sorted(p.name for p in folder.iterdir())
        assert {"model.safetensors", "optimizer.bin", "scheduler.pt", "trainer_state.json"} <= {
            p.name for p in folder.iterdir()}
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "checkpoint-4", dtype=torch.float32)
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(tensor, whole_state[name], rtol=0, atol=0, msg=name)

    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed, resumed_state = fsdp_run(tiny_model_dir, tmp_path / "groups.pt", tmp_path / "resumed",
                                      tmp_path / "resumed.pt")
    assert resumed["resumed_from"] == str(tmp_path / "resumed" / "checkpoint-2") and resumed["global_step"] == 4
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-6)  # steps 1-2 come from the checkpoint
    start = load_file(tiny_model_dir / "model.safetensors")
    for name, weight in whole_state.items():
        if name in start:
            assert not torch.equal(weight, start[name]), f"{name} did not train"
        torch.testing.assert_close(resumed_state[name], weight, rtol=1e-6, atol=1e-8, msg=name)
