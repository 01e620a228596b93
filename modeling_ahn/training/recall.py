# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn train-recall``: the retention classifier that chooses what recall slots keep (``recall_slots.py``).

One linear probe per AHN layer, on the layer's pre-normed input, trained to say "this token is a fact a later
question may ask about": training text (a training-split corpus) with facts planted at random places, each from one
of many templates (numbers, names, places, objects, activities), label 1 on the fact's value tokens and 0 on every
other token. Dense per-token supervision, no backpropagation through the base: the frozen model reads each sequence
once (AHN mode, no slots), the layers' inputs are collected, and each layer's probe is a class-weighted L2 logistic
regression fitted by L-BFGS on standardised features (folded back into one ``Linear(hidden, 1)``). Minutes on a CPU.

The held-out part of the sequences gives each layer's ranking quality: the share of planted facts that have a value
token among the top 1% / top 64 scores of their sequence. Not part of the payload.
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

NAMES = ("Alice Moreau", "Marcus Webb", "Priya Natarajan", "Tomasz Kowalski", "Keiko Tanaka", "Olusegun Adeyemi",
         "Ingrid Halvorsen", "Rafael Ortega", "Mei Lin", "Dmitri Volkov", "Fatima Zahra", "Liam O'Connor",
         "Beatriz Costa", "Hamid Rahimi", "Sofia Lindqvist", "Kwame Mensah")
PLACES = ("Lisbon", "the old lighthouse", "Quito", "a cafe near the harbour", "Oslo", "the public library in Leeds",
          "Marrakesh", "the cellar of the town hall", "Tasmania", "a cabin on Lake Bled", "Valparaiso",
          "the third floor of the museum", "Nairobi", "an island off the coast of Maine", "Kyoto",
          "the botanical garden")
THINGS = ("a blue umbrella", "the copper kettle", "seven lemons", "a violin case", "the red notebook",
          "a jar of honey", "an old brass compass", "the green bicycle", "a box of chalk", "a silver locket",
          "the wooden chess set", "a bag of marbles")
FOODS = ("mushroom risotto", "grilled sardines", "lentil soup", "cherry pie", "spicy tofu", "roast parsnips",
         "mango sorbet", "buckwheat pancakes", "fish tacos", "plum dumplings")
ACTIVITIES = ("walk along the river and feed the ducks", "read poetry in the rose garden",
              "eat noodles at the night market", "climb the hill behind the church at dawn",
              "play chess with the fishermen", "paint the boats in the harbour", "swim in the cold lake before work",
              "collect shells on the northern beach", "listen to jazz in the basement bar")

# (template, the fields that are the fact's value). Fields: name, name2, place, thing, food, activity, num, word.
TEMPLATES = (
    ("The secret code is {num}.", ("num",)),
    ("{name} keeps the spare key inside {thing}.", ("thing",)),
    ("Remember: the meeting with {name} is in {place} at {num} o'clock.", ("place", "num")),
    ("The favourite dish of {name} is {food}.", ("food",)),
    ("Every summer {name} likes to {activity}.", ("activity",)),
    ("{name}'s account number is {num}.", ("num",)),
    ("Important: the treasure was buried in {place}.", ("place",)),
    ("The name of the captain's dog is {word}.", ("word",)),
    ("The password for the archive is {word}{num}.", ("word", "num")),
    ("{name} was born in {place} in {num}.", ("place", "num")),
    ("Note that the parcel for {name} contains {thing}.", ("thing",)),
    ("The winning lottery ticket was number {num}, bought by {name2}.", ("num", "name2")),
)
WORDS = ("Biscuit", "Marigold", "Thunder", "Pepper", "Juniper", "Falcon", "Noodle", "Saffron", "Pebble", "Orion")


def fact_text(rng: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """A planted fact and the character spans of its value fields."""
    template, value_fields = TEMPLATES[rng.randrange(len(TEMPLATES))]
    fill = dict(name=rng.choice(NAMES), name2=rng.choice(NAMES), place=rng.choice(PLACES), thing=rng.choice(THINGS),
                food=rng.choice(FOODS), activity=rng.choice(ACTIVITIES), num=str(rng.randint(100, 99999)),
                word=rng.choice(WORDS))
    text, spans = "", []
    for literal, name, _, _ in string.Formatter().parse(template):
        text += literal
        if name is None:
            continue
        if name in value_fields:
            spans.append((len(text), len(text) + len(fill[name])))
        text += fill[name]
    return text, spans


def planted_sequence(tokenizer, doc: str, length: int, facts: int, rng: random.Random):
    """``(ids [length], labels [length])``: ``doc`` cut to about ``length`` tokens with ``facts`` facts inserted at
    sentence or line boundaries in its first 90 %; label 1 on the tokens of each fact's value fields."""
    text = doc[: length * 6]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    limit = offsets[min(len(offsets), int(0.9 * length)) - 1][1] if offsets else 0
    bounds = [i + 1 for i, c in enumerate(text[:limit]) if c == "\n" or (c == "." and text[i + 1: i + 2] == " ")]
    if len(bounds) < facts:
        return None
    at = sorted(rng.sample(bounds, facts))
    out, spans, prev = "", [], 0
    for a in at:
        out += text[prev:a]
        fact, value_spans = fact_text(rng)
        base = len(out) + 1
        spans += [(base + s, base + e) for s, e in value_spans]
        out += " " + fact + " "
        prev = a
    out += text[prev:]
    enc = tokenizer(out, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:length], enc["offset_mapping"][:length]
    if len(ids) < length:
        return None
    labels = [int(any(s < e2 and s2 < e for s2, e2 in spans)) for s, e in offsets]
    if sum(labels) == 0:
        return None
    return torch.tensor(ids), torch.tensor(labels)


@torch.no_grad()
def layer_inputs(model, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each AHN layer's pre-normed input ``[L, hidden]`` (float32) for one sequence, read in AHN mode."""
    from ..attention_ahn import get_layer_spec

    got, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        if get_layer_spec(layer.self_attn) is None or get_layer_spec(layer.self_attn).memory is None:
            continue

        def grab(module, args, kwargs, i=i):
            h = kwargs.get("hidden_states", args[0] if args else None)
            got[i] = h[0].float().clone()

        hooks.append(layer.self_attn.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with model.runtime(num_recall_slots=0):
            model.model(input_ids=ids[None], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return got


def fit_probe(X: torch.Tensor, y: torch.Tensor, l2: float, iters: int = 100):
    """Class-weighted L2 logistic regression on standardised features: ``(weight [d], bias)`` in the raw space."""
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / std
    pos = y.float().mean().clamp(1e-6, 1 - 1e-6)
    weight = torch.where(y.bool(), 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(Z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(Z @ w + b, y.float(), reduction="none") * weight).mean()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / std).detach()
    return w_raw, (b - (w.detach() * mean / std).sum()).detach()


def ranking_quality(scores: list[torch.Tensor], labels: list[torch.Tensor], facts: list[list[list[int]]], top: int):
    """Share of facts with a value token among the ``top`` highest scores of their sequence."""
    hit = n = 0
    for s, seq_facts in zip(scores, facts):
        best = set(s.topk(min(top, s.numel())).indices.tolist())
        for tokens in seq_facts:
            n += 1
            hit += bool(best & set(tokens))
    return hit / max(1, n)


def fact_groups(labels: torch.Tensor) -> list[list[int]]:
    """Runs of labelled tokens (one per value field), as token index lists."""
    idx = labels.nonzero()[:, 0].tolist()
    groups, cur = [], []
    for i in idx:
        if cur and i > cur[-1] + 1:
            groups.append(cur)
            cur = []
        cur.append(i)
    return groups + ([cur] if cur else [])


@dataclass
class RecallTrainConfig:
    model: str = field(default="default", metadata={"help": "AHN repo dir, or 'default': the shipped SmolLM2 "
                                                             "AHN-GDN adapter over the fetched base"})
    out: str = field(default="recall-adapter", metadata={"help": "where to save the adapter with its classifier"})
    corpus: str = field(default="shakespeare,pythondoc,linuxdoc,kjv", metadata={
        "help": "training-split corpus sources of `ahn corpora`, comma-separated (sampled evenly)"})
    sequences: int = field(default=32, metadata={"help": "training sequences (a quarter more are held out)"})
    length: int = field(default=2048, metadata={"help": "tokens per sequence"})
    facts: int = field(default=3, metadata={"help": "facts planted per sequence"})
    l2: float = field(default=1e-3, metadata={"help": "L2 penalty of the logistic regression"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})


def load_model(spec: str):
    from ..modeling_ahn import AhnForCausalLM

    if spec == "default":
        from ..default.model import fetch_default
        from ..default.shipped import shipped_repo

        base = str(fetch_default()["llama"])
        repo = str(shipped_repo("gdn", base=base))
        model = AhnForCausalLM.from_pretrained(repo, base_model=base, dtype=torch.float32)
        tok_dir = base
    else:
        model = AhnForCausalLM.from_pretrained(spec, dtype=torch.float32)
        tok_dir = spec
    from transformers import AutoTokenizer

    return model.eval(), AutoTokenizer.from_pretrained(tok_dir)


def train_recall(cfg: RecallTrainConfig, model=None, tokenizer=None, docs: dict[str, str] | None = None,
                 progress: bool = True) -> dict:
    """Train the classifier, attach it (``model.add_recall_head``), save the adapter to ``cfg.out`` with a report
    (``recall_report.json``). Returns the report."""
    from tqdm.auto import tqdm

    t0 = time.time()
    if model is None:
        model, tokenizer = load_model(cfg.model)
    if docs is None:
        from ..default.corpora import split_dir

        docs = {}
        for source in [c.strip() for c in cfg.corpus.split(",") if c.strip()]:
            d = split_dir("train") / source
            found = {f"{source}/{p.stem}": p.read_text() for p in sorted(d.glob("*.txt"))}
            if not found:
                raise ValueError(f"no documents in {d}: run `ahn corpora` first, or name another --corpus")
            docs.update(found)
    rng = random.Random(cfg.seed)
    sources = sorted({name.split("/")[0] for name in docs})
    by_source = {src: [t for name, t in sorted(docs.items()) if name.split("/")[0] == src] for src in sources}
    n_total = cfg.sequences + max(1, cfg.sequences // 4)
    seqs, tries = [], 0
    while len(seqs) < n_total and tries < 20 * n_total:
        tries += 1
        pool = by_source[sources[rng.randrange(len(sources))]]  # sources evenly, then a document of it
        t = pool[rng.randrange(len(pool))]
        start = rng.randrange(max(1, len(t) - cfg.length * 6))
        got = planted_sequence(tokenizer, t[start:], cfg.length, cfg.facts, rng)
        if got is not None:
            seqs.append(got)
    if len(seqs) < n_total:
        raise ValueError(f"only {len(seqs)} of {n_total} sequences of {cfg.length} tokens could be cut from the "
                         "corpus: use shorter --length or another --corpus")
    feats: dict[int, list[torch.Tensor]] = {}
    for ids, _ in tqdm(seqs, desc="reading sequences", disable=not progress):
        for i, h in layer_inputs(model, ids).items():
            feats.setdefault(i, []).append(h)
    train, held = slice(0, cfg.sequences), slice(cfg.sequences, n_total)
    labels = [lab for _, lab in seqs]
    y = torch.cat(labels[train])
    weights, per_layer = {}, {}
    for i in tqdm(sorted(feats), desc="fitting probes", disable=not progress):
        w, b = fit_probe(torch.cat(feats[i][train]), y, cfg.l2)
        weights[i] = (w, b)
        scores = [h @ w + b for h in feats[i][held]]
        groups = [fact_groups(lab) for lab in labels[held]]
        per_layer[i] = {"top64": ranking_quality(scores, labels[held], groups, 64),
                        "top1pct": ranking_quality(scores, labels[held], groups, max(1, cfg.length // 100))}
    model.add_recall_head(weights)
    report = {"config": dataclasses.asdict(cfg), "train_sequences": cfg.sequences,
              "heldout_sequences": n_total - cfg.sequences, "positives_train": int(y.sum()),
              "tokens_train": int(y.numel()), "heldout_per_layer": per_layer, "seconds": round(time.time() - t0, 1)}
    out = Path(cfg.out)
    model.save_pretrained(out, tokenizer=tokenizer)
    (out / "recall_report.json").write_text(json.dumps(report, indent=1))
    return report


__all__ = ["RecallTrainConfig", "TEMPLATES", "fact_text", "fit_probe", "layer_inputs", "planted_sequence",
           "train_recall"]
