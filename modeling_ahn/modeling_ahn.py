# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""AHN models over a frozen base (Hub remote-code payload).

* ``AhnForCausalLM``: the base causal LM plus AHN (``AutoModelForCausalLM``).
* ``AhnModel``: the base decoder plus AHN, no LM head (``AutoModel``).

Both register the base's decoder as ``model`` (and the head as ``lm_head``), so the state dict is the
base's own keys plus the official AHN keys ``model.layers.{i}.ahn.fn.<param>``. An exported repo holds
only the AHN tensors; ``from_pretrained`` loads the frozen base from ``base_model_name_or_path``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention_ahn import AHN_ATTENTION, INNER_IMPLEMENTATIONS, attach_ahn, get_layer_spec
from .cache_ahn import AhnCache, SinkWindowLayer, StaticAhnCache
from .configuration_ahn import SUPPORTED_BASE_MODEL_TYPES, AhnConfig, head_dim_of, parse_layer_ids, validate_settings
from .memory_ahn import AhnMemory, AhnModule, build_memory, memory_options

logger = logging.getLogger(__name__)

AHN_VERSION = "0.1.0"
# The flat remote-code payload, copied verbatim into every exported repo.
PAYLOAD_FILES = ("configuration_ahn.py", "memory_ahn.py", "cache_ahn.py", "window_attention.py", "recall_slots.py",
                 "attention_ahn.py", "modeling_ahn.py")
WEIGHTS_NAME = "model.safetensors"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_SUBFOLDER = "peft"
BASE_SUBFOLDER = "base"  # a repo saved from a model with no base repo to refer to holds its base here
HUB_KWARGS = ("cache_dir", "force_download", "token", "revision", "local_files_only", "subfolder", "proxies")
AUTO_KWARGS = ("trust_remote_code", "_from_auto", "adapter_kwargs", "code_revision", "_from_pipeline", "_commit_hash")


def _cache_kwarg_name() -> str:
    """transformers >= 5.24 passes the KV cache as ``cache=`` (``past_key_values`` is a deprecated alias until
    5.40); earlier 5.x as ``past_key_values=``. Our forwards accept both and hand the base the name it knows."""
    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


CACHE_KWARG = _cache_kwarg_name()
# Settings that may be overridden at load time: from_pretrained(repo, sliding_window=8064, num_sinks=128)
RUNTIME_SETTINGS = ("sliding_window", "num_sinks", "prefill_chunk_size", "num_recall_slots", "recall_span",
                    "recall_distance", "recall_score", "recall_pool")
# Attention modes of AhnPreTrainedModel.runtime(mode=...)
ATTENTION_MODES = ("ahn", "swa", "full")


def code_hash(directory: str | os.PathLike | None = None) -> str:
    """sha256 over the payload files (name and bytes) of a code directory (default: this code's)."""
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in PAYLOAD_FILES:
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:16]


def base_shape_summary(cfg) -> str:
    return (f"{cfg.num_hidden_layers} layers, hidden size {cfg.hidden_size}, {cfg.num_attention_heads} heads of "
            f"size {head_dim_of(cfg)}, {getattr(cfg, 'num_key_value_heads', None) or cfg.num_attention_heads} KV heads")


def base_shape_key(cfg):
    return (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, head_dim_of(cfg),
            getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


def expected_ahn_shapes(config) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of every AHN tensor this config needs (built on the meta device)."""
    bc = config.base_config
    with torch.device("meta"):
        fn = build_memory(config.ahn_type, bc.hidden_size, bc.num_attention_heads, head_dim_of(bc),
                          **memory_options(config))
    shapes = {f"fn.{name}": tuple(p.shape) for name, p in fn.named_parameters()}
    if getattr(config, "recall_head", False):  # beyond the official format: the recall slots' classifier
        shapes.update({"recall.weight": (1, bc.hidden_size), "recall.bias": (1,)})
    return {f"model.layers.{i}.ahn.{name}": s for i in config.ahn_layers for name, s in shapes.items()}


def check_ahn_state_dict(config, state_dict, strict: bool = True) -> tuple[list[str], list[str]]:
    """Raise ``ValueError`` if the tensors do not fit ``config`` (shapes always; keys when ``strict``)."""
    want = expected_ahn_shapes(config)
    bad = [(k, tuple(state_dict[k].shape), s) for k, s in want.items() if k in state_dict
           and tuple(state_dict[k].shape) != s]
    if bad:
        k, got, s = bad[0]
        raise ValueError(
            f"AHN weights do not fit this base: {k} has shape {got}, expected {s} for a base with "
            f"{base_shape_summary(config.base_config)} ({len(bad)} mismatched tensors). Load the adapter on the base "
            "model it was trained for."
        )
    missing = sorted(k for k in want if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in want)
    if strict and (missing or unexpected):
        def show(keys):
            return f"{keys[:6]}{' ...' if len(keys) > 6 else ''} ({len(keys)})"

        raise ValueError(
            f"AHN state dict does not match this model (ahn_type={config.ahn_type!r}, AHN layers "
            f"{config.ahn_layers}): missing {show(missing)}, unexpected {show(unexpected)}. Check ahn_type and "
            "full_attention_layers."
        )
    return missing, unexpected


def _check_base(base, decoder_only=False) -> None:
    model_type = getattr(base.config, "model_type", None)
    if model_type not in SUPPORTED_BASE_MODEL_TYPES:
        raise ValueError(
            f"Unsupported base architecture {model_type!r} ({type(base).__name__}): AHN supports "
            f"{', '.join(SUPPORTED_BASE_MODEL_TYPES)} causal LMs."
        )
    decoder = base if decoder_only else getattr(base, base.base_model_prefix, None)
    if decoder is None or not hasattr(decoder, "layers") or (not decoder_only and base.get_output_embeddings() is None):
        raise ValueError(
            f"{type(base).__name__} is not a {'decoder' if decoder_only else 'causal LM with an LM head'}; load the "
            f"base with {'AutoModel' if decoder_only else 'AutoModelForCausalLM'}."
        )


def read_adapter_weights(path: str, hub: dict) -> dict[str, torch.Tensor]:
    """The AHN tensors of a repo/dir. Refuses pickles; explains a missing or corrupt file."""
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    opts = dict(hub, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    file = cached_file(path, WEIGHTS_NAME, **opts)
    if file is None:
        for pickle_name in ("pytorch_model.bin", "model.pt", "model.pth"):
            if cached_file(path, pickle_name, **opts) is not None:
                raise ValueError(
                    f"{path} holds AHN weights only as a pickle ({pickle_name}). Pickles can execute arbitrary code "
                    f"when loaded, so they are refused: convert them to {WEIGHTS_NAME} (safetensors) first."
                )
        raise OSError(f"{path} has no {WEIGHTS_NAME}: it is not an exported AHN repo (or the download failed).")
    try:
        return load_file(file)
    except Exception as e:  # SafetensorError, truncated files, ...
        raise ValueError(f"{file} is not a valid safetensors file ({e}); re-download or re-export the adapter.") from e


def has_bundled_base(path: str, hub: dict) -> bool:
    """Whether an AHN repo/dir holds its base model in ``base/`` (written by ``save_pretrained`` when the model has
    no base repo to refer to)."""
    from transformers.utils import cached_file

    sub = "/".join(filter(None, (hub.get("subfolder"), BASE_SUBFOLDER)))
    opts = dict(hub, subfolder=sub, _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False)
    return cached_file(path, "config.json", **opts) is not None


def load_ahn_config(path: str, hub: dict) -> AhnConfig:
    """The ``AhnConfig`` of an exported repo; a plain base checkpoint (or an official AHN release, which is a
    Qwen2/Qwen3 config) is refused with what to do instead."""
    config_dict, _ = AhnConfig.get_config_dict(path, **hub)
    model_type = config_dict.get("model_type")
    if model_type != AhnConfig.model_type:
        official = any(k in config_dict for k in ("fa_layer_ids", "_ahn_implementation", "ahn_position"))
        hint = ("It looks like an official AHN release: convert it first with `ahn convert bytedance`." if official
                else f"To put a fresh AHN on this base, use AhnForCausalLM.from_base({path!r}, sliding_window=..., "
                     "num_sinks=...); to load an AHN model, point at an exported AHN repo.")
        raise ValueError(f"{path} is not an AHN repo: its config.json has model_type={model_type!r}, not 'ahn' (a "
                         f"plain base checkpoint). {hint}")
    return AhnConfig.from_pretrained(path, **hub)


@torch.no_grad()
def load_base_tensors(model, base_state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load the base's tensors of a full state dict (the model's own keys, without ``.ahn.``) over the model's base.
    Shapes must fit; missing / unexpected keys raise when ``strict``. Returns ``(missing, unexpected)``."""
    own = {k: v for k, v in model.state_dict().items() if ".ahn." not in k}
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in base_state.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"Base weights do not fit this model: {bad[0][0]} has shape {bad[0][1]}, expected "
                         f"{bad[0][2]} ({len(bad)} mismatched tensors).")
    loaded = {k for k in base_state if k in own}
    shared = {own[k].data_ptr() for k in loaded}  # tied weights (lm_head = embed_tokens) count as loaded
    missing = sorted(k for k in own if k not in loaded and own[k].data_ptr() not in shared)
    unexpected = sorted(k for k in base_state if k not in own)
    if strict and (missing or unexpected):
        raise ValueError(f"The base weights do not match this model: missing {missing[:6]} ({len(missing)}), "
                         f"unexpected {unexpected[:6]} ({len(unexpected)}).")
    for k in loaded:
        own[k].copy_(base_state[k].to(device=own[k].device, dtype=own[k].dtype))
    return missing, unexpected


def _warn_on_code_mismatch(config) -> None:
    running = code_hash()
    saved = getattr(config, "ahn_code_hash", None)
    if saved and saved != running:
        logger.warning(
            "This AHN repo was exported by modeling_ahn %s (code hash %s); the code running now has hash %s. "
            "Results may differ: re-export the repo with the installed version.",
            getattr(config, "ahn_version", "?"), saved, running,
        )
    if not __name__.startswith("modeling_ahn."):  # loaded as remote code: compare with an installed package
        try:
            import importlib.util

            spec = importlib.util.find_spec("modeling_ahn")
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            installed = code_hash(Path(spec.origin).parent)
            if installed != running:
                logger.warning(
                    "The remote code of this repo (hash %s) differs from the installed modeling_ahn package "
                    "(hash %s). `import modeling_ahn` before loading to use the installed code.", running, installed,
                )


def _check_tokens(input_ids, inputs_embeds) -> None:
    """A clear error for inputs the base would fail on with a shape or dtype message of its own."""
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {list(input_ids.shape)}.")
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype} (cast with .long(); "
                             "for embeddings pass inputs_embeds=).")
    tokens = input_ids if input_ids is not None else inputs_embeds
    if tokens.shape[1] == 0:
        raise ValueError(f"the input has no tokens (shape {list(tokens.shape)}): pass at least one token per row.")


def _check_cache_batch(cache, batch: int) -> None:
    """A cache holds its rows' windows and states: reusing it for another batch size is refused with the reason."""
    if not isinstance(cache, Cache):
        return
    for layer in cache.layers:
        if isinstance(layer, SinkWindowLayer) and layer.is_initialized and layer.batch_size != batch:
            raise ValueError(f"this cache holds {layer.batch_size} rows (their windows and memory states) but the "
                             f"input has {batch}: start a new cache (model.new_cache()) for another batch size.")


def _model_signature(config: AhnConfig) -> tuple:
    """What a filled cache depends on besides its window and sinks: the base's architecture and shapes and the
    memory type."""
    base = config.base_config
    return (base.model_type, config.ahn_type, base.num_hidden_layers, base.hidden_size, base.num_attention_heads,
            getattr(base, "num_key_value_heads", None) or base.num_attention_heads, head_dim_of(base))


def _describe_signature(sig: tuple) -> str:
    model_type, ahn_type, layers, hidden, heads, kv_heads, head_dim = sig
    return (f"{model_type} base, {layers} layers, hidden {hidden}, {heads} heads / {kv_heads} KV heads of {head_dim}, "
            f"memory {ahn_type}")


def _bind_cache(cache, config: AhnConfig) -> None:
    """An AhnCache belongs to the model that first fills it: an empty cache is bound to this model (its
    signature, ``_model_signature``), a filled one is refused by another. A model of the same architecture and
    memory with other weights cannot be told apart here: reuse a cache only with the model that filled it."""
    if not isinstance(cache, AhnCache):
        return
    sig = _model_signature(config)
    held = getattr(cache, "model_signature", None)
    if held is None or cache.get_seq_length() == 0:
        cache.model_signature = sig
    elif held != sig:
        raise ValueError(f"this cache was filled by another model ({_describe_signature(held)}), not by this one "
                         f"({_describe_signature(sig)}): a cache holds one model's windows and memory states. Start a "
                         "new cache (model.new_cache()).")


def _check_memory_finite(output: torch.Tensor, cache) -> None:
    """Refuse to hand back an output computed from a memory state that holds NaN or Inf, naming the AHN layer(s).

    Cheap, once per call: one check of the last position of ``output`` (a non-finite state reaches every later
    output); only when that is not finite are the layers' states read. A non-finite output with finite states is
    the base's own (e.g. a float16 overflow) and passes as it would without AHN. Skipped while compiling."""
    if not isinstance(cache, Cache) or output.numel() == 0 or torch.compiler.is_compiling():
        return
    if bool(torch.isfinite(output[:, -1]).all()):
        return
    bad = [i for i, layer in enumerate(cache.layers) if isinstance(layer, SinkWindowLayer)
           and layer.recurrent_state is not None and not bool(torch.isfinite(layer.recurrent_state).all())]
    if bad:
        raise FloatingPointError(
            f"the AHN memory state of layer(s) {bad} holds NaN or Inf (first: layer {bad[0]}), so this output is not "
            "finite: an input or a memory parameter that is not finite, or an overflow in float16/bfloat16 (try "
            "float32 for the memory: ahn_dtype=torch.float32). The cache cannot be used further; start a new one.")


def _check_attention_mode(mode) -> None:
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be 'ahn', 'swa' or 'full', got {mode!r}")


class AhnPreTrainedModel(PreTrainedModel):
    config_class = AhnConfig
    config: AhnConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # What runs inside AHN's sinks + window attention: SDPA (default) or eager (which returns attention weights);
    # model.set_attn_implementation(...) switches it. Flash / flex attention cannot take AHN's per-row masks and
    # block plans, and an attention backend (vLLM, TGI, paged attention) would replace the "ahn" function.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    # The cache folds evicted tokens into a recurrent state: it cannot be rewound (no assisted decoding, no
    # cropping); transformers refuses what needs that for stateful models.
    _is_stateful = True
    # The AHN forward prepares its inputs on the host (padding checks, chunked prefill); compiled decoding
    # compiles `model.base_causal_lm.forward` over a StaticAhnCache instead (docs/design.md, the static cache).
    _can_compile_fullgraph = False
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _base_auto_class = AutoModelForCausalLM

    def _init_weights(self, module):
        # Only AHN modules are ever initialised here; the frozen base keeps its weights.
        if isinstance(module, AhnMemory):
            module.reset_parameters()

    @classmethod
    def _base_or_new(cls, config, base_model):
        """The given base, or a randomly initialised one built from ``config.base_config``."""
        if base_model is not None:
            return base_model
        if config.base_config is None:
            raise ValueError("AhnConfig has no base_config: use AhnConfig(base_config=...) or from_base().")
        return cls._base_auto_class.from_config(config.base_config)

    def _augment(self, config, base_model, decoder) -> None:
        """Freeze the base, build one memory per AHN layer on its layer's device, attach them, and switch the
        base to the "ahn" attention implementation."""
        base_config = decoder.config
        config.base_config = base_config
        config.validate_ahn()
        base_model.requires_grad_(False)
        inner = base_config._attn_implementation
        if inner not in (None, AHN_ATTENTION, *INNER_IMPLEMENTATIONS):
            raise ValueError(
                f"The base uses attn_implementation={inner!r}, which cannot run inside AHN's sinks + window attention "
                "(per-row masks and block plans): load the base with attn_implementation='sdpa' (default) or 'eager'."
            )
        if inner not in INNER_IMPLEMENTATIONS:  # unset, or a config taken from an AHN model: the AHN config's own
            own = config._attn_implementation_internal
            inner = own if own in INNER_IMPLEMENTATIONS else "sdpa"
        memories = {}
        for i in config.ahn_layers:
            ref = decoder.layers[i].self_attn.q_proj.weight
            mem = build_memory(config.ahn_type, base_config.hidden_size, base_config.num_attention_heads,
                               head_dim_of(base_config), **memory_options(config))
            recall = base_config.hidden_size if config.recall_head else None
            dtype = ref.dtype if ref.is_floating_point() else None
            memories[i] = AhnModule(mem, recall).to(device=ref.device, dtype=dtype)
        attach_ahn(decoder, config, memories, inner=inner)
        base_model.set_attn_implementation(AHN_ATTENTION)  # the base dispatches to "ahn"; the AHN config reports
        config._attn_implementation_internal = inner  # what runs inside it (not through the setter: base stays)

    def set_attn_implementation(self, attn_implementation, allow_all_kernels: bool = False):
        """Choose the attention that runs *inside* AHN's sinks + window attention: ``"sdpa"`` (default, fastest) or
        ``"eager"`` (returns attention weights, for ``output_attentions=True``). The base keeps dispatching to
        ``"ahn"``; ``config._attn_implementation`` reports the inner one. Anything else raises: flash / flex
        attention and attention backends cannot take AHN's per-row sink + window masks."""
        impl = attn_implementation
        if isinstance(impl, dict):
            impl = impl.get("", impl.get("base_config", self.config._attn_implementation))
        if impl in (None, AHN_ATTENTION):
            impl = self.config._attn_implementation
        if impl not in INNER_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={impl!r} cannot run under AHN: its sinks + window attention takes per-row masks "
                f"and block plans that only {' / '.join(repr(i) for i in INNER_IMPLEMENTATIONS)} accept. Use "
                "'sdpa' (default) or 'eager' (returns attention weights)."
            )
        specs = [get_layer_spec(layer.self_attn) for layer in self.model.layers]
        for spec in specs:
            if spec is not None:
                spec.inner = impl
        self.config._attn_implementation_internal = impl

    # ------------------------------------------------------------------ AHN weights

    def ahn_modules(self) -> dict[int, AhnModule]:
        return {i: layer.ahn for i, layer in enumerate(self.model.layers) if "ahn" in layer._modules}

    def ahn_parameters(self):
        for module in self.ahn_modules().values():
            yield from module.parameters()

    def num_ahn_parameters(self) -> int:
        return sum(p.numel() for p in self.ahn_parameters())

    def ahn_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the AHN tensors, under the official keys ``model.layers.{i}.ahn.fn.<param>``."""
        return {
            f"model.layers.{i}.ahn.{name}": t
            for i, module in self.ahn_modules().items()
            for name, t in module.state_dict().items()
        }

    @torch.no_grad()
    def load_ahn_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True):
        """Load AHN tensors keyed ``model.layers.{i}.ahn.fn.<param>`` (cast to each parameter's dtype/device).

        Raises ``ValueError`` when shapes do not fit this base, or (``strict``) on missing/unexpected keys;
        nothing is loaded then. Returns ``(missing, unexpected)``.
        """
        missing, unexpected = check_ahn_state_dict(self.config, state_dict, strict)
        own = self.ahn_state_dict()
        for k, v in state_dict.items():
            if k in own:
                own[k].copy_(v.to(device=own[k].device, dtype=own[k].dtype))
        return missing, unexpected

    def add_recall_head(self, weights: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Give every AHN layer a retention classifier for recall slots (``model.layers.{i}.ahn.recall``, beyond the
        official format; ``config.recall_head`` becomes true): ``weights`` maps layer index -> ``(weight [hidden],
        bias [])`` of a trained probe (``None``: zeros, to be trained or loaded)."""
        hidden = self.config.base_config.hidden_size
        for i, module in self.ahn_modules().items():
            if module.recall_head is None:
                module.add_recall(hidden).requires_grad_(False)
            if weights is not None:
                w, b = weights[i]
                with torch.no_grad():
                    module.recall.weight.copy_(torch.as_tensor(w).reshape(1, hidden))
                    module.recall.bias.copy_(torch.as_tensor(b).reshape(1))
            get_layer_spec(self.model.layers[i].self_attn).recall = module.recall
        self.config.recall_head = True

    def new_cache(self, static: bool = False) -> AhnCache:
        """A fresh cache; ``static=True``: fixed-size buffers for compiled decoding (:class:`StaticAhnCache`)."""
        return StaticAhnCache(self.config) if static else AhnCache(self.config)

    @contextlib.contextmanager
    def runtime(self, *, sliding_window: int | None = None, num_sinks: int | None = None, mode: str | None = None,
                num_recall_slots: int | None = None, recall_score: str | None = None, recall_pool: str | None = None):
        """Run with these settings for the duration of the ``with`` block, then restore the previous ones.

        The one owner of the settings that vary per call (training samples a window per batch, evaluation compares
        modes): ``sliding_window`` ``W`` and ``num_sinks`` ``S`` (``None``: keep the current one) and the attention
        ``mode`` of every layer: ``"ahn"`` (default), ``"swa"`` (sinks + window, no memory: what a fresh adapter
        computes) or ``"full"`` (the base's causal attention; use ``use_cache=False``). Checked before anything
        changes; restored on exit, also on an exception; blocks nest (each restores what it found).

        A cache keeps the window it was built for: a non-empty cache from outside the block is refused by the
        attention when the block's ``W``/``S`` differ (start a new cache inside). To change the saved defaults, set
        them on the config instead (``from_pretrained(repo, sliding_window=...)``). ``num_recall_slots`` and
        ``recall_score`` (``"learned"`` / ``"novelty"``) and ``recall_pool`` (``"mean"`` / ``"layer"``) set the recall
        slots (docs/recall_slots.md) the same way.
        """
        config = self.config
        window = config.sliding_window if sliding_window is None else sliding_window
        sinks = config.num_sinks if num_sinks is None else num_sinks
        slots = config.num_recall_slots if num_recall_slots is None else num_recall_slots
        score = config.recall_score if recall_score is None else recall_score
        pool = config.recall_pool if recall_pool is None else recall_pool
        validate_settings(window, sinks, num_recall_slots=slots, recall_span=config.recall_span,
                          recall_head=config.recall_head, recall_score=score, recall_pool=pool)
        if mode is not None:
            _check_attention_mode(mode)
        specs = [get_layer_spec(layer.self_attn) for layer in self.model.layers]
        previous = (config.sliding_window, config.num_sinks, config.num_recall_slots, config.recall_score,
                    config.recall_pool, [spec.mode for spec in specs])
        try:
            (config.sliding_window, config.num_sinks, config.num_recall_slots, config.recall_score,
             config.recall_pool) = (window, sinks, slots, score, pool)
            for spec in specs:
                spec.mode = spec.mode if mode is None else mode
            yield self
        finally:
            (config.sliding_window, config.num_sinks, config.num_recall_slots, config.recall_score,
             config.recall_pool) = previous[:5]
            for spec, m in zip(specs, previous[5]):
                spec.mode = m

    def attention_mode(self, mode: str):
        """``runtime(mode=mode)``: every layer runs as ``"ahn"``, ``"swa"`` or ``"full"`` within the block."""
        _check_attention_mode(mode)
        return self.runtime(mode=mode)

    def _resolve_cache(self, past_key_values):
        if past_key_values is None:
            return self.new_cache()
        if isinstance(past_key_values, AhnCache):
            return past_key_values
        if type(past_key_values) is DynamicCache and past_key_values.get_seq_length() == 0:
            return self.new_cache()
        if isinstance(past_key_values, Cache):
            return past_key_values  # upgraded per layer by the pre-hook, or a clear error there
        raise ValueError(f"past_key_values must be an AhnCache, got {type(past_key_values).__name__}.")

    def _prepare_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
                        cache=None):
        """Shared checks of both forwards: cache (given as ``cache`` or ``past_key_values``), mask length, positions
        that skip left padding."""
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("Pass the cache once: as cache= or as past_key_values=, not two different ones.")
        past_key_values = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        self.config.validate_ahn()  # settings may have been changed on the live config
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache:
            past_key_values = self._resolve_cache(past_key_values)
        tokens = input_ids if input_ids is not None else inputs_embeds
        _check_tokens(input_ids, inputs_embeds)
        seq = tokens.shape[1]
        _check_cache_batch(past_key_values, tokens.shape[0])
        _bind_cache(past_key_values, self.config)
        if isinstance(position_ids, torch.Tensor) and position_ids.shape[-1] != seq:
            raise ValueError(f"position_ids has {position_ids.shape[-1]} positions per row; expected {seq}, one per "
                             "new token.")
        past = past_key_values.get_seq_length() if isinstance(past_key_values, Cache) else 0
        if attention_mask is not None and attention_mask.dim() == 2:
            if attention_mask.shape[1] != seq + past and not (past == 0 and attention_mask.shape[1] == seq):
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[1]} columns; expected {seq + past} "
                    f"(the {past} tokens already in the cache + {seq} new ones)."
                )
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: spares every layer its own check of the mask
            elif position_ids is None:
                # positions that skip the padding, as generate() computes them
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        if (attention_mask is None and isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2 and seq > 1
                and bool((position_ids[:, 1:] - position_ids[:, :-1] != 1).any())):
            raise ValueError(
                "position_ids restart within a row and there is no padding mask: packed (padding-free) sequences are "
                "not supported by AHN. Its sinks, window and memory run over the whole row, so the packed sequences "
                "would attend to each other. Pass one sequence per row, padded, with an attention_mask."
            )
        chunked = isinstance(past_key_values, Cache) and bool(self.config.prefill_chunk_size)
        chunked = chunked and seq > self.config.prefill_chunk_size
        return use_cache, past_key_values, attention_mask, position_ids, seq, past, chunked

    def _check_kwargs(self, kwargs, chunked: bool) -> dict:
        """The output options of a forward (the AHN config's defaults filled in), refused where AHN cannot honour
        them. Returns ``kwargs`` for the base."""
        if any(k in kwargs for k in ("cu_seq_lens_q", "cu_seq_lens_k")):
            raise ValueError("cu_seq_lens (packed, padding-free sequences) are not supported by AHN: its sinks, window "
                             "and memory run over the whole row. Pass one sequence per row, padded.")
        for name in ("output_attentions", "output_hidden_states"):
            if kwargs.get(name) is None and getattr(self.config, name, False):
                kwargs[name] = True
        if kwargs.get("return_dict") is None and not getattr(self.config, "return_dict", True):
            kwargs["return_dict"] = False
        if kwargs.get("output_attentions"):
            if self.config._attn_implementation != "eager":
                raise ValueError(
                    f"output_attentions=True needs the eager attention inside AHN; "
                    f"{self.config._attn_implementation!r} returns no attention weights. Load with "
                    "attn_implementation='eager' or call model.set_attn_implementation('eager'). The weights then "
                    "cover the sink store and the window + new keys of each query (the memory has no per-token "
                    "weights)."
                )
            if chunked:
                raise ValueError(
                    f"output_attentions=True is not available with chunked prefill (this prompt is longer than "
                    f"prefill_chunk_size={self.config.prefill_chunk_size}): each chunk attends over other keys. Set "
                    "model.config.prefill_chunk_size = None (or a larger size) for this call."
                )
        return kwargs

    @staticmethod
    def _chunked_output(output, hidden, return_dict):
        """The output of a chunked prefill: the chunks' hidden states joined along the sequence, a tuple when
        ``return_dict=False``. A state not captured (``output_hidden_states=[indices]``) stays ``None``."""
        if hidden:
            output.hidden_states = tuple(None if h[0] is None else torch.cat(h, dim=1) for h in zip(*hidden))
        return output if return_dict is not False else output.to_tuple()

    def _chunks(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, past):
        """Yield ``(start, end, kwargs)`` for a prefill chunk by chunk over the same cache."""
        x = input_ids if input_ids is not None else inputs_embeds
        n, chunk = x.shape[1], self.config.prefill_chunk_size
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            part = dict(
                attention_mask=None if attention_mask is None else attention_mask[:, : past + end],
                position_ids=None if position_ids is None else position_ids[:, start:end],
                use_cache=True,
            )
            part[CACHE_KWARG] = cache
            part["input_ids" if input_ids is not None else "inputs_embeds"] = x[:, start:end]
            yield start, end, part

    # ------------------------------------------------------------------ Hub: save / load

    def save_pretrained(self, save_directory, tokenizer=None, is_main_process=True, push_to_hub=False, **kwargs):
        """Write an adapter-only repo: config, remote code, AHN weights, generation config, tokenizer,
        a short card and PEFT adapter files. The base weights are not written (they live in the base repo named by
        ``base_model_name_or_path``) -- unless there is no base repo to refer to (a model built from a config alone,
        or over a base made in memory): then the base is saved too, as a standalone model in ``base/``, and
        ``from_pretrained`` loads it from there.

        ``tokenizer``: saved into the repo; by default the base's tokenizer is loaded from
        ``base_model_name_or_path`` if it can be. The full model card (with evaluation rows) is written by
        ``modeling_ahn.hub.export_ahn_repo(model, ...)`` / ``ahn export``.
        """
        if not is_main_process:
            return
        if push_to_hub:
            raise ValueError("push_to_hub is not supported here: save, then `ahn push DIR org/name`.")
        generation_config = getattr(self, "generation_config", None)
        out = write_ahn_repo(save_directory, self.config, self.ahn_state_dict(), generation_config=generation_config,
                             tokenizer=tokenizer)
        if not self.config.base_model_name_or_path:
            base = self.base_causal_lm if isinstance(self, AhnForCausalLM) else self.model
            base_state = {k: v for k, v in base.state_dict().items() if ".ahn." not in k}
            base.save_pretrained(out / BASE_SUBFOLDER, state_dict=base_state,
                                 safe_serialization=kwargs.get("safe_serialization", True))

    @classmethod
    def _load_base(cls, config, path, base_model, kwargs, hub, build: bool):
        """The base model: given, loaded from where the config names it (or ``base_model=`` a location), from the
        repo's own ``base/`` folder, or (``build``: the state dict holds the base's weights) built from the config."""
        if base_model is not None and not isinstance(base_model, (str, os.PathLike)):
            if kwargs:
                raise ValueError(f"kwargs {sorted(kwargs)} are for loading the base; they cannot apply to base_model=.")
            return base_model
        name, load = str(base_model) if base_model is not None else config.base_model_name_or_path, {}
        if name:
            load["revision"] = config.base_model_revision if base_model is None else None
        elif path is not None and has_bundled_base(path, hub):
            name = path
            load = dict(hub, subfolder="/".join(filter(None, (hub.get("subfolder"), BASE_SUBFOLDER))))
        elif build or path is None:
            extra = sorted(set(kwargs) - {"dtype", "torch_dtype", "attn_implementation"})
            if extra:
                raise ValueError(f"kwargs {extra} are for loading a base from a path; this base is built from the "
                                 "config (its weights come from state_dict=).")
            return cls._base_auto_class.from_config(config.base_config, **kwargs)
        else:
            raise ValueError(f"{path}/config.json has no base_model_name_or_path and the repo has no {BASE_SUBFOLDER}/ "
                             "folder; pass base_model=<loaded model or its location>.")
        try:
            return cls._base_auto_class.from_pretrained(name, **load, **kwargs)
        except OSError as e:  # unreachable or missing files; any other error is transformers' own, unchanged
            raise OSError(
                f"Could not load the base model {name!r} named by base_model_name_or_path in {path}: {e}\n"
                "Make it reachable (network, HF_HOME cache or a local path), or load it yourself and pass "
                "base_model=<model>."
            ) from e

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, base_model=None, **kwargs):
        """Load an exported AHN repo: the frozen base from ``base_model_name_or_path`` (or ``base_model=``, a
        loaded model or a repo id/dir to load instead; or the repo's own ``base/`` folder, see ``save_pretrained``),
        the AHN weights from the repo. ``sliding_window``/``num_sinks``/``prefill_chunk_size`` override the
        repo's inference settings; the other kwargs (``dtype``, ``device_map``, ``attn_implementation``,
        quantization, ...) go to the base's ``from_pretrained``. Adapter files are read and checked before
        anything is built, so a bad adapter leaves a given ``base_model`` untouched.

        As in transformers: ``output_loading_info=True`` returns ``(model, loading_info)``, and keys missing from
        the checkpoint or unexpected in it are then reported there (and logged) instead of raising (tensors whose
        shapes do not fit always raise); ``state_dict=`` gives the tensors instead of the repo's weights file (AHN
        keys, and the base's keys, which are loaded over the base); ``from_pretrained(None, config=AhnConfig(...),
        state_dict=...)`` builds the model from the config alone, its tensors from ``state_dict`` and the others
        initialised as ``AhnForCausalLM(config)`` would (missing keys are logged and reported, never raised).
        """
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes keyword arguments only, got {model_args}.")
        output_loading_info = kwargs.pop("output_loading_info", False)
        state_dict = kwargs.pop("state_dict", None)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        for k in AUTO_KWARGS:
            kwargs.pop(k, None)
        overrides = {k: kwargs.pop(k) for k in RUNTIME_SETTINGS + ("full_attention_layers",) if k in kwargs}
        path = None if pretrained_model_name_or_path is None else str(pretrained_model_name_or_path)
        if config is None or getattr(config, "model_type", None) != "ahn":
            if path is None:
                raise ValueError("from_pretrained(None, ...) needs config=AhnConfig(base_config=...) and state_dict=.")
            config = load_ahn_config(path, hub)
        else:
            config = copy.deepcopy(config)
        for k, v in overrides.items():
            setattr(config, k, parse_layer_ids(v) if k == "full_attention_layers" else v)
        config.validate_ahn()
        if state_dict is None:
            if path is None:
                raise ValueError("from_pretrained(None, config=...) needs state_dict=; to build a fresh model from a "
                                 "config use AhnForCausalLM(config) or AhnForCausalLM.from_base(...).")
            state_dict = read_adapter_weights(path, hub)
        state = {k: v for k, v in state_dict.items() if ".ahn." in k}
        base_state = {k: v for k, v in state_dict.items() if ".ahn." not in k}
        # a repo's weights must fit; a model built from a config alone takes what state_dict= gives and
        # initialises the rest (transformers' convention: missing keys are warned about and reported)
        strict = not output_loading_info and path is not None
        check_ahn_state_dict(config, state, strict=strict)

        base_model = cls._load_base(config, path, base_model, kwargs, hub, build=bool(base_state))
        if base_shape_key(base_model.config) != base_shape_key(config.base_config):
            raise ValueError(
                f"The adapter in {path} was made for a base with {base_shape_summary(config.base_config)}, but the "
                f"base model has {base_shape_summary(base_model.config)}."
            )
        model = cls(config, base_model=base_model)
        missing, unexpected = model.load_ahn_state_dict(state, strict=strict)
        if base_state:
            base_missing, base_unexpected = load_base_tensors(model, base_state, strict=strict)
            missing, unexpected = missing + base_missing, unexpected + base_unexpected
        if missing or unexpected:
            logger.warning("Loading %s: missing keys %s (left as initialised), unexpected keys %s (ignored).",
                           path, missing, unexpected)
        _warn_on_code_mismatch(config)
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": set(missing), "unexpected_keys": set(unexpected), "mismatched_keys": set(),
                           "error_msgs": []}
        return model

class AhnForCausalLM(AhnPreTrainedModel, GenerationMixin):
    """A frozen causal LM with sinks + sliding-window attention and an AHN memory per layer.

    Build a fresh adapter with :meth:`from_base`; load an exported repo with ``from_pretrained``.
    """

    _base_auto_class = AutoModelForCausalLM

    def __init__(self, config: AhnConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        base_model = self._base_or_new(config, base_model)
        _check_base(base_model)
        self.model = getattr(base_model, base_model.base_model_prefix)
        self.lm_head = base_model.get_output_embeddings()
        self.__dict__["_base"] = base_model  # called for forward; its modules are ours (same objects)
        self.vocab_size = base_model.config.vocab_size
        self._augment(config, base_model, self.model)
        self.post_init()
        self.generation_config = copy.deepcopy(base_model.generation_config)

    @classmethod
    def from_base(
        cls,
        base_model_or_path,
        ahn_type: str = "gdn",
        sliding_window: int | None = None,
        num_sinks: int | None = None,
        full_attention_layers=None,
        prefill_chunk_size: int | None = -1,
        ahn_dtype: torch.dtype | None = None,
        base_model_revision: str | None = None,
        use_q_proj: bool = False,
        use_k_proj: bool = False,
        position_free: bool = False,
        value_centring: bool = False,
        **from_pretrained_kwargs,
    ) -> AhnForCausalLM:
        """A fresh AHN (``o_proj`` zero, so it equals sinks + sliding-window attention) over a frozen base.

        ``base_model_or_path``: a loaded causal LM (augmented in place) or a path/repo id loaded with
        ``AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)``. The AHN takes the base's
        dtype and device unless ``ahn_dtype`` is given. ``use_q_proj``: the official learned read-query projection;
        ``use_k_proj``, ``position_free``, ``value_centring``: memory options beyond the official format (see
        ``AhnConfig``). The other runtime settings (``num_recall_slots``, ``recall_score``, ``recall_span``,
        ``recall_distance``, ``recall_pool``) go to the config, as in ``from_pretrained``; the remaining kwargs to the
        base's loading.
        """
        runtime = {k: from_pretrained_kwargs.pop(k) for k in RUNTIME_SETTINGS if k in from_pretrained_kwargs}
        if isinstance(base_model_or_path, (str, os.PathLike)):
            path = str(base_model_or_path)
            base = AutoModelForCausalLM.from_pretrained(path, revision=base_model_revision, **from_pretrained_kwargs)
        else:
            if from_pretrained_kwargs:
                raise ValueError(f"from_pretrained kwargs {sorted(from_pretrained_kwargs)} need a path, not a model.")
            base = base_model_or_path
            path = getattr(base.config, "_name_or_path", None) or None
        _check_base(base)
        kwargs = dict(ahn_type=ahn_type, full_attention_layers=full_attention_layers, use_q_proj=use_q_proj,
                      use_k_proj=use_k_proj, position_free=position_free, value_centring=value_centring)
        if sliding_window is not None:
            kwargs["sliding_window"] = sliding_window
        if num_sinks is not None:
            kwargs["num_sinks"] = num_sinks
        if prefill_chunk_size != -1:
            kwargs["prefill_chunk_size"] = prefill_chunk_size
        kwargs.update(runtime)
        inner = base.config._attn_implementation  # the attention to run inside AHN (the config sets it on the base)
        if inner in INNER_IMPLEMENTATIONS:
            kwargs["attn_implementation"] = inner
        config = AhnConfig(base_config=base.config, base_model_name_or_path=path,
                           base_model_revision=base_model_revision, **kwargs)
        model = cls(config, base_model=base)
        if ahn_dtype is not None:
            for module in model.ahn_modules().values():
                module.to(dtype=ahn_dtype)
        return model.eval()

    @property
    def base_causal_lm(self) -> PreTrainedModel:
        """The augmented base causal LM (its modules are this model's ``model`` and ``lm_head``)."""
        return self.__dict__["_base"]

    def get_input_embeddings(self):
        return self.base_causal_lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base_causal_lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def get_decoder(self):
        return self.model

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        given = any(model_kwargs.get(k) is not None for k in ("cache", "past_key_values"))
        if not given and generation_config.use_cache is not False:
            if generation_config.cache_implementation not in (None, "dynamic", "static"):
                raise ValueError(
                    f"cache_implementation={generation_config.cache_implementation!r} is not supported by AHN models; "
                    "leave it unset (an AhnCache is used) or pass 'static' (a StaticAhnCache, for compiled decoding)."
                )
            model_kwargs[CACHE_KWARG] = self.new_cache(static=generation_config.cache_implementation == "static")
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _validate_generation_mode(self, generation_mode, generation_config, generation_mode_kwargs):
        if getattr(generation_mode, "value", generation_mode) == "assisted_generation":
            raise ValueError(
                "Assisted / speculative decoding (assistant_model=, prompt_lookup_num_tokens=) is not supported by AHN "
                "models: it rolls the cache back to the accepted tokens, and an AHN cache cannot be cropped (tokens "
                "that left the window are already folded into the memory state). Decode without an assistant."
            )
        return super()._validate_generation_mode(generation_mode, generation_config, generation_mode_kwargs)

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask=None, **kwargs):
        """generate() asks for 4D masks with a compileable cache (StaticAhnCache); AHN attention takes the 2D
        padding mask, or none when nothing is padded (so a compiled decoding step sees no growing mask)."""
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and bool(attention_mask.all()):
            return None
        return attention_mask

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, cache=None, **kwargs):
        use_cache, past_key_values, attention_mask, position_ids, seq, past, chunked = self._prepare_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache, cache)
        kwargs = self._check_kwargs(kwargs, chunked)
        if not chunked:
            out = self.base_causal_lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                                      logits_to_keep=logits_to_keep, **{CACHE_KWARG: past_key_values}, **kwargs)
            _check_memory_finite(out.logits, past_key_values)
            return out
        # Chunked prefill: the cache never holds more than sinks + window; only the logits asked for
        # (the last `logits_to_keep`; all when 0, a tensor of indices, or with labels) are computed.
        keep_all = labels is not None or not isinstance(logits_to_keep, int) or logits_to_keep == 0
        return_dict = kwargs.pop("return_dict", None)
        logits, hidden = [], []
        for start, end, part in self._chunks(input_ids, inputs_embeds, attention_mask, position_ids,
                                             past_key_values, past):
            need = end - start if keep_all else max(0, min(end - start, logits_to_keep - (seq - end)))
            if need == 0:
                out = self.model(**part, **kwargs)
            else:
                out = self.base_causal_lm(**part, logits_to_keep=0 if need == end - start else need, **kwargs)
                logits.append(out.logits)
            if kwargs.get("output_hidden_states"):
                hidden.append(out.hidden_states)
        logits = torch.cat(logits, dim=1)
        if not isinstance(logits_to_keep, int):
            logits = logits[:, logits_to_keep]
        loss = None
        if labels is not None:
            loss = self.base_causal_lm.loss_function(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        _check_memory_finite(logits, past_key_values)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KWARG: past_key_values})
        return self._chunked_output(output, hidden, return_dict)


class AhnModel(AhnPreTrainedModel):
    """The AHN-augmented base decoder without the LM head (``AutoModel``); returns hidden states."""

    _base_auto_class = AutoModel

    def __init__(self, config: AhnConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        base_model = self._base_or_new(config, base_model)
        if hasattr(base_model, "get_output_embeddings") and base_model.get_output_embeddings() is not None:
            base_model = getattr(base_model, base_model.base_model_prefix)  # a causal LM: keep its decoder
        _check_base(base_model, decoder_only=True)
        self.model = base_model
        self._augment(config, base_model, base_model)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, **kwargs):
        use_cache, past_key_values, attention_mask, position_ids, seq, past, chunked = self._prepare_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache, cache)
        kwargs = self._check_kwargs(kwargs, chunked)
        if not chunked:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE_KWARG: past_key_values},
                             **kwargs)
            _check_memory_finite(out[0], past_key_values)
            return out
        return_dict = kwargs.pop("return_dict", None)
        outs = [self.model(**part, **kwargs) for _, _, part in self._chunks(input_ids, inputs_embeds, attention_mask,
                                                                           position_ids, past_key_values, past)]
        output = BaseModelOutputWithPast(last_hidden_state=torch.cat([o.last_hidden_state for o in outs], 1),
                                         **{CACHE_KWARG: past_key_values})
        _check_memory_finite(output.last_hidden_state, past_key_values)
        return self._chunked_output(output, [o.hidden_states for o in outs if o.hidden_states is not None],
                                    return_dict)


# ---------------------------------------------------------------------- repo writer


def _peft_key(official_key: str) -> str:
    """``model.layers.{i}.ahn.fn.X`` -> the PEFT adapter key of the same tensor."""
    prefix, rest = official_key.split(".ahn.", 1)
    return f"base_model.model.{prefix}.self_attn.ahn.{rest}"


def write_ahn_repo(save_directory, config, ahn_state_dict, generation_config=None, tokenizer=None,
                   tokenizer_source=None) -> Path:
    """Write an adapter-only AHN repo from a config and its AHN tensors (no base weights needed).

    Files: ``config.json`` (``auto_map``, base name/revision, window/sinks, version + code hash), the
    remote-code payload, ``model.safetensors`` (official keys), ``generation_config.json``, the tokenizer,
    a short ``README.md`` (where none exists; the full model card is tooling: ``modeling_ahn.hub.export_ahn_repo``)
    and ``peft/adapter_config.json`` + ``peft/adapter_model.safetensors``.
    """
    from safetensors.torch import save_file

    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    check_ahn_state_dict(config, ahn_state_dict)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sorted(ahn_state_dict.items())}

    here = Path(__file__).resolve().parent
    for name in PAYLOAD_FILES:
        shutil.copyfile(here / name, out / name)

    config = copy.deepcopy(config)
    config.auto_map = {
        "AutoConfig": "configuration_ahn.AhnConfig",
        "AutoModel": "modeling_ahn.AhnModel",
        "AutoModelForCausalLM": "modeling_ahn.AhnForCausalLM",
    }
    config.architectures = ["AhnForCausalLM"]
    config.ahn_version = AHN_VERSION
    config.ahn_code_hash = code_hash(here)
    config.dtype = next(iter(tensors.values())).dtype if tensors else None
    config.save_pretrained(out)

    save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt", "ahn_type": config.ahn_type})
    # The PEFT files live in a subfolder: a root adapter_config.json makes transformers' Auto classes load a
    # Hub repo as "base + PEFT adapter", bypassing this repo's own (remote-code) model class.
    peft_dir = out / PEFT_SUBFOLDER
    peft_dir.mkdir(exist_ok=True)
    # (the memory only: the recall slots' retention classifier, beyond the official format, runs with this repo's
    # remote code, not as a PEFT layer)
    save_file({_peft_key(k): v for k, v in tensors.items() if ".ahn.fn." in k}, peft_dir / PEFT_WEIGHTS_NAME,
              metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "AHN",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": config.base_model_name_or_path,
        "revision": config.base_model_revision,
        "ahn_type": config.ahn_type,
        "sliding_window": config.sliding_window,
        "num_sinks": config.num_sinks,
        "full_attention_layers": list(config.full_attention_layers),
        "prefill_chunk_size": config.prefill_chunk_size,
        **memory_options(config),
        "target_modules": ["self_attn"],
        "inference_mode": True,
    }
    (peft_dir / PEFT_CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2) + "\n")

    if generation_config is not None:
        generation_config.save_pretrained(out)
    source = tokenizer_source or config.base_model_name_or_path
    if tokenizer is None and source:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source, revision=config.base_model_revision)
        except Exception as e:  # no tokenizer reachable: the repo still loads, AutoTokenizer will not
            logger.warning("No tokenizer saved: could not load one from %r (%s). Pass tokenizer=...", source, e)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        # The base tokenizer's model_max_length is the base's context; AHN reads further, and tools that trust
        # this number (tokenizer warnings, lm-eval's fallback) should see the AHN model's effective context.
        tok_cfg = out / "tokenizer_config.json"
        if tok_cfg.exists():
            data = json.loads(tok_cfg.read_text(encoding="utf-8"))
            data["model_max_length"] = int(config.max_position_embeddings)
            tok_cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    if not (out / "README.md").exists():  # a short card; `modeling_ahn.hub.export_ahn_repo` writes the full one
        n_params = sum(v.numel() for v in tensors.values())
        (out / "README.md").write_text(
            f"# AHN-{config.ahn_type} adapter for {config.base_model_name_or_path}\n\n"
            f"{n_params:,} AHN parameters; window {config.sliding_window}, {config.num_sinks} sinks.\n"
        )
    return out


__all__ = ["AhnForCausalLM", "AhnModel", "AhnPreTrainedModel", "code_hash", "write_ahn_repo"]
