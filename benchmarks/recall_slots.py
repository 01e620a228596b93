"""Exact recall beyond the window: passkey and needle with and without recall slots, on held-out text.

    python benchmarks/recall_slots.py [--adapter DIR] [--lengths 2048,4096,8192,16384] [--depths 0.1,0.3,0.5,0.7,0.9]
        [--slots 16,64] [--methods full,swa,ahn,ahn+slots] [--score learned|novelty] [--pool mean|layer]
        [--out benchmarks/results/recall_slots_smollm2]

``--adapter``: an AHN repo (its base comes from its config); ``--score learned`` (default) needs its retention
classifier (``ahn train-recall``), ``--score novelty`` is training-free. The
probes are the quality report's (benchmarks/quality.py, part c): the passkey in repeated filler and the San Francisco
needle in Paul Graham's essays (the held-out corpus of ``ahn corpora``), in the chat template, greedy answers of up
to 24 tokens. Methods: ``full`` (the base with full attention, up to its 8k context), ``swa`` (sinks + window),
``ahn`` (no slots) and ``ahn+G`` for each ``G`` of ``--slots``. Scores: passkey exact (the key in the answer), needle
exact (all four key words) and its key-word share. For slotted runs, the share of AHN layers whose slots hold a
token of the fact after the prefill. ``--tasks ppl``: perplexity on positions >= 1024 of ``--ppl-segments`` disjoint
Austen segments (held out) of each length, per method (full attention only within the base's context). Every
unit is stored as it finishes in <out>.partial.json (resumable); writes
<out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_ahn import AhnCache, AhnForCausalLM
from modeling_ahn.evaluation.probes import NEEDLE, chat_probe, needle_score, segments, token_nll

HERE = Path(__file__).resolve().parent


def fact_tokens(text: str, answer: str, offsets) -> list[int]:
    """Token indices of every occurrence of ``answer`` in ``text`` before the question (the last line)."""
    end = text.rfind("\n\n")
    spans, i = [], text.find(answer)
    while 0 <= i < end:
        spans.append((i, i + len(answer)))
        i = text.find(answer, i + 1)
    return [t for t, (s, e) in enumerate(offsets) if any(s < b and a < e for a, b in spans)]


@torch.no_grad()
def greedy(model, ids, max_new: int, eos: set[int]):
    """Greedy answer through an AhnCache (the same tokens as generate(do_sample=False)); returns (tokens, cache)."""
    cache = AhnCache(model.config)
    logits = model(ids, past_key_values=cache, logits_to_keep=1).logits[:, -1]  # (all 32k logits: 6 GB)
    prefilled = [(layer.slot_rpos.clone() if layer.slot_rpos is not None else None) for layer in cache.layers]
    out = []
    for _ in range(max_new):
        nxt = int(logits.argmax(-1))
        if nxt in eos:
            break
        out.append(nxt)
        logits = model(torch.tensor([[nxt]]), past_key_values=cache).logits[:, -1]
    return out, prefilled


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default=str(HERE.parent / "runs" / "smollm2-ahn-gdn-recall"),
                    help="AHN adapter with a retention classifier (ahn train-recall; default: the committed one for "
                    "the default model)")
    ap.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")
    ap.add_argument("--out", default=str(HERE / "results" / "recall_slots_smollm2"))
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--slots", default="16,64")
    ap.add_argument("--tasks", default="passkey,needle")
    ap.add_argument("--methods", default="full,swa,ahn,ahn+slots")
    ap.add_argument("--ppl-segments", type=int, default=3)
    ap.add_argument("--distance", type=int, default=None, help="recall_distance (default: the adapter's, W)")
    ap.add_argument("--score", choices=("learned", "novelty"), default="learned",
                    help="recall_score: the adapter's retention classifier, or the training-free novelty score")
    ap.add_argument("--pool", choices=("mean", "layer"), default="mean",
                    help="recall_pool: each layer ranks by the mean score of the AHN layers up to it, or by its own")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default

    base_dir = args.base or str(fetch_default()["llama"])
    model = AhnForCausalLM.from_pretrained(args.adapter, base_model=base_dir, dtype=torch.float32,
                                           sliding_window=args.window, num_sinks=args.sinks).eval()
    model.config.recall_distance = args.distance
    model.config.recall_score = args.score
    model.config.recall_pool = args.pool
    if args.score == "learned" and not model.config.recall_head:
        raise SystemExit(f"{args.adapter} has no retention classifier: train one with `ahn train-recall`")
    tok = AutoTokenizer.from_pretrained(base_dir)
    eos = {tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else (model.generation_config.eos_token_id or []))}
    haystack = "\n\n".join(held_out_documents("pg_essays").values())
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    slots = [int(x) for x in args.slots.split(",")]
    methods = []
    for m in args.methods.split(","):
        methods += [f"ahn+{g}" for g in slots] if m == "ahn+slots" else [m]
    partial = Path(args.out + ".partial.json")
    done = json.loads(partial.read_text()) if partial.exists() else {}
    plain = None
    context = model.config.base_config.max_position_embeddings
    units = [(t, m, L, d) for t in args.tasks.split(",") for L in lengths for d in depths for m in methods
             if f"{t}/{m}/{L}/{d:.2f}" not in done and not (m == "full" and L > context)]
    if "ppl" in args.tasks.split(","):
        austen = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]
        ppl_units = [(m, L, i) for L in lengths for i in range(args.ppl_segments) for m in methods
                     if f"ppl/{m}/{L}/{i}" not in done and not (m == "full" and L > context) and m != "swa"]
        for m, L, i in tqdm(ppl_units, desc="perplexity", unit="segment"):
            seg = torch.tensor([segments(austen, L, args.ppl_segments, skip=512)[i]])
            g = int(m.split("+")[1]) if "+" in m else 0
            with model.runtime(mode="full" if m == "full" else "ahn", num_recall_slots=g):
                nll = token_nll(model, seg)[1023:]
            done[f"ppl/{m}/{L}/{i}"] = {"nll_sum": float(nll.sum()), "tokens": int(nll.numel())}
            _store(partial, done)
        units = [u for u in units if u[0] != "ppl"]
    for task, m, L, d in tqdm(units, desc="recall probes", unit="probe"):
        probe, text = chat_probe(tok, task, L, d, haystack)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        facts = fact_tokens(text, probe.answer if task == "passkey" else NEEDLE, enc["offset_mapping"])
        t0 = time.time()
        held = None
        if m == "full":
            if plain is None:
                plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
            with torch.no_grad():
                gen = plain.generate(ids, max_new_tokens=24, do_sample=False)
            answer = gen[0, ids.shape[1]:].tolist()
        else:
            mode, g = ("swa", 0) if m == "swa" else ("ahn", int(m.split("+")[1]) if "+" in m else 0)
            with model.runtime(mode=mode, num_recall_slots=g):
                answer, prefilled = greedy(model, ids, 24, eos)
            if g:
                fact_set = set(facts)
                held = sum(bool(fact_set & set(r[0].tolist())) for r in prefilled if r is not None)
                held /= sum(r is not None for r in prefilled)
        out = tok.decode(answer, skip_special_tokens=True)
        score = float(probe.answer in out) if task == "passkey" else needle_score(out)
        done[f"{task}/{m}/{L}/{d:.2f}"] = {"score": score, "exact": float(score == 1.0), "output": out,
                                          "tokens": int(ids.shape[1]), "fact_tokens": facts[:8],
                                          "layers_holding_fact": held, "seconds": round(time.time() - t0, 1)}
        _store(partial, done)
    report = summarize(done, args, methods, lengths)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    plot(report, Path(args.out + ".png"))
    print(json.dumps({"table": report["table"], "perplexity": report["perplexity"]}, indent=1))


def _shown(path: str) -> str:
    """A path as recorded in results: relative to the repository when inside it (no machine paths committed)."""
    p = Path(path).resolve()
    return str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else p.name


def _store(partial: Path, done: dict) -> None:
    tmp = partial.with_suffix(f".{os.getpid()}.tmp")
    partial.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(done, indent=1, sort_keys=True))
    os.replace(tmp, partial)


def summarize(done, args, methods, lengths):
    import math

    from modeling_ahn.benchmarking.bench import machine_info

    table, ppl = {}, {}
    for key, unit in done.items():
        task, m, L, _ = key.split("/")
        if task == "ppl":
            acc = ppl.setdefault(m, {}).setdefault(L, [0.0, 0, 0])
            acc[0] += unit["nll_sum"]
            acc[1] += unit["tokens"]
            acc[2] += 1
            continue
        cell = table.setdefault(task, {}).setdefault(m, {}).setdefault(L, {"exact": [], "score": [], "held": []})
        cell["exact"].append(unit["exact"])
        cell["score"].append(unit["score"])
        if unit.get("layers_holding_fact") is not None:
            cell["held"].append(unit["layers_holding_fact"])
    for task in table.values():
        for per_len in task.values():
            for L, c in per_len.items():
                per_len[L] = {"exact": sum(c["exact"]) / len(c["exact"]), "score": sum(c["score"]) / len(c["score"]),
                              "n": len(c["exact"]),
                              "layers_holding_fact": (sum(c["held"]) / len(c["held"])) if c["held"] else None}
    perplexity = {m: {L: {"ppl": math.exp(a[0] / a[1]), "segments": a[2]} for L, a in per.items()}
                  for m, per in ppl.items()}
    return {"machine": machine_info("cpu"), "platform": platform.platform(), "adapter": _shown(args.adapter),
            "recall_score": args.score, "recall_pool": args.pool, "window": args.window, "sinks": args.sinks,
            "recall_distance": args.distance,
            "table": table, "perplexity": perplexity, "units": done}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(report["table"])
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m, per_len in sorted(report["table"][task].items()):
            Ls = sorted(per_len, key=int)
            ax.plot([int(L) for L in Ls], [per_len[L]["exact"] for L in Ls], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task}: exact recall (fact beyond the window)")
        ax.set_xlabel("prompt tokens")
        ax.set_ylim(-0.05, 1.05)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
