# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Self-distillation of AHN adapters (spec section 5). Not part of the remote-code payload.

Teacher: the frozen base with full attention. Student: the same weights with sinks + window + AHN; only
the AHN trains. Two objectives:

* ``end-to-end`` (default): KL(teacher || student) on the next-token distributions at positions ``t >= W``
  (computed in chunks, so long sequences never hold full teacher and student logits at once), or cross-entropy
  to the labels there, or both (``loss``); the gradient passes through every layer of the student.
* ``layer-local``: teacher-forced, per layer, no gradient through the base and no LM head: each AHN learns what
  window + sinks attention misses of its layer's full-attention output (``training/layer_local.py``).

Runs on one CPU or under ``accelerate launch``: DDP, or FSDP2 with the frozen base sharded
(``training/sharding.py``). ``max_minutes`` stops a run cleanly at a checkpoint once its time budget is spent (a
preemptible machine, a bounded session); ``--resume`` continues it exactly.

    ahn distill --base HuggingFaceTB/SmolLM2-135M-Instruct --data corpus/ --out runs/smollm2-gdn
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..memory_ahn import unofficial_options
from .centring import init_value_means
from .data import with_repeat
from .layer_local import layer_local_contrast_terms, layer_local_losses, normalised_contrast, record_teacher
from .sequence_split import gradient_carrier, split_layer_local
from .sharding import average_gradients, describe_sharding, shard_student, sharding_request

PAPER_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
PAPER_SINKS = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)
OBJECTIVES = ("end-to-end", "layer-local")
LOSSES = ("kl", "ce", "kl+ce")
LOG_NAME = "train_log.jsonl"
VALUE_MEAN_SEQUENCES = 4  # training sequences whose values set a fresh value_centring run's v_mean
CHECKPOINTS = "checkpoints"
ADAPTER_DIR = "adapter"


def option(default=MISSING, help: str = "", **cli):
    """A :class:`DistillConfig` field with its ``ahn distill`` option: ``help``, and where the default derivation
    from the field does not fit, ``flag`` (default ``--field-name``), ``choices``, ``metavar``."""
    return field(default=default, metadata=dict(cli, help=help))


@dataclass
class DistillConfig:
    """Everything that defines a run (saved as ``run_config.json``; a resumed run must match it).

    Each field is one ``ahn distill`` option (``cli.main.build_parser``): its default and help are these."""

    base: str = option(help="base model repo/dir (Qwen2/Qwen3/Llama/Mistral)")
    data: list[str] = option(help="text files/folders, .jsonl (text or messages), datasets")
    output_dir: str = option(flag="--out", help="run directory (checkpoints, logs, plot, adapter/)")
    eval_data: list[str] | None = option(None, "held-out data (default: a split of --data)")
    ahn_type: str = option("gdn", "gdn | dn | mamba2")
    windows: list[int] | None = option(None, "comma-separated windows, or 'paper' (default) for {32..8192} in "
                                             "(L/8, L)")
    sinks: list[int] | None = option(None, "comma-separated sink counts, or 'paper' (default) for {0,32,64,...}"
                                           "<=W/2")
    eval_window: int | None = option(None, "held-out window, also the adapter's default (default: a quarter of "
                                           "the shortest held-out sequence)")
    eval_sinks: int | None = option(None, "held-out sinks, also the adapter's default (default: 32 if it fits "
                                          "in half the eval window, else 0)")
    objective: str = option("end-to-end", "end-to-end: --loss on the next-token distributions through the whole "
                            "student; layer-local: each layer's AHN learns what window+sinks attention misses of "
                            "that layer's full-attention output (teacher-forced, no gradient through the base: "
                            "several times faster)", choices=OBJECTIVES)
    loss: str = option("kl", "end-to-end objective's loss", choices=LOSSES)
    use_q_proj: bool = option(False, "the official option: a learned per-head projection of each memory's read "
                                     "query")
    use_k_proj: bool = option(False, "beyond the official format: a learned per-head projection of the keys "
                                     "each memory writes (before RoPE)")
    position_free: bool = option(False, "beyond the official format: the memories write and read keys and "
                                        "queries before RoPE")
    value_centring: bool = option(False, "beyond the official format: the memories write each value minus a "
                                         "learned per-head mean, set to the layer's mean value before training")
    repeat_fraction: float = option(0.0, "share of training sequences in which a passage of 32-256 tokens recurs "
                                         "more than a window later (a synthetic retrieval signal; the rest of the "
                                         "sequence is the document's own text)")
    kl_chunk_size: int = option(1024, "positions per chunk of the KL/CE over the vocab")
    max_length: int = option(2048, "tokens per training sequence at most")
    min_length: int | None = option(None, "drop shorter sequences (default: smallest window+1)")
    pack: bool = option(False, "concatenate documents and cut max-length chunks")
    split_documents: bool = option(False, "train on every max-length chunk of a long document, not only its "
                                          "first (no chunk spans two documents; --eval-data still gives one "
                                          "sequence per document)")
    text_field: str = option("text", "the text field of .jsonl records and datasets")
    eval_fraction: float = option(0.05, "share of the data held out when no --eval-data is given (at most "
                                        "--eval-sequences)")
    eval_sequences: int = option(8, "held-out sequences")
    lr: float = option(1e-4, "peak learning rate")
    warmup_ratio: float = option(0.1, "share of the steps with a linear warm-up (then cosine decay)")
    weight_decay: float = option(0.1, "AdamW weight decay of the AHN matrices")
    max_steps: int = option(700, "optimiser steps")
    batch_size: int = option(1, "sequences per device per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimiser step")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    bf16: bool = option(False, "bf16 autocast (CPU and GPU); the base is loaded in bf16")
    activation_checkpointing: bool = option(True, "recompute the student's layers in the backward pass",
                                            flag="--no-activation-checkpointing")
    eval_every: int = option(50, "steps between held-out evaluations")
    save_every: int = option(100, "steps between checkpoints")
    keep_checkpoints: int = option(2, "checkpoints kept (the latest)")
    seed: int = option(0, "seed of the data order, the window sampling and the AHN initialisation")
    cpu: bool = option(False, "train on the CPU even if a GPU is present")
    base_dtype: str | None = option(None, "dtype of the frozen base, e.g. float32 (default: bfloat16 with --bf16, "
                                          "else float32)")
    init_adapter: str | None = option(None, "start from this exported AHN repo's weights (continued training; same "
                                            "base and --ahn-type) instead of a fresh AHN")
    memory_span: list[int] | None = option(None, "GDN only: start each layer's memory heads with half-lives "
                                                 "log-spaced from LO to HI tokens (e.g. 16,8192) instead of the "
                                                 "release's initialisation, whose heads mostly forget within a few "
                                                 "tokens", metavar="LO,HI")
    max_minutes: float | None = option(None, "stop at a checkpoint once this much wall time is spent; --resume "
                                             "continues exactly")
    content_weight: float = option(0.0, "layer-local only: weight of the content loss. Each step also reads the "
                                        "sequence with its far context (between the sinks and the middle of what "
                                        "the window leaves) taken from another training sequence, and each "
                                        "memory learns the difference this makes to its layer's far-context "
                                        "output, in units of that far-context output (training/layer_local.py: "
                                        "layer_local_contrast_losses, normalise='far'); logged as 'content', the "
                                        "share of the difference left unexplained (1 for a memory that ignores "
                                        "what it read). Doubles the teacher's work per step")
    sequence_chunk: int | None = option(None, "layer-local only: read each training sequence N tokens at a time, "
                                              "the memory state carried (training/sequence_split.py): a step's "
                                              "memory grows with the keys and values kept per layer instead of "
                                              "every layer's records; the loss is the same, its gradient stops at "
                                              "chunk boundaries (exact when N covers the sequence)", metavar="N")

    def validate(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be 'kl', 'ce' or 'kl+ce', got {self.loss!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise ValueError(f"repeat_fraction must be in [0, 1], got {self.repeat_fraction}")
        if not self.content_weight >= 0:
            raise ValueError(f"content_weight must be >= 0, got {self.content_weight}")
        if self.content_weight and self.objective != "layer-local":
            raise ValueError("content_weight adds a loss to the layer-local objective; use --objective layer-local "
                             f"(got {self.objective!r})")
        if self.sequence_chunk is not None:
            if self.sequence_chunk < 1:
                raise ValueError(f"sequence_chunk must be >= 1 token, got {self.sequence_chunk}")
            if self.objective != "layer-local":
                raise ValueError("sequence_chunk splits the layer-local objective's step; use --objective layer-local "
                                 f"(got {self.objective!r})")
            if self.content_weight:
                raise ValueError("sequence_chunk and content_weight cannot be combined yet: the content loss compares "
                                 "two whole-sequence teacher passes")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        for name in ("max_steps", "batch_size", "grad_accum", "kl_chunk_size", "max_length", "eval_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, values in (("windows", self.windows), ("sinks", self.sinks)):
            if values is not None and (not values or any(v < (1 if name == "windows" else 0) for v in values)):
                raise ValueError(f"{name} must be a non-empty list of {'positive' if name == 'windows' else '>= 0'} "
                                 f"integers, got {values}")
        if self.pack and self.split_documents:
            raise ValueError("pack and split_documents are exclusive: pack joins documents, split keeps each apart")
        if self.memory_span is not None:
            from ..memory_ahn import canonical_ahn_type

            if len(self.memory_span) != 2 or not 1 <= self.memory_span[0] <= self.memory_span[1]:
                raise ValueError(f"memory_span must be two half-lives [lo, hi] with 1 <= lo <= hi tokens, "
                                 f"got {self.memory_span}")
            if canonical_ahn_type(self.ahn_type) != "gdn":
                raise ValueError(f"memory_span sets GatedDeltaNet's decays; ahn_type {self.ahn_type!r} has "
                                 f"{'no decay' if canonical_ahn_type(self.ahn_type) == 'dn' else 'its own dt gates'}")
            if self.init_adapter:
                raise ValueError("memory_span initialises a fresh AHN; it cannot be combined with init_adapter, "
                                 "whose trained decays are kept")


# ---------------------------------------------------------------------------------------------- losses


def _kl_chunk(lm_head, h_teacher, h_student):
    log_t = lm_head(h_teacher).float().log_softmax(-1)
    log_s = lm_head(h_student).float().log_softmax(-1)
    return (log_t.exp() * (log_t - log_s)).sum()


def chunked_kl(lm_head: nn.Module, h_teacher: torch.Tensor, h_student: torch.Tensor, chunk_size: int = 1024):
    """Mean KL(teacher || student) over rows of ``[N, d]`` hidden states, ``chunk_size`` rows at a time.

    Each chunk's logits are recomputed in the backward pass (activation checkpointing), so memory holds one
    chunk of ``[chunk, vocab]`` logits, not ``[N, vocab]``.
    """
    n = h_student.shape[0]
    if n == 0:
        return h_student.sum() * 0.0
    total = h_student.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk_size):
        ht, hs = h_teacher[i : i + chunk_size].detach(), h_student[i : i + chunk_size]
        if torch.is_grad_enabled() and hs.requires_grad:
            total = total + checkpoint(_kl_chunk, lm_head, ht, hs, use_reentrant=False)
        else:
            total = total + _kl_chunk(lm_head, ht, hs)
    return total / n


def chunked_ce(lm_head: nn.Module, h: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024):
    """Mean cross-entropy of ``lm_head(h)`` to ``targets`` (rows of ``[N, d]``), in chunks."""
    n = h.shape[0]
    if n == 0:
        return h.sum() * 0.0

    def part(hh, tt):
        return F.cross_entropy(lm_head(hh).float(), tt, reduction="sum")

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk_size):
        args = (h[i : i + chunk_size], targets[i : i + chunk_size])
        total = total + (checkpoint(part, *args, use_reentrant=False) if h.requires_grad else part(*args))
    return total / n


def loss_positions(attention_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Boolean ``[B, L]``: real tokens at real position ``t >= W`` (beyond the window)."""
    real = attention_mask.bool()
    pos = attention_mask.long().cumsum(-1) - 1
    return real & (pos >= window)


class DistillStudent(nn.Module):
    """Teacher pass, student pass and loss in one ``forward``, so that the module accelerate wraps (DDP, FSDP,
    DeepSpeed) runs both passes and sees the AHN parameters' gradients."""

    def __init__(self, model, loss: str = "kl", kl_chunk_size: int = 1024, objective: str = "end-to-end",
                 content_weight: float = 0.0, sequence_chunk: int | None = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.kl_chunk_size = kl_chunk_size
        self.objective = objective
        self.content_weight = content_weight
        self.sequence_chunk = sequence_chunk

    def forward(self, input_ids, attention_mask, window: int, sinks: int, swapped_ids=None, content_span=None):
        """The losses at ``window`` and ``sinks``. Hold ``model.runtime(...)`` at the same settings around the
        backward pass too: activation checkpointing recomputes the student's layers there. ``swapped_ids`` (the
        batch with its far context from other sequences, :func:`content_pair`) and ``content_span`` (``(start,
        end)``: the queries whose window holds no swapped token) add the layer-local content loss."""
        with self.model.runtime(sliding_window=int(window), num_sinks=int(sinks)):
            return self._losses(input_ids, attention_mask, int(window), int(sinks), swapped_ids, content_span)

    def evaluate(self, sequences, window: int, sinks: int, pad_id: int) -> dict:
        """:func:`evaluate` of the student's model (an FSDP forward method when the base is sharded)."""
        return evaluate(self.model, sequences, window, sinks, pad_id, self.kl_chunk_size)

    def _losses(self, input_ids, attention_mask, window: int, sinks: int, swapped_ids=None, content_span=None):
        model = self.model
        if self.objective == "layer-local" and self.sequence_chunk:
            loss, grads, _ = split_layer_local(model, input_ids, attention_mask, self.sequence_chunk)
            return {"layer_local": loss.detach(), "loss": gradient_carrier(grads, loss),
                    "positions": int(loss_positions(attention_mask, window + sinks).sum())}
        if self.objective == "layer-local":
            records = record_teacher(model, input_ids, attention_mask)
            losses = layer_local_losses(model, records, attention_mask)
            total = sum(losses.values()) / len(losses)
            out = {"layer_local": total.detach(),
                   "positions": int(loss_positions(attention_mask, window + sinks).sum())}
            if self.content_weight and swapped_ids is not None:
                # trained in the attention-transfer loss's unit (normalised by each layer's far part, so that layers
                # with little document in it weigh little); logged as the share of the document part left unexplained
                swapped = record_teacher(model, swapped_ids, attention_mask)
                terms = layer_local_contrast_terms(model, records, swapped, *content_span)
                far = normalised_contrast(terms, "far")
                out["content"] = torch.stack(list(normalised_contrast(terms, "content").values())).mean().detach()
                total = total + self.content_weight * sum(far.values()) / len(far)
            out["loss"] = total
            return out
        with torch.no_grad(), model.runtime(mode="full"):
            h_teacher = model.model(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        h = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        at = loss_positions(attention_mask, window)
        out = {}
        total = h.new_zeros((), dtype=torch.float32)
        if "kl" in self.loss:
            out["kl"] = chunked_kl(model.lm_head, h_teacher[at], h[at], self.kl_chunk_size)
            total = total + out["kl"]
        if "ce" in self.loss:
            nxt = at[:, :-1] & attention_mask[:, 1:].bool()
            out["ce"] = chunked_ce(model.lm_head, h[:, :-1][nxt], input_ids[:, 1:][nxt], self.kl_chunk_size)
            total = total + out["ce"]
        out["loss"] = total
        out["positions"] = int(at.sum())
        return out


# ---------------------------------------------------------------------------------------------- sampling


def sample_window(length: int, windows=None, sinks=None, rng: random.Random | None = None) -> tuple[int, int]:
    """A (window, sinks) pair for a sequence of ``length`` tokens.

    Default windows: the paper's {32, 64, ..., 8192} restricted to (L/8, L); default sinks: {0, 32, 64, ...}
    up to half the window. With explicit lists, windows >= L are skipped (no loss positions would remain).
    """
    rng = rng or random.Random(0)
    if windows is None:
        cands = [w for w in PAPER_WINDOWS if length / 8 < w < length] or [w for w in PAPER_WINDOWS if w < length]
    else:
        cands = [w for w in windows if w < length]
    if not cands:
        raise ValueError(f"no window shorter than the sequence ({length} tokens) among {windows or PAPER_WINDOWS}")
    window = rng.choice(cands)
    sink_cands = [s for s in (sinks if sinks is not None else PAPER_SINKS) if s <= window // 2] or [0]
    return window, rng.choice(sink_cands)


def content_pair(batch: list[list[int]], partners: list[list[int]], window: int, sinks: int):
    """The swapped copy of a batch for the content loss: ``(swapped, (start, end))`` with each sequence's tokens
    ``[sinks, prefix)`` taken from its partner (``prefix`` halfway between the sinks and the last position whose
    window still leaves tokens out) and ``[start, end)`` the queries whose window holds no swapped token, up to the
    shortest sequence's end; ``None`` when the sequences are too short to leave such queries."""
    from ..evaluation.calibration import first_unswapped_query, swap_evicted

    end = min(map(len, batch))
    prefix = min(sinks + (end - sinks - window) // 2, min(map(len, partners)))
    start = first_unswapped_query(prefix, window)
    if prefix <= sinks or start >= end:
        return None
    return [swap_evicted(a, b, sinks, prefix) for a, b in zip(batch, partners)], (start, end)


def _micro_rng(seed: int, micro_index: int) -> random.Random:
    return random.Random(f"{seed}-window-{micro_index}")


class GlobalOrder:
    """Deterministic sample order, independent of the number of processes: epoch ``e`` is a permutation
    seeded by ``seed + e``; global sample ``g`` is the ``g``-th entry of the concatenated epochs."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def __getitem__(self, g: int) -> int:
        epoch, pos = divmod(g, self.n)
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._cache[epoch][pos]


def collate(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence; returns ``(input_ids, attention_mask)``."""
    n = max(map(len, sequences))
    ids = torch.full((len(sequences), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), n), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, sequences, window: int, sinks: int, pad_id: int, chunk_size: int = 1024) -> dict:
    """KL to the teacher and perplexity at positions ``>= window`` for AHN, sinks+SWA and the full teacher."""
    sums = {"kl_ahn": 0.0, "kl_swa": 0.0, "nll_full": 0.0, "nll_ahn": 0.0, "nll_swa": 0.0}
    n_pos = 0
    for seq in sequences:
        ids, mask = collate([seq], pad_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = {}
        for mode in ("full", "swa", "ahn"):
            with model.runtime(sliding_window=window, num_sinks=sinks, mode=mode):
                hidden[mode] = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        at = loss_positions(mask, window)
        nxt = at[:, :-1]
        k = int(nxt.sum())
        if k == 0:
            continue
        n_pos += k
        for mode in ("full", "swa", "ahn"):
            h = hidden[mode][:, :-1][nxt]
            sums[f"nll_{mode}"] += float(chunked_ce(model.lm_head, h, ids[:, 1:][nxt], chunk_size)) * k
        for mode in ("swa", "ahn"):
            sums[f"kl_{mode}"] += float(chunked_kl(model.lm_head, hidden["full"][:, :-1][nxt],
                                                   hidden[mode][:, :-1][nxt], chunk_size)) * k
    if n_pos == 0:
        raise ValueError(f"no held-out sequence is longer than the eval window ({window} tokens)")
    out = {k: v / n_pos for k, v in sums.items()}
    for mode in ("full", "swa", "ahn"):
        out[f"ppl_{mode}"] = math.exp(out.pop(f"nll_{mode}"))
    out.update(eval_window=window, eval_sinks=sinks, eval_positions=n_pos)
    return out


# ---------------------------------------------------------------------------------------------- the run


def held_out_split(data, eval_sequences: int, eval_fraction: float, seed: int):
    """A deterministic ``(train, held_out)`` split of tokenised ``data`` when no ``--eval-data`` is given. The other
    chunks of a held-out sequence's document (``--split-documents``) are not trained on either."""
    seqs = data.sequences
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed + 10_000)).tolist()
    n_eval = min(eval_sequences, max(1, int(len(seqs) * eval_fraction))) if len(seqs) > 1 else 0
    doc = data.source_document
    held_docs = {doc[i] for i in order[:n_eval]} if doc else set()
    train = [seqs[i] for i in order[n_eval:] if not doc or doc[i] not in held_docs]
    return train, [seqs[i] for i in order[:n_eval]]


def _atomic_dir(final: Path, write) -> None:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if root.exists() else []
    return done[-1] if done else None


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class DistillRun:
    """What :func:`setup_run` builds for a run and the other steps share."""

    cfg: DistillConfig
    out: Path
    accelerator: object
    tokenizer: object
    pad_id: int
    sequences: list
    held_out: list
    eval_window: int
    eval_sinks: int
    model: nn.Module
    params: list
    optimizer: object
    scheduler: object
    student: nn.Module
    sharded: bool = False
    progress: bool = True
    log: object = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def per_step(self) -> int:
        """Sequences per optimiser step, over all processes."""
        return self.accelerator.num_processes * self.cfg.grad_accum * self.cfg.batch_size

    def log_line(self, row: dict) -> None:
        if self.log is not None:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()


def runs_on_cpu(cfg: DistillConfig) -> bool:
    return cfg.cpu or not torch.cuda.is_available()


def make_accelerator(cfg: DistillConfig):
    """The ``Accelerator`` of a run (CPU unless a GPU is there and ``cpu`` is off); warns about emulated bf16."""
    from accelerate import Accelerator

    use_cpu = runs_on_cpu(cfg)
    if use_cpu and cfg.bf16:
        from ..benchmarking.devices import cpu_has_fast_bf16

        if not cpu_has_fast_bf16():
            warnings.warn("--bf16 on a CPU without native bf16 (AVX512-BF16 / AMX): PyTorch emulates bf16 matrix "
                          "products here, which is several times slower than float32; drop --bf16 on this machine.",
                          stacklevel=4)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # several runs in one process may differ in precision
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=use_cpu, mixed_precision="bf16" if cfg.bf16 else "no", gradient_accumulation_steps=1)


PATH_FIELDS = ("base", "data", "output_dir", "eval_data", "init_adapter")


def portable_run_config(cfg: DistillConfig) -> dict:
    """The run's settings as saved in ``run_config.json``: paths under the home directory written with ``~`` (a
    committed run records no user's home; a resume on another machine or account compares the same way)."""
    from ..evaluation.harness import portable_path

    saved = asdict(cfg)
    for name in PATH_FIELDS:
        value = saved[name]
        saved[name] = [portable_path(v) for v in value] if isinstance(value, list) else portable_path(value)
    return saved


def prepare_output_dir(cfg: DistillConfig, accelerator, resume: bool, overwrite: bool, has_run: bool) -> Path:
    """Clear a previous run (``overwrite``), create the run directory and write ``run_config.json``, or check that a
    resumed run's settings match the saved ones."""
    out, main = Path(cfg.output_dir), accelerator.is_main_process
    if overwrite and has_run and main and not resume:
        for name in (LOG_NAME, CHECKPOINTS, ADAPTER_DIR, "run_config.json", "loss_curve.png"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = portable_run_config(cfg)
    if resume and (out / "run_config.json").exists():
        saved = json.loads((out / "run_config.json").read_text())
        keys = set(run_cfg) - {"max_steps", "eval_every", "save_every", "keep_checkpoints", "output_dir",
                               "max_minutes"}
        defaults = portable_run_config(DistillConfig(base="", data=[], output_dir=""))  # saved before a setting existed
        diff = sorted(k for k in keys if saved.get(k, defaults[k]) != run_cfg.get(k))
        if diff:
            raise ValueError(f"--resume with settings that differ from the saved run: {diff}")
    elif main:
        (out / "run_config.json").write_text(json.dumps(run_cfg, indent=2))
    return out


def load_data(cfg: DistillConfig, tokenizer, verbose: bool) -> tuple[list, list]:
    """``(training sequences, held-out sequences)``: tokenised ``data``, held out from ``eval_data`` or a split."""
    from .data import iter_documents, tokenize_documents

    min_window = min(cfg.windows) if cfg.windows else PAPER_WINDOWS[0]
    min_length = cfg.min_length or min_window + 1
    data = tokenize_documents(iter_documents(cfg.data, tokenizer, cfg.text_field), tokenizer, cfg.max_length,
                              min_length, cfg.pack, cfg.split_documents)
    sequences = data.sequences
    if cfg.eval_data:
        held_out = tokenize_documents(iter_documents(cfg.eval_data, tokenizer, cfg.text_field), tokenizer,
                                      cfg.max_length, min_length, cfg.pack).sequences[: cfg.eval_sequences]
    else:
        sequences, held_out = held_out_split(data, cfg.eval_sequences, cfg.eval_fraction, cfg.seed)
    if not sequences:
        raise ValueError("No training sequences are left after the held-out split; give more data or --eval-data.")
    if verbose:
        print(f"data: {data.describe()}; {len(held_out)} held out")
    return sequences, held_out


def eval_settings(cfg: DistillConfig, held_out: list) -> tuple[int, int]:
    """The held-out window and sinks (also the exported adapter's defaults)."""
    eval_len = min(len(s) for s in held_out) if held_out else cfg.max_length
    eval_window = cfg.eval_window or max(1, eval_len // 4)
    eval_sinks = cfg.eval_sinks if cfg.eval_sinks is not None else (32 if 32 <= eval_window // 2 else 0)
    return eval_window, eval_sinks


def build_student_model(cfg: DistillConfig, eval_window: int, eval_sinks: int, device, resume: bool):
    """The AHN model over the frozen base, its AHN initialised (fresh, ``init_adapter`` or ``memory_span``)."""
    from ..modeling_ahn import AhnForCausalLM

    dtype = getattr(torch, cfg.base_dtype) if cfg.base_dtype else (torch.bfloat16 if cfg.bf16 else torch.float32)
    model = AhnForCausalLM.from_base(cfg.base, ahn_type=cfg.ahn_type, sliding_window=eval_window,
                                     num_sinks=eval_sinks, dtype=dtype, ahn_dtype=torch.float32,
                                     prefill_chunk_size=None, use_q_proj=cfg.use_q_proj,
                                     use_k_proj=cfg.use_k_proj, position_free=cfg.position_free,
                                     value_centring=cfg.value_centring)
    if cfg.init_adapter and not resume:
        _load_init_adapter(model, cfg)
    if cfg.memory_span and not resume:
        init_memory_span(model, *cfg.memory_span)
    for name, p in model.named_parameters():  # GDN's D is stored by the release but unused
        if name.endswith(".ahn.fn.D"):
            p.requires_grad_(False)
    model.to(device)
    if cfg.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def build_optimizer(cfg: DistillConfig, model):
    """``(trained parameters, AdamW, warmup + cosine schedule)``; no weight decay on vectors."""
    params = [p for p in model.ahn_parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    warmup = max(1, int(cfg.warmup_ratio * cfg.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, cfg.max_steps, warmup))
    return params, optimizer, scheduler


def setup_run(cfg: DistillConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> DistillRun:
    """Check the settings and the run directory; build the accelerator, data, model, optimiser and schedule."""
    from transformers import AutoTokenizer

    cfg.validate()
    out = Path(cfg.output_dir)
    has_run = (out / LOG_NAME).exists() or (out / CHECKPOINTS).exists() or (out / ADAPTER_DIR).exists()
    if has_run and not (resume or overwrite):
        raise ValueError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start over.")
    plan = sharding_request(on_cpu=runs_on_cpu(cfg))  # before accelerate reads the same launch settings
    accelerator = make_accelerator(cfg)
    out = prepare_output_dir(cfg, accelerator, resume, overwrite, has_run)

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    sequences, held_out = load_data(cfg, tokenizer, accelerator.is_main_process and progress)
    eval_window, eval_sinks = eval_settings(cfg, held_out)
    # a sharded base is split from the CPU copy: no process ever holds the whole base on its accelerator
    model = build_student_model(cfg, eval_window, eval_sinks, "cpu" if plan else accelerator.device, resume)
    if cfg.value_centring and not resume and not cfg.init_adapter:  # (a resumed run reads v_mean from its checkpoint)
        device = next(model.parameters()).device
        init_value_means(model, [torch.tensor([ids], device=device) for ids in sequences[:VALUE_MEAN_SEQUENCES]],
                         accelerator.is_main_process and progress)
    student = DistillStudent(model, cfg.loss, cfg.kl_chunk_size, cfg.objective, cfg.content_weight, cfg.sequence_chunk)
    if plan is not None:  # sharded before the optimiser is made, so that it holds the parameters the step updates
        shard_student(student, model, plan, accelerator.device)
        if accelerator.is_main_process:
            print(describe_sharding(model))
    params, optimizer, scheduler = build_optimizer(cfg, model)
    if plan is None:
        student, optimizer = accelerator.prepare(student, optimizer)
    return DistillRun(cfg, out, accelerator, tokenizer, pad_id, sequences, held_out, eval_window, eval_sinks, model,
                      params, optimizer, scheduler, student, plan is not None, progress)


def _split_tensors(obj, tensors: dict, prefix: str = ""):
    """``obj`` with every tensor replaced by ``{"__tensor__": key}`` and stored in ``tensors`` (JSON + safetensors:
    a checkpoint holds no pickle). Tuples become ``{"__tuple__": [...]}`` (python's RNG state is one)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split_tensors(k, tensors, f"{prefix}.k{i}"), _split_tensors(v, tensors, f"{prefix}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def _join_tensors(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_join_tensors(k, tensors): _join_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


SHARD_BYTES = 16 * 2**20  # a state's tensors are written in safetensors shards of at most this size


def save_state(path: Path, obj) -> None:
    """``path.json`` + ``path-NNNNN.safetensors`` shards: a nest of dicts, lists, tuples, numbers and tensors,
    without pickle (``SHARD_BYTES`` per shard, so that a checkpoint kept in a repository has no huge file)."""
    from safetensors.torch import save_file

    tensors = {}
    tree = _split_tensors(obj, tensors, "t")
    shards, size = [{}], 0
    for key, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += tensor.nbytes
    names = [f"{path.name}-{i:05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, path.parent / name)
    path.with_suffix(".json").write_text(json.dumps({"shards": names, "tree": tree}))


def load_state(path: Path):
    """What ``save_state`` wrote (tensors on the CPU)."""
    from safetensors.torch import load_file

    saved = json.loads(path.with_suffix(".json").read_text())
    tensors = {}
    for name in saved["shards"]:
        tensors.update(load_file(path.parent / name))
    return _join_tensors(saved["tree"], tensors)


def save_checkpoint(run: DistillRun, step: int) -> None:
    """Write ``checkpoints/step-N`` (AHN weights, optimiser, schedule, RNG states: safetensors and JSON, no pickle;
    atomically) and keep the last ``keep_checkpoints``. Main process only."""
    from safetensors.torch import save_file

    if not run.main:
        return

    def write(d):
        save_file({k: v.detach().cpu().contiguous() for k, v in run.model.ahn_state_dict().items()},
                  d / "ahn.safetensors")
        save_state(d / "optimizer", run.optimizer.state_dict())
        save_state(d / "scheduler", run.scheduler.state_dict())
        save_state(d / "rng", {"torch": torch.get_rng_state(), "python": random.getstate(),
                               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None})
        (d / "state.json").write_text(json.dumps({"step": step, "samples": step * run.per_step}))

    _atomic_dir(run.out / CHECKPOINTS / f"step-{step:07d}", write)
    done = sorted(p for p in (run.out / CHECKPOINTS).glob("step-*") if not p.name.endswith(".tmp"))
    for old in done[: -run.cfg.keep_checkpoints]:
        shutil.rmtree(old)


def resume_checkpoint(run: DistillRun) -> int:
    """Load the run's last checkpoint (weights, optimiser, schedule, RNG states); returns its step (0: none)."""
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(run.out)
    if ckpt is None:
        return 0
    if (ckpt / "optimizer.pt").exists():
        raise ValueError(f"{ckpt} is a checkpoint of an earlier version (pickled optimizer.pt): pickles can run code "
                         "when loaded and are refused; start the run again, or resume it with that version.")
    run.model.load_ahn_state_dict(load_file(ckpt / "ahn.safetensors"))
    run.optimizer.load_state_dict(load_state(ckpt / "optimizer"))
    run.scheduler.load_state_dict(load_state(ckpt / "scheduler"))
    rng = load_state(ckpt / "rng")
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    start = json.loads((ckpt / "state.json").read_text())["step"]
    if run.main:
        print(f"resuming from {ckpt} (step {start})")
        _truncate_log(run.out / LOG_NAME, start)
    return start


def evaluate_run(run: DistillRun, step: int) -> None:
    """Log the held-out evaluation at ``step`` (eval mode for the pass, train mode after)."""
    run.model.eval()
    student = run.student if run.sharded else run.accelerator.unwrap_model(run.student)
    run.log_line({"step": step, "eval": student.evaluate(run.held_out, run.eval_window, run.eval_sinks, run.pad_id)})
    run.model.train()


def train_step(run: DistillRun, step: int, order: GlobalOrder) -> dict:
    """One optimiser step (``grad_accum`` micro-batches per process, each at its own sampled window and sinks);
    returns the log row, its statistics reduced over processes."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    world, accum, bs = accelerator.num_processes, cfg.grad_accum, cfg.batch_size
    t0 = time.perf_counter()
    names = ("loss", "kl", "ce") + (("content",) if cfg.content_weight else ())
    stats = dict.fromkeys(names, 0.0)
    step_tokens = 0
    n = len(run.sequences)
    for a in range(accum):
        micro = (step * accum + a) * world + accelerator.process_index
        picked = [order[micro * bs + i] for i in range(bs)]
        batch = [run.sequences[j] for j in picked]
        rng = _micro_rng(cfg.seed, micro)
        window, sinks = sample_window(min(map(len, batch)), cfg.windows, cfg.sinks, rng)
        if cfg.repeat_fraction:
            batch = [with_repeat(s, window, sinks, rng) if rng.random() < cfg.repeat_fraction else s for s in batch]
        extra = {}
        if cfg.content_weight and n > 1:  # each sequence's far context from another training sequence
            partners = [run.sequences[(j + 1 + rng.randrange(n - 1)) % n] for j in picked]
            pair = content_pair(batch, partners, window, sinks)
            if pair is not None:
                extra = {"swapped_ids": collate(pair[0], run.pad_id)[0].to(accelerator.device),
                         "content_span": pair[1]}
        ids, mask = collate(batch, run.pad_id)
        ids, mask = ids.to(accelerator.device), mask.to(accelerator.device)
        # DDP: no gradient all-reduce before the last micro-batch; FSDP2: the AHN's gradients are averaged once, below
        last = a == accum - 1 or run.sharded
        ctx = contextlib.nullcontext() if last else accelerator.no_sync(run.student)
        # the backward pass recomputes checkpointed layers: it runs at the same settings as the forward
        with model.runtime(sliding_window=window, num_sinks=sinks), ctx, accelerator.autocast():
            res = run.student(ids, mask, window, sinks, **extra)
            accelerator.backward(res["loss"] / accum)
        for k in names:
            if k in res:
                stats[k] += float(res[k].detach()) / accum
        step_tokens += int(mask.sum())
    if run.sharded:
        average_gradients(run.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
    else:
        grad_norm = accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    reduced = accelerator.reduce(torch.tensor([stats[k] for k in names] + [step_tokens],
                                              dtype=torch.float64, device=accelerator.device), "sum")
    means = {k: float(x) / world for k, x in zip(names, reduced[:-1])}
    tokens = int(reduced[-1])
    dt = time.perf_counter() - t0
    mem = accelerator.gather(torch.tensor([process_memory_mib(accelerator.device)], device=accelerator.device))
    return {"step": step + 1, **means, "lr": run.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm), "tokens": tokens, "tokens_per_s": tokens / dt, "step_s": dt,
            "mem_mib": round(float(mem.max()), 1)}


def process_memory_mib(device: torch.device) -> float:
    """This process's memory in MiB, the log's ``mem_mib`` (the largest over processes): on a CUDA device the peak
    allocated since the previous call (one step); on a CPU the resident set at the end of the step."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def training_recipe(run: DistillRun, train_rows: list[dict]) -> dict:
    """The recipe table of the adapter card's training section."""
    cfg = run.cfg
    return {"base": cfg.base, "objective": cfg.objective,
            "loss": cfg.loss if cfg.objective == "end-to-end" else "per-layer normalised attention transfer",
            "use_q_proj": cfg.use_q_proj,
            **({"content loss weight": cfg.content_weight} if cfg.content_weight else {}),
            **({"sequence chunk": cfg.sequence_chunk} if cfg.sequence_chunk else {}),
            **({"beyond the official format": ", ".join(unofficial_options(cfg))} if unofficial_options(cfg) else {}),
            "repeated passages": cfg.repeat_fraction or "none", "steps": cfg.max_steps, "global batch": run.per_step,
            "max length": cfg.max_length,
            "documents": ("packed" if cfg.pack else "split into max-length chunks" if cfg.split_documents
                          else "first max-length tokens of each"),
            "lr": cfg.lr, "warmup": cfg.warmup_ratio,
            "weight decay": cfg.weight_decay, "windows": cfg.windows or "paper {32..8192} in (L/8, L)",
            "sinks": cfg.sinks or "{0, 32, 64, ...} <= W/2", "bf16": cfg.bf16,
            "memory init": (f"decay half-lives {cfg.memory_span[0]}-{cfg.memory_span[1]} tokens (--memory-span)"
                            if cfg.memory_span else "from --init-adapter" if cfg.init_adapter
                            else "the release's (spec 2.1)"),
            "training sequences": len(run.sequences), "training tokens seen": sum(r["tokens"] for r in train_rows),
            "mean tokens/s": round(sum(r["tokens"] for r in train_rows)
                                   / max(1e-9, sum(r["step_s"] for r in train_rows)), 1)}


def adapter_config(run: DistillRun):
    """The exported adapter's config: a copy of the model's, with the held-out window and sinks as its saved
    defaults and chunked prefill (training runs whole sequences; the adapter pre-fills long prompts in chunks, with
    bounded memory). The live model's config is not changed."""
    import copy

    from ..configuration_ahn import DEFAULT_PREFILL_CHUNK_SIZE

    config = copy.deepcopy(run.model.config)
    config.sliding_window, config.num_sinks = run.eval_window, run.eval_sinks
    config.prefill_chunk_size = DEFAULT_PREFILL_CHUNK_SIZE
    config.validate_ahn()
    return config


def export_adapter(run: DistillRun) -> Path:
    """Write the adapter repo (weights, config, card with the recipe and the evaluations) and the loss curve."""
    from ..hub.card import render_training_section
    from ..hub.export import export_ahn_repo

    model = run.model
    model.eval()
    adapter = run.out / ADAPTER_DIR
    if run.main:
        history = [json.loads(line) for line in (run.out / LOG_NAME).read_text().splitlines() if line.strip()]
        evals = [r for r in history if "eval" in r]
        recipe = training_recipe(run, [r for r in history if "loss" in r])
        export_ahn_repo(adapter, adapter_config(run), model.ahn_state_dict(), generation_config=model.generation_config,
                        tokenizer=run.tokenizer, eval_results=_eval_table(evals),
                        extra_card_sections=[render_training_section(recipe)])
        if not plot_history(history, run.out / "loss_curve.png"):
            print("matplotlib is not installed: no loss_curve.png (pip install 'modeling-ahn[train]')")
    run.accelerator.wait_for_everyone()
    return adapter


def out_of_time(run: DistillRun, done: int, began: float) -> bool:
    """Whether any process has spent ``max_minutes`` before the last step (then every process stops at ``done``)."""
    cfg, accelerator = run.cfg, run.accelerator
    return cfg.max_minutes is not None and done < cfg.max_steps and bool(accelerator.reduce(
        torch.tensor(float(time.monotonic() - began > 60 * cfg.max_minutes), device=accelerator.device), "sum"))


def distill(cfg: DistillConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
            _stop_after: int | None = None) -> Path:
    """Run (or resume) a distillation; returns the directory of the final adapter repo (or of the checkpoints, when
    the run stopped early at its time budget)."""
    from tqdm.auto import tqdm

    run = setup_run(cfg, resume, overwrite, progress)
    start = resume_checkpoint(run) if resume else 0
    order = GlobalOrder(len(run.sequences), cfg.seed)
    run.log = open(run.out / LOG_NAME, "a") if run.main else None
    if start == 0 and run.held_out:
        evaluate_run(run, 0)
    run.model.train()
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not (progress and run.main), desc="distill", unit="step")
    began = time.monotonic()
    try:
        for step in range(start, cfg.max_steps):
            row = train_step(run, step, order)
            run.log_line(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", kl=f"{row['kl']:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}")
            bar.update(1)
            done = step + 1
            if run.held_out and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                evaluate_run(run, done)
            stop = out_of_time(run, done, began)
            if done % cfg.save_every == 0 or done == cfg.max_steps or stop:
                save_checkpoint(run, done)
            run.accelerator.wait_for_everyone()
            if stop:
                if run.main and progress:
                    print(f"time budget of {cfg.max_minutes} min spent at step {done}: checkpoint saved; "
                          f"continue with --resume")
                _stop_after = done
            if _stop_after is not None and done >= _stop_after:
                return run.out / CHECKPOINTS
    finally:
        bar.close()
        run.close_log()
    return export_adapter(run)


@torch.no_grad()
def init_memory_span(model, lo: float, hi: float) -> None:
    """Set every GatedDeltaNet's decay so that its heads' memory half-lives (at ``a_proj(x) = 0``) are
    log-spaced from ``lo`` to ``hi`` tokens, rotated by one head per layer.

    The release's initialisation (spec 2.1) gives most heads half-lives of a few tokens, and short runs keep
    them (median 12-13 tokens in the SmolLM2 adapters trained from it; ``benchmarks/memory_span.py``), so such
    an AHN remembers little beyond the window; with ``A = 1`` and ``dt_bias`` the inverse softplus of
    ``ln 2 / half-life`` the memory starts out long. Other parameters are untouched.
    """
    from ..memory_ahn import inverse_softplus

    for i, module in sorted(model.ahn_modules().items()):
        fn = module.fn
        H = fn.num_heads
        half_life = torch.logspace(math.log10(lo), math.log10(hi), H).roll(i % H)
        rate = math.log(2) / half_life
        fn.A_log.zero_()
        fn.dt_bias.copy_(inverse_softplus(rate).to(fn.dt_bias.dtype))


def _load_init_adapter(model, cfg: DistillConfig) -> None:
    """Start from the weights of an exported AHN repo (same base shape and memory type)."""
    from ..memory_ahn import canonical_ahn_type
    from ..modeling_ahn import read_adapter_weights

    config_file = Path(cfg.init_adapter) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"--init-adapter {cfg.init_adapter} is not an exported AHN repo (no config.json)")
    saved = json.loads(config_file.read_text()).get("ahn_type")
    if saved is None or canonical_ahn_type(saved) != canonical_ahn_type(cfg.ahn_type):
        raise ValueError(f"--init-adapter {cfg.init_adapter} holds an AHN of type {saved!r}, "
                         f"but this run trains {cfg.ahn_type!r}")
    model.load_ahn_state_dict(read_adapter_weights(cfg.init_adapter, {}))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint a run resumes from (a killed run may have logged more)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def _eval_table(evals: list[dict]) -> list[dict]:
    if not evals:
        return []
    first, last = evals[0]["eval"], evals[-1]["eval"]
    w, s = last["eval_window"], last["eval_sinks"]
    return [
        {"model": "full attention (teacher)", "ppl beyond window": last["ppl_full"], "KL to teacher": 0.0},
        {"model": f"sinks+SWA (W={w}, S={s})", "ppl beyond window": last["ppl_swa"], "KL to teacher": last["kl_swa"]},
        {"model": f"AHN before training (step {evals[0]['step']})", "ppl beyond window": first["ppl_ahn"],
         "KL to teacher": first["kl_ahn"]},
        {"model": f"AHN (step {evals[-1]['step']})", "ppl beyond window": last["ppl_ahn"],
         "KL to teacher": last["kl_ahn"]},
    ]


def plot_history(history: list[dict], path: Path) -> bool:
    """Training loss and held-out KL vs step as a PNG; returns False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [r for r in history if "loss" in r]
    evals = [r for r in history if "eval" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.7, label="train loss")
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["eval"]["kl_ahn"] for r in evals], "o-", label="held-out KL(teacher || AHN)")
        ax.plot(steps, [r["eval"]["kl_swa"] for r in evals], "--", label="held-out KL(teacher || sinks+SWA)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title("AHN self-distillation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
