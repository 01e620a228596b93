# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Sharded self-distillation: the frozen base split over processes with torch's FSDP2, the AHN kept whole.

``accelerate launch`` with an FSDP config whose ``fsdp_version`` is 2 makes ``ahn distill`` shard the base itself,
with ``torch.distributed.fsdp.fully_shard``: one unit per decoder layer, one per attention output projection (the
layer-local objective calls it outside its layer's forward), one each for untied input embeddings and LM head, and
the root (final norm; tied embeddings). The AHN parameters (well under 1% of a base) are left out of every unit
(``ignored_params``): each process keeps them whole, the step averages their gradients with one all-reduce, and the
optimiser, checkpoints and exported adapter are exactly those of a single-process run — nothing to gather, nothing
to convert, resume on any number of processes. Accelerate does the launching, the process group, autocast and
reductions; it does not wrap the model (its FSDP path needs an accelerator device, so it could not be tested on
CPUs, and it would shard the AHN too).

Configs that would not do what they say are refused with the reason (:func:`sharding_request`): FSDP1 (its
flattened units mix the frozen base with the trained AHN), DeepSpeed on a CPU (accelerate then runs plain DDP
without a word), and CPU-RAM-efficient loading (the base is loaded on every process, then sharded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

FSDP2_EXAMPLE = "examples/accelerate/fsdp2_cpu.yaml or fsdp2_gpus.yaml"


def _env_flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ShardingPlan:
    """FSDP2 settings read from ``accelerate launch``'s environment."""

    reshard_after_forward: bool = True
    offload_params: bool = False


def sharding_request(on_cpu: bool) -> ShardingPlan | None:
    """The FSDP2 plan ``accelerate launch`` asked for (``None``: no sharding: one process or DDP); raises
    ``ValueError`` with the reason for a launch config ``ahn distill`` cannot honour."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and on_cpu:
        raise ValueError(
            "a DeepSpeed accelerate config on a CPU: accelerate turns DeepSpeed off when it runs on the CPU, so this "
            "run would silently be plain DDP; shard the base with FSDP2 instead (" + FSDP2_EXAMPLE + "; "
            "docs/training.md, 'Sharded training')")
    if not _env_flag("ACCELERATE_USE_FSDP"):
        return None
    version = os.environ.get("FSDP_VERSION", "1").strip()
    if version != "2":
        why = ("without fsdp_use_orig_params: true it flattens each wrapped decoder layer into one parameter with one "
               "requires_grad, which cannot hold the frozen base and the trained AHN together"
               if not _env_flag("FSDP_USE_ORIG_PARAMS") else "ahn distill shards with FSDP2 only")
        raise ValueError(f"FSDP version {version} is not supported: {why}. Use fsdp_version: 2 ({FSDP2_EXAMPLE}).")
    if _env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        raise ValueError("fsdp_cpu_ram_efficient_loading: true is not supported: ahn distill loads the base on every "
                         "process and then shards it (set it to false)")
    offload = _env_flag("FSDP_OFFLOAD_PARAMS")
    if offload and on_cpu:
        raise ValueError("fsdp_offload_params: true offloads to the CPU from an accelerator; this run is on the CPU "
                         "already (set it to false)")
    return ShardingPlan(reshard_after_forward=_env_flag("FSDP_RESHARD_AFTER_FORWARD", "true"), offload_params=offload)


def shard_student(student: nn.Module, model, plan: ShardingPlan, device: torch.device) -> None:
    """Apply FSDP2 in place to the units of the module docstring of ``model`` (the student's
    :class:`AhnForCausalLM`), then to ``student`` as the root; the AHN parameters stay whole and are moved to
    ``device``. ``student``'s ``evaluate`` becomes an FSDP forward method (it reads the sharded base too)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method

    for module in model.ahn_modules().values():
        module.to(device)
    kept = set(model.ahn_parameters())
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    offload = CPUOffloadPolicy() if plan.offload_params else OffloadPolicy()
    kw = dict(mesh=mesh, offload_policy=offload, ignored_params=kept)
    units = [m for layer in model.model.layers for m in (layer.self_attn.o_proj, layer)]
    if model.lm_head.weight is not model.model.embed_tokens.weight:  # untied: each its own unit, not held whole by
        units = [model.model.embed_tokens, *units, model.lm_head]     # the root through the step (tied: the root's)
    for unit in units:
        fully_shard(unit, reshard_after_forward=plan.reshard_after_forward, **kw)
    fully_shard(student, **kw)
    register_fsdp_forward_method(student, "evaluate")


def describe_sharding(model) -> str:
    """One line: how much of the base this process holds, and the AHN held whole."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    kept = {id(p) for p in model.ahn_parameters()}
    base = [p for p in model.parameters() if id(p) not in kept]
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in base)
    total = sum(p.numel() for p in base)
    return (f"FSDP2 over {dist.get_world_size()} processes: {local:,} of the base's {total:,} parameters on this "
            f"process ({local / max(1, total):.0%}); the AHN's {sum(p.numel() for p in model.ahn_parameters()):,} "
            "whole on each")


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of the whole (unsharded) AHN parameters over processes: one all-reduce of one flat
    buffer. A parameter without a gradient counts as zero on that process."""
    import torch.distributed as dist

    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


__all__ = ["ShardingPlan", "average_gradients", "describe_sharding", "shard_student", "sharding_request"]
