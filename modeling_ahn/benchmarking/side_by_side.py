# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn bench --side-by-side``: every point of the grid in one process, interleaved.

The grid's default runs each point in a process of its own, one after another, so a ratio of two points carries
the machine's drift between them (on the project's 2-core VM the base's own 1k decoding step varied 85-111 ms
between runs). Here all points are loaded at once; their prefills advance a chunk at a time, round-robin, and then
their greedy decoding steps do, one step per point per round with the order rotated each round. A point's
decoding latency is the median of its steps; the long-context overhead (a point's per-token cost over the
reference's, the base at 1k) comes with a bootstrap 95 % interval over the rounds for decoding (the rounds pair
the points' steps in time). Prefill: a point that completes its prefill while a longer one runs prefills again,
so every point's per-token cost averages chunks spread over the same time; its ratio to the reference's comes with a
bootstrap interval over the rounds too.
Peak memory is not measured (one process holds every point); cache bytes are. Not part of the remote-code payload.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from . import bench
from .bench import COMPILE_WARMUP, REFERENCE, Point, long_context_overhead, machine_info, plot

BOOTSTRAP = 1000


def _rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def decode_interval(steps: list[float], ref_steps: list[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of ``median(steps) / median(ref_steps)``, resampling the rounds (step ``i`` of
    both ran in round ``i``) with replacement."""
    rng = random.Random(seed)
    n = min(len(steps), len(ref_steps))
    ratios = []
    for _ in range(BOOTSTRAP):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(steps[i] for i in idx) / statistics.median(ref_steps[i] for i in idx))
    ratios.sort()
    return ratios[int(0.025 * BOOTSTRAP)], ratios[int(0.975 * BOOTSTRAP) - 1]


def _per_token(log) -> float:
    """Seconds per prompt token over a ``chunk_log`` (every chunk of every pass)."""
    return sum(s for _, s, _ in log) / sum(n for _, _, n in log)


def prefill_interval(log: list, ref_log: list, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of a point's per-token prefill cost over the reference's, resampling the rounds
    (a round holds one chunk of each point still prefilling; ``log``: ``chunk_log``'s ``(round, seconds, tokens)``)."""
    rng = random.Random(seed)
    by_round, ref_by_round = {}, {}
    for table, entries in ((by_round, log), (ref_by_round, ref_log)):
        for r, s, n in entries:
            table.setdefault(r, []).append((r, s, n))
    rounds = sorted(set(by_round) | set(ref_by_round))
    ratios = []
    for _ in range(BOOTSTRAP):
        idx = [rounds[rng.randrange(len(rounds))] for _ in rounds]
        mine = [e for i in idx for e in by_round.get(i, [])]
        ref = [e for i in idx for e in ref_by_round.get(i, [])]
        if mine and ref:
            ratios.append(_per_token(mine) / _per_token(ref))
    ratios.sort()
    return ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


def interleaved_prefill(points: list, progress: bool = True) -> None:
    """Every point's prefill a chunk at a time, round-robin (order rotated per round); a point that completes its
    prefill while another has not yet completed one starts again from a new cache, so every point's chunks are spread
    over the same stretch of time (the reference at 1k is one chunk: timed once, it was one sample of the machine's
    drift). Ends with every point prefilled once more; ``chunk_log`` holds every chunk with its round."""
    from tqdm.auto import tqdm

    rounds = max(-(-p.length // p.chunk) for p in points)
    with tqdm(total=rounds, desc="prefill (interleaved)", unit="round", disable=not progress) as bar:
        k = 0
        while any(p.passes == 0 or not p.prefilled for p in points):
            waiting = any(p.passes == 0 for p in points)
            for p in _rotated(points, k):
                if p.prefilled and waiting:
                    p.restart_prefill()
                if not p.prefilled:
                    p.prefill_chunk(k)
            k += 1
            bar.update()


def parse_points(text: str) -> list[tuple[str, int]]:
    """``"full@1k,ahn_gdn@16k"`` -> ``[("full", 1024), ("ahn_gdn", 16384)]``."""
    from .bench import parse_length

    points = []
    for item in text.split(","):
        method, at, length = item.strip().partition("@")
        if not at or not method or not length:
            raise ValueError(f"--points takes method@length items (e.g. full@1k,ahn_gdn@16k), got {item!r}")
        points.append((method, parse_length(length)))
    return points


def run(base: str, lengths: list[int], methods: list[str], window: int, sinks: int, chunk: int, decode: int,
        dtype: str, device: str, out: str | Path, max_full: int | None = None, progress: bool = True,
        compile_backend: str = "inductor", reference_length: int = REFERENCE[1],
        points: list[tuple[str, int]] | None = None) -> dict:
    """The grid of ``bench.run`` (or the given ``(method, length)`` ``points``) measured side by side (see the
    module's docstring); writes ``out`` (JSON) and its plot. ``decode`` must be >= 2 (the interval needs rounds)."""
    from tqdm.auto import tqdm

    from .devices import dtype_name, resolve_dtype

    grid = points or bench.grid(lengths, methods, max_full)
    bench.check_methods([m for m, _ in grid])
    if decode < 2:
        raise ValueError(f"--side-by-side needs --decode >= 2 (its interval resamples the decoding rounds), got "
                         f"{decode}")
    dtype = dtype_name(resolve_dtype(dtype, device))
    reference = (REFERENCE[0], reference_length)
    if reference not in grid:
        raise ValueError(f"the long-context overhead needs its reference point {reference[0]}@{reference[1]} among "
                         f"the points (see --overhead-reference)")
    points = [Point(m, base, L, window, sinks, chunk, decode, dtype, device, compile_backend)
              for m, L in tqdm(grid, desc="load", disable=not progress)]
    interleaved_prefill(points, progress)
    for p in tqdm(points, desc=f"warm-up ({COMPILE_WARMUP} steps, static methods)", disable=not progress):
        p.warm_up()
    for r in tqdm(range(decode), desc="decode (interleaved)", unit="round", disable=not progress):
        for p in _rotated(points, r):
            p.step()
    rows = [dict(p.row(None), prefill_s=p.length * _per_token(p.chunk_log)) for p in points]
    overhead = long_context_overhead(rows, reference)
    ref = next((p for p in points if (p.method, p.length) == reference), None)
    for p, r in zip(points, rows):
        x = overhead["points"].get((r["method"], r["length"]))
        if x is not None:
            r["prefill_overhead"], r["decode_overhead"] = x["prefill"], x["decode"]
            r["decode_overhead_ci95"] = list(decode_interval(p.latencies, ref.latencies))
            r["prefill_overhead_ci95"] = list(prefill_interval(p.chunk_log, ref.chunk_log))
        r["decode_steps_ms"] = [1000 * t for t in p.latencies]
        r["prefill_passes"], r["prefill_chunks"] = p.passes, len(p.chunk_log)
    settings = dict(bench.run_settings(base, window, sinks, chunk, decode, dtype, compile_backend, device),
                    side_by_side=True)
    result = dict(machine=machine_info(device), settings=settings, overhead_reference=overhead["reference"],
                  rows=rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    return result


def _with_interval(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    lo, hi = row[key + "_ci95"]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def table(result: dict) -> str:
    head = (f"{'method':<22} {'length':>8} {'prefill s':>10} {'tok/s':>9} {'decode ms':>10} {'cache MiB':>10} "
            f"{'overhead prefill [95% CI]':>26} {'overhead decode [95% CI]':>26}")
    lines = [head]
    for r in result["rows"]:
        cell_p, cell_d = (_with_interval(r, "prefill_overhead"), _with_interval(r, "decode_overhead"))
        lines.append(f"{r['method']:<22} {r['length']:>8} {r['prefill_s']:>10.2f} {r['prefill_tok_s']:>9.0f} "
                     f"{r['decode_ms']:>10.1f} {r['cache_bytes'] / 2**20:>10.2f} {cell_p:>26} {cell_d:>26}")
    return "\n".join(lines)
