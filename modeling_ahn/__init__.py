# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Artificial Hippocampus Networks (AHN) for Hugging Face transformers.

``import modeling_ahn`` registers the ``"ahn"`` model type with transformers' Auto classes (so that AHN repos
load without remote code when the package is installed) and the ``"ahn"`` attention function, and nothing else:
it imports only the remote-code payload (the five ``*_ahn.py`` files beside this one). The tooling lives in
subpackages (``training``, ``evaluation``, ``benchmarking``, ``hub``, ``default``, ``cli``); the few tooling
names re-exported here (the PEFT method, ``lm_eval_include_path``, ``export_ahn_repo``) are imported on first use.
"""

from importlib import import_module

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .attention_ahn import AHN_ATTENTION, ahn_attention_forward, attach_ahn
from .cache_ahn import AhnCache, SinkWindowLayer, StaticAhnCache, StaticSinkWindowLayer
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
from .modeling_ahn import AHN_VERSION, AhnForCausalLM, AhnModel, AhnPreTrainedModel, code_hash, write_ahn_repo

__version__ = AHN_VERSION

AutoConfig.register("ahn", AhnConfig, exist_ok=True)
AutoModel.register(AhnConfig, AhnModel, exist_ok=True)
AutoModelForCausalLM.register(AhnConfig, AhnForCausalLM, exist_ok=True)

# tooling names importable from the top level, loaded on first access (PEP 562)
_LAZY = {
    "AhnPeftConfig": "hub.peft_adapter",
    "AhnPeftModel": "hub.peft_adapter",
    "peft_adapter_path": "hub.peft_adapter",
    "export_ahn_repo": "hub.export",
    "lm_eval_include_path": "evaluation.harness",
    "tune_cpu_allocator": "cli.allocator",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "export_ahn_repo",
    "get_memory_backend",
    "kernels_available",
    "lm_eval_include_path",
    "peft_adapter_path",
    "set_memory_backend",
    "tune_cpu_allocator",
    "write_ahn_repo",
    "__version__",
]
