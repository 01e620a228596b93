"""Sharded self-distillation (FSDP2 over two CPU processes, gloo) against one process, and the refused configs."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from modeling_ahn import AhnPeftConfig  # noqa: F401  (registers the AHN PEFT method)
from modeling_ahn.training.distill import distill
from modeling_ahn.training.sharding import ShardingPlan, sharding_request

from .test_distill import (  # noqa: F401  (corpus: a fixture)
    EXAMPLES,
    corpus,
    distill_cfg,
    launch_distill,
    same_adapter,
    train_log,
)


def _losses(out, key="loss"):
    return [r[key] for r in train_log(out) if "loss" in r]


def test_fsdp2_killed_and_resumed_equals_one_process(corpus, tmp_path):  # noqa: F811
    """2 FSDP2 processes x 1 sequence, killed after its first checkpoint and resumed = 1 process x 2 accumulated
    sequences, uninterrupted: the per-step losses (1e-5 relative) and the adapter (1e-5 absolute); the adapter loads
    by remote code and as a PEFT adapter."""
    kw = dict(windows=None, sinks=None, max_steps=24, save_every=4, eval_every=12, lr=3e-3)
    single = distill(distill_cfg(corpus, tmp_path / "single", grad_accum=2, **kw), progress=False)
    args = ["--max-steps", "24", "--save-every", "4", "--eval-every", "12", "--lr", "3e-3"]
    out, config = tmp_path / "fsdp", EXAMPLES / "fsdp2_cpu.yaml"
    proc = launch_distill(corpus, out, config, *args, popen=True)
    first, deadline = out / "checkpoints" / "step-0000004", time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {proc.stderr.read()[-2000:]}"
    assert not (out / "adapter").exists()
    resumed = launch_distill(corpus, out, config, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "FSDP2 over 2 processes" in resumed.stdout and "parameters on this process (50%)" in resumed.stdout
    assert [r["step"] for r in train_log(out) if "loss" in r] == list(range(1, 25))
    assert _losses(out) == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    assert _losses(out, "grad_norm") == pytest.approx(_losses(tmp_path / "single", "grad_norm"), rel=1e-5)
    evals = lambda d: [r["eval"]["kl_ahn"] for r in train_log(d) if "eval" in r]  # noqa: E731
    assert evals(out) == pytest.approx(evals(tmp_path / "single"), rel=1e-5)  # evaluation through the sharded base
    assert same_adapter(single, out / "adapter", tol=1e-5)
    ids = torch.tensor([[5, 9, 13, 40, 41, 42, 77, 3] * 6])
    with torch.no_grad():
        remote = AutoModelForCausalLM.from_pretrained(out / "adapter", trust_remote_code=True)
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus / "base"), out / "adapter",
                                         subfolder="peft")
        assert (remote(ids, use_cache=False).logits - peft(ids).logits).abs().max() < 1e-5


def test_fsdp2_layer_local_with_content_equals_one_process(corpus, tmp_path):  # noqa: F811
    """The layer-local objective (its per-layer o_proj read outside the layer's forward) and the content loss,
    sharded over 2 processes = 1 process with 2 accumulated sequences."""
    kw = dict(windows=[16, 32], sinks=[0, 4], max_steps=6, save_every=100, eval_every=1000, lr=3e-3,
              objective="layer-local", content_weight=0.5)
    single = distill(distill_cfg(corpus, tmp_path / "single", grad_accum=2, **kw), progress=False)
    proc = launch_distill(corpus, tmp_path / "fsdp", EXAMPLES / "fsdp2_cpu.yaml", "--windows", "16,32", "--sinks",
                          "0,4", "--max-steps", "6", "--save-every", "100", "--eval-every", "1000", "--lr", "3e-3",
                          "--objective", "layer-local", "--content-weight", "0.5", port="29637")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    assert _losses(tmp_path / "fsdp", "content") == pytest.approx(_losses(tmp_path / "single", "content"), rel=1e-5)
    assert same_adapter(single, tmp_path / "fsdp" / "adapter", tol=1e-5)


def test_an_fsdp1_launch_is_refused_with_the_reason(corpus, tmp_path):  # noqa: F811
    config = tmp_path / "fsdp1.yaml"
    config.write_text((EXAMPLES / "fsdp2_cpu.yaml").read_text().replace(
        "fsdp_version: 2", "fsdp_version: 1\n  fsdp_use_orig_params: false"))  # the example
    proc = launch_distill(corpus, tmp_path / "run", config, "--max-steps", "2", port="29647")
    assert proc.returncode != 0
    assert "FSDP version 1 is not supported" in proc.stderr and "use_orig_params" in proc.stderr
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


@pytest.mark.parametrize("env, on_cpu, match", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, False, "one requires_grad"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "true"}, False, "FSDP2 only"),
    ({**FSDP2, "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, False, "loads the base on every process"),
    ({**FSDP2, "FSDP_OFFLOAD_PARAMS": "true"}, True, "on the CPU already"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, True, "silently be plain DDP"),
])
def test_configs_that_would_not_do_what_they_say_are_refused(monkeypatch, env, on_cpu, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        sharding_request(on_cpu)


def test_the_sharding_plan_follows_the_launch_environment(monkeypatch):
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION"):
        monkeypatch.delenv(k, raising=False)
    assert sharding_request(on_cpu=True) is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert sharding_request(on_cpu=False) is None  # DeepSpeed on an accelerator: accelerate's own path
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    for k, v in FSDP2.items():
        monkeypatch.setenv(k, v)
    assert sharding_request(on_cpu=True) == ShardingPlan(reshard_after_forward=True, offload_params=False)
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    assert sharding_request(on_cpu=False) == ShardingPlan(reshard_after_forward=False, offload_params=True)


@pytest.mark.parametrize("config, port", [("fsdp2_cpu.yaml", "29657"), ("ddp_cpu.yaml", "29667")])
def test_sequence_split_over_two_processes_equals_one_process(corpus, tmp_path, config, port):  # noqa: F811
    """The layer-local step read in chunks (its per-layer gradients taken inside the layers' forward, against
    gathered o_proj weights, and handed to DDP / the FSDP2 all-reduce by a gradient carrier) over 2 processes = 1
    process with 2 accumulated sequences."""
    kw = dict(max_steps=4, save_every=100, eval_every=1000, lr=3e-3, objective="layer-local", sequence_chunk=24)
    cfg = distill_cfg(corpus, tmp_path / "single", grad_accum=2, windows=None, sinks=None, **kw)
    single = distill(cfg, progress=False)
    proc = launch_distill(corpus, tmp_path / "fsdp", EXAMPLES / config, "--max-steps", "4", "--save-every", "100",
                          "--eval-every", "1000", "--lr", "3e-3", "--objective", "layer-local", "--sequence-chunk",
                          "24", port=port)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    assert same_adapter(single, tmp_path / "fsdp" / "adapter", tol=1e-5)
