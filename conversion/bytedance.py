# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Convert the official ByteDance-Seed AHN checkpoints into modeling_ahn repos.

Official AHN-only repos (``ByteDance-Seed/AHN-{GDN,DN,Mamba2}-for-Qwen-2.5-Instruct-*``) hold a Qwen2/Qwen3
``config.json`` with extra AHN fields and a ``model.safetensors`` of AHN tensors keyed
``model.layers.{i}.ahn.fn.<param>`` — the same keys as ours, so the tensors are copied one to one. A
*merged* checkpoint holds the base weights too (possibly sharded).

    ahn convert bytedance --ahn-path <dir|repo> --base <dir|repo> --out DIR [--sliding-window 32640 --num-sinks 128]
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, GenerationConfig

from ..configuration_ahn import DEFAULT_NUM_SINKS, DEFAULT_SLIDING_WINDOW, AhnConfig, parse_layer_ids
from ..hub.export import export_ahn_repo
from ..memory_ahn import canonical_ahn_type
from ..modeling_ahn import base_shape_key, base_shape_summary, check_ahn_state_dict

logger = logging.getLogger(__name__)

# Fields the release adds to the base config. `sliding_window` there is unreliable (256 or Qwen's 32768):
# never the inference window. The dy_* / save_ahn_only fields are stale training settings.
OFFICIAL_EXTRA_FIELDS = (
    "_layer_implementation", "_ahn_implementation", "sliding_window", "use_sliding_window", "sliding_window_type",
    "ahn_position", "fa_layer_ids", "use_q_proj", "use_ahn_router", "use_normalized_l2", "use_layerwise_decay",
    "loss_type", "dy_sliding_window", "dy_num_attn_sinks", "save_ahn_only", "auto_map", "_name_or_path",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja")


def _resolve(path: str, revision: str | None = None) -> Path:
    """A local directory, or a Hub repo downloaded (configs, safetensors and tokenizer files only)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{path} is a file; pass the checkpoint directory or a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as e:
        raise OSError(f"{path} is neither a local directory nor a reachable Hub repo: {e}") from e


def infer_ahn_type(keys) -> str:
    """The memory type from the AHN tensor names alone."""
    names = {k.split(".ahn.fn.", 1)[1] for k in keys if ".ahn.fn." in k}
    if "dt_proj.weight" in names:
        return "mamba2"
    if "a_proj.weight" in names:
        return "gdn"
    if "b_proj.weight" in names:
        return "dn"
    raise ValueError("No AHN tensors (model.layers.{i}.ahn.fn.*) found: this is not an AHN checkpoint.")


def _tensor_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [src / s for s in shards]
    files = sorted(src.glob("*.safetensors"))
    if not files:
        if any(src.glob("*.bin")):
            raise ValueError(f"{src} holds only pickle (.bin) weights; convert them to safetensors first.")
        raise OSError(f"{src} has no *.safetensors files.")
    return files


def read_official(src: Path, with_base: bool):
    """``(ahn_tensors, base_tensors_or_None, base_key_count)`` from an official checkpoint directory."""
    ahn, base, n_base = {}, {} if with_base else None, 0
    for file in _tensor_files(src):
        with safe_open(str(file), framework="pt") as f:
            for k in f.keys():
                if ".ahn." in k or ".ahn_router." in k:
                    ahn[k] = f.get_tensor(k)
                else:
                    n_base += 1
                    if with_base:
                        base[k] = f.get_tensor(k)
    return ahn, base, n_base


def convert_bytedance(ahn_path, out, base=None, sliding_window=DEFAULT_SLIDING_WINDOW, num_sinks=DEFAULT_NUM_SINKS,
                      extract_base=None, revision=None, base_revision=None, prefill_chunk_size=None):
    """Convert an official AHN-only or merged checkpoint into an adapter-only modeling_ahn repo at ``out``.

    ``base``: the base model (repo id or dir) the adapter was trained on; required for AHN-only repos.
    For a merged checkpoint, either ``base`` (its base weights are then not copied) or ``extract_base``
    (a directory where the base weights are written as a plain transformers model) is needed.
    Returns the output directory.
    """
    src = _resolve(str(ahn_path), revision)
    cfg_file = src / "config.json"
    if not cfg_file.exists():
        raise OSError(f"{src} has no config.json: not an official AHN checkpoint.")
    official = json.loads(cfg_file.read_text())
    model_type = official.get("model_type")
    if model_type not in ("qwen2", "qwen3"):
        raise ValueError(f"Official AHN checkpoints are Qwen2/Qwen3 configs; {cfg_file} has model_type={model_type!r}.")
    for flag in ("use_q_proj", "use_ahn_router"):
        if official.get(flag):
            raise ValueError(f"{cfg_file} sets {flag}=true: that variant is not supported (the released models "
                             "do not use it).")

    ahn, base_tensors, n_base = read_official(src, with_base=extract_base is not None)
    extras = [k for k in ahn if ".ahn_router." in k or ".ahn.fn.q_proj." in k]
    if extras:
        raise ValueError(f"Unsupported AHN tensors {extras[:3]} (q_proj / ahn_router variants).")
    key_type = infer_ahn_type(ahn)
    ahn_type = key_type
    if official.get("_ahn_implementation"):
        ahn_type = canonical_ahn_type(official["_ahn_implementation"])
        if ahn_type != key_type:
            raise ValueError(f"config says _ahn_implementation={official['_ahn_implementation']!r} but the tensors "
                             f"are {key_type!r}.")

    n_layers = official["num_hidden_layers"]
    with_ahn = sorted({int(k.split(".")[2]) for k in ahn})
    full = parse_layer_ids(official.get("fa_layer_ids"))
    from_keys = [i for i in range(n_layers) if i not in with_ahn]
    if full and full != from_keys:
        raise ValueError(f"fa_layer_ids={full} but the checkpoint has no AHN tensors for layers {from_keys}.")
    full = from_keys

    base_dict = {k: v for k, v in official.items() if k not in OFFICIAL_EXTRA_FIELDS}
    base_dict["architectures"] = [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]]
    official_base_config = AutoConfig.for_model(**base_dict)
    merged = n_base > 0
    if base is not None:
        base_name = str(base)
        base_config = AutoConfig.from_pretrained(base_name, revision=base_revision)
        if base_shape_key(base_config) != base_shape_key(official_base_config):
            raise ValueError(f"The official checkpoint is for a base with {base_shape_summary(official_base_config)}, "
                             f"but {base_name} has {base_shape_summary(base_config)}.")
    elif merged and extract_base is not None:
        base_name, base_revision = str(Path(extract_base).resolve()), None
        base_config = official_base_config
        _write_base(Path(extract_base), base_config, base_tensors, src)
    elif merged:
        raise ValueError("This is a merged checkpoint (base + AHN): pass --base <the base repo/dir> to reference the "
                         "base, or --extract-base DIR to write its base weights there as a standalone model.")
    else:
        raise ValueError("An AHN-only checkpoint needs --base: the base model it was trained on "
                         "(e.g. Qwen/Qwen2.5-3B-Instruct).")

    config = AhnConfig(base_config=base_config, base_model_name_or_path=base_name, base_model_revision=base_revision,
                       ahn_type=ahn_type, sliding_window=sliding_window, num_sinks=num_sinks,
                       full_attention_layers=full,
                       **({"prefill_chunk_size": prefill_chunk_size} if prefill_chunk_size else {}))
    check_ahn_state_dict(config, ahn)

    generation_config = None
    for source in (src, base_name):
        try:
            generation_config = GenerationConfig.from_pretrained(source, revision=base_revision
                                                                 if source == base_name else None)
            break
        except Exception:
            continue
    tokenizer_source = str(src) if (src / "tokenizer_config.json").exists() else base_name
    return export_ahn_repo(out, config, ahn, generation_config=generation_config, tokenizer_source=tokenizer_source)


def _write_base(dest: Path, config, tensors: dict[str, torch.Tensor], src: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    config.architectures = [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[config.model_type]]
    config.save_pretrained(dest)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    logger.info("wrote the base model of the merged checkpoint to %s", dest)
