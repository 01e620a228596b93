# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""An lm-eval model whose log-likelihood memory does not grow with the request: ``StreamingLM`` (``--model ahn``).

lm-eval's ``hf`` model scores a request by one forward that returns ``[T, vocab]`` logits and then their
log-softmax (a 32k-token request over SmolLM2's 49k vocabulary: 6.4 GB of float32 logits, twice), and only then
keeps the continuation's positions. ``StreamingLM`` is that same model class (same loading, tokenisation,
truncation, generation and request caching) with one change to ``loglikelihood`` and ``loglikelihood_rolling``:
each request is fed through the model's cache in chunks of ``score_chunk`` tokens, and the LM head runs only on a
chunk's scored positions (``logits_to_keep``), whose log-softmax is reduced to the target log-probs and the greedy
check at once. Peak memory is then the model's own state (AHN: sinks + window + memory, bounded; full attention:
its growing KV cache) plus one chunk's logits, whatever the length. Works for any transformers causal LM that takes
``past_key_values`` and ``logits_to_keep``; an AHN model gets its own cache (``new_cache()``).

Scores equal the ``hf`` model's (tested against it on short requests): the same tokens, the same truncation (left,
to ``max_length + 1``), the same ``(sum log p, is_greedy)`` per request. Requests are scored one at a time
(``batch_size`` is not used for log-likelihoods: a long request is its own batch). Tooling, not payload: importing
this module registers the model name ``ahn`` with lm-eval (``ahn eval`` does; ``python -m
modeling_ahn.evaluation.streaming_lm <lm_eval arguments>`` runs lm-eval's CLI with it registered).
"""

from __future__ import annotations

import inspect
import sys

import torch
import torch.nn.functional as F

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM, eval_logger

DEFAULT_SCORE_CHUNK = 1024


@register_model("ahn")
class StreamingLM(HFLM):
    """lm-eval's ``hf`` model with log-likelihoods scored chunk by chunk (see the module docstring).
    ``score_chunk``: tokens per forward (memory: ``score_chunk x vocab`` logits at a time)."""

    def __init__(self, *args, score_chunk: int = DEFAULT_SCORE_CHUNK, **kwargs):
        super().__init__(*args, **kwargs)
        score_chunk = int(score_chunk)
        if score_chunk < 1:
            raise ValueError(f"score_chunk must be a positive number of tokens, got {score_chunk}")
        if self.backend != "causal":
            raise ValueError(f"StreamingLM scores causal LMs only; this model's backend is {self.backend!r}")
        self.score_chunk = score_chunk

    def _new_cache(self):
        model = self.model
        if hasattr(model, "new_cache"):  # an AHN model: its bounded cache
            return model.new_cache()
        from transformers import DynamicCache

        return DynamicCache(config=model.config)

    @torch.no_grad()
    def score(self, inp: list[int], targets: list[int]) -> tuple[float, bool]:
        """``(sum of log p(targets), whether every target is the argmax)`` where ``targets`` are the tokens that
        follow the last ``len(targets)`` positions of ``inp`` -- what the ``hf`` model returns for one request."""
        n, k = len(inp), len(targets)
        if not 0 < k <= n:
            raise ValueError(f"{k} scored tokens for an input of {n}")
        first = n - k  # the first scored position
        ids = torch.tensor([inp], dtype=torch.long, device=self.device)
        cache, total, greedy = self._new_cache(), 0.0, True  # filled in place, chunk after chunk
        # transformers >= 5.24 names the cache argument `cache` (`past_key_values` is its deprecated alias)
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        dtype = self.softmax_dtype or torch.float32
        for start in range(0, n, self.score_chunk):
            end = min(n, start + self.score_chunk)
            keep = max(0, end - max(start, first))  # scored positions in this chunk: its last `keep`
            with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                enabled=self.mixed_precision_dtype is not None):
                out = self.model(input_ids=ids[:, start:end], use_cache=True, logits_to_keep=max(keep, 1),
                                 **{name: cache})
            if keep == 0:
                continue
            logp = F.log_softmax(out.logits[0, -keep:].to(dtype), dim=-1)
            tgt = torch.tensor(targets[end - keep - first: end - first], dtype=torch.long, device=logp.device)
            total += float(logp.gather(1, tgt[:, None]).sum())
            greedy = greedy and bool((logp.argmax(-1) == tgt).all())
        return total, greedy

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        from tqdm.auto import tqdm

        res = []
        for request_str, context_enc, continuation_enc in tqdm(
                requests, disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests (streaming)"):
            if not context_enc or not continuation_enc:
                raise ValueError("a log-likelihood request needs a non-empty context and continuation")
            if len(continuation_enc) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation_enc)} tokens is longer than max_length "
                                 f"{self.max_length}")
            total_length = len(context_enc) + len(continuation_enc)
            if total_length > self.max_length + 1:
                eval_logger.warning(
                    f"Combined length of context ({len(context_enc)}) and continuation ({len(continuation_enc)}) "
                    f"exceeds model's maximum length ({self.max_length}). "
                    f"Truncating {total_length - self.max_length + 1} tokens from the left.")
            inp = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
            answer = self.score(inp, continuation_enc)
            res.append(answer)
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return res


def main(argv=None) -> None:
    """lm-eval's command line with ``--model ahn`` available."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


__all__ = ["DEFAULT_SCORE_CHUNK", "StreamingLM"]

if __name__ == "__main__":
    main()
