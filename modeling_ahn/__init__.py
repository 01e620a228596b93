# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Artificial Hippocampus Networks (AHN) for Hugging Face transformers.

``import modeling_ahn`` registers the ``"ahn"`` model type with transformers' Auto classes, so that
AHN repos load without remote code when the package is installed.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .attention_ahn import AHN_ATTENTION, ahn_attention_forward, attach_ahn
from .cache_ahn import AhnCache, SinkWindowLayer
from .configuration_ahn import SUPPORTED_BASE_MODEL_TYPES, AhnConfig
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
from .modeling_ahn import AhnForCausalLM, AhnPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register("ahn", AhnConfig, exist_ok=True)
AutoModelForCausalLM.register(AhnConfig, AhnForCausalLM, exist_ok=True)

__all__ = [
    "AHN_ATTENTION",
    "AHN_TYPES",
    "AhnCache",
    "AhnConfig",
    "AhnForCausalLM",
    "AhnPreTrainedModel",
    "DeltaNet",
    "GatedDeltaNet",
    "Mamba2",
    "SUPPORTED_BASE_MODEL_TYPES",
    "SinkWindowLayer",
    "ahn_attention_forward",
    "attach_ahn",
    "build_memory",
    "canonical_ahn_type",
    "get_memory_backend",
    "kernels_available",
    "set_memory_backend",
    "__version__",
]
