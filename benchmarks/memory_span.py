"""How far back does an AHN adapter remember? Memory half-lives and the sinks+SWA window it is worth.

    python benchmarks/memory_span.py [--adapter DIR --label NAME ...] [--segments 3] [--length 4096]
        [--windows 512,640,768,1024] [--out benchmarks/results/memory_span_smollm2]

For each adapter (default: the shipped SmolLM2-135M-Instruct AHN-GDN) over held-out Austen segments:
- the half-life of every memory head (``modeling_ahn.evaluation.probes.memory_half_lives``: ln 2 over the mean
  per-token log-decay the head applies to its state), summarised as quantiles and the fraction of heads that
  remember longer than the window;
- its perplexity at positions >= 1024 with the inference window ``--window`` (AHN), next to sinks+SWA at
  each of ``--windows`` and full attention on the same positions, and the sinks+SWA window whose perplexity it
  matches ("window equivalent", log-linear interpolation between the measured windows).
Writes <out>.json and <out>.png (half-life distribution per adapter; perplexity against the SWA window).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_ahn.default.shipped import add_adapter_arguments

HERE = Path(__file__).resolve().parent
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def window_equivalent(ppl: float, swa: dict[int, float]) -> float | None:
    """The sinks+SWA window with perplexity ``ppl``, interpolated log-linearly in the window between the two
    measured windows around it; ``None`` outside the measured range."""
    pts = sorted(swa.items())
    for (w0, p0), (w1, p1) in zip(pts, pts[1:]):
        if min(p0, p1) <= ppl <= max(p0, p1) and p0 != p1:
            f = (p0 - ppl) / (p0 - p1)
            return math.exp(math.log(w0) + f * (math.log(w1) - math.log(w0)))
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_arguments(ap)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--windows", default="512,576,640,768,1024", help="sinks+SWA windows to compare with")
    ap.add_argument("--from-position", type=int, default=1024, help="perplexity on targets at positions >= this")
    ap.add_argument("--out", default=str(HERE / "results" / "memory_span_smollm2"))
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default
    from modeling_ahn.default.shipped import adapters_to_compare
    from modeling_ahn.evaluation.probes import memory_half_lives, segments, token_nll

    base = args.base or str(fetch_default()["llama"])
    compared = adapters_to_compare(args.adapter, args.label, base)
    windows = sorted(int(w) for w in args.windows.split(","))
    if args.window not in windows:
        raise SystemExit(f"--windows must include the inference window {args.window}")
    if args.from_position < max(windows):
        raise SystemExit(f"--from-position {args.from_position} must be >= the largest window {max(windows)}, so that "
                         "every window is full at the scored positions")

    tok = AutoTokenizer.from_pretrained(base)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]
    segs = segments(docs, args.length, args.segments, skip=512)
    if len(segs) < args.segments:
        raise SystemExit(f"only {len(segs)} held-out segments of {args.length} tokens exist")

    def ppl(model, mode, window):
        tot, n = 0.0, 0
        for s in segs:
            with model.runtime(sliding_window=window, num_sinks=args.sinks, mode=mode), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                nll = token_nll(model, torch.tensor([s]))[args.from_position - 1:]
            tot, n = tot + float(nll.sum()), n + nll.numel()
        return math.exp(tot / n)

    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "base": Path(base).name, "segments": len(segs),
              "length": args.length, "window": args.window, "sinks": args.sinks,
              "positions": f">={args.from_position}", "adapters": {}}
    model = None
    for label, adapter in compared:
        model = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True, base_model=base,
                                                     sliding_window=args.window, num_sinks=args.sinks,
                                                     dtype=torch.bfloat16).eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lives = torch.stack([memory_half_lives(model, torch.tensor([s])) for s in
                                 tqdm(segs, desc=f"{label}: half-lives", unit="segment")])
        # per head: the half-life of its mean decay rate over all segments
        lives = math.log(2) / (math.log(2) / lives).mean(0)
        flat = lives.flatten().double()
        report["adapters"][label] = {
            "adapter": Path(adapter).name,
            "half_life_quantiles": {str(q): float(torch.quantile(flat, q)) for q in QUANTILES},
            "fraction_longer_than_window": float((flat > args.window).double().mean()),
            "half_lives": [[round(float(x), 2) for x in row] for row in lives],
            "ppl_ahn": ppl(model, "ahn", args.window),
        }
        print(label, json.dumps({k: v for k, v in report["adapters"][label].items() if k != "half_lives"}))
    swa = {w: ppl(model, "swa", w) for w in tqdm(windows, desc="sinks+SWA windows")}
    report["ppl_swa"] = {str(w): p for w, p in swa.items()}
    report["ppl_full"] = ppl(model, "full", args.window)
    for row in report["adapters"].values():
        row["gap_closed"] = (swa[args.window] - row["ppl_ahn"]) / (swa[args.window] - report["ppl_full"])
        row["window_equivalent"] = window_equivalent(row["ppl_ahn"], swa)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    plot(report, Path(args.out + ".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "adapters"}, indent=2))
    for label, row in report["adapters"].items():
        print(f"{label}: median half-life {row['half_life_quantiles']['0.5']:.1f} tokens, "
              f"{100 * row['fraction_longer_than_window']:.1f} % of heads > W={args.window}; ppl {row['ppl_ahn']:.3f}, "
              f"gap closed {row['gap_closed']:.3f}, worth a sinks+SWA window of {row['window_equivalent'] or 'n/a'}")


def plot(rep, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for label, row in rep["adapters"].items():
        lives = sorted(x for r in row["half_lives"] for x in r)
        ax1.plot(lives, [(i + 1) / len(lives) for i in range(len(lives))], label=label)
    ax1.axvline(rep["window"], color="gray", ls=":", label=f"window {rep['window']}")
    ax1.set(xscale="log", xlabel="memory half-life (tokens)", ylabel="fraction of heads",
            title="Memory half-lives of all heads (CDF)")
    ax1.legend()
    ws = sorted(int(w) for w in rep["ppl_swa"])
    ax2.plot(ws, [rep["ppl_swa"][str(w)] for w in ws], "o-", color="tab:orange", label="sinks+SWA")
    ax2.axhline(rep["ppl_full"], color="tab:blue", ls="--", label="full attention")
    for label, row in rep["adapters"].items():
        ax2.plot([rep["window"]], [row["ppl_ahn"]], "*", ms=12, label=f"AHN {label} (W={rep['window']})")
    ax2.set(xscale="log", xlabel="window (tokens)", ylabel=f"perplexity, positions {rep['positions']}",
            title=f"{rep['segments']} held-out segments of {rep['length']} tokens")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
