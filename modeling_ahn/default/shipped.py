# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The AHN adapters shipped inside the package, for the default base (SmolLM2-135M-Instruct).

Each lives in ``modeling_ahn/adapters/<name>/`` (the repo's ``adapters/`` folder): ``model.safetensors`` with
the official AHN keys, ``config.json`` (AHN settings and the base's architecture, no machine paths),
``README.md`` (card with the quality report), ``train_command.txt``, ``train_log.jsonl`` and
``loss_curve.png``. ``shipped_repo()`` turns one into a complete exported AHN repo over the locally fetched
base (config with ``auto_map``, remote code, weights, tokenizer, card), so that
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads it. Not part of the payload.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

SHIPPED = {"gdn": "smollm2-135m-instruct-ahn-gdn"}
BASE_PLACEHOLDER = "smollm2-135m-instruct (ahn fetch-default)"
MARKER = "ahn_shipped.json"


def shipped_dir(ahn_type: str = "gdn") -> Path:
    if ahn_type not in SHIPPED:
        raise ValueError(f"no shipped adapter for ahn_type={ahn_type!r}; shipped: {sorted(SHIPPED)}")
    d = Path(str(resources.files("modeling_ahn.adapters").joinpath(SHIPPED[ahn_type])))
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(f"the shipped {ahn_type} adapter is missing from the installation ({d})")
    return d


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def shipped_repo(ahn_type: str = "gdn", base: str | Path | None = None, out: str | Path | None = None,
                 force: bool = False) -> Path:
    """An exported AHN repo dir for the shipped adapter over ``base`` (default: the fetched default base),
    written once under ``<cache>/repos/`` and rewritten when the weights, the code or the base change."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from ..configuration_ahn import AhnConfig
    from ..modeling_ahn import code_hash, write_ahn_repo
    from .model import cache_root, fetch_default

    src = shipped_dir(ahn_type)
    base = Path(base) if base is not None else fetch_default(progress=False)["llama"]
    out = Path(out) if out is not None else cache_root() / "repos" / SHIPPED[ahn_type]
    key = _digest((src / "model.safetensors").read_bytes(), (src / "config.json").read_bytes(),
                  (src / "README.md").read_bytes(), code_hash().encode(), str(base.resolve()))
    marker = out / MARKER
    if not force and marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return out
    if out.exists():
        shutil.rmtree(out)
    config = AhnConfig.from_pretrained(src)
    config.base_model_name_or_path = str(base)
    write_ahn_repo(out, config, load_file(str(src / "model.safetensors")),
                   tokenizer=AutoTokenizer.from_pretrained(base))
    shutil.copyfile(src / "README.md", out / "README.md")  # the card with the measured quality report
    marker.write_text(json.dumps({"key": key, "source": SHIPPED[ahn_type]}))
    return out


def install_adapter(run_adapter_dir: str | Path, dest: str | Path, card: str | None = None) -> Path:
    """Copy an ``ahn distill`` adapter (``<run>/adapter``) into a shipped-adapter folder: weights and a
    config without machine paths (the base is recorded as the placeholder, set again by ``shipped_repo``)."""
    src, dest = Path(run_adapter_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "model.safetensors", dest / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    cfg["base_model_name_or_path"] = BASE_PLACEHOLDER
    cfg.pop("_name_or_path", None)
    if isinstance(cfg.get("base_config"), dict):
        cfg["base_config"].pop("_name_or_path", None)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if card is not None:
        (dest / "README.md").write_text(card)
    return dest


def add_adapter_arguments(parser, repeatable: bool = True) -> None:
    """The benchmarks' ``--adapter`` (repeatable), ``--label`` and ``--base`` options (see ``adapters_to_compare``)."""
    if repeatable:
        parser.add_argument("--adapter", action="append", default=None,
                            help="AHN repo dir (repeatable; default: shipped)")
        parser.add_argument("--label", action="append", default=None, help="a name per --adapter")
    parser.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")


def adapters_to_compare(adapters: list[str] | None, labels: list[str] | None, base: str | Path) -> list[tuple]:
    """``(label, adapter dir)`` pairs of a benchmark's repeatable ``--adapter`` / ``--label`` arguments; no
    ``--adapter``: the shipped AHN-GDN over ``base``. Labels default to the folders' names."""
    adapters = adapters or [str(shipped_repo("gdn", base=base))]
    labels = labels or [Path(a).name for a in adapters]
    if len(labels) != len(adapters):
        raise SystemExit("give one --label per --adapter")
    return list(zip(labels, adapters))

