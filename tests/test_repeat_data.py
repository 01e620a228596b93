"""``--repeat-fraction``: training sequences in which a passage recurs more than a window later."""

from __future__ import annotations

import random

import pytest

from modeling_ahn.training.data import with_repeat
from modeling_ahn.training.distill import DistillConfig


@pytest.mark.parametrize("seed", range(20))
def test_the_passage_recurs_beyond_the_window_and_the_length_is_kept(seed):
    seq = list(range(1000, 3048))  # distinct tokens: every value says where it came from
    window, sinks = 512, 64
    out = with_repeat(seq, window, sinks, random.Random(seed))
    assert len(out) == len(seq)
    # the first place where the output stops following the document is the repeat's start b
    b = next(i for i, (x, y) in enumerate(zip(out, seq)) if x != y)
    a = out[b] - 1000
    P = next(i for i in range(len(out) - b) if out[b + i] != seq[a + i]) if out[b:] != seq[a: a + len(out) - b] \
        else len(out) - b
    assert 32 <= P <= 256 and a >= sinks and b - a >= P + window
    assert out[b + P:] == seq[b: len(seq) - P]  # then the document goes on where it left off


def test_a_sequence_too_short_for_a_repeat_is_unchanged():
    seq = list(range(600))
    assert with_repeat(seq, 512, 0, random.Random(0)) == seq


def test_repeat_fraction_is_validated():
    cfg = DistillConfig(base="b", data=["d"], output_dir="o", repeat_fraction=1.5)
    with pytest.raises(ValueError, match="repeat_fraction"):
        cfg.validate()
