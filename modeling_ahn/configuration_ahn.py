# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``AhnConfig``: a frozen base model's config plus the AHN settings (Hub remote-code payload)."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .memory_ahn import canonical_ahn_type

# Bases whose attention dispatches through transformers' attention interface with the same
# (q, k, v after RoPE, cache-updated) contract, verified by the test-suite.
SUPPORTED_BASE_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")

# The paper's long-context inference setting (LV-Eval / InfiniteBench at 128k).
DEFAULT_SLIDING_WINDOW = 32640
DEFAULT_NUM_SINKS = 128
DEFAULT_PREFILL_CHUNK_SIZE = 2048
# Context length reported to tools that read `max_position_embeddings` (lm-eval); AHN itself has no limit.
DEFAULT_EFFECTIVE_CONTEXT = 1_048_576
# Recall slots keep a selected token with the 12 tokens before it and the 12 after it (a fact needs its neighbours to
# be answered from: measured on SmolLM2, docs/recall_slots.md).
DEFAULT_RECALL_SPAN = (12, 12)
# How recall slots score tokens (None: the best the adapter has; recall_slots.py).
RECALL_SCORES = (None, "learned", "novelty")
# How a layer's recall slots rank tokens: "mean", the mean of the raw scores of this AHN layer and every AHN layer
# before it (the same tokens reach the slots of most layers); "layer", its own raw score only (measured on SmolLM2:
# docs/recall_slots.md).
RECALL_POOLS = ("mean", "layer")
# The base's attributes an AhnConfig reads and writes through to its base_config (generation utilities, trainers,
# lm-eval and transformers' tests read them from the top-level config). `max_position_embeddings` and
# `sliding_window` are the AHN model's own.
BASE_ATTRIBUTES = ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                   "head_dim", "intermediate_size", "hidden_act", "rms_norm_eps", "initializer_range",
                   "attention_dropout", "attention_bias", "rope_parameters", "pad_token_id", "bos_token_id",
                   "eos_token_id")


def parse_layer_ids(value) -> list[int]:
    """``[1, 3]``, ``"1,3"`` (the official ``fa_layer_ids``), ``""`` or ``None`` -> sorted list of ints."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return sorted({int(p) for p in parts})
        except ValueError:
            raise ValueError(f"full_attention_layers must be integers, got {value!r}") from None
    try:
        ids = sorted({int(i) for i in value})
    except (TypeError, ValueError):
        raise ValueError(f"full_attention_layers must be a list of layer indices, got {value!r}") from None
    return ids


def head_dim_of(cfg) -> int:
    """The attention head size of a base config (explicit ``head_dim`` for Qwen3, else hidden / heads)."""
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def recall_score_of(recall_score, recall_head) -> str:
    """The score recall slots use: ``recall_score`` (``"learned"``: the adapter's retention classifier,
    ``"novelty"``: training-free), or for ``None`` the best the adapter has (learned where it carries a classifier)."""
    if recall_score is None:
        return "learned" if recall_head else "novelty"
    return recall_score


def validate_settings(sliding_window, num_sinks, prefill_chunk_size=None, num_recall_slots=0,
                      recall_span=DEFAULT_RECALL_SPAN, recall_head=False, recall_score=None,
                      recall_pool="mean") -> None:
    """Raise a ``ValueError`` naming a bad window / sinks / chunk / recall-slot setting."""
    if not _is_int(sliding_window) or sliding_window < 1:
        raise ValueError(f"sliding_window must be an integer >= 1 (tokens attended exactly), got {sliding_window!r}.")
    if not _is_int(num_sinks) or num_sinks < 0:
        raise ValueError(f"num_sinks must be an integer >= 0 (attention-sink tokens), got {num_sinks!r}.")
    if not _is_int(num_recall_slots) or num_recall_slots < 0:
        raise ValueError(f"num_recall_slots must be an integer >= 0 (evicted tokens kept exactly; 0 = off), got "
                         f"{num_recall_slots!r}.")
    span = tuple(recall_span) if isinstance(recall_span, (list, tuple)) else None
    if span is None or len(span) != 2 or not all(_is_int(x) and x >= 0 for x in span):
        raise ValueError(f"recall_span must be two integers >= 0 (tokens kept before and after a selected one), got "
                         f"{recall_span!r}.")
    if num_recall_slots and span[0] >= sliding_window:
        raise ValueError(f"recall_span keeps {span[0]} tokens before a selected one, which needs a window of more than "
                         f"that (sliding_window={sliding_window}): a token's span score must be known when it leaves "
                         "the window. Use a smaller recall_span or a larger window.")
    if recall_score not in RECALL_SCORES:
        raise ValueError(f"recall_score must be one of {RECALL_SCORES} (None: the adapter's classifier if it has one, "
                         f"else 'novelty'), got {recall_score!r}.")
    if recall_pool not in RECALL_POOLS:
        raise ValueError(f"recall_pool must be one of {RECALL_POOLS} ('mean': every layer ranks tokens by the mean raw "
                         f"score of the AHN layers up to it; 'layer': by its own), got {recall_pool!r}.")
    if num_recall_slots and recall_score == "learned" and not recall_head:
        raise ValueError(
            f"num_recall_slots={num_recall_slots} with recall_score='learned' needs a trained retention classifier, "
            "and this adapter has none (recall_head=False). Train one with `ahn train-recall` (it adds "
            "model.layers.{i}.ahn.recall to the adapter), load an adapter that carries one, or use the training-free "
            "recall_score='novelty'.")
    if prefill_chunk_size is not None and (not _is_int(prefill_chunk_size) or prefill_chunk_size < 1):
        raise ValueError(f"prefill_chunk_size must be None or an integer >= 1, got {prefill_chunk_size!r}.")


class AhnConfig(PreTrainedConfig):
    r"""Configuration of an AHN model: a frozen decoder-only base plus one memory per AHN layer.

    Args:
        base_config: the base model's own config (Qwen2, Qwen3, Llama or Mistral). Nested under
            ``base_config`` (not ``text_config``) so that tools reading ``text_config`` first, such as
            lm-eval, see the AHN model's ``max_position_embeddings`` below, not the base's.
        base_model_name_or_path / base_model_revision: where the frozen base weights come from.
        ahn_type: ``"gdn"`` (GatedDeltaNet), ``"dn"`` (DeltaNet) or ``"mamba2"``; official names accepted.
        sliding_window: ``W``, the number of most recent tokens each query attends to exactly
            (including itself).
        num_sinks: ``S``, the number of first tokens every query attends to (attention sinks).
        full_attention_layers: layers kept at full attention, without AHN (official ``fa_layer_ids``).
        prefill_chunk_size: a prompt longer than this is pre-filled in chunks of this many tokens, so
            peak memory does not grow with its length; ``None`` pre-fills in one pass.
        clamp_sink_positions: when a query's position exceeds the base's own
            ``max_position_embeddings`` ``P``, score it against the attention sinks as if it sat at ``P``
            (its query is rotated back to ``P`` for the sink keys only), so that no query-sink distance
            exceeds what the base was trained on. The window and the memory are unaffected, and nothing
            changes within ``P`` tokens. Without it, RoPE bases fall apart once sinks lie beyond their trained
            context (SmolLM2, ``P`` = 8k: sinks+SWA perplexity 27 -> 218 at 12k-16k tokens). ``False``: sinks
            at their absolute positions, as the original release computes them.
        max_position_embeddings: the effective context length reported to tools. AHN has no hard limit;
            the base's own limit stays in ``base_config.max_position_embeddings``.
        use_q_proj: the official option: each memory reads with a learned per-head projection of the query
            (``ahn.fn.q_proj.weight`` ``(H, D, D)``, applied before RoPE); off in the released models.
        use_k_proj: beyond the official format: each memory writes a learned per-head projection of the key
            (``ahn.fn.k_proj.weight`` ``(H, D, D)``, before RoPE, identity-initialised).
        position_free: beyond the official format: the memory writes and reads keys and queries before RoPE.
        value_centring: beyond the official format: the memory writes each value minus a learned per-head mean
            (``ahn.fn.v_mean`` ``(H, D)``), set to the layer's mean value before training.
            All three are off by default (off = the official maths exactly). The official release's code cannot run
            them: an exported card says so; there is no export to the release's own format.
        num_recall_slots: beyond the official format: ``G`` evicted tokens per AHN layer kept exactly (keys and
            values), chosen by a learned retention score, attended in one softmax with sinks and window
            (``recall_slots.py``); 0 (default) = off, the official maths exactly. Settable at load time and through
            ``model.runtime``.
        recall_span: ``(before, after)``: a selected token is kept with the ``before`` tokens preceding it and the
            ``after`` following it.
        recall_distance: how far before its query every recall slot is seen (its key moved there with RoPE);
            ``None`` (default): the window's size, just beyond the window's edge; 0: each at its real position.
        recall_head: whether the adapter carries a trained retention classifier (``model.layers.{i}.ahn.recall``,
            beyond the official format).
        recall_score: how recall slots score tokens: ``"learned"`` (the retention classifier), ``"novelty"``
            (training-free: a plain delta-rule memory's residual, ``recall_slots.novelty_scores``) or ``None``
            (default): learned where the adapter carries a classifier, else novelty. Settable like
            ``num_recall_slots``.
        recall_pool: how a layer ranks tokens for its recall slots: ``"mean"`` (default): the mean of the raw
            scores of this AHN layer and every AHN layer before it, so that a token most layers score high is kept
            by most layers; ``"layer"``: its own raw score only. Settable like ``num_recall_slots``.
    """

    model_type = "ahn"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2", optional=True)}

    base_config: dict | PreTrainedConfig | None = None
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    ahn_type: str = "gdn"
    sliding_window: int = DEFAULT_SLIDING_WINDOW
    num_sinks: int = DEFAULT_NUM_SINKS
    full_attention_layers: list[int] | str | None = None
    prefill_chunk_size: int | None = DEFAULT_PREFILL_CHUNK_SIZE
    clamp_sink_positions: bool = True
    use_q_proj: bool = False
    use_k_proj: bool = False
    position_free: bool = False
    value_centring: bool = False
    num_recall_slots: int = 0
    recall_span: list[int] | tuple[int, int] = DEFAULT_RECALL_SPAN
    recall_distance: int | None = None
    recall_head: bool = False
    recall_score: str | None = None
    recall_pool: str = "mean"
    max_position_embeddings: int = DEFAULT_EFFECTIVE_CONTEXT
    use_cache: bool = True
    tie_word_embeddings: bool = False
    ahn_version: str | None = None  # written on export
    ahn_code_hash: str | None = None  # sha256 prefix of the exported remote code

    def __post_init__(self, **kwargs):
        fa_layer_ids = kwargs.pop("fa_layer_ids", None)
        super().__post_init__(**kwargs)
        if self.full_attention_layers is None and fa_layer_ids is not None:
            self.full_attention_layers = fa_layer_ids
        self.full_attention_layers = parse_layer_ids(self.full_attention_layers)
        self.ahn_type = canonical_ahn_type(self.ahn_type)
        self.validate_ahn()

    def validate_ahn(self):
        """Raise a ``ValueError`` naming the bad setting and how to fix it."""
        validate_settings(self.sliding_window, self.num_sinks, self.prefill_chunk_size, self.num_recall_slots,
                          self.recall_span, self.recall_head, self.recall_score, self.recall_pool)
        self.recall_span = [int(x) for x in self.recall_span]
        if self.recall_distance is not None and (not _is_int(self.recall_distance) or self.recall_distance < 0):
            raise ValueError("recall_distance must be None (the window's size), 0 (real positions) or an integer >= 1 "
                             "(tokens between a query and where its recall slots are seen), got "
                             f"{self.recall_distance!r}.")
        base = self.base_config
        if base is None:
            return
        if base.model_type not in SUPPORTED_BASE_MODEL_TYPES:
            raise ValueError(
                f"Unsupported base architecture {base.model_type!r}: AHN supports "
                f"{', '.join(SUPPORTED_BASE_MODEL_TYPES)} (decoder-only models using transformers' attention "
                "interface). Open an issue if you need another one."
            )
        n = base.num_hidden_layers
        bad = [i for i in self.full_attention_layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"full_attention_layers {bad} are out of range: the base has {n} layers (0..{n - 1}).")

    @property
    def ahn_layers(self) -> list[int]:
        """Indices of the layers that carry an AHN memory."""
        full = set(self.full_attention_layers)
        return [i for i in range(self.base_config.num_hidden_layers) if i not in full]

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The base's config (the text model that runs), as composite transformers configs return theirs."""
        return self.base_config if self.base_config is not None else self

    def __getattr__(self, name):  # only for names not found on the AHN config itself
        if name in BASE_ATTRIBUTES:
            base = self.__dict__.get("base_config")
            if base is not None:
                return getattr(base, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, key, value):
        if key in BASE_ATTRIBUTES and self.__dict__.get("base_config") is not None:
            setattr(self.base_config, key, value)  # one value, the base's: never a stale copy on the AHN config
            return
        super().__setattr__(key, value)

    @classmethod
    def from_base_config(cls, base_config: PreTrainedConfig, **kwargs) -> AhnConfig:
        return cls(base_config=base_config, **kwargs)


__all__ = ["BASE_ATTRIBUTES", "DEFAULT_RECALL_SPAN", "RECALL_POOLS", "RECALL_SCORES", "AhnConfig",
           "SUPPORTED_BASE_MODEL_TYPES",
           "parse_layer_ids", "recall_score_of", "validate_settings"]
