# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn bench``: prefill time, per-token decode latency, peak memory and cache bytes against context length for
full attention (SDPA), transformers' sliding-window cache, sinks+SWA and AHN (each memory type).

Every (length, method) point runs in a fresh worker process (so peak RSS / peak CUDA memory is that point's own),
and methods alternate within each length so that machine drift affects them alike. Prefill is chunked
(``--chunk`` tokens per forward, the same for every method); decode is greedy, ``--decode`` tokens, timed per
token after the prefill. Writes a JSON with machine info and a PNG (time and memory against length, log-log).
Not part of the remote-code payload.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from ..cli.allocator import allocator_info

METHODS = ("full", "swa_hf", "sinks_swa", "ahn_gdn", "ahn_dn", "ahn_mamba2", "full_static", "ahn_gdn_static",
           "ahn_gdn_slots64", "ahn_gdn_novelty64", "ahn_gdn_slots64_static")
# "ahn_gdn_slots64": AHN-GDN with 64 recall slots (a random retention classifier: the cost, not the choice);
# "ahn_gdn_novelty64": the same slots chosen by the training-free novelty score (its delta-rule memory's cost too)
# "*_static": a fixed-size cache (transformers' StaticCache / StaticAhnCache) and a torch.compile'd decoding step
# (CUDA graphs on GPU: mode="reduce-overhead"); the prefill runs eagerly. Compilation is timed apart (compile_s).
COMPILE_WARMUP = 3
REFERENCE = ("full", 1024)  # the long-context overhead's reference: the base, full attention, at a short context


def long_context_overhead(rows: list[dict], reference: tuple[str, int] = REFERENCE) -> dict:
    """Long-context overhead of every measured point: its per-token prefill time, and its decode latency, divided
    by the reference's (the base with full attention at 1k tokens, measured in the same run). 1.0 means a token
    at length L costs what the base pays at 1k. Returns ``{"reference": ..., "points": {(method, length):
    {"prefill": x, "decode": y}}}``; empty points when the run has no reference point (it is then not computed,
    rather than computed against another run's)."""
    ref = next((r for r in rows if (r["method"], r["length"]) == tuple(reference) and "error" not in r), None)
    points = {}
    if ref is not None:
        ref_prefill = ref["prefill_s"] / ref["length"]
        for r in rows:
            if "error" in r:
                continue
            points[(r["method"], r["length"])] = dict(
                prefill=(r["prefill_s"] / r["length"]) / ref_prefill,
                decode=r["decode_ms"] / ref["decode_ms"] if r.get("decode_ms") and ref.get("decode_ms") else None)
    return dict(reference=dict(method=reference[0], length=reference[1]) if ref is not None else None,
                points=points)


def parse_length(text: str) -> int:
    t = text.strip().lower()
    mult = 1024 if t.endswith("k") else 1
    return int(float(t.rstrip("k")) * mult)


def _sliding(cfg, window):
    """Turn a Qwen2/Qwen3/Mistral config into transformers' own sliding-window attention on every layer."""
    if cfg.model_type not in ("qwen2", "mistral", "qwen3"):
        raise ValueError(f"transformers' sliding-window attention is not available for {cfg.model_type!r} "
                         "(use the Qwen2 copy of the default base)")
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, window, 0
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    return cfg


def _random_base(shape: str, dtype, window=None, layers=None):
    """Same-shape random stand-ins (no download): 'smollm2' (135M) or 'qwen2.5-3b'; ``layers``: only that many
    decoder layers."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    shapes = {
        "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True,
                        max_position_embeddings=8192),
        "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                           num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True,
                           max_position_embeddings=32768),
        "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=320, max_position_embeddings=512),
    }
    if shape not in shapes:
        raise ValueError(f"unknown random shape {shape!r}; known: {sorted(shapes)}")
    torch.manual_seed(0)
    cfg = Qwen2Config(**{**shapes[shape], **({"num_hidden_layers": layers} if layers else {})})
    if window is not None:
        cfg = _sliding(cfg, window)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def load_method(method: str, base: str, window: int, sinks: int, dtype, device, layers=None):
    """The model of one `ahn bench` method and the attention mode it runs in (`None`: a plain base)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..modeling_ahn import AhnForCausalLM

    def base_model(sliding=False):
        if base.startswith("random:"):
            return _random_base(base.split(":", 1)[1], dtype, window if sliding else None, layers)
        if sliding:
            from transformers import AutoConfig

            cfg = _sliding(AutoConfig.from_pretrained(base), window)
            return AutoModelForCausalLM.from_pretrained(base, config=cfg, dtype=dtype)
        return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)

    if method in ("full", "full_static"):
        return base_model().to(device).eval(), None
    if method == "swa_hf":
        return base_model(sliding=True).to(device).eval(), None
    mode = "swa" if method == "sinks_swa" else "ahn"
    ahn_type = "gdn" if method == "sinks_swa" else method.split("_")[1]
    m = AhnForCausalLM.from_base(base_model(), ahn_type=ahn_type, sliding_window=window, num_sinks=sinks,
                                 ahn_dtype=torch.float32, prefill_chunk_size=None)
    with torch.no_grad():  # a non-zero memory, so the read-out is real work
        for mod in m.ahn_modules().values():
            mod.fn.o_proj.weight.normal_(0, 0.02)
    if "_slots64" in method:
        m.add_recall_head()
        with torch.no_grad():
            for mod in m.ahn_modules().values():
                mod.recall.weight.normal_(0, 0.05)
        m.config.num_recall_slots = 64
    if method.endswith("_novelty64"):
        m.config.num_recall_slots, m.config.recall_score = 64, "novelty"
    return m.to(device).eval(), mode


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Point:
    """One measurement point (a method at a length): its model, cache and greedy decoding state, driven a prefill
    chunk or a decoding step at a time. ``worker`` runs one point in its own process; ``side_by_side.run`` runs
    several in one process, interleaved, so that the machine's drift affects them alike."""

    def __init__(self, method, base, length, window, sinks, chunk, decode, dtype_name, device_name,
                 compile_backend="inductor"):
        import contextlib

        import torch

        from .devices import resolve_dtype

        self.method, self.length, self.chunk = method, length, chunk
        self.device = torch.device(device_name)
        dtype = resolve_dtype(dtype_name, self.device)
        torch.manual_seed(0)
        self.model, mode = load_method(method, base, window, sinks, dtype, self.device)
        vocab = self.model.get_input_embeddings().num_embeddings
        self.ids = torch.randint(3, vocab, (1, length), device=self.device)
        self._ctx = (lambda: self.model.attention_mode(mode)) if mode else contextlib.nullcontext
        self.mode = mode
        self.static = method.endswith("_static")
        self._step = self.model
        self._decode = decode
        self.cache = self._new_cache()
        if self.static:
            decoder = self.model.base_causal_lm if mode else self.model
            opts = dict(mode="reduce-overhead") if self.device.type == "cuda" and compile_backend == "inductor" else {}
            self._step = torch.compile(decoder.forward, fullgraph=True, backend=compile_backend, **opts)
        self.pos, self.prefill_s, self.compile_s, self.nxt, self.latencies = 0, 0.0, None, None, []
        self.chunk_log = []  # (round, seconds, tokens) of every prefill chunk, restarts included
        self.passes = 0  # completed prefills

    def _new_cache(self):
        from transformers import DynamicCache, StaticCache

        if self.static:
            return (self.model.new_cache(static=True) if self.mode else
                    StaticCache(config=self.model.config,
                                max_cache_len=self.length + self._decode + COMPILE_WARMUP))
        return self.model.new_cache() if self.mode else DynamicCache(config=self.model.config)

    def restart_prefill(self) -> None:
        """Prefill again from a new cache (side by side: a short point's prefill repeats while the long ones run,
        so its per-token cost is sampled across the whole run, not once at its start)."""
        if not self.prefilled or self.compile_s is not None:
            raise RuntimeError("restart_prefill: only a completed prefill, before any decoding, can restart")
        self.cache, self.pos, self.prefill_s = self._new_cache(), 0, 0.0

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def prefilled(self) -> bool:
        return self.pos >= self.length

    def prefill_chunk(self, round_: int = 0) -> None:
        """The next ``chunk`` tokens of the prompt, timed (the last one also picks the first greedy token);
        ``round_``: the side-by-side round it ran in (``chunk_log``)."""
        import torch

        from ..modeling_ahn import CACHE_KWARG

        with torch.inference_mode(), self._ctx():
            self._sync()
            t0 = time.perf_counter()
            out = self.model(input_ids=self.ids[:, self.pos: self.pos + self.chunk], **{CACHE_KWARG: self.cache},
                             use_cache=True, logits_to_keep=1)
            self._sync()
            seconds = time.perf_counter() - t0
        self.prefill_s += seconds
        self.chunk_log.append((round_, seconds, min(self.chunk, self.length - self.pos)))
        self.pos += self.chunk
        if self.prefilled:
            self.nxt = out.logits[:, -1:].argmax(-1)
            self.passes += 1

    def _greedy(self) -> float:
        import torch

        from ..modeling_ahn import CACHE_KWARG

        with torch.inference_mode(), self._ctx():
            t0 = time.perf_counter()
            out = self._step(input_ids=self.nxt, **{CACHE_KWARG: self.cache}, use_cache=True)
            self.nxt = out.logits[:, -1:].argmax(-1)
            self._sync()
            return time.perf_counter() - t0

    def warm_up(self) -> None:
        """Compile the static methods' step (and record CUDA graphs) on a few untimed steps."""
        if self.static and self.compile_s is None:
            self.compile_s = sum(self._greedy() for _ in range(COMPILE_WARMUP))

    def step(self) -> float:
        """One timed greedy decoding step (seconds)."""
        lat = self._greedy()
        self.latencies.append(lat)
        return lat

    def cache_bytes(self) -> int:
        if self.mode:
            return int(self.cache.cache_bytes())
        return int(sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers
                       if layer.is_initialized))

    def row(self, peak_bytes) -> dict:
        lat = sorted(self.latencies)
        return dict(method=self.method, length=self.length, prefill_s=self.prefill_s,
                    prefill_tok_s=self.length / self.prefill_s,
                    decode_ms=1000 * lat[len(lat) // 2] if lat else None,
                    decode_tok_s=(len(lat) / sum(lat)) if lat else None, peak_bytes=peak_bytes,
                    cache_bytes=self.cache_bytes(), compile_s=self.compile_s,
                    weight_bytes=sum(p.nbytes for p in self.model.parameters()))


def worker(method, base, length, window, sinks, chunk, decode, dtype_name, device_name,
           compile_backend="inductor") -> dict:
    """One measurement point, in this process."""
    import torch

    device = torch.device(device_name)
    point = Point(method, base, length, window, sinks, chunk, decode, dtype_name, device_name, compile_backend)
    if device.type == "cuda":  # (the peak from here on: the weights and the cache, not their loading)
        torch.cuda.reset_peak_memory_stats(device)
    while not point.prefilled:
        point.prefill_chunk()
    point.warm_up()
    for _ in range(decode):
        point.step()
    return point.row(_peak_bytes(device))


VECTOR_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in ``/proc/cpuinfo`` (empty where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends here
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_features(cpuinfo: dict[str, str] | None = None) -> list[str]:
    """The CPU's vector features that decide float32/bf16 speed (an "AMD EPYC" may be AVX2-only or have
    AVX512-BF16: the model name alone does not say), from ``/proc/cpuinfo``; empty where it cannot be read."""
    flags = set((_cpuinfo() if cpuinfo is None else cpuinfo).get("flags", "").split())
    return [f for f in VECTOR_FEATURES if f in flags]


def machine_info(device_name: str) -> dict:
    import torch
    import transformers

    info = dict(date=time.strftime("%Y-%m-%d"), python=platform.python_version(), torch=torch.__version__,
                transformers=transformers.__version__, machine=platform.machine(), cpus=os.cpu_count(),
                threads=torch.get_num_threads(), device=device_name)
    cpuinfo = _cpuinfo()
    info["cpu"] = cpuinfo.get("model name") or platform.processor()
    info["cpu_features"] = cpu_features(cpuinfo)
    info["allocator"] = allocator_info()
    if device_name.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def check_methods(methods) -> None:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {METHODS}")


def grid(lengths: list[int], methods: list[str], max_full: int | None = None) -> list[tuple[str, int]]:
    """``(method, length)`` points, length by length; full attention (also static) is skipped beyond ``max_full``."""
    return [(m, L) for L in lengths for m in methods
            if not (m in ("full", "full_static") and max_full and L > max_full)]


def run_settings(base, window, sinks, chunk, decode, dtype, compile_backend, device) -> dict:
    """The settings a result records (and a resumed grid compares)."""
    return dict(base=base if base.startswith("random:") else Path(base).name, window=window, sinks=sinks,
                chunk=chunk, decode=decode, dtype=dtype, compile_backend=compile_backend, device=device)


def run(base: str, lengths: list[int], methods: list[str], window: int, sinks: int, chunk: int, decode: int,
        dtype: str, device: str, out: str | Path, max_full: int | None = None, progress: bool = True,
        timeout: int = 3600, compile_backend: str = "inductor", reference_length: int = REFERENCE[1]) -> dict:
    from tqdm.auto import tqdm

    from .devices import dtype_name, resolve_dtype

    dtype = dtype_name(resolve_dtype(dtype, device))  # "auto" -> what this machine runs fast, recorded as such
    check_methods(methods)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.jsonl")
    settings = run_settings(base, window, sinks, chunk, decode, dtype, compile_backend, device)
    done, stale = {}, 0
    if partial.exists():  # resume: keep the points already measured with the same settings
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            if r.get("settings") != settings:
                stale += 1
                continue
            done[(r["method"], r["length"])] = r
    if stale:
        print(f"ahn bench: {stale} point(s) in {partial} were measured with other settings; measuring anew",
              file=sys.stderr)
    points = [(L, m) for m, L in grid(lengths, methods, max_full)]
    reused = sum((m, L) in done for L, m in points)
    if reused:  # (the settings do not include the code: after a change, delete the file to measure anew)
        print(f"ahn bench: reusing {reused} point(s) measured earlier, from {partial} (delete it to measure anew)",
              file=sys.stderr)
    bar = tqdm(points, desc="bench", unit="point", disable=not progress)
    for L, m in bar:
        bar.set_postfix_str(f"{m} @ {L:,}")
        if (m, L) in done:
            continue
        args = dict(method=m, base=base, length=L, window=window, sinks=sinks, chunk=chunk, decode=decode,
                    dtype_name=dtype, device_name=device, compile_backend=compile_backend)
        code = ("import json,sys; from modeling_ahn.benchmarking.bench import worker; "
                "print('BENCH ' + json.dumps(worker(**json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH ")]
        if proc.returncode != 0 or not lines:
            row = dict(method=m, length=L, error=(proc.stderr.strip().splitlines() or ["?"])[-1])
        else:
            row = json.loads(lines[-1][6:])
        row["settings"] = settings
        done[(m, L)] = row
        with open(partial, "a") as f:
            f.write(json.dumps(row) + "\n")
    rows = [{k: v for k, v in done[(m, L)].items() if k != "settings"} for L, m in points]
    reference = (REFERENCE[0], reference_length)
    overhead = long_context_overhead(rows, reference)
    for r in rows:
        x = overhead["points"].get((r["method"], r["length"]))
        if x is not None:
            r["prefill_overhead"], r["decode_overhead"] = x["prefill"], x["decode"]
    if overhead["reference"] is None:
        print(f"ahn bench: no {reference[0]} point at {reference[1]} tokens in this run, so no long-context "
              f"overhead (add {reference[1]} to --lengths and {reference[0]} to --methods)", file=sys.stderr)
    result = dict(machine=machine_info(device), settings=settings, overhead_reference=overhead["reference"],
                  rows=rows)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if "error" not in r]
    with_overhead = any("prefill_overhead" in r for r in rows)
    fig, axes = plt.subplots(1, 4 if with_overhead else 3, figsize=(21 if with_overhead else 16, 4.5))
    styles = {}
    # (--side-by-side runs every point in one process: no peak per point, the cache's bytes instead)
    memory = "peak_bytes" if all(r.get("peak_bytes") for r in rows) else "cache_bytes"
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["length"], r) for r in rows if r["method"] == m)
        xs = [p[0] for p in pts]
        line, = axes[0].plot(xs, [p[1]["prefill_s"] for p in pts], "o-", label=m)
        styles[m] = line.get_color()
        axes[1].plot(xs, [p[1]["decode_ms"] for p in pts], "o-", label=m, color=styles[m])
        axes[2].plot(xs, [p[1][memory] / 2**20 for p in pts], "o-", label=m, color=styles[m])
        if with_overhead:
            o = [(x, p) for x, p in pts if "prefill_overhead" in p]
            axes[3].plot([x for x, _ in o], [p["prefill_overhead"] for _, p in o], "o-", color=styles[m],
                         label=f"{m} prefill")
            d = [(x, p["decode_overhead"]) for x, p in o if p.get("decode_overhead")]
            axes[3].plot([x for x, _ in d], [y for _, y in d], "s--", color=styles[m], alpha=0.7,
                         label=f"{m} decode")
    titles = ["prefill time (s)", "decode latency (ms/token)",
              "peak memory (MiB)" if memory == "peak_bytes" else "cache (MiB)"]
    if with_overhead:
        ref = result.get("overhead_reference") or dict(method=REFERENCE[0], length=REFERENCE[1])
        titles.append(f"per-token cost / {ref['method']} at {ref['length']:,} (—prefill, --decode)")
        axes[3].axhline(1.0, color="grey", lw=0.8)
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    if rows:
        axes[0].legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(f"{s['base']}, {s['dtype']}, window {s['window']} + {s['sinks']} sinks — "
                 f"{result['machine'].get('gpu') or result['machine'].get('cpu')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _overhead_cell(row: dict) -> str:
    if "prefill_overhead" not in row:
        return "-"
    d = row.get("decode_overhead")
    return f"{row['prefill_overhead']:.2f}/{d:.2f}" if d is not None else f"{row['prefill_overhead']:.2f}/-"


def table(result: dict) -> str:
    head = (f"{'method':<11} {'length':>8} {'prefill s':>10} {'tok/s':>9} {'decode ms':>10} {'peak MiB':>9} "
            f"{'cache MiB':>10} {'overhead p/d':>13}")
    lines = [head]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['method']:<11} {r['length']:>8}  error: {r['error'][:80]}")
            continue
        lines.append(f"{r['method']:<11} {r['length']:>8} {r['prefill_s']:>10.2f} {r['prefill_tok_s']:>9.0f} "
                     f"{r['decode_ms']:>10.1f} {r['peak_bytes'] / 2**20:>9.0f} {r['cache_bytes'] / 2**20:>10.2f} "
                     f"{_overhead_cell(r):>13}")
    return "\n".join(lines)
