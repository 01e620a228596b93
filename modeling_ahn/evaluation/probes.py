# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Long-context probes shared by the quality report and the evaluation suite: perplexity segments and
positions, passkey and needle-in-a-haystack prompts. Deterministic for a given seed. Not part of the payload.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

PASSKEY_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_QUESTION = "What is the best thing to do in San Francisco?"
NEEDLE_KEYWORDS = ("sandwich", "dolores", "park", "sunny")


def segments(token_docs: list[list[int]], length: int, count: int, skip: int = 0) -> list[list[int]]:
    """Up to ``count`` disjoint ``length``-token segments, taken round-robin over the documents (the first
    ``skip`` tokens of each document are skipped: front matter), so that every document contributes."""
    cursors = [skip] * len(token_docs)
    out = []
    while len(out) < count:
        progressed = False
        for i, doc in enumerate(token_docs):
            if len(out) == count:
                break
            if cursors[i] + length <= len(doc):
                out.append(doc[cursors[i]: cursors[i] + length])
                cursors[i] += length
                progressed = True
        if not progressed:
            break
    return out


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-token negative log-likelihood ``[L-1]`` of ``ids`` (``[1, L]``): entry ``t`` is the loss of token
    ``t+1``. One whole-sequence forward (no cache); the vocabulary projection runs in chunks."""
    h = model.model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
    target = ids[0, 1:]
    out = []
    for i in range(0, h.shape[0], chunk):
        logits = model.lm_head(h[i: i + chunk]).float()
        out.append(torch.nn.functional.cross_entropy(logits, target[i: i + chunk], reduction="none"))
    return torch.cat(out)


@dataclass
class Probe:
    prompt: str  # the user message
    answer: str
    length: int  # tokens of the filled prompt (approximately the target length)
    depth: float  # where the fact sits, 0 = start, 1 = end
    fact_token: int  # token index of the fact in the document


def _fill_to(tokenizer, pieces: list[str], target: int) -> list[int]:
    ids: list[int] = []
    i = 0
    while len(ids) < target:
        ids.extend(tokenizer(pieces[i % len(pieces)], add_special_tokens=False)["input_ids"])
        i += 1
    return ids[:target]


def passkey_probe(tokenizer, length: int, depth: float, seed: int) -> Probe:
    """The standard passkey task: repeated filler with ``The pass key is NNNNN.`` at ``depth``; ``length``
    counts the document tokens (the question adds a few more)."""
    rng = random.Random(f"passkey-{length}-{depth}-{seed}")
    key = str(rng.randint(10000, 99999))
    fact = f" The pass key is {key}. Remember it. {key} is the pass key. "
    return _insert(tokenizer, [PASSKEY_FILLER], fact, length, depth,
                   "What is the pass key? Answer with the number only.", key)


def needle_probe(tokenizer, haystack: str, length: int, depth: float) -> Probe:
    """Needle in a haystack (Paul Graham essays): the San Francisco needle at ``depth``."""
    return _insert(tokenizer, [haystack], " " + NEEDLE + " ", length, depth, NEEDLE_QUESTION, NEEDLE)


def _insert(tokenizer, filler, fact, length, depth, question, answer) -> Probe:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    fact_ids = tokenizer(fact, add_special_tokens=False)["input_ids"]
    body = _fill_to(tokenizer, filler, max(0, length - len(fact_ids)))
    at = int(round(depth * len(body)))
    doc = tokenizer.decode(body[:at]) + fact + tokenizer.decode(body[at:])
    prompt = f"{doc}\n\n{question}"
    return Probe(prompt, answer, length, depth, at)


def chat_probe(tokenizer, task: str, length: int, depth: float, haystack: str | None = None):
    """``(probe, text)``: the passkey (``seed`` 0) or needle probe of ``length`` tokens with its fact at ``depth``, as a
    user message in the tokenizer's chat template, the assistant's turn opened (the passkey's with "The pass key
    is")."""
    probe = passkey_probe(tokenizer, length, depth, seed=0) if task == "passkey" else needle_probe(
        tokenizer, haystack, length, depth)
    text = tokenizer.apply_chat_template([{"role": "user", "content": probe.prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return probe, text + ("The pass key is" if task == "passkey" else "")


def passkey_correct(probe: Probe, output: str) -> float:
    return float(probe.answer in output)


def needle_score(output: str) -> float:
    """Fraction of the needle's key words in the answer (0..1)."""
    low = output.lower()
    return sum(w in low for w in NEEDLE_KEYWORDS) / len(NEEDLE_KEYWORDS)


@torch.no_grad()
def memory_half_lives(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """How long each memory head remembers, ``[AHN layers, heads]`` in tokens: the half-life
    ``ln 2 / mean(-log decay)`` of the per-token decay the head applies to its state, averaged over the real
    tokens of ``ids`` (``[B, L]``). GatedDeltaNet: ``log decay = -exp(A_log) * softplus(a_proj(x) + dt_bias)``;
    Mamba2: ``-exp(A_log) * dt``. DeltaNet has no decay (its memory fades only by being overwritten)."""
    modules = sorted(model.ahn_modules().items())
    if not modules:
        raise ValueError("the model has no AHN layers")
    fn = modules[0][1].fn
    if fn.log_decay(torch.empty(0, 0, fn.num_gates, fn.num_heads)) is None:
        raise ValueError(f"{fn.official_name} has no decay gate: its memory has no half-life to measure")
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    decoder = model.model
    hidden = decoder(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True,
                     use_cache=False).hidden_states  # hidden[i] is layer i's input
    rows = []
    for i, module in modules:
        fn = module.fn
        log_decay = fn.log_decay(fn.write_gates(decoder.layers[i].input_layernorm(hidden[i])))  # [B, L, H]
        rate = (-log_decay)[mask].mean(0)  # [H]
        rows.append(math.log(2) / rate)
    return torch.stack(rows)
