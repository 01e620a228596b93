"""Quality report of an AHN adapter against full attention and sinks+SWA on held-out long text.

    python benchmarks/quality.py [--adapter DIR] [--base DIR] [--out benchmarks/results/quality_smollm2_gdn]

Defaults: the shipped SmolLM2-135M-Instruct AHN-GDN adapter over the default base (`ahn fetch-default`) and
the held-out corpora (`ahn corpora`: Austen, Paul Graham essays). Three parts:

(a) perplexity on positions >= 1024 of disjoint 8192-token Austen segments: full attention (8k), sinks+SWA
    (window 512) and AHN at the same window and sinks; the fraction of the SWA->full gap AHN closes;
(b) 32k-token segments (4x the base's 8k): perplexity on positions 8k-32k against 1k-8k, AHN, sinks+SWA and full;
(c) passkey and needle-in-a-haystack retrieval with the fact beyond the window, 2k-16k tokens.

Every measured unit is stored as it finishes in <out>.partial.json, so an interrupted run resumes
(and the adapter-independent baselines can be computed while the adapter trains). Writes <out>.json and
<out>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_ahn import AhnForCausalLM
from modeling_ahn.evaluation.probes import chat_probe, needle_score, passkey_correct, segments, token_nll

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default=None, help="AHN adapter dir (default: the shipped SmolLM2 AHN-GDN)")
    ap.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")
    ap.add_argument("--out", default=str(HERE / "results" / "quality_smollm2_gdn"))
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--segments", type=int, default=30, help="8192-token segments for (a)")
    ap.add_argument("--long-segments", type=int, default=2, help="32k-token segments for (b)")
    ap.add_argument("--probe-lengths", default="2048,4096,8192,16384")
    ap.add_argument("--probe-trials", type=int, default=2, help="depths per length for passkey and needle")
    ap.add_argument("--methods", default="full,swa,ahn", help="subset to run now (others resume later)")
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default

    base = args.base or str(fetch_default()["llama"])
    methods = args.methods.split(",")
    adapter = args.adapter
    if adapter is None and "ahn" in methods:
        from modeling_ahn.default.shipped import shipped_repo

        adapter = str(shipped_repo("gdn", base=base))
    parts = args.parts.split(",")
    partial_path = Path(args.out + ".partial.json")

    def stored() -> dict:  # re-read each time: other runs (e.g. --parts c in parallel) may have added units
        return json.loads(partial_path.read_text()) if partial_path.exists() else {}

    done = stored()

    def record(key, value):
        done.update(stored())
        done[key] = value
        done.setdefault("dates", {})[key] = time.strftime("%Y-%m-%d")  # units of one report may be days apart
        partial_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(done, indent=1, sort_keys=True))
        os.replace(tmp, partial_path)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = None
    if "ahn" in methods:
        kw = {"dtype": torch.bfloat16}
        if args.adapter and args.base:  # a given adapter over a given base
            kw = {"base_model": base, "dtype": torch.bfloat16}
        model = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True, sliding_window=args.window,
                                                     num_sinks=args.sinks, **kw)
    else:  # the baselines do not depend on the adapter's weights
        model = AhnForCausalLM.from_base(base, ahn_type="gdn", sliding_window=args.window, num_sinks=args.sinks,
                                         dtype=torch.bfloat16)
    model.eval()
    plain = None  # the base itself, for cached full-attention generation

    austen = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]

    def run_nll(method, ids):
        with model.attention_mode(method), torch.autocast("cpu", dtype=torch.bfloat16):
            return token_nll(model, torch.tensor([ids]))

    # (a) ------------------------------------------------------------------------------------------------
    if "a" in parts:
        segs = segments(austen, 8192, args.segments, skip=512)
        units = [(m, i) for i in range(len(segs)) for m in methods if f"a/{m}/{i}" not in done]
        for m, i in tqdm(units, desc="(a) 8k perplexity", unit="segment"):
            nll = run_nll(m, segs[i])[1023:]  # targets at positions >= 1024
            record(f"a/{m}/{i}", [float(nll.sum()), int(nll.numel())])

    # (b) ------------------------------------------------------------------------------------------------
    if "b" in parts:
        segs = segments(austen, 32768, args.long_segments, skip=512)
        units = [(m, i) for i in range(len(segs)) for m in methods if f"b/{m}/{i}" not in done]
        for m, i in tqdm(units, desc="(b) 32k perplexity", unit="segment"):
            nll = run_nll(m, segs[i])
            record(f"b/{m}/{i}", {"1k-8k": [float(nll[1023:8191].sum()), int(nll[1023:8191].numel())],
                                  "8k-32k": [float(nll[8191:].sum()), int(nll[8191:].numel())]})

    # (c) ------------------------------------------------------------------------------------------------
    if "c" in parts:
        haystack = "\n\n".join(held_out_documents("pg_essays").values())
        lengths = [int(x) for x in args.probe_lengths.split(",")]
        depths = [0.1 + 0.6 * k / max(1, args.probe_trials - 1) for k in range(args.probe_trials)]
        units = [(task, m, L, d) for task in ("passkey", "needle") for L in lengths for d in depths for m in methods
                 if f"c/{task}/{m}/{L}/{d:.3f}" not in done]
        for task, m, L, d in tqdm(units, desc="(c) passkey / needle", unit="probe"):
            probe, text = chat_probe(tok, task, L, d, haystack)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if m == "full":
                if plain is None:
                    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
                gen = plain.generate(ids, max_new_tokens=24, do_sample=False)
            else:
                with model.attention_mode(m), torch.no_grad():
                    gen = model.generate(ids, max_new_tokens=24, do_sample=False)
            out = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            score = passkey_correct(probe, out) if task == "passkey" else needle_score(out)
            record(f"c/{task}/{m}/{L}/{d:.3f}", {"score": score, "output": out, "tokens": int(ids.shape[1]),
                                                "fact_token": probe.fact_token})

    done.update(stored())
    report = summarize(done, args, base, adapter)
    if report is not None:
        Path(args.out + ".json").write_text(json.dumps(report, indent=2))
        plot(report, Path(args.out + ".png"))
        print(json.dumps({k: v for k, v in report.items() if k in ("perplexity_8k", "beyond_8k")}, indent=2))


def _ppl(pairs):
    s = sum(p[0] for p in pairs)
    n = sum(p[1] for p in pairs)
    return math.exp(s / n) if n else None


def gap_interval(units, draws: int = 2000, seed: int = 0):
    """95 % bootstrap interval of the gap closed, resampling segments (each with its full / swa / ahn NLL sums,
    kept together: the methods are compared on the same text)."""
    import random

    rng, gaps = random.Random(seed), []
    for _ in range(draws):
        pick = [rng.choice(units) for _ in units]
        ppl = {m: _ppl([u[m] for u in pick]) for m in ("full", "swa", "ahn")}
        if ppl["swa"] != ppl["full"]:
            gaps.append((ppl["swa"] - ppl["ahn"]) / (ppl["swa"] - ppl["full"]))
    gaps.sort()
    return [gaps[int(0.025 * len(gaps))], gaps[min(len(gaps) - 1, int(0.975 * len(gaps)))]] if gaps else None


def summarize(done, args, base, adapter):
    rep = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "base": Path(base).name,
           "adapter": Path(adapter).name if adapter else None,
           "window": args.window, "sinks": args.sinks}
    dates = {}
    for k, d in done.get("dates", {}).items():  # the days each method's units were measured on
        part = k.split("/")  # a/<method>/<i>, b/<method>/<i>, c/<task>/<method>/<length>/<depth>
        dates.setdefault(part[2] if part[0] == "c" else part[1], set()).add(d)
    rep["dates"] = {m: sorted(d) for m, d in sorted(dates.items())}
    # (a): per segment, the three methods' NLL sums; only segments every method has measured are compared
    a = {m: {k.split("/")[2]: v for k, v in done.items() if k.startswith(f"a/{m}/")} for m in ("full", "swa", "ahn")}
    units = [{m: a[m][i] for m in a} for i in sorted(set.intersection(*map(set, a.values())), key=int)]
    if units:
        ppl = {m: _ppl([u[m] for u in units]) for m in a}
        rep["perplexity_8k"] = {"segments": len(units), "positions": ">=1024", **ppl,
                                "gap_closed": (ppl["swa"] - ppl["ahn"]) / (ppl["swa"] - ppl["full"]),
                                "gap_closed_ci95": gap_interval(units)}
    b = {m: [v for k, v in done.items() if k.startswith(f"b/{m}/")] for m in ("full", "swa", "ahn")}
    b = {m: rows for m, rows in b.items() if rows}
    if "ahn" in b:
        rep["beyond_8k"] = {}
        for m, rows in b.items():
            near, far = _ppl([r["1k-8k"] for r in rows]), _ppl([r["8k-32k"] for r in rows])
            rep["beyond_8k"][m] = {"segments": len(rows), "ppl_1k_8k": near, "ppl_8k_32k": far, "ratio": far / near}
    c = {}
    for k, v in done.items():
        if k.startswith("c/"):
            _, task, m, L, _d = k.split("/")
            c.setdefault(task, {}).setdefault(m, {}).setdefault(L, []).append(v["score"])
    if c:
        rep["retrieval"] = {task: {m: {L: sum(s) / len(s) for L, s in sorted(by_len.items(), key=lambda x: int(x[0]))}
                                   for m, by_len in by_m.items()} for task, by_m in c.items()}
        rep["retrieval_note"] = ("score = passkey exact match / fraction of needle keywords; full attention beyond "
                                 "8192 tokens is extrapolation past SmolLM2's trained length")
    return rep


def plot(rep, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"full": "tab:blue", "swa": "tab:orange", "ahn": "tab:green"}
    if "perplexity_8k" in rep:
        p = rep["perplexity_8k"]
        axes[0].bar(["full (8k)", f"sinks+SWA ({rep['window']})", f"AHN ({rep['window']})"],
                    [p["full"], p["swa"], p["ahn"]], color=[colors["full"], colors["swa"], colors["ahn"]])
        axes[0].set_ylim(min(p["full"], p["ahn"]) * 0.97, p["swa"] * 1.02)
        axes[0].set_title(f"(a) Austen ppl, positions >= 1024 ({p['segments']} x 8k)\ngap closed "
                          f"{p['gap_closed']:.2f}")
    if "beyond_8k" in rep:
        for m, r in rep["beyond_8k"].items():
            axes[1].plot(["1k-8k", "8k-32k"], [r["ppl_1k_8k"], r["ppl_8k_32k"]], "o-", color=colors[m], label=m)
        axes[1].set_yscale("log")
        axes[1].set_title("(b) 32k segments: perplexity by position")
        axes[1].legend()
    if "retrieval" in rep:
        for task, style in (("passkey", "-"), ("needle", "--")):
            for m, by_len in rep["retrieval"].get(task, {}).items():
                axes[2].plot([int(x) for x in by_len], list(by_len.values()), style, marker="o", color=colors[m],
                             label=f"{task} {m}")
        axes[2].set_xscale("log", base=2)
        axes[2].set_title("(c) retrieval beyond the window")
        axes[2].set_xlabel("tokens")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
