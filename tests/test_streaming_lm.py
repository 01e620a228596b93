"""The streaming lm-eval model (evaluation/streaming_lm.py): the ``hf`` model's log-likelihoods, without its
``[T, vocab]`` logits."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("lm_eval")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from .conftest import save_ahn_repo  # noqa: E402

W, S = 64, 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    base, _ = save_ahn_repo(root, W, S)
    tok = AutoTokenizer.from_pretrained(root / "repo")
    ahn = AutoModelForCausalLM.from_pretrained(root / "repo", trust_remote_code=True, dtype=torch.float32).eval()
    ahn.config.prefill_chunk_size = 48  # requests take the chunked prefill inside the model as well
    full = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    return dict(tok=tok, ahn=ahn, full=full)


def _requests(vocab, seed=0):
    """Token requests ``(None, context, continuation)``: one-token and long continuations, a continuation that
    is the whole input (rolling perplexity's first window), contexts past the window and past ``max_length``."""
    rng = random.Random(seed)

    def toks(n):
        return [rng.randrange(3, vocab) for _ in range(n)]

    shapes = [(1, 1), (5, 1), (40, 3), (130, 1), (200, 150), (1, 299), (350, 20), (700, 5)]
    return [(None, toks(c), toks(k)) for c, k in shapes]


@pytest.mark.parametrize("which", ["ahn", "full"])
def test_scores_equal_the_hf_models(env, which):
    """Every request's ``(log p, is_greedy)`` equals lm-eval's ``hf`` model's, with chunk boundaries inside the
    context, inside the continuation and at it; requests longer than ``max_length`` are cut the same way."""
    from lm_eval.models.huggingface import HFLM

    from modeling_ahn.evaluation.streaming_lm import StreamingLM

    model, tok = env[which], env["tok"]
    reqs = _requests(min(len(tok), model.config.vocab_size))
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=512)._loglikelihood_tokens(reqs, True)
    for chunk in (37, 1024):
        got = StreamingLM(pretrained=model, tokenizer=tok, max_length=512, score_chunk=chunk)._loglikelihood_tokens(
            reqs, True)
        for (lp, g), (rlp, rg) in zip(got, ref):
            assert lp == pytest.approx(rlp, rel=1e-5, abs=2e-4), (which, chunk, lp, rlp)
            assert g == rg
    # a greedy continuation is recognised as one
    ctx = reqs[4][1]
    with torch.no_grad():
        nxt = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
    lm = StreamingLM(pretrained=model, tokenizer=tok, max_length=512, score_chunk=37)
    assert lm._loglikelihood_tokens([(None, ctx, [nxt])], True)[0][1] is True


def test_no_more_than_a_chunk_of_logits_is_ever_made(env):
    """The LM head sees at most ``score_chunk`` positions per call, and only the scored ones: a long context
    with a short continuation costs the continuation's logits, not the context's."""
    from modeling_ahn.evaluation.streaming_lm import StreamingLM

    model, tok = env["ahn"], env["tok"]
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[-2]))
    try:
        lm = StreamingLM(pretrained=model, tokenizer=tok, max_length=4096, score_chunk=64)
        ctx = [3 + i % 200 for i in range(1000)]
        lm._loglikelihood_tokens([(None, ctx, [5, 6, 7])], True)
        assert sum(rows) <= 3 + 1000 // 64 + 1 and max(rows) <= 3, rows  # one position per unscored chunk
        rows.clear()
        lm._loglikelihood_tokens([(None, [1], ctx)], True)  # everything scored (rolling perplexity)
        assert max(rows) <= 64 and sum(rows) == len(ctx), rows
    finally:
        handle.remove()


def test_rolling_perplexity_through_lm_eval_equals_the_hf_model(env):
    """``loglikelihood_rolling`` (lm-eval's perplexity tasks) gives the ``hf`` model's numbers."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from modeling_ahn.evaluation.streaming_lm import StreamingLM

    model, tok = env["ahn"], env["tok"]
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 30
    req = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=256).loglikelihood_rolling(req, True)
    got = StreamingLM(pretrained=model, tokenizer=tok, max_length=256, score_chunk=50).loglikelihood_rolling(req, True)
    assert got[0] == pytest.approx(ref[0], rel=1e-5)


def test_bad_settings_are_refused(env):
    from modeling_ahn.evaluation.streaming_lm import StreamingLM

    with pytest.raises(ValueError, match="score_chunk"):
        StreamingLM(pretrained=env["ahn"], tokenizer=env["tok"], score_chunk=0)
    lm = StreamingLM(pretrained=env["ahn"], tokenizer=env["tok"], max_length=64)
    with pytest.raises(ValueError, match="longer than max_length"):
        lm._loglikelihood_tokens([(None, [1], list(range(3, 100)))], True)


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from modeling_ahn.evaluation.streaming_lm import StreamingLM

    assert get_model("ahn") is StreamingLM
