# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Does the memory carry the document? Two measurements, each with a 95 % bootstrap interval over segments.

**Far-context swap.** Segment ``A`` and ``A'``: ``A`` with its tokens ``[sinks, prefix)`` (far outside window and
sinks for the scored queries) replaced by another document's. Queries ``t >= prefix + W - 1`` see the same sinks and
the same window in both, so what differs is what reaches them from beyond the window. The *content effect* of a
method is its loss increase on ``A'`` over ``A`` there (nats/token). Full attention's effect is the yardstick; the
AHN's share of it, ``effect_AHN / effect_full``, is how much of the far document's content the memory carries
(sinks + SWA sees none of it directly: its effect is what stacked windows carry up the layers, reported beside).

**Repeat probe.** A passage of ``P`` tokens is read once and recurs ``gap`` tokens later (``gap`` beyond two
windows), with the document's own text between. Mean log-probability of the repeat's tokens (its first excluded:
it cannot be predicted from the passage) for full attention, sinks + SWA and AHN; the AHN's *recovery* is
``(lp_AHN - lp_SWA) / (lp_full - lp_SWA)``: the share of full attention's gain from having read the passage.

Tooling, not payload.
"""

from __future__ import annotations

import random

import torch

from .calibration import first_unswapped_query, swap_evicted
from .probes import token_nll

METHODS = ("full", "swa", "ahn")


def _nll(model, mode: str, ids: list[int], start: int, end: int | None = None) -> torch.Tensor:
    """Per-token NLL (entry ``t``: the loss of token ``t + 1``) at entries ``[start, end)``, in one mode."""
    device = next(model.parameters()).device
    with torch.no_grad(), model.attention_mode(mode):
        return token_nll(model, torch.tensor([ids], device=device))[start:end].double().cpu()


def swap_units(model, pairs: list[tuple[list[int], list[int]]], prefix: int, methods=METHODS) -> list[dict]:
    """Per segment pair ``(A, B)``: ``{method: (mean NLL on A, mean NLL on A with B's far tokens)}`` over the
    scored queries. The model's window and sinks are the ones in force."""
    S, W = model.config.num_sinks, model.config.sliding_window
    start = first_unswapped_query(prefix, W)
    units = []
    for a, b in pairs:
        if start >= len(a) - 1:
            raise ValueError(f"prefix {prefix} + window {W} leaves no scored query in {len(a)} tokens")
        swapped = swap_evicted(a, b, S, prefix)
        units.append({m: (float(_nll(model, m, a, start).mean()), float(_nll(model, m, swapped, start).mean()))
                      for m in methods})
    return units


def repeat_sequence(doc: list[int], passage: int, gap: int, start: int = 0) -> tuple[list[int], int]:
    """``doc[start : start + passage]``, then ``gap - passage`` further tokens of ``doc``, then the passage again.
    Returns ``(tokens, index of the repeat's first token)``."""
    if gap < passage or start + gap > len(doc):
        raise ValueError(f"need passage ({passage}) <= gap ({gap}) and {start + gap} <= the document's {len(doc)}")
    head = doc[start: start + gap]
    return head + doc[start: start + passage], len(head)


def repeat_units(model, docs: list[list[int]], passage: int, gap: int, methods=METHODS) -> list[dict]:
    """Per document: ``{method: mean log-prob of the repeat's tokens 2..P}`` (each predicted from its own past)."""
    units = []
    for doc in docs:
        ids, r = repeat_sequence(doc, passage, gap)
        # entry t of token_nll is token t + 1's loss: tokens r + 1 .. r + P - 1 are entries r .. r + P - 2
        units.append({m: -float(_nll(model, m, ids, r, r + passage - 1).mean()) for m in methods})
    return units


def _interval(values: list[float]) -> list[float] | None:
    values = sorted(v for v in values if v == v)
    if not values:
        return None
    return [values[int(0.025 * len(values))], values[min(len(values) - 1, int(0.975 * len(values)))]]


def bootstrap(units: list, statistic, draws: int = 2000, seed: int = 0) -> dict:
    """``statistic(units)`` and its 95 % interval, resampling whole units (segments) with replacement."""
    rng = random.Random(seed)
    samples = [statistic([rng.choice(units) for _ in units]) for _ in range(draws)]
    return {"value": statistic(units), "interval": _interval([s for s in samples if s is not None])}


def swap_effect(units: list[dict], method: str) -> float:
    """Mean loss increase (nats/token) of ``method`` when the far tokens are another document's."""
    return sum(u[method][1] - u[method][0] for u in units) / len(units)


def swap_share(units: list[dict], method: str = "ahn") -> float | None:
    """``method``'s content effect as a share of full attention's."""
    full = swap_effect(units, "full")
    return swap_effect(units, method) / full if full else None


def repeat_recovery(units: list[dict], method: str = "ahn") -> float | None:
    """``(lp_method - lp_swa) / (lp_full - lp_swa)`` of the mean log-probs on the repeats."""
    mean = {m: sum(u[m] for u in units) / len(units) for m in ("full", "swa", method)}
    gain = mean["full"] - mean["swa"]
    return (mean[method] - mean["swa"]) / gain if gain else None


def content_report(swap: list[dict], repeat: list[dict], draws: int = 2000) -> dict:
    """The far-context swap and the repeat probe, each with 95 % bootstrap intervals over segments."""
    return {
        "far_context_swap": {
            "segments": len(swap),
            "effect_nats": {m: swap_effect(swap, m) for m in METHODS},
            "ahn_share_of_full": bootstrap(swap, swap_share, draws),
            "swa_share_of_full": bootstrap(swap, lambda u: swap_share(u, "swa"), draws),
        },
        "repeat": {
            "documents": len(repeat),
            "mean_logprob": {m: sum(u[m] for u in repeat) / len(repeat) for m in METHODS},
            "ahn_recovery": bootstrap(repeat, repeat_recovery, draws),
        },
    }


__all__ = ["bootstrap", "content_report", "repeat_recovery", "repeat_sequence", "repeat_units", "swap_effect",
           "swap_share", "swap_units"]
