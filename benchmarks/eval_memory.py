"""Peak memory of a long log-likelihood evaluation: lm-eval's ``hf`` model against ``StreamingLM`` (``--model ahn``).

    python benchmarks/eval_memory.py [--lengths 8k,16k,32k] [--hf-lengths 8k,16k] [--threads 1]
        [--out benchmarks/results/eval_memory_cpu]

Each point runs in its own process: the default model (SmolLM2-135M-Instruct + the shipped AHN-GDN adapter, float32,
CPU) scores one held-out Austen request of ``L`` tokens, every token scored (``loglikelihood_rolling``'s window:
what perplexity tasks ask), through lm-eval's ``hf`` model (``HFLM``: ``[L, vocab]`` logits and their
log-softmax) and through ``StreamingLM`` (``modeling_ahn/evaluation/streaming_lm.py``: ``score_chunk`` positions
of logits at a time). Reported per point: the process's peak resident memory (``ru_maxrss``), the same after
loading the model (so the request's own share is the difference), seconds, and the summed log-prob; where both
classes ran at a length, the difference of their log-probs. Writes ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_lengths(text: str) -> list[int]:
    from modeling_ahn.evaluation.task_data import parse_length

    return [parse_length(t) for t in text.split(",") if t]


def child(kind: str, length: int, threads: int, score_chunk: int) -> dict:
    """One measurement, in this process (``--child``)."""
    import torch

    torch.set_num_threads(threads)
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.shipped import shipped_repo
    from modeling_ahn.evaluation.streaming_lm import StreamingLM

    repo = shipped_repo("gdn")
    tok = AutoTokenizer.from_pretrained(repo)
    text = "\n\n".join(held_out_documents("austen").values())
    ids = tok(text, add_special_tokens=False)["input_ids"][:length]
    if len(ids) < length:
        raise SystemExit(f"the held-out Austen text has {len(ids)} tokens, fewer than {length}")
    model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True, dtype=torch.float32).eval()
    cls = {"hf": HFLM, "streaming": StreamingLM}[kind]
    extra = {"score_chunk": score_chunk} if kind == "streaming" else {}
    lm = cls(pretrained=model, tokenizer=tok, batch_size=1, max_length=length, **extra)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ((logp, _),) = lm._loglikelihood_tokens([(None, [prefix], ids)], disable_tqdm=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "length": length, "peak_mib": peak / 1024, "loaded_mib": loaded / 1024,
            "request_mib": (peak - loaded) / 1024, "seconds": seconds, "logprob": logp}


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, label in (("hf", "lm-eval hf (full logits)"), ("streaming", "StreamingLM (--model ahn)")):
        pts = sorted((p["length"], p["peak_mib"]) for p in report["points"] if p["kind"] == kind)
        if pts:
            ax.plot([x / 1024 for x, _ in pts], [y / 1024 for _, y in pts], "o-", label=label)
    ax.set_xlabel("request length (k tokens, every token scored)")
    ax.set_ylabel("peak resident memory (GiB)")
    ax.set_title(report["title"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8k,16k,32k", help="StreamingLM lengths")
    ap.add_argument("--hf-lengths", default="8k,16k", help="lm-eval hf model lengths (memory grows with length)")
    ap.add_argument("--score-chunk", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "eval_memory_cpu"))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.threads, args.score_chunk)))
        return

    from modeling_ahn.benchmarking.bench import machine_info

    todo = [("streaming", L) for L in parse_lengths(args.lengths)] + [("hf", L) for L in parse_lengths(args.hf_lengths)]
    points = []
    for kind, L in todo:
        cmd = [sys.executable, __file__, "--child", kind, str(L), "--threads", str(args.threads),
               "--score-chunk", str(args.score_chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{kind} at {L} failed:\n{out.stderr[-3000:]}")
        points.append(json.loads(out.stdout.strip().splitlines()[-1]))
        p = points[-1]
        print(f"{kind:9s} {L:6d}: peak {p['peak_mib']:8.0f} MiB (request {p['request_mib']:7.0f}) "
              f"{p['seconds']:7.1f} s  log p {p['logprob']:.3f}", flush=True)
    by = {(p["kind"], p["length"]): p for p in points}
    agree = {str(L): by[("streaming", L)]["logprob"] - by[("hf", L)]["logprob"]
             for (k, L) in by if k == "hf" and ("streaming", L) in by}
    lengths = sorted(L for k, L in by if k == "streaming")
    ratios = {f"{L}/{lengths[0]}": by[("streaming", L)]["peak_mib"] / by[("streaming", lengths[0])]["peak_mib"]
              for L in lengths[1:]}
    report = {"title": "peak memory of one every-token-scored request, default model (SmolLM2-135M + AHN-GDN), "
                       "float32, CPU",
              "machine": machine_info("cpu"), "date": time.strftime("%Y-%m-%d"),
              "settings": {"score_chunk": args.score_chunk, "threads": args.threads},
              "points": points, "streaming_peak_ratio": ratios, "logprob_streaming_minus_hf": agree}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    plot(report, Path(args.out + ".png"))
    print("peak ratios (streaming):", json.dumps(ratios), " log p streaming - hf:", json.dumps(agree))


if __name__ == "__main__":
    main()
