"""Which memory can carry the document? A one-layer A/B of the memory's read/write options, cheap enough for a CPU.

    python benchmarks/memory_ab.py --arm q_proj --arm q_proj,k_proj,position_free,span [--layer 7] [--steps 120]
        [--length 2048] [--window 512] [--sinks 64] [--repeat-fraction 0.5] [--out benchmarks/results/memory_ab]

Only layer ``--layer`` gets a memory, trained with the layer-local objective (``training/layer_local.py``) on the
training corpora, with passages recurring beyond the window in ``--repeat-fraction`` of the sequences; the teacher
forward stops at that layer, so a step costs a fraction of a full run's. Each arm starts from the same seed and sees
the same sequences; ``span`` in an arm starts its GatedDeltaNet decays at ``--memory-span`` half-lives
(``ahn distill --memory-span``) instead of the release's, whose heads forget within a few tokens; ``contrast`` adds
the content loss (``layer_local_contrast_losses``: the far-context swap below, on training pairs); ``short`` trains
each step at a window drawn from ``--train-windows`` (default 32-256; SWAX, arXiv 2509.24552: short training windows
make the recurrent part learn long-range content) and measures at ``--window`` as the others; ``centre`` writes
centred values (``value_centring``: each value minus ``v_mean``, which starts at the layer's mean value on the first
four training sequences, ``training/centring.py``, and is trained with the rest). ``--max-minutes``
bounds each arm's training time. Held-out
measurements of that layer, on text never trained on (Austen segments, Paul Graham essays), each with a 95 %
bootstrap interval over segments:

- ``loss``: the layer-local loss on natural text (share of the far-context output the memory does not reproduce);
- ``repeat_loss``: the same on the repeated passage's tokens only (a 256-token passage recurring 1,536 tokens later);
- ``content``: far-context swap at the layer. For a segment ``A`` and ``A'`` (its tokens ``[sinks, prefix)`` another
  document's), the document-dependent part of what the window misses is ``c = (y_full - y_window)(A) -
  (y_full - y_window)(A')`` at the queries whose window holds no swapped token; ``content = 1 - |c_mem - c|^2 /
  |c|^2`` with ``c_mem`` the same difference of the memory's read-outs: the share of the document-dependent far
  context that the memory reproduces (sinks + SWA: 0; a memory that adds the same whatever it read: <= 0).

Writes ``<out>.json`` (settings, machine, per-arm curves and final measurements) and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OPTION_NAMES = {"q_proj": "use_q_proj", "k_proj": "use_k_proj", "position_free": "position_free",
                "centre": "value_centring"}


TRAINING_LEVERS = ("span", "contrast", "short")


def parse_arm(text: str) -> tuple[dict, bool, bool, bool]:
    """``(memory options, whether the arm starts from --memory-span, whether it adds the content loss, whether it
    trains at short windows)`` of an arm such as ``q_proj,span,contrast,short``."""
    names = [t for t in text.split(",") if t and t != "none"]
    bad = [n for n in names if n not in OPTION_NAMES and n not in TRAINING_LEVERS]
    if bad:
        raise SystemExit(f"unknown arm option(s) {bad}: choose from {sorted(OPTION_NAMES)}, "
                         f"{', '.join(TRAINING_LEVERS)}, or 'none'")
    return ({OPTION_NAMES[n]: True for n in names if n not in TRAINING_LEVERS}, "span" in names,
            "contrast" in names, "short" in names)


class Truncated:
    """Run the decoder only up to ``layer`` (the teacher and the student need nothing above it)."""

    def __init__(self, model, layer: int):
        self.decoder, self.n = model.model, layer + 1

    def __enter__(self):
        self.layers = self.decoder.layers
        self.decoder.layers = self.layers[: self.n]
        self.count = self.decoder.config.num_hidden_layers
        self.decoder.config.num_hidden_layers = self.n

    def __exit__(self, *exc):
        self.decoder.layers = self.layers
        self.decoder.config.num_hidden_layers = self.count


def build(base: str, layer: int, window: int, sinks: int, options: dict, seed: int):
    from transformers import AutoConfig

    from modeling_ahn import AhnForCausalLM

    n = AutoConfig.from_pretrained(base).num_hidden_layers
    torch.manual_seed(seed)
    model = AhnForCausalLM.from_base(base, dtype=torch.float32, sliding_window=window, num_sinks=sinks,
                                     prefill_chunk_size=None, full_attention_layers=[i for i in range(n) if i != layer],
                                     **options)
    for name, p in model.named_parameters():
        p.requires_grad_(".ahn." in name and not name.endswith(".ahn.fn.D"))
    return model


_TEACHER: dict = {}


def layer_outputs(model, ids: list[int], layer: int):
    """``(y_full, y_window, y_student)`` ``[T, H*D]`` of the layer, after ``o_proj`` (teacher-forced)."""
    from modeling_ahn.attention_ahn import MEMORY_ONLY, get_layer_spec
    from modeling_ahn.training.layer_local import layer_output, record_teacher

    attn = model.model.layers[layer].self_attn
    spec = get_layer_spec(attn)
    key = (layer, hash(tuple(ids)))
    if key not in _TEACHER:  # the base is frozen: a held-out sequence's teacher record never changes
        with Truncated(model, layer):
            _TEACHER[key] = record_teacher(model, torch.tensor([ids]))[layer]
    rec = _TEACHER[key]

    with torch.no_grad():
        window = layer_output(spec, attn, rec, None, "swa")
        student = window + layer_output(spec, attn, rec, None, MEMORY_ONLY)
    W = attn.o_proj.weight
    return tuple((y[0].flatten(-2) @ W.T).double() for y in (rec.target, window, student))


def unexplained(full, window, student, rows) -> tuple[float, float]:
    """``(sum |student - full|^2, sum |full - window|^2)`` over ``rows``."""
    return float((student - full)[rows].pow(2).sum()), float((full - window)[rows].pow(2).sum())


def measure(model, layer: int, window: int, sinks: int, data: dict) -> dict:
    """Held-out measurements of the layer (see the module docstring), per segment (for the bootstrap)."""
    from modeling_ahn.evaluation.calibration import first_unswapped_query, swap_evicted

    units = {"loss": [], "repeat_loss": [], "content": []}
    keep = slice(sinks + window, None)
    for seg in data["natural"]:
        units["loss"].append(unexplained(*layer_outputs(model, seg, layer), keep))
    for ids, r, P in data["repeats"]:
        units["repeat_loss"].append(unexplained(*layer_outputs(model, ids, layer), slice(r + 1, r + P)))
    prefix = data["prefix"]
    start = first_unswapped_query(prefix, window)
    for a, b in data["pairs"]:
        fa, wa, sa = layer_outputs(model, a, layer)
        fb, wb, sb = layer_outputs(model, swap_evicted(a, b, sinks, prefix), layer)
        c = ((fa - wa) - (fb - wb))[start:]  # the document-dependent part of what the window misses
        c_mem = ((sa - wa) - (sb - wb))[start:]  # the same of what the memory supplies
        units["content"].append((float((c_mem - c).pow(2).sum()), float(c.pow(2).sum())))
    return units


def summarise(units: dict, draws: int = 1000) -> dict:
    from modeling_ahn.evaluation.content import bootstrap

    def ratio(us):
        return sum(u[0] for u in us) / max(1e-30, sum(u[1] for u in us))

    return {"loss": bootstrap(units["loss"], ratio, draws),
            "repeat_loss": bootstrap(units["repeat_loss"], ratio, draws),
            "content": bootstrap(units["content"], lambda us: 1 - ratio(us), draws)}


def held_out(tok, length: int, prefix: int, count: int) -> dict:
    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.evaluation.content import repeat_sequence
    from modeling_ahn.evaluation.probes import segments

    def tokens(corpus):
        return [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents(corpus).values()]

    segs = segments(tokens("austen"), length, 2 * count + 1, skip=512)
    essays = [d[512:] for d in tokens("pg_essays") if len(d) >= 512 + 1536 + 256][:count]
    repeats = [(*repeat_sequence(d, 256, 1536), 256) for d in essays]
    return {"natural": segs[count: 2 * count], "pairs": [(segs[i], segs[i + 1]) for i in range(count)],
            "repeats": repeats, "prefix": prefix}


def training_sequences(tok, data: str, length: int, count: int, seed: int) -> list[list[int]]:
    from modeling_ahn.training.data import iter_documents, tokenize_documents

    rng = random.Random(seed)
    texts = list(iter_documents([data], tok))
    rng.shuffle(texts)
    seqs = []
    for i in range(0, len(texts), 200):  # tokenise in batches until there are enough long documents
        seqs += tokenize_documents(texts[i: i + 200], tok, length, length, split=True).sequences
        if len(seqs) >= count:
            break
    rng.shuffle(seqs)
    return seqs[:count]


def train_arm(model, layer: int, seqs, steps: int, lr: float, window: int, sinks: int, repeat_fraction: float,
              seed: int, data: dict, every: int, label: str, contrast: float = 0.0, train_windows=None,
              max_minutes: float | None = None) -> dict:
    """Train the arm; measure at ``window`` every ``every`` steps. ``train_windows``: each step's window drawn from
    these (the short-window lever; the sinks stay ``sinks``). ``max_minutes``: stop (and measure) at the first step
    past this much training time."""
    from tqdm.auto import tqdm

    from modeling_ahn.evaluation.calibration import first_unswapped_query, swap_evicted
    from modeling_ahn.training.data import with_repeat
    from modeling_ahn.training.layer_local import layer_local_contrast_losses, layer_local_losses, record_teacher

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    rng = random.Random(seed)
    curve, t0 = [], time.perf_counter()
    stopped = None
    for step in tqdm(range(steps + 1), desc=label):
        if max_minutes is not None and step < steps and time.perf_counter() - t0 > 60 * max_minutes:
            stopped = steps = step  # the time budget is spent: measure here and stop
        if step % every == 0 or step == steps:
            model.eval()
            held = summarise(measure(model, layer, window, sinks, data), 1)
            curve.append({"step": step, "tokens": step * len(seqs[0]), "seconds": time.perf_counter() - t0,
                          **{k: v["value"] for k, v in held.items()}})
            model.train()
            tqdm.write(f"{label} {curve[-1]}")
        if step == steps:
            break
        ids = seqs[step % len(seqs)]
        w = rng.choice(train_windows) if train_windows else window
        if rng.random() < repeat_fraction:
            ids = with_repeat(ids, w, sinks, rng)
        with model.runtime(sliding_window=w):  # the backward pass needs no settings: nothing is recomputed
            with Truncated(model, layer):
                records = record_teacher(model, torch.tensor([ids]))
            loss = layer_local_losses(model, records)[layer]
            if contrast:  # the same sequence with its far context [sinks, prefix) from another training sequence
                other = seqs[(step + 1 + rng.randrange(len(seqs) - 1)) % len(seqs)]
                with Truncated(model, layer):
                    swapped = record_teacher(model, torch.tensor([swap_evicted(ids, other, sinks, data["prefix"])]))
                start = first_unswapped_query(data["prefix"], w)
                loss = loss + contrast * layer_local_contrast_losses(model, records, swapped, start)[layer]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return {"curve": curve, **({"stopped_at_step": stopped} if stopped is not None else {})}


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, arm in report["arms"].items():
        c = arm["curve"]
        x = [r["tokens"] / 1e3 for r in c]
        axes[0].plot(x, [r["loss"] for r in c], label=label)
        axes[1].plot(x, [r["repeat_loss"] for r in c], label=label)
        axes[2].plot(x, [r["content"] for r in c], label=label)
    axes[2].axhline(0, color="gray", ls=":", label="sinks+SWA (0)")
    for ax, t in zip(axes, ("held-out loss (natural)", "held-out loss on repeats", "content share (swap)")):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("training tokens (k)")
    axes[2].legend(fontsize=8)
    fig.suptitle(report["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", action="append", required=True, help="comma-separated options: q_proj, k_proj, "
                                                                   "position_free, centre, span, contrast, short (or "
                                                                   "'none'); repeatable")
    ap.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")
    ap.add_argument("--data", default=None, help="training text (default: the `ahn corpora` training split)")
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--every", type=int, default=40, help="steps between held-out measurements")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--prefix", type=int, default=1024, help="far-context swap: tokens [sinks, prefix) swapped")
    ap.add_argument("--segments", type=int, default=4, help="held-out segments per measurement")
    ap.add_argument("--repeat-fraction", type=float, default=0.5)
    ap.add_argument("--memory-span", type=lambda t: [float(x) for x in t.split(",")], default=[16, 8192],
                    metavar="LO,HI", help="the decay half-lives (tokens) of an arm with 'span' (GDN)")
    ap.add_argument("--contrast-weight", type=float, default=1.0,
                    help="weight of the content loss in an arm with 'contrast' (training/layer_local.py's "
                         "layer_local_contrast_losses: each step also reads the sequence with its far context "
                         "[sinks, prefix) from another training sequence)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-windows", type=lambda t: [int(x) for x in t.split(",")], default=[32, 64, 128, 256],
                    help="the 'short' arm option: each training step's window drawn from these (measured at --window)")
    ap.add_argument("--max-minutes", type=float, default=None, help="per arm: stop training after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "memory_ab"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from modeling_ahn.benchmarking.bench import machine_info
    from modeling_ahn.default.corpora import split_dir
    from modeling_ahn.default.model import fetch_default

    base = args.base or str(fetch_default()["llama"])
    tok = AutoTokenizer.from_pretrained(base)
    data = held_out(tok, args.length, args.prefix, args.segments)
    seqs = training_sequences(tok, args.data or str(split_dir("train")), args.length, args.steps, args.seed)
    report = {"title": f"one-layer memory A/B: layer {args.layer}, window {args.window}, {args.sinks} sinks, "
                       f"{args.length}-token sequences, repeats in {args.repeat_fraction:.0%}",
              "machine": machine_info("cpu"), "date": time.strftime("%Y-%m-%d"), "base": Path(base).name,
              "settings": {k: v for k, v in vars(args).items() if k not in ("arm", "base", "data", "out")},
              "arms": {}}
    for arm in args.arm:
        options, span, contrast, short = parse_arm(arm)
        model = build(base, args.layer, args.window, args.sinks, options, args.seed)
        if span:
            from modeling_ahn.training.distill import init_memory_span

            init_memory_span(model, *args.memory_span)
        if options.get("value_centring"):  # v_mean from the layer's values on the first training sequences
            from modeling_ahn.training.centring import init_value_means
            from modeling_ahn.training.distill import VALUE_MEAN_SEQUENCES

            init_value_means(model, [torch.tensor([s]) for s in seqs[:VALUE_MEAN_SEQUENCES]])
        result = train_arm(model, args.layer, seqs, args.steps, args.lr, args.window, args.sinks,
                           args.repeat_fraction, args.seed, data, args.every, arm,
                           args.contrast_weight if contrast else 0.0, args.train_windows if short else None,
                           args.max_minutes)
        final = summarise(measure(model, args.layer, args.window, args.sinks, data))
        report["arms"][arm] = {**result, "final": final}
        print(arm, json.dumps(final))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    plot(report, Path(args.out + ".png"))


if __name__ == "__main__":
    main()
