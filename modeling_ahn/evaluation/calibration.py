# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Calibration probe: which layers and heads need a memory, and does what they miss depend on the document?

For a layer, ``delta = y_full - y_window`` is the part of its full-attention output (before ``o_proj``, per head)
that comes from the tokens that left the window (window + sinks attention is ``y_window``). Both come from one
teacher-forced pass (``training.layer_local``): the full-attention forward's inputs of the layer, attended once
with full attention and once with sinks + window. Two numbers per layer and head, over query positions whose
window holds no swapped token:

- ``far_share = sum |delta|^2 / sum |y_full|^2``: how much of the output comes from beyond the window;
- ``content_share = sum |delta_A - delta_B|^2 / (sum |delta_A|^2 + sum |delta_B|^2)``, where ``B`` is the same
  document with its evicted tokens ``[sinks, prefix)`` replaced by another document's: 0 when the far part is the
  same whatever was read (a bias a memory need not carry), about 1 when the two are unrelated (pure content),
  up to 2 when they are opposed.

A memory trained to reproduce ``delta`` is only a *memory* where ``content_share`` is large; where it is small
the same gain comes from a constant. Tooling, not payload.
"""

from __future__ import annotations

import torch

from ..training.layer_local import layer_local_parts


def swap_evicted(a: list[int], b: list[int], sinks: int, prefix: int) -> list[int]:
    """``a`` with its tokens ``[sinks, prefix)`` taken from ``b`` (its sinks and everything from ``prefix`` kept)."""
    if not 0 <= sinks <= prefix <= min(len(a), len(b)):
        raise ValueError(f"need 0 <= sinks ({sinks}) <= prefix ({prefix}) <= the documents' lengths")
    return a[:sinks] + b[sinks:prefix] + a[prefix:]


def first_unswapped_query(prefix: int, window: int) -> int:
    """The first query position whose window ``[t - window + 1, t]`` lies wholly at or after ``prefix``."""
    return prefix + window - 1


@torch.no_grad()
def calibration_sums(model, ids_a: list[int], ids_b: list[int], prefix: int) -> dict[int, dict[str, torch.Tensor]]:
    """Per AHN layer, per head ``[H]`` float64 sums over the scored positions of one document pair: ``y2``
    (``|y_full_A|^2``), ``d2`` (``|delta_A|^2``), ``d2_other`` (``|delta_B|^2``) and ``diff2``
    (``|delta_A - delta_B|^2``), at the model's current window and sinks."""
    start = first_unswapped_query(prefix, model.config.sliding_window)
    if start >= len(ids_a):
        raise ValueError(f"prefix {prefix} + window {model.config.sliding_window} leaves no query in {len(ids_a)}")
    device = next(model.parameters()).device
    parts = [layer_local_parts(model, torch.tensor([ids], device=device)) for ids in (ids_a, ids_b)]
    sums = {}
    for i in parts[0]:
        (full_a, win_a), (full_b, win_b) = parts[0][i], parts[1][i]  # [1, T, H, D]
        d_a = (full_a - win_a)[0, start:].double()
        d_b = (full_b - win_b)[0, start:].double()
        sums[i] = {"y2": full_a[0, start:].double().pow(2).sum((0, 2)), "d2": d_a.pow(2).sum((0, 2)),
                   "d2_other": d_b.pow(2).sum((0, 2)), "diff2": (d_a - d_b).pow(2).sum((0, 2))}
    return sums


def calibration_report(sums: list[dict[int, dict[str, torch.Tensor]]]) -> dict:
    """Per layer and head: ``far_share`` and ``content_share`` over document pairs (their sums pooled), and the same
    per layer over all heads."""
    layers = sorted(sums[0])
    report = {"layers": layers, "far_share": [], "content_share": [], "layer_far_share": [],
              "layer_content_share": []}
    for i in layers:
        tot = {k: sum(s[i][k] for s in sums) for k in sums[0][i]}
        report["far_share"].append((tot["d2"] / tot["y2"]).tolist())
        report["content_share"].append((tot["diff2"] / (tot["d2"] + tot["d2_other"])).tolist())
        report["layer_far_share"].append(float(tot["d2"].sum() / tot["y2"].sum()))
        report["layer_content_share"].append(float(tot["diff2"].sum() / (tot["d2"] + tot["d2_other"]).sum()))
    return report


def plot_calibration(report: dict, path) -> bool:
    """Two heat maps (layer x head): far share and content share. ``False`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.22 * len(report["layers"]) + 2.2), sharey=True)
    for ax, key, title, vmax in ((axes[0], "far_share", "far share: |Δ|² / |y_full|²", None),
                                 (axes[1], "content_share", "content share: |ΔA − ΔB|² / (|ΔA|² + |ΔB|²)", 1.0)):
        im = ax.imshow(torch.tensor(report[key]).numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("layer")
    axes[0].set_yticks(range(len(report["layers"])), [str(i) for i in report["layers"]], fontsize=6)
    fig.suptitle(report.get("title", "what window + sinks attention misses, and whether it is content"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


__all__ = ["calibration_report", "calibration_sums", "first_unswapped_query", "plot_calibration", "swap_evicted"]
