"""The CPU allocator setting of an ``ahn`` process (modeling_ahn/cli/allocator.py): the memory's chunk kernel reuses
freed blocks instead of faulting fresh pages in on every call; left alone where the user chose otherwise."""

from __future__ import annotations

import ast
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_ahn.cli.allocator import OPT_OUT

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Page faults of four calls of a GDN memory over 2,048 tokens at SmolLM2's width (in the dtype given), in a fresh
# process started the way `ahn` starts (tune_cpu_allocator first), and what the process reports.
CODE = """
import resource, sys, torch
from modeling_ahn.cli.allocator import allocator_info, tune_cpu_allocator
from modeling_ahn.memory_ahn import build_memory
tune_cpu_allocator()
torch.manual_seed(0)
fn = build_memory("gdn", 576, 9, 64)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
out = {}
with torch.inference_mode():
    for dt in (getattr(torch, sys.argv[1]),):
        q = torch.randn(1, 9, 2048, 64, dtype=dt)
        k, v = torch.randn(1, 3, 2048, 64, dtype=dt), torch.randn(1, 3, 2048, 64, dtype=dt)
        x, valid = torch.randn(1, 2048, 576, dtype=dt), torch.ones(1, 2048, dtype=torch.bool)
        gates, calls = fn.write_gates(x), []
        for _ in range(4):
            f0 = faults()
            fn(q, k, v, gates, valid, x)
            calls.append(faults() - f0)
        out[str(dt)] = calls
print(repr((out, allocator_info())))
"""


def _environment(**env):
    """This process's environment without any allocator choice of the user's, plus ``env``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != OPT_OUT} | env


def _run(dtype="float32", **env):
    proc = subprocess.run([sys.executable, "-c", CODE, dtype], capture_output=True, text=True, cwd=ROOT,
                          env=_environment(**env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tuned_allocator_spares_the_kernel_its_page_faults_and_respects_the_users_choice(dtype):
    tuned, info = _run(dtype)
    assert info["tuned"] and "mmap_threshold" in info["why"]
    default, off = _run(dtype, **{OPT_OUT: "default"})
    assert not off["tuned"] and OPT_OUT in off["why"]
    for name, calls in tuned.items():
        # the first call faults its intermediates in; from the third on they are reused, but for a block or two (at
        # most 6 % of the first call's faults per call here; glibc's defaults: 25-50 % again on every call, measured
        # 2026-12-08 on Debian's glibc 2.36)
        assert sum(calls[2:]) <= 0.2 * calls[0], (name, calls, default[name])
        assert sum(calls[2:]) < sum(default[name][2:]), (name, calls, default[name])
    _, env_chosen = _run(dtype, MALLOC_TRIM_THRESHOLD_="131072")
    assert not env_chosen["tuned"] and "MALLOC_TRIM_THRESHOLD_" in env_chosen["why"]


def test_ahn_commands_tune_it_and_bench_records_it():
    code = ("from modeling_ahn.cli.main import main\nfrom modeling_ahn.benchmarking.bench import machine_info\n"
            "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(repr(machine_info('cpu')['allocator']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_environment(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ast.literal_eval(proc.stdout.strip().splitlines()[-1])["tuned"] == GLIBC, proc.stdout
