"""benchmarks/ship_adapter.py: a run that continued a shipped adapter is shipped with every stage in the card."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("ship_adapter", ROOT / "benchmarks" / "ship_adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log(path, steps, length, seconds):
    rows = [{"step": 0, "eval": {"kl_ahn": 0.05, "kl_swa": 0.05, "ppl_ahn": 30.0, "ppl_swa": 30.0, "ppl_full": 29.0,
                                 "eval_window": 512, "eval_sinks": 64, "eval_positions": 4 * (length - 512)}}]
    rows += [{"step": i + 1, "loss": 0.1, "tokens": length, "step_s": seconds} for i in range(steps)]
    rows.append({"step": steps, "eval": dict(rows[0]["eval"], kl_ahn=0.04, ppl_ahn=29.5)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(tmp_path, command: str, **config):
    """A finished one-stage run directory (2 steps at 2048 tokens) with ``config`` over a few defaults."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    save_file({"model.layers.0.ahn.fn.A_log": torch.zeros(2)}, run / "adapter" / "model.safetensors")
    (run / "adapter" / "config.json").write_text(json.dumps({"model_type": "ahn", "_name_or_path": "/x/y"}))
    _log(run / "train_log.jsonl", 2, 2048, 20.0)
    (run / "run_config.json").write_text(json.dumps({"max_length": 2048, "windows": [256], "sinks": None, "lr": 1e-3,
                                                     "warmup_ratio": 0.1, "weight_decay": 0.1, "max_grad_norm": 1.0,
                                                     "init_adapter": None, "memory_span": None, **config}))
    (run / "cmd.txt").write_text(command)
    return run


def test_two_stage_card_logs_and_commands(tmp_path):
    ship = _module()
    shipped = tmp_path / "shipped"  # stage 1, as committed: command + log, no stages.json
    shipped.mkdir()
    (shipped / "train_command.txt").write_text(
        "OMP_NUM_THREADS=1 ahn distill --base b --data d --out o --max-length 2048 --windows 256,512 --lr 1e-3\n"
        "# stopped early\n")
    _log(shipped / "train_log.jsonl", 3, 2048, 20.0)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    save_file({"model.layers.0.ahn.fn.A_log": torch.zeros(2)}, run / "adapter" / "model.safetensors")
    (run / "adapter" / "config.json").write_text(json.dumps({"model_type": "ahn", "_name_or_path": "/x/y"}))
    _log(run / "train_log.jsonl", 2, 4096, 40.0)
    (run / "run_config.json").write_text(json.dumps({"max_length": 4096, "windows": [256, 512, 1024], "sinks": None,
                                                     "lr": 5e-4, "warmup_ratio": 0.05, "weight_decay": 0.1,
                                                     "max_grad_norm": 1.0, "init_adapter": "adapters/x"}))
    (run / "cmd.txt").write_text("ahn distill --base b --data d --out r --init-adapter adapters/x --max-length 4096\n")
    # the destination is the shipped folder itself, as when a stage replaces the committed adapter
    ship.main([str(run), "--previous", str(shipped), "--dest", str(shipped), "--quality", str(tmp_path / "none")])
    card = (shipped / "README.md").read_text()
    assert "in 2 stages" in card and "| setting | stage 1 | stage 2 |" in card
    assert "| steps × sequences | 3 × 1 (batch 1) | 2 × 1 (batch 1) |" in card
    assert "| total | 5 steps, 14,336 tokens, 2 min |" in card
    assert "windows {256, 512}" in card and "lr 0.001" in card and "lr 0.0005" in card
    assert "4 sequences of 2048 tokens" in card and "4 sequences of 4096 tokens" in card
    commands = (shipped / "train_command.txt").read_text()
    assert commands.index("# stage 1") < commands.index("--max-length 2048") < commands.index("# stage 2")
    assert len((shipped / "train_log_stage1.jsonl").read_text().splitlines()) == 5  # stage 1's log, kept
    assert len((shipped / "train_log.jsonl").read_text().splitlines()) == 4
    stages = json.loads((shipped / "stages.json").read_text())
    assert [s["log"] for s in stages] == ["train_log_stage1.jsonl", "train_log.jsonl"]
    assert json.loads((shipped / "config.json").read_text())["base_model_name_or_path"].startswith("smollm2")
    # a third stage reads the two from stages.json
    assert [len(s["rows"]) for s in ship.previous_stages(shipped)] == [5, 4]


def test_memory_span_is_read_from_the_command_and_shown_in_the_card(tmp_path):
    ship = _module()
    cfg = ship.config_from_command("OMP_NUM_THREADS=1 ahn distill --base b --data d --out o --memory-span 16,8192\n"
                                   "# a comment\n")
    assert cfg["memory_span"] == [16, 8192]
    run = _run(tmp_path, "ahn distill --base b --data d --out r --memory-span 16,8192\n", memory_span=[16, 8192])
    ship.main([str(run), "--dest", str(tmp_path / "shipped"), "--quality", str(tmp_path / "none")])
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "| memory initialisation | decay half-lives 16–8192 tokens, log-spaced over each layer's heads" in card
    assert "(documents ≥ that length, truncated)" in card and "Linux kernel docs, Python docs" in card
    assert "--memory-span 16,8192" in (tmp_path / "shipped" / "train_command.txt").read_text()


def test_card_names_the_data_and_how_documents_were_cut(tmp_path):
    ship = _module()
    cmd = "ahn distill --base b --data /m/corpora/train/kjv /m/corpora/train/shakespeare --split-documents --out o\n"
    cfg = ship.config_from_command(cmd)
    assert cfg["data"] == ["kjv", "shakespeare"] and cfg["split_documents"] is True  # names, not machine paths
    run = _run(tmp_path, cmd, split_documents=True, data=["/m/corpora/train/kjv", "/m/corpora/train/shakespeare"])
    ship.main([str(run), "--dest", str(tmp_path / "shipped"), "--quality", str(tmp_path / "none")])
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "| data | `ahn corpora` training split: KJV Bible, 38 Shakespeare plays (held-out" in card
    assert "| sequence length | 2048 tokens (every chunk of that length of each document; none spans two) |" in card
    assert "/m/corpora" not in card.split("```")[0] + card.split("```")[-1]  # only the command shows paths


def test_quality_heading_gives_each_rows_measurement_day():
    ship = _module()
    q = {"date": "2026-12-02", "window": 512, "sinks": 64}
    assert ship._measured(q).startswith("2026-12-02 on the 2-core CPU")
    q["dates"] = {"ahn": ["2026-12-02"], "full": ["2026-12-02"], "swa": ["2026-12-02"]}
    assert ship._measured(q).startswith("2026-12-02 on the 2-core CPU")
    q["dates"] = {"ahn": ["2026-12-02"], "full": ["2026-11-23"], "swa": ["2026-11-23"]}
    assert ship._measured(q) == ("on the 2-core CPU, bf16, window 512, 64 sinks: the AHN rows on 2026-12-02; "
                                 "the full-attention rows and the sinks+SWA rows on 2026-11-23 (the baselines do "
                                 "not depend on the adapter):")


def test_card_quality_table_gives_the_gap_and_its_interval(tmp_path):
    ship = _module()
    _log(tmp_path / "log.jsonl", 2, 2048, 20.0)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    stage = {"command": "ahn distill --base b --data d --out o\n", "rows": rows,
             "config": ship.config_from_command("ahn distill --base b --data d --out o")}
    quality = {"date": "2026-12-01", "window": 512, "sinks": 64,
               "perplexity_8k": {"segments": 30, "full": 24.85, "swa": 26.84, "ahn": 26.32, "gap_closed": 0.2601,
                                 "gap_closed_ci95": [0.2446, 0.2756]}}
    card = ship.card("x", [stage], quality)
    assert "| 24.85 | 26.84 | 26.32 | 0.26 (95 % bootstrap over segments: 0.24–0.28) |" in card
    del quality["perplexity_8k"]["gap_closed_ci95"]  # a report from before the interval existed
    assert "| 24.85 | 26.84 | 26.32 | 0.26 |" in ship.card("x", [stage], quality)


def test_benchmarks_pair_adapters_with_labels(tmp_path, monkeypatch):
    from modeling_ahn.default import shipped

    assert shipped.adapters_to_compare(["a/x", "b/y"], None, "base") == [("x", "a/x"), ("y", "b/y")]
    assert shipped.adapters_to_compare(["a/x"], ["mine"], "base") == [("mine", "a/x")]
    with pytest.raises(SystemExit, match="one --label per --adapter"):
        shipped.adapters_to_compare(["a/x", "b/y"], ["one"], "base")
    monkeypatch.setattr(shipped, "shipped_repo", lambda ahn_type, base: tmp_path / f"{ahn_type}-over-{base}")
    assert shipped.adapters_to_compare(None, None, "base") == [("gdn-over-base", str(tmp_path / "gdn-over-base"))]


def test_ship_recall_adds_the_classifier_once_and_refuses_another_memory(tmp_path):
    spec = importlib.util.spec_from_file_location("ship_recall", ROOT / "benchmarks" / "ship_recall.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from safetensors.torch import load_file

    adapter, run = tmp_path / "adapter", tmp_path / "recall"
    adapter.mkdir()
    run.mkdir()
    memory = {"model.layers.0.ahn.fn.A_log": torch.arange(2.0)}
    save_file(memory, adapter / "model.safetensors")
    (adapter / "config.json").write_text(json.dumps({"model_type": "ahn", "num_sinks": 4}))
    (adapter / "README.md").write_text("# card\n\n## Training\n\nx\n\n## Quality report\n\ny\n")
    recall = {"model.layers.0.ahn.recall.weight": torch.ones(1, 3), "model.layers.0.ahn.recall.bias": torch.zeros(1)}
    save_file({**memory, **recall}, run / "model.safetensors")
    (run / "recall_report.json").write_text(json.dumps({
        "config": {"length": 2048, "corpus": "shakespeare", "facts": 3}, "train_sequences": 4, "heldout_sequences": 2,
        "seconds": 12.0, "heldout_per_layer": {"0": {"top64": 0.5, "top1pct": 0.25}}}))
    (run / "train_command.txt").write_text("ahn train-recall --model default --out R   # note\n")
    for _ in range(2):  # idempotent
        mod.ship(adapter, run)
    card = (adapter / "README.md").read_text()
    assert card.count("## Recall slots") == 1 and card.index("## Recall slots") < card.index("## Quality report")
    assert "`ahn train-recall --model default --out R` on 4 sequences" in card and "0.50–0.50" in card
    config = json.loads((adapter / "config.json").read_text())
    assert config == {"model_type": "ahn", "num_sinks": 4, "recall_head": True}
    assert set(load_file(str(adapter / "model.safetensors"))) == set(memory) | set(recall)
    save_file({"model.layers.0.ahn.fn.A_log": torch.zeros(2), **recall}, run / "model.safetensors")
    with pytest.raises(SystemExit, match="trained over another memory"):
        mod.ship(adapter, run)
