# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Training data for AHN distillation: text files/folders, jsonl (``text`` or chat ``messages``), or a
``datasets`` dataset, tokenised and packed or filtered by length. Not part of the remote-code payload."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSON_SUFFIXES = {".jsonl", ".json"}


@dataclass
class TokenizedData:
    sequences: list[list[int]]
    documents: int
    dropped_short: int
    min_length: int
    max_length: int
    tokens: int
    source_document: list[int] | None = None  # each sequence's document index (None when packed)

    def describe(self) -> str:
        return (f"{len(self.sequences)} sequences ({self.tokens:,} tokens) from {self.documents} documents; "
                f"{self.dropped_short} dropped for being shorter than {self.min_length} tokens")


def _row_text(row: dict, text_field: str, tokenizer, where: str) -> str:
    if text_field in row and isinstance(row[text_field], str):
        return row[text_field]
    if "messages" in row:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"{where} holds chat 'messages' but the base's tokenizer has no chat template: use a chat/instruct "
                f"base, or give plain text under '{text_field}'."
            )
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    raise ValueError(f"{where}: a row has neither a '{text_field}' string nor chat 'messages' (keys {sorted(row)}).")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | JSON_SUFFIXES]
    if not files:
        raise ValueError(f"{path} contains no .txt/.md/.jsonl files.")
    return files


def iter_documents(sources, tokenizer, text_field: str = "text"):
    """Yield document texts from files, folders, jsonl files or ``datasets`` datasets (name or saved dir)."""
    for source in sources:
        path = Path(source)
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
            yield from _iter_dataset(source, tokenizer, text_field, from_disk=True)
            continue
        if not path.exists():
            yield from _iter_dataset(source, tokenizer, text_field, from_disk=False)
            continue
        for file in _files(path):
            if file.suffix.lower() in JSON_SUFFIXES:
                with open(file, encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            yield _row_text(json.loads(line), text_field, tokenizer, f"{file}:{n}")
            else:
                try:
                    yield file.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{file} is not UTF-8 text ({e}).") from e


def _iter_dataset(name, tokenizer, text_field, from_disk):
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"{name} is not a file or folder; to load it as a dataset: pip install datasets") from e
    try:
        ds = datasets.load_from_disk(name) if from_disk else datasets.load_dataset(name, split="train")
    except Exception as e:
        raise ValueError(f"{name} is neither a file/folder nor a loadable dataset: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield _row_text(row, text_field, tokenizer, f"{name}[{i}]")


def with_repeat(sequence: list[int], window: int, sinks: int, rng, passage: tuple[int, int] = (32, 256)) -> list[int]:
    """``sequence`` (same length) with one of its passages recurring more than ``window`` tokens after it: a
    passage ``[a, a + P)`` past the sinks is inserted again at ``b >= a + P + window`` (so no query of the repeat
    sees the passage in its window), the document's text after ``b`` shifted and cut at the end. Unchanged when the
    sequence is too short for it. ``rng``: a ``random.Random`` (deterministic per micro-batch, for exact resume)."""
    L = len(sequence)
    P = rng.randint(*passage)
    last_a = L - 2 * P - window
    if last_a < sinks:
        return sequence
    a = rng.randint(sinks, last_a)
    b = rng.randint(a + P + window, L - P)
    return sequence[:b] + sequence[a: a + P] + sequence[b: L - P]


def tokenize_documents(texts, tokenizer, max_length: int, min_length: int, pack: bool = False,
                       split: bool = False) -> TokenizedData:
    """Tokenise. By default each document is truncated to its first ``max_length`` tokens; ``split`` cuts each
    document into consecutive ``max_length`` chunks instead (no chunk spans two documents); ``pack``
    concatenates documents (separated by EOS) and cuts ``max_length`` chunks. Sequences (and a split
    document's last chunk) shorter than ``min_length`` are dropped; ``dropped_short`` counts documents that
    gave no sequence at all."""
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) is larger than max_length ({max_length}).")
    if pack and split:
        raise ValueError("pack and split are exclusive: pack joins documents, split keeps each one apart.")
    eos = tokenizer.eos_token_id
    sequences, dropped, docs, buffer, source = [], 0, 0, [], []
    for text in texts:
        docs += 1
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if pack:
            buffer.extend(ids + ([eos] if eos is not None else []))
            while len(buffer) >= max_length:
                sequences.append(buffer[:max_length])
                buffer = buffer[max_length:]
        elif len(ids) < min_length:
            dropped += 1
        else:
            chunks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)] if split else [ids[:max_length]]
            chunks = [c for c in chunks if len(c) >= min_length]
            sequences.extend(chunks)
            source.extend([docs - 1] * len(chunks))
    if pack and buffer:
        if len(buffer) >= min_length:
            sequences.append(buffer)
        else:
            dropped += 1
    data = TokenizedData(sequences, docs, dropped, min_length, max_length, sum(map(len, sequences)),
                         None if pack else source)
    if not sequences:
        raise ValueError(
            f"No training sequence left: {docs} documents read, {dropped} dropped for being shorter than "
            f"{min_length} tokens (a loss needs tokens beyond the window). Give longer documents, use --pack, or "
            "lower --min-length and the windows."
        )
    return data
