"""Memory per process of `ahn distill` over two CPU processes: DDP (a whole base per process) against FSDP2 (the
base sharded, ``training/sharding.py``), both objectives, on the fetched SmolLM2-135M-Instruct.

Each arm is one ``accelerate launch`` of ``ahn distill`` with the shipped example config (``ddp_cpu.yaml`` or
``fsdp2_cpu.yaml``) for ``--steps`` steps of one ``--length``-token sequence per process; recorded: the training
log's ``mem_mib`` (the largest resident set over the processes at the end of each step; the last step's is kept),
the step time, and the share of the base each process holds (the run's FSDP2 line). Needs ``ahn fetch-default``::

    python benchmarks/sharded_memory.py --json benchmarks/results/sharded_memory_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arm(config: str, objective: str, length: int, steps: int, base: str, data: str, work: Path, port: int) -> dict:
    out = work / f"{Path(config).stem}-{objective}"
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    ahn = shutil.which("ahn") or str(Path(sys.executable).parent / "ahn")
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "examples" / "accelerate" / config),
           "--main_process_port", str(port), ahn, "distill", "--cpu", "--base", base, "--data", data, "--out",
           str(out), "--max-length", str(length), "--min-length", str(length), "--max-steps", str(steps),
           "--windows", str(length // 4), "--sinks", "32", "--objective", objective, "--eval-sequences", "1",
           "--eval-every", "100000", "--save-every", "100000", "--split-documents", "--no-progress", "--overwrite"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"{config} {objective} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]
    share = re.search(r"parameters on this process \((\d+)%\)", proc.stdout)
    return {"config": config, "objective": objective, "length": length, "steps": steps,
            "mem_mib_last_step": rows[-1]["mem_mib"], "mem_mib_per_step": [r["mem_mib"] for r in rows],
            "step_s_median": sorted(r["step_s"] for r in rows)[len(rows) // 2],
            "base_share_per_process": int(share.group(1)) / 100 if share else 1.0}


def main(argv=None) -> int:
    from modeling_ahn.default.corpora import split_dir
    from modeling_ahn.default.model import default_base_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    base, data = str(default_base_dir()), str(split_dir("train") / "kjv")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (config, objective) in enumerate((c, o) for o in ("layer-local", "end-to-end")
                                                for c in ("ddp_cpu.yaml", "fsdp2_cpu.yaml")):
            rows.append(arm(config, objective, args.length, args.steps, base, data, Path(tmp), 29700 + i))
            r = rows[-1]
            print(f"{config:15s} {objective:12s} mem {r['mem_mib_last_step']:8.1f} MiB/process  base share "
                  f"{r['base_share_per_process']:.0%}  step {r['step_s_median']:.1f} s", flush=True)
    from modeling_ahn.benchmarking.bench import machine_info

    result = {"machine": machine_info("cpu"), "processes": 2,
              "threads_per_process": 1, "model": "SmolLM2-135M-Instruct (float32)", "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
