"""How much of the document can a memory that reads linearly carry, at best? A ceiling, per layer.

    python benchmarks/content_ceiling.py [--pairs 4] [--length 4096] [--prefix 2048] [--window 512] [--sinks 64]
        [--out benchmarks/results/content_ceiling_smollm2]

Every memory of the official format reads its state linearly: GatedDeltaNet and DeltaNet return ``S_t^T q_t``
with ``q_t`` the (L2-normalised) attention query, Mamba2 the same with its own read vector. For a held-out pair of
segments ``A`` and ``A'`` that differ only in their far tokens ``[sinks, prefix)`` (Austen, never trained on),
the document-dependent part of what window + sinks attention misses is ``c_t = delta_t(A) - delta_t(A')``
(``delta = y_full - y_window``, per head, before ``o_proj``) at every query ``t`` whose window holds no swapped
token. Whatever two memories ``S(A)``, ``S(A')`` hold, a linear read-out supplies ``(S(A) - S(A'))^T q_t`` of it.
This script fits, per pair, layer and head, the best such map (ridge least squares with a bias, the state
difference held fixed over the scored region) on alternate 128-query blocks and scores it on the others, for two
read vectors: the query after RoPE (the official read) and before it (``position_free``, to which a learned
``q_proj`` adds nothing a fitted map does not already have). It reports, per layer, the held-out share of ``c``
(after ``o_proj``, as ``benchmarks/memory_ab.py``'s ``content``) that the best map reproduces, with a 95 % bootstrap
interval over pairs, next to the size of ``c`` relative to ``delta`` (how much of the far context is document).

A trained memory cannot exceed this share by reading linearly (up to the decay of the state difference over the
scored region, which the fit holds fixed); a share far below the acceptance targets says the read-out, not the
training budget, is what limits content. Writes ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
READS = ("after_rope", "before_rope")


def fit_share(x: torch.Tensor, y: torch.Tensor, block: int = 128, ridge: float = 1e-3) -> torch.Tensor:
    """Fit ``y ~ [x, 1] @ M`` on alternate ``block``-row blocks, predict the other blocks (and vice versa: every
    row is predicted by a map that did not see it). Returns the predictions."""
    n = x.shape[0]
    X = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    fold = (torch.arange(n) // block) % 2
    pred = torch.empty_like(y)
    for f in (0, 1):
        tr, te = fold != f, fold == f
        A = X[tr]
        gram = A.T @ A
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=x.dtype)
        M = torch.linalg.solve(gram, A.T @ y[tr])
        pred[te] = X[te] @ M
    return pred


def ceilings(model, ids_a: list[int], ids_b: list[int], prefix: int) -> dict[int, dict[str, tuple[float, float]]]:
    """Per layer: ``{read: (sum |pred - c|^2, sum |c|^2)}`` after ``o_proj``, plus ``"delta": (sum |c|^2,
    sum |delta_A|^2)``."""
    from modeling_ahn.attention_ahn import get_layer_spec
    from modeling_ahn.evaluation.calibration import first_unswapped_query
    from modeling_ahn.memory_ahn import l2norm
    from modeling_ahn.training.layer_local import layer_output, record_teacher

    start = first_unswapped_query(prefix, model.config.sliding_window)
    recs = [record_teacher(model, torch.tensor([ids])) for ids in (ids_a, ids_b)]
    out = {}
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        spec = get_layer_spec(attn)
        ra, rb = recs[0][i], recs[1][i]
        with torch.no_grad():
            delta_a = (ra.target - layer_output(spec, attn, ra, None, "swa"))[0, start:].double()  # [n, H, D]
            delta_b = (rb.target - layer_output(spec, attn, rb, None, "swa"))[0, start:].double()
        c = delta_a - delta_b
        W = attn.o_proj.weight.double()
        q_after = ra.query[0, :, start:].double()  # [H, n, D]; queries after the swap are the same in A and A'
        cos, sin = (r[0, start:].double() for r in ra.rotation)
        half = q_after.shape[-1] // 2
        rot_back = torch.cat([-q_after[..., half:], q_after[..., :half]], -1)  # rotate_half(q)
        q_before = q_after * cos - rot_back * sin  # RoPE undone (rotation by -theta)
        row = {}
        c_out = c.flatten(-2) @ W.T
        for name, q in (("after_rope", q_after), ("before_rope", q_before)):
            pred = torch.stack([fit_share(l2norm(q[h]), c[:, h]) for h in range(c.shape[1])], 1)
            err = (pred - c).flatten(-2) @ W.T
            row[name] = (float(err.pow(2).sum()), float(c_out.pow(2).sum()))
        row["delta"] = (float(c_out.pow(2).sum()), float((delta_a.flatten(-2) @ W.T).pow(2).sum()))
        out[i] = row
    return out


def summarise(units: list[dict], draws: int = 1000) -> dict:
    from modeling_ahn.evaluation.content import bootstrap

    layers = sorted(units[0])
    res = {}
    for i in layers:
        us = [u[i] for u in units]
        res[i] = {name: bootstrap([u[name] for u in us], lambda s: 1 - sum(a for a, _ in s) / sum(b for _, b in s),
                                  draws) for name in READS}
        res[i]["content_of_delta"] = bootstrap([u["delta"] for u in us],
                                               lambda s: sum(a for a, _ in s) / sum(b for _, b in s), draws)
    return res


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    layers = [int(i) for i in report["layers"]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for name, style in (("after_rope", "o-"), ("before_rope", "s--")):
        vals = [report["layers"][str(i)][name] for i in layers]
        ax.plot(layers, [v["value"] for v in vals], style, label=f"best linear read-out, query {name.replace('_', ' ')}")
        ax.fill_between(layers, [v["interval"][0] for v in vals], [v["interval"][1] for v in vals], alpha=0.2)
    ax.plot(layers, [report["layers"][str(i)]["content_of_delta"]["value"] for i in layers], ":", color="gray",
            label="|c|^2 / |delta|^2 (document share of the far context)")
    ax.axhline(0.2, color="red", lw=0.8, label="issue 22 target (swap share 0.2)")
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out share of c")
    ax.set_title(report["title"], fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--prefix", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "content_ceiling"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from modeling_ahn import AhnForCausalLM
    from modeling_ahn.benchmarking.bench import machine_info
    from modeling_ahn.default.corpora import held_out_documents
    from modeling_ahn.default.model import fetch_default
    from modeling_ahn.evaluation.calibration import swap_evicted
    from modeling_ahn.evaluation.probes import segments

    base = args.base or str(fetch_default()["llama"])
    tok = AutoTokenizer.from_pretrained(base)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in held_out_documents("austen").values()]
    segs = segments(docs, args.length, 2 * args.pairs, skip=512)
    if len(segs) < 2 * args.pairs:
        raise SystemExit(f"the held-out Austen text gives {len(segs)} segments of {args.length} tokens, "
                         f"need {2 * args.pairs}")
    model = AhnForCausalLM.from_base(base, dtype=torch.float32, sliding_window=args.window, num_sinks=args.sinks,
                                     prefill_chunk_size=None).eval()
    units = []
    for p in tqdm(range(args.pairs), desc="pairs"):
        a, b = segs[2 * p], segs[2 * p + 1]
        units.append(ceilings(model, a, swap_evicted(a, b, args.sinks, args.prefix), args.prefix))
    layers = summarise(units)
    report = {"title": f"content ceiling of a linear read-out: {Path(base).name}, window {args.window}, "
                       f"{args.sinks} sinks,\nfar tokens [{args.sinks}, {args.prefix}) swapped, {args.pairs} pairs",
              "machine": machine_info("cpu"), "date": time.strftime("%Y-%m-%d"), "base": Path(base).name,
              "settings": {k: v for k, v in vars(args).items() if k not in ("base", "out")},
              "layers": {str(i): v for i, v in layers.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    plot(report, Path(args.out + ".png"))
    for i, v in layers.items():
        print(f"layer {i:2d}: after RoPE {v['after_rope']['value']:.3f} {v['after_rope']['interval']}  "
              f"before RoPE {v['before_rope']['value']:.3f}  |c|^2/|delta|^2 {v['content_of_delta']['value']:.3f}")


if __name__ == "__main__":
    main()
