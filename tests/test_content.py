"""Content measurements: the calibration probe (evaluation/calibration.py) and the far-context swap and repeat
probe (evaluation/content.py), on tiny models."""

from __future__ import annotations

import pytest
import torch

from .conftest import make_ahn

W, S = 6, 2


def _ids(n, batch=2, seed=0):
    return torch.randint(3, 300, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_calibration_separates_a_bias_from_content():
    """The calibration probe's content share is 0 when the evicted tokens are swapped for the same tokens, and
    positive when they are swapped for other ones; far share is within (0, 1]."""
    from modeling_ahn.evaluation.calibration import calibration_report, calibration_sums, swap_evicted

    model = make_ahn("qwen2", "gdn", W, S)
    a = _ids(40, batch=1, seed=1)[0].tolist()
    b = _ids(40, batch=1, seed=2)[0].tolist()
    prefix = 20
    same = calibration_report([calibration_sums(model, a, swap_evicted(a, a, S, prefix), prefix)])
    other = calibration_report([calibration_sums(model, a, swap_evicted(a, b, S, prefix), prefix)])
    assert all(v == 0 for v in same["layer_content_share"])
    assert all(v > 0.01 for v in other["layer_content_share"]), other["layer_content_share"]
    assert all(0 < v <= 1 for v in other["layer_far_share"])
    assert swap_evicted(a, b, S, prefix)[:S] == a[:S] and swap_evicted(a, b, S, prefix)[prefix:] == a[prefix:]
    with pytest.raises(ValueError):
        swap_evicted(a, b, prefix + 1, prefix)


def test_content_measurements_on_a_memory_that_does_nothing_and_one_that_does():
    """A fresh AHN (o_proj = 0) is sinks + SWA: its swap share equals SWA's and its repeat recovery is 0; a random
    AHN's memory sees the swap. The same document as "other" has no content effect at all."""
    from modeling_ahn.evaluation.content import (
        bootstrap,
        content_report,
        repeat_recovery,
        repeat_sequence,
        repeat_units,
        swap_share,
        swap_units,
    )

    doc = _ids(80, batch=1, seed=3)[0].tolist()
    ids, r = repeat_sequence(doc, passage=8, gap=40)
    assert ids[r:] == doc[:8] and ids[:r] == doc[:40] and len(ids) == 48
    with pytest.raises(ValueError):
        repeat_sequence(doc, passage=8, gap=90)
    pairs = [(_ids(40, 1, s)[0].tolist(), _ids(40, 1, s + 10)[0].tolist()) for s in range(3)]
    fresh = make_ahn("llama", "gdn", W, S, random_ahn=False)
    units = swap_units(fresh, pairs, prefix=20)
    assert swap_share(units, "ahn") == swap_share(units, "swa")
    same = swap_units(fresh, [(a, a) for a, _ in pairs], prefix=20)
    assert all(u[m][0] == u[m][1] for u in same for m in u)
    rep = repeat_units(fresh, [doc, doc[10:]], passage=8, gap=40)
    assert repeat_recovery(rep) == 0
    trained = make_ahn("llama", "gdn", W, S)
    moved = swap_units(trained, pairs, prefix=20)
    assert all(u["ahn"][0] != u["ahn"][1] for u in moved)
    report = content_report(moved, repeat_units(trained, [doc, doc[10:]], passage=8, gap=40), draws=50)
    lo, hi = report["far_context_swap"]["ahn_share_of_full"]["interval"]
    assert lo <= hi
    constant = bootstrap([1.0, 1.0, 1.0], lambda u: sum(u) / len(u), draws=20)
    assert constant == {"value": 1.0, "interval": [1.0, 1.0]}
