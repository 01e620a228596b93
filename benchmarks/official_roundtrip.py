"""The shipped adapter through the official ByteDance checkpoint format and back, for recall slots on a converted
checkpoint (issue 39).

    python benchmarks/official_roundtrip.py [--out DIR]

Writes the shipped AHN-GDN adapter's memory weights as an official AHN-only repo (the Qwen2 copy of the default base's
``config.json`` with the release's extra fields, ``model.safetensors`` keyed ``model.layers.{i}.ahn.fn.<param>``;
the retention classifier is left out: the official format has none), converts it with ``ahn convert bytedance``
(window 512, 64 sinks, as shipped), and checks that the converted repo holds the shipped memory weights bit for bit
and no classifier. The converted repo then runs recall slots with the training-free score, e.g.

    python benchmarks/recall_slots.py --adapter /tmp/ahn-official-roundtrip/converted --tasks passkey \\
        --score novelty --lengths 16384 --slots 64 --methods ahn+slots --threads 1 \\
        --out benchmarks/results/recall_slots_smollm2_converted
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_ahn.cli import main as ahn
from modeling_ahn.default.model import fetch_default
from modeling_ahn.default.shipped import shipped_dir
from modeling_ahn.memory_ahn import AHN_TYPES


def official_repo(base_dir: Path, tensors: dict, out: Path) -> Path:
    """An official AHN-only repo of ``tensors`` over ``base_dir`` (the fields the release adds to the base config)."""
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg.update(_layer_implementation=f"{cfg['model_type'].capitalize()}MemDecoderLayer",
               _ahn_implementation=AHN_TYPES["gdn"], sliding_window=256, use_sliding_window=False,
               sliding_window_type="fixed", ahn_position="prev_attn", fa_layer_ids="", use_q_proj=False,
               use_ahn_router=False, use_normalized_l2=True, use_layerwise_decay=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tensors, out / "model.safetensors")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "ahn-official-roundtrip"),
                    help="where the official repo and the converted one are written (not committed: they hold the "
                    "shipped weights)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    base = fetch_default()["qwen2"]  # the release is Qwen2/Qwen3 only: the default base's Qwen2 copy
    shipped = load_file(shipped_dir("gdn") / "model.safetensors")
    memory = {k: v for k, v in shipped.items() if ".ahn.fn." in k}
    left_out = sorted(set(shipped) - set(memory))
    src = official_repo(base, memory, out / "official")
    if ahn(["convert", "bytedance", "--ahn-path", str(src), "--base", str(base), "--out", str(out / "converted"),
            "--sliding-window", "512", "--num-sinks", "64"]) != 0:
        return 1
    converted = load_file(out / "converted" / "model.safetensors")
    config = json.loads((out / "converted" / "config.json").read_text())
    same = set(converted) == set(memory) and all(torch.equal(converted[k], memory[k]) for k in memory)
    report = dict(memory_tensors=len(memory), left_out=f"{len(left_out)} tensors (the classifier: *.ahn.recall.*)",
                  converted_equal=same, recall_head=bool(config.get("recall_head")), converted=str(out / "converted"))
    print(json.dumps(report, indent=1))
    return 0 if same and not report["recall_head"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
