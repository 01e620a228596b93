# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn bench --profile``: where an AHN forward's time goes, per region, on the machine at hand.

One process, one model; the AHN run and the same model with its memory off (``runtime(mode="swa")``) alternate on
the same input. Regions are assigned by module hooks (the innermost region wins, except that everything inside a
memory is memory):

- ``memory``: the AHN memories (``model.layers.{i}.ahn.fn``: gates, the chunked kernel, the read-out);
- ``linear``: the base's ``nn.Linear`` layers (projections, MLP, LM head);
- ``attention``: the rest of the base's attention modules (RoPE, cache update, the sinks + window kernels);
- ``other``: everything else (norms, activations, embedding, the model's own bookkeeping).

Time is exclusive wall time per region (eager CPU is synchronous; on CUDA the device is synchronised at region
boundaries). Op counts are ATen operators as dispatched (``TorchDispatchMode``: each call counted once, views
included, an operator's own internal calls not counted), a machine-independent measure of the Python-level
overhead; ``profiler_events`` is torch.profiler's count of every ATen event (internal calls included, as
issue 38's figures were taken). Everything is reported per layer and per 2,048 tokens (prefill) or per layer and
per step (decode; the two modes alternate step by step on their own caches, the median step is reported and the
regions' times are means). Not part of the remote-code payload.
"""

from __future__ import annotations

import collections
import contextlib
import time

REGIONS = ("memory", "attention", "linear", "other")
PER_TOKENS = 2048


class RegionTracker:
    """Exclusive time and dispatched-op counts per region, from forward hooks on the regions' modules."""

    def __init__(self, model, sync=None):
        from torch import nn

        self.sync = sync or (lambda: None)
        self.stack = ["other"]
        self.time = collections.Counter()
        self.ops = collections.Counter()
        self.counting = False
        self._last = None
        self._handles = []
        marks = {}
        for module in model.ahn_modules().values():
            marks[module.fn] = "memory"
        decoder = model.base_causal_lm.model
        for layer in decoder.layers:
            marks.setdefault(layer.self_attn, "attention")
        for module in model.base_causal_lm.modules():
            if isinstance(module, nn.Linear):
                marks.setdefault(module, "linear")
        for module, region in marks.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(region)))
            self._handles.append(module.register_forward_hook(self._leave))
        self._stepped = []
        for module in model.ahn_modules().values():  # a decoding step calls memory.step, not the module
            self._stepped.append(module.fn)
            module.fn.step = self._wrap_step(module.fn, module.fn.step)

    def _tick(self):
        now = time.perf_counter()
        if self._last is not None:
            self.time[self.stack[-1]] += now - self._last
        self._last = now

    def _enter(self, region):
        def hook(module, args):
            if not self.counting:
                self.sync()
                self._tick()
            # inside a memory everything is memory (its own linear layers too); elsewhere the innermost region wins
            self.stack.append("memory" if self.stack[-1] == "memory" else region)

        return hook

    def _leave(self, module, args, output):
        if not self.counting:
            self.sync()
            self._tick()
        self.stack.pop()

    def start(self):
        self.time.clear()
        self.ops.clear()
        self._last = time.perf_counter()

    def stop(self):
        self.sync()
        self._tick()
        self._last = None

    def _wrap_step(self, module, step):
        enter = self._enter("memory")

        def wrapped(*args, **kwargs):
            enter(module, args)
            try:
                return step(*args, **kwargs)
            finally:
                self._leave(module, args, None)

        return wrapped

    def remove(self):
        for h in self._handles:
            h.remove()
        for module in self._stepped:
            del module.step  # the instance attribute; the class's method shows again

    @contextlib.contextmanager
    def counting_ops(self):
        """Count every dispatched ATen op into the current region (slow: a separate pass from the timed one)."""
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                tracker.ops[tracker.stack[-1]] += 1
                return func(*args, **(kwargs or {}))

        self.counting = True
        try:
            with _Count():
                yield
        finally:
            self.counting = False


def _profiler_events(fn) -> int:
    """torch.profiler's count of ATen events (internal calls included) of ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def profile_model(base: str = "random:smollm2", length: int = 16384, dtype: str = "float32", window: int = 512,
                  sinks: int = 32, chunk: int = 2048, decode: int = 16, layers: int | None = 8,
                  device: str = "cpu", repeats: int = 1, profiler: bool = True, method: str = "ahn_gdn") -> dict:
    """The breakdown of one model at one length and dtype (see the module's docstring). ``layers``: keep only
    the first ``layers`` decoder layers of a random base (issue 38 measured 8 of SmolLM2's width)."""
    import torch

    from ..modeling_ahn import CACHE_KWARG
    from .bench import load_method, machine_info
    from .devices import dtype_name, resolve_dtype

    dev = torch.device(device)
    dt = resolve_dtype(dtype, dev)
    torch.manual_seed(0)
    model, _ = load_method(method, base, window, sinks, dt, dev, layers=layers)
    n_layers = len(model.ahn_modules())
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(3, vocab, (1, length + decode), device=dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    tracker = RegionTracker(model, sync)

    def prefill():
        cache = model.new_cache()
        for s in range(0, length, chunk):
            model(input_ids=ids[:, s: s + chunk], **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
        return cache

    def step(cache, i):
        model(input_ids=ids[:, length + i: length + i + 1], **{CACHE_KWARG: cache}, use_cache=True)

    prefill_units = n_layers * length / PER_TOKENS
    step_units = n_layers * max(decode, 1)
    modes = ("ahn", "swa")
    result = {}
    with torch.inference_mode():
        timed, caches = {m: [] for m in modes}, {}
        for _ in range(repeats):  # the two modes alternate, so that drift affects them alike
            for mode in modes:
                with model.attention_mode(mode):
                    tracker.start()
                    t0 = time.perf_counter()
                    caches[mode] = prefill()
                    tracker.stop()
                    timed[mode].append((time.perf_counter() - t0, dict(tracker.time)))
        # decoding: the modes alternate step by step, each on its own cache; a step's time is the median step's
        step_s, step_regions = {m: [] for m in modes}, {m: collections.Counter() for m in modes}
        for i in range(decode):
            for mode in modes:
                with model.attention_mode(mode):
                    tracker.start()
                    t1 = time.perf_counter()
                    step(caches[mode], i)
                    tracker.stop()
                    step_s[mode].append(time.perf_counter() - t1)
                    step_regions[mode].update(tracker.time)
        for mode in modes:
            wall, regions = min(timed[mode], key=lambda r: r[0])
            with model.attention_mode(mode):
                with tracker.counting_ops():
                    tracker.start()
                    cache = prefill()
                    pre_ops = dict(tracker.ops)
                    tracker.start()
                    for i in range(decode):
                        step(cache, i)
                    dec_ops = dict(tracker.ops)
                events = _profiler_events(prefill) if profiler else None
            steps = sorted(step_s[mode])
            result[mode] = dict(
                prefill_s=wall,
                prefill=dict(ms={r: 1000 * regions.get(r, 0.0) / prefill_units for r in REGIONS},
                             ops={r: pre_ops.get(r, 0) / prefill_units for r in REGIONS}),
                decode_ms_per_step=1000 * steps[len(steps) // 2] if steps else None,
                decode=dict(ms={r: 1000 * step_regions[mode].get(r, 0.0) / step_units for r in REGIONS},
                            ops={r: dec_ops.get(r, 0) / step_units for r in REGIONS}),
                profiler_events=events)
    tracker.remove()
    ahn, swa = result["ahn"], result["swa"]
    summary = dict(
        prefill_ahn_over_swa=ahn["prefill_s"] / swa["prefill_s"],
        decode_ahn_over_swa=ahn["decode_ms_per_step"] / swa["decode_ms_per_step"] if decode else None,
        memory_ops_per_layer_2k=ahn["prefill"]["ops"]["memory"],
        memory_ops_per_layer_step=ahn["decode"]["ops"]["memory"],
        profiler_events_ahn_minus_swa_per_layer_2k=(ahn["profiler_events"] - swa["profiler_events"]) / prefill_units
        if profiler else None)
    return dict(machine=machine_info(device), settings=dict(base=base, length=length, dtype=dtype_name(dt),
                window=window, sinks=sinks, chunk=chunk, decode=decode, layers=n_layers, method=method,
                repeats=repeats), summary=summary, **result)


def table(result: dict) -> str:
    """A Markdown table of one breakdown: ms and ops per layer per 2k tokens (prefill) and per step (decode)."""
    lines = ["| mode | phase | " + " | ".join(f"{r} ms" for r in REGIONS) + " | " +
             " | ".join(f"{r} ops" for r in REGIONS) + " |", "|" + "---|" * (2 + 2 * len(REGIONS))]
    for mode in ("ahn", "swa"):
        for phase in ("prefill", "decode"):
            d = result[mode][phase]
            lines.append(f"| {mode} | {phase} | " + " | ".join(f"{d['ms'][r]:.3f}" for r in REGIONS) + " | " +
                         " | ".join(f"{d['ops'][r]:.0f}" for r in REGIONS) + " |")
    s = result["summary"]
    lines.append("")
    lines.append(f"prefill AHN / memory off: {s['prefill_ahn_over_swa']:.3f}; decode: "
                 f"{s['decode_ahn_over_swa']:.3f}" if s["decode_ahn_over_swa"] else
                 f"prefill AHN / memory off: {s['prefill_ahn_over_swa']:.3f}")
    return "\n".join(lines)
