"""Run under ``torchrun``: the :class:`StudentWithLoss` gradients of one AdvDistill group per process, with
every decoder layer and the wrapper sharded by torch FSDP2 over gloo; rank 0 saves the full gradients.

accelerate turns FSDP on for GPUs only, so this drives torch's ``fully_shard`` directly to check what
matters for the design: the loss runs inside the root module's forward, where the LM-head weight is whole.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from advdistill.config import LossConfig
from advdistill.training.collators import GroupCollator
from advdistill.training.student import StudentWithLoss


def main(model_dir: str, groups_file: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    wrapper = StudentWithLoss(student, "advdistill", LossConfig(backend="torch"))
    mesh = init_device_mesh("cpu", (world,))
    for layer in student.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(wrapper, mesh=mesh)
    groups = torch.load(groups_file, weights_only=False)
    batch = GroupCollator(0)([groups[rank]])
    batch.pop("group_ids")
    wrapper(**batch).backward()
    grads = {name: p.grad.full_tensor() for name, p in wrapper.named_parameters()}
    if rank == 0:
        torch.save({name.removeprefix("student."): g for name, g in grads.items()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
