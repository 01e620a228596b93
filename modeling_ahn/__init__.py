# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Artificial Hippocampus Networks (AHN) for Hugging Face transformers.

``import modeling_ahn`` registers the ``"ahn"`` model type with transformers' Auto classes, so that
AHN repos load without remote code when the package is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .attention_ahn import AHN_ATTENTION, ahn_attention_forward, attach_ahn
from .cache_ahn import AhnCache, SinkWindowLayer, StaticAhnCache, StaticSinkWindowLayer
from .configuration_ahn import SUPPORTED_BASE_MODEL_TYPES, AhnConfig
from .evaluation import lm_eval_include_path
from .memory_ahn import (
    AHN_TYPES,
    DeltaNet,
    GatedDeltaNet,
    Mamba2,
    build_memory,
    canonical_ahn_type,
    get_memory_backend,
    kernels_available,
    set_memory_backend,
)
from .modeling_ahn import AHN_VERSION, AhnForCausalLM, AhnModel, AhnPreTrainedModel, code_hash, write_ahn_repo
from .peft_ahn import AhnPeftConfig, AhnPeftModel, peft_adapter_path

__version__ = AHN_VERSION

AutoConfig.register("ahn", AhnConfig, exist_ok=True)
AutoModel.register(AhnConfig, AhnModel, exist_ok=True)
AutoModelForCausalLM.register(AhnConfig, AhnForCausalLM, exist_ok=True)

__all__ = [
    "AHN_ATTENTION",
    "AHN_TYPES",
    "AhnCache",
    "AhnConfig",
    "AhnForCausalLM",
    "AhnModel",
    "AhnPeftConfig",
    "AhnPeftModel",
    "AhnPreTrainedModel",
    "DeltaNet",
    "GatedDeltaNet",
    "Mamba2",
    "SUPPORTED_BASE_MODEL_TYPES",
    "SinkWindowLayer",
    "StaticAhnCache",
    "StaticSinkWindowLayer",
    "ahn_attention_forward",
    "attach_ahn",
    "build_memory",
    "canonical_ahn_type",
    "code_hash",
    "get_memory_backend",
    "kernels_available",
    "lm_eval_include_path",
    "peft_adapter_path",
    "set_memory_backend",
    "write_ahn_repo",
    "__version__",
]
