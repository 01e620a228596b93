# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""AHN as a PEFT method (not part of the remote-code payload).

Importing this module registers the method with PEFT (PEFT has no remote-code mechanism, so the package must be
installed and the method imported; ``import modeling_ahn`` alone does not import PEFT). ``from modeling_ahn import
AhnPeftConfig`` (or ``AhnPeftModel``, ``peft_adapter_path``) imports it too:

    from peft import get_peft_model, PeftModel
    from modeling_ahn import AhnPeftConfig
    model = get_peft_model(base, AhnPeftConfig(ahn_type="gdn", sliding_window=2048, num_sinks=64))
    ...
    model = PeftModel.from_pretrained(base, "org/repo", subfolder="peft")   # an exported AHN repo
    model = AutoPeftModelForCausalLM.from_pretrained(peft_adapter_path("org/repo"))

Each targeted ``self_attn`` is wrapped by :class:`AhnPeftLayer`, which owns the memory as
``self_attn.ahn.<adapter>.fn`` and switches the layer to the ``"ahn"`` attention. The adapter files hold
only AHN tensors, keyed ``base_model.model.model.layers.{i}.self_attn.ahn.fn.<param>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from torch import nn

from ..attention_ahn import AHN_ATTENTION, INNER_IMPLEMENTATIONS, get_layer_spec, make_layer_spec, set_layer_spec
from ..configuration_ahn import (
    DEFAULT_NUM_SINKS,
    DEFAULT_SLIDING_WINDOW,
    SUPPORTED_BASE_MODEL_TYPES,
    head_dim_of,
    parse_layer_ids,
    validate_settings,
)
from ..memory_ahn import AhnModule, build_memory, canonical_ahn_type, memory_options

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _ensure_peft_type() -> None:
    """PEFT's ``PeftType`` is a closed enum; ``register_peft_method`` needs a member named like the method."""
    if "AHN" in PeftType.__members__:
        return
    member = str.__new__(PeftType, "AHN")
    member._name_ = member._value_ = "AHN"
    type.__setattr__(PeftType, "AHN", member)  # before the member map: EnumType.__setattr__ guards it
    PeftType._member_map_["AHN"] = member
    PeftType._value2member_map_["AHN"] = member
    PeftType._member_names_.append("AHN")


_ensure_peft_type()


@dataclass
class AhnPeftConfig(PeftConfig):
    """PEFT config of an AHN adapter; the fields mean what they mean in ``AhnConfig``."""

    ahn_type: str = field(default="gdn", metadata={"help": "gdn | dn | mamba2 (official names accepted)"})
    sliding_window: int = field(default=DEFAULT_SLIDING_WINDOW, metadata={"help": "inference window W"})
    num_sinks: int = field(default=DEFAULT_NUM_SINKS, metadata={"help": "attention sinks S"})
    full_attention_layers: list[int] | str | None = field(
        default=None, metadata={"help": "layers kept at full attention, without AHN"})
    prefill_chunk_size: int | None = field(default=None, metadata={"help": "kept for round trips with AhnConfig"})
    use_q_proj: bool = field(default=False, metadata={"help": "a learned per-head projection of the memory's "
                                                              "read query (the official option)"})
    use_k_proj: bool = field(default=False, metadata={"help": "a learned per-head projection of the keys the "
                                                              "memory writes (beyond the official format)"})
    position_free: bool = field(default=False, metadata={"help": "the memory writes and reads keys and queries "
                                                                 "before RoPE (beyond the official format)"})
    value_centring: bool = field(default=False, metadata={"help": "the memory writes each value minus a learned "
                                                                  "per-head mean (beyond the official format)"})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "attention modules to augment (default: every `self_attn`)"})
    exclude_modules: list[str] | str | None = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.AHN
        self.ahn_type = canonical_ahn_type(self.ahn_type)
        self.full_attention_layers = parse_layer_ids(self.full_attention_layers)
        validate_settings(self.sliding_window, self.num_sinks, self.prefill_chunk_size)


class AhnPeftLayer(nn.Module, BaseTunerLayer):
    """Wraps one attention module: owns its AHN memory per adapter and selects it before each call."""

    adapter_layer_names = ("ahn",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: AhnPeftConfig, model_config, inner: str,
                 rotary=None):
        super().__init__()
        self.base_layer = base_layer
        self.ahn = nn.ModuleDict()
        self.ahn_config = {}
        self.inner = inner
        self._active_adapter = adapter_name
        self.merged_adapters = []
        # the base's own (full, causal) attention, while no adapter is active; its rotary serves every adapter
        self._full_spec = make_layer_spec(None, None, model_config, rotary, inner)
        self._specs = {}
        set_layer_spec(base_layer, self._full_spec)
        self.update_layer(adapter_name, config, model_config)

    def update_layer(self, adapter_name, config, model_config):
        ref = self.base_layer.q_proj.weight
        memory = build_memory(config.ahn_type, model_config.hidden_size, model_config.num_attention_heads,
                              head_dim_of(model_config), **memory_options(config))
        self.ahn[adapter_name] = AhnModule(memory).to(device=ref.device)
        self.ahn_config[adapter_name] = config
        self._specs[adapter_name] = make_layer_spec(self.ahn[adapter_name].fn, config, model_config,
                                                    self._full_spec.rotary, self.inner)
        self.set_adapter(self.active_adapters)

    def forward(self, *args, **kwargs):
        active = [a for a in self.active_adapters if a in self.ahn]
        if len(active) > 1:
            raise ValueError(f"Only one AHN adapter can be active at a time, got {active}.")
        spec = self._full_spec if self.disable_adapters or not active else self._specs[active[0]]
        set_layer_spec(self.base_layer, spec)
        return self.base_layer(*args, **kwargs)

    def merge(self, *args, **kwargs):
        raise ValueError("An AHN adapter cannot be merged into the base weights: it is a separate recurrent memory.")

    def unmerge(self, *args, **kwargs):
        pass


class AhnPeftModel(BaseTuner):
    """The PEFT tuner that injects :class:`AhnPeftLayer` into every targeted attention module."""

    prefix = "ahn_"
    tuner_layer_cls = AhnPeftLayer
    target_module_mapping = {t: ["self_attn"] for t in SUPPORTED_BASE_MODEL_TYPES}

    def _prepare_adapter_config(self, peft_config, model_config):
        model_type = model_config.get("model_type")
        if model_type not in SUPPORTED_BASE_MODEL_TYPES:
            raise ValueError(f"Unsupported base architecture {model_type!r}: AHN supports "
                             f"{', '.join(SUPPORTED_BASE_MODEL_TYPES)}.")
        n = model_config.get("num_hidden_layers")
        bad = [i for i in peft_config.full_attention_layers if n is not None and not 0 <= i < n]
        if bad:
            raise ValueError(f"full_attention_layers {bad} are out of range: the base has {n} layers.")
        return super()._prepare_adapter_config(peft_config, model_config)

    @staticmethod
    def _check_target_module_exists(peft_config, key):
        match = BaseTuner._check_target_module_exists(peft_config, key)
        layer = _LAYER_INDEX.search(key)
        if match and layer is not None and int(layer.group(1)) in peft_config.full_attention_layers:
            return False
        return match

    def _pre_injection_hook(self, model, config, adapter_name):
        impl = getattr(model.config, "_attn_implementation", None)
        if impl == AHN_ATTENTION:
            impl = getattr(self, "_ahn_inner", "sdpa")
        self._ahn_inner = impl if impl in INNER_IMPLEMENTATIONS else "sdpa"

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, AhnPeftLayer):
            target.update_layer(adapter_name, peft_config, self.model.config)
            return
        rotary = getattr(self.model.get_decoder(), "rotary_emb", None)
        new = AhnPeftLayer(target, adapter_name, peft_config, self.model.config, self._ahn_inner, rotary)
        self._replace_module(parent, target_name, new, target)

    def _post_injection_hook(self, model, config, adapter_name):
        # layers left at full attention run the same "ahn" implementation with no memory
        for name, module in model.named_modules():
            if name.endswith("self_attn") and not isinstance(module, AhnPeftLayer) and hasattr(module, "layer_idx"):
                if get_layer_spec(module) is None:
                    set_layer_spec(module, make_layer_spec(None, None, model.config, inner=self._ahn_inner))
        model.set_attn_implementation(AHN_ATTENTION)

    @classmethod
    def _remove_adapter_name_from_key(cls, key, adapter_name):
        return key.replace(f".ahn.{adapter_name}.", ".ahn.")

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            raise ValueError("An AHN adapter cannot be merged into the base weights; use unload() to remove it.")
        for name, module in list(self.model.named_modules()):
            if isinstance(module, AhnPeftLayer):
                parent_name, _, child = name.rpartition(".")
                base = module.base_layer
                set_layer_spec(base, None)
                setattr(self.model.get_submodule(parent_name), child, base)
            elif name.endswith("self_attn"):
                set_layer_spec(module, None)
        self.model.set_attn_implementation(self._ahn_inner)
        return self.model


def peft_adapter_path(repo: str, revision: str | None = None, **hub_kwargs) -> str:
    """A local directory holding the PEFT adapter of an exported AHN repo (its ``peft/`` subfolder).

    ``PeftModel.from_pretrained(base, repo, subfolder="peft")`` needs no helper, but PEFT 0.21's
    ``AutoPeftModelForCausalLM`` forwards ``subfolder`` to the base model too; give it this path instead.
    For a Hub repo id only ``peft/*`` is downloaded.
    """
    from pathlib import Path

    local = Path(repo) / "peft"
    if local.is_dir():
        return str(local)
    from huggingface_hub import snapshot_download

    root = snapshot_download(repo, revision=revision, allow_patterns=["peft/*"], **hub_kwargs)
    return str(Path(root) / "peft")


register_peft_method(name="ahn", config_cls=AhnPeftConfig, model_cls=AhnPeftModel, prefix="ahn_")

__all__ = ["AhnPeftConfig", "AhnPeftLayer", "AhnPeftModel", "peft_adapter_path"]
