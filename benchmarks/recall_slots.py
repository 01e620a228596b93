"""Exact recall beyond the window: passkey and needle with and without recall slots, on held-out text.

    python benchmarks/recall_slots.py --adapter DIR [--lengths 2048,4096,8192,16384] [--depths 0.1,0.3,0.5,0.7,0.9]
        [--slots 16,64] [--methods full,swa,ahn,ahn+slots] [--out benchmarks/results/recall_slots_smollm2]

``--adapter``: an AHN repo with a retention classifier (``ahn train-recall``; its base comes from its config). The
probes are the quality report's (benchmarks/quality.py, part c): the passkey in repeated filler and the San Francisco
needle in Paul Graham's essays (the held-out corpus of ``ahn corpora``), in the chat template, greedy answers of up
to 24 tokens. Methods: ``full`` (the base with full attention, up to its 8k context), ``swa`` (sinks + window),
``ahn`` (no slots) and ``ahn+G`` for each ``G`` of ``--slots``. Scores: passkey exact (the key in the answer), needle
exact (all four key words) and its key-word share. For slotted runs, the share of AHN layers whose slots hold a
token of the fact after the prefill. Every unit is stored as it finishes in <out>.partial.json (resumable); writes
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
from modeling_ahn.evaluation.probes import NEEDLE, needle_probe, needle_score, passkey_probe

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
    logits = model(ids, past_key_values=cache).logits[:, -1]
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
    ap.add_argument("--adapter", required=True, help="AHN repo with a retention classifier (ahn train-recall)")
    ap.add_argument("--out", default=str(HERE / "results" / "recall_slots_smollm2"))
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--slots", default="16,64")
    ap.add_argument("--tasks", default="passkey,needle")
    ap.add_argument("--methods", default="full,swa,ahn,ahn+slots")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.default.corpora import held_out_documents

    model = AhnForCausalLM.from_pretrained(args.adapter, dtype=torch.float32, sliding_window=args.window,
                                           num_sinks=args.sinks).eval()
    if not model.config.recall_head:
        raise SystemExit(f"{args.adapter} has no retention classifier: train one with `ahn train-recall`")
    base_dir = model.config.base_model_name_or_path
    tok = AutoTokenizer.from_pretrained(args.adapter)
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
    for task, m, L, d in tqdm(units, desc="recall probes", unit="probe"):
        probe = passkey_probe(tok, L, d, seed=0) if task == "passkey" else needle_probe(tok, haystack, L, d)
        text = tok.apply_chat_template([{"role": "user", "content": probe.prompt}], tokenize=False,
                                       add_generation_prompt=True)
        if task == "passkey":
            text += "The pass key is"
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
        tmp = partial.with_suffix(f".{os.getpid()}.tmp")
        partial.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(done, indent=1, sort_keys=True))
        os.replace(tmp, partial)
    report = summarize(done, args, methods, lengths)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    plot(report, Path(args.out + ".png"))
    print(json.dumps(report["table"], indent=1))


def summarize(done, args, methods, lengths):
    from modeling_ahn.benchmarking.bench import machine_info

    table = {}
    for key, unit in done.items():
        task, m, L, _ = key.split("/")
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
    return {"machine": machine_info("cpu"), "platform": platform.platform(), "adapter": args.adapter,
            "window": args.window, "sinks": args.sinks, "table": table, "units": done}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(report["table"])
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
