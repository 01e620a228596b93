"""Is an AHN adapter's gain over sinks+SWA remembered *content*? A control with another document in memory.

    python benchmarks/memory_control.py [--adapter DIR --label NAME ...] [--segments 6] [--length 8192]
        [--prefix 4096] [--out benchmarks/results/memory_control_smollm2]

For held-out Austen segments A (``--length`` tokens) each paired with a segment B of another novel, the
tokens ``[sinks, prefix)`` of A are replaced by B's. Query positions ``t >= prefix + window - 1`` then attend
to the same sinks and the same window in both versions, in every layer; what differs is AHN's memory (which
first folds in B's text) and, for every method, what earlier layers' window positions carried forward from
further back (L stacked windows reach L * window tokens). So each version is scored against its own
sinks+SWA, on those positions:

- AHN's gain over sinks+SWA on the original A (nats/token, and the gap to full attention it closes);
- the same gain on the swapped A ("wrong memory").

A memory that carried nothing document-specific would give the same gain in both; the share of the gain lost
with the wrong memory is the part owed to what it remembered of *this* document.
Writes <out>.json and <out>.png.
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

HERE = Path(__file__).resolve().parent


def swap_prefix(a: list[int], b: list[int], sinks: int, prefix: int) -> list[int]:
    """``a`` with its tokens ``[sinks, prefix)`` taken from ``b`` (sinks and everything from ``prefix`` on kept)."""
    if not 0 <= sinks <= prefix <= min(len(a), len(b)):
        raise ValueError(f"need 0 <= sinks ({sinks}) <= prefix ({prefix}) <= the segments' lengths")
    return a[:sinks] + b[sinks:prefix] + a[prefix:]


def first_scored(prefix: int, window: int) -> int:
    """Index into ``token_nll`` (entry ``t``: query position ``t``) of the first query whose window
    ``[t - window + 1, t]`` lies wholly at or after ``prefix``: it and every later one see no swapped token
    except through the memory."""
    return prefix + window - 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", action="append", default=None, help="AHN repo dir (repeatable; default: shipped)")
    ap.add_argument("--label", action="append", default=None, help="a name per --adapter")
    ap.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")
    ap.add_argument("--segments", type=int, default=6)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--prefix", type=int, default=4096, help="tokens [sinks, prefix) of A are swapped")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "memory_control_smollm2"))
    args = ap.parse_args(argv)
    start = first_scored(args.prefix, args.window)
    if start >= args.length - 1:
        raise SystemExit(f"--prefix {args.prefix} + --window {args.window} leaves no scored position in "
                         f"{args.length} tokens")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.corpora import held_out_documents
    from modeling_ahn.default_model import fetch_default
    from modeling_ahn.longctx import segments, token_nll

    base = args.base or str(fetch_default()["llama"])
    adapters = args.adapter
    if adapters is None:
        from modeling_ahn.shipped import shipped_repo

        adapters = [str(shipped_repo("gdn", base=base))]
    labels = args.label or [Path(a).name for a in adapters]
    if len(labels) != len(adapters):
        raise SystemExit("give one --label per --adapter")

    tok = AutoTokenizer.from_pretrained(base)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]
    if len(docs) < 2:
        raise SystemExit("the control needs at least two held-out documents")
    # round-robin over the novels: consecutive segments come from different books
    segs = segments(docs, args.length, args.segments + 1, skip=512)
    if len(segs) < args.segments + 1:
        raise SystemExit(f"only {len(segs)} held-out segments of {args.length} tokens exist")
    pairs = [(segs[i], swap_prefix(segs[i], segs[i + 1], args.sinks, args.prefix)) for i in range(args.segments)]

    def nll_sum(model, mode, ids):
        with model.attention_mode(mode), torch.autocast("cpu", dtype=torch.bfloat16):
            nll = token_nll(model, torch.tensor([ids]))[start:]
        return float(nll.double().sum()), nll.numel()

    versions = (("original", 0), ("wrong memory", 1))
    model, sums = None, {}
    for label, adapter in zip(labels, adapters):
        model = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True, base_model=base,
                                                     sliding_window=args.window, num_sinks=args.sinks,
                                                     dtype=torch.bfloat16).eval()
        for kind, k in versions:
            sums[(label, kind)] = [nll_sum(model, "ahn", p[k]) for p in tqdm(pairs, desc=f"{label}: AHN, {kind}")]
    for m, name in (("swa", "sinks+SWA"), ("full", "full attention")):
        for kind, k in versions:
            sums[(m, kind)] = [nll_sum(model, m, p[k]) for p in tqdm(pairs, desc=f"{name}, {kind}")]
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "base": Path(base).name, "segments": args.segments,
              "length": args.length, "prefix": args.prefix, "window": args.window, "sinks": args.sinks,
              "positions": f"query positions {start}..{args.length - 2}", "adapters": {}}
    for kind, _ in versions:
        report[kind] = {m: _ppl(sums[(m, kind)]) for m in ("full", "swa")}
    for label in labels:
        row = {}
        for kind, _ in versions:
            full, swa, ahn = report[kind]["full"], report[kind]["swa"], _ppl(sums[(label, kind)])
            row[kind] = {"ppl_ahn": ahn, "gain_nats": math.log(swa / ahn), "gap_closed": (swa - ahn) / (swa - full)}
        gain, kept = row["original"]["gain_nats"], row["wrong memory"]["gain_nats"]
        row["share_of_gain_from_content"] = (gain - kept) / gain if gain > 0 else None
        report["adapters"][label] = row
        print(label, json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    plot(report, Path(args.out + ".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "adapters"}, indent=2))


def _ppl(rows):
    return math.exp(sum(r[0] for r in rows) / sum(r[1] for r in rows))


def plot(rep, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    kinds = ("original", "wrong memory")
    series = [("full attention", [rep[k]["full"] for k in kinds]), ("sinks+SWA", [rep[k]["swa"] for k in kinds])]
    series += [(f"AHN {label}", [row[k]["ppl_ahn"] for k in kinds]) for label, row in rep["adapters"].items()]
    fig, ax = plt.subplots(figsize=(3 + 1.2 * len(series), 4))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series):
        bars = ax.bar([j + i * width for j in range(len(kinds))], values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    values = [v for _, vs in series for v in vs]
    lo, hi = min(values), max(values)
    ax.set_ylim(lo - 0.6 * (hi - lo) - 0.1, hi + 0.2 * (hi - lo) + 0.1)
    ax.set_xticks([j + (len(series) - 1) * width / 2 for j in range(len(kinds))],
                  ["A as written", f"A, tokens {rep['sinks']}..{rep['prefix']} from another novel"])
    ax.set(ylabel=f"perplexity, {rep['positions']}",
           title=f"{rep['segments']} Austen segments of {rep['length']} tokens, window {rep['window']}, "
                 f"{rep['sinks']} sinks")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
