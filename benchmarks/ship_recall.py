"""Add a trained retention classifier (`ahn train-recall`) to an installed adapter: the recall slots' weights, the
config's `recall_head`, the training report and command, and a "Recall slots" section in its card.

    python benchmarks/ship_recall.py ADAPTER_DIR RECALL_RUN

RECALL_RUN is the `ahn train-recall --out` folder (`model.safetensors`, `recall_report.json`, `train_command.txt`).
The classifier reads the layer inputs of the model *with this adapter's memory*, so the run's memory weights must
equal the adapter's (checked: a classifier trained over another adapter is refused). Idempotent: the card section
is replaced, not appended twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SECTION = "## Recall slots"


def card_section(report: dict, command: str) -> str:
    per_layer = report["heldout_per_layer"].values()
    top64 = [v["top64"] for v in per_layer]
    top1 = [v["top1pct"] for v in per_layer]
    cfg = report["config"]
    return f"""{SECTION}

Beyond the official AHN format: this adapter carries a retention classifier (`model.layers.{{i}}.ahn.recall`, one
`Linear(hidden, 1)` per layer, `recall_head: true`), so `num_recall_slots=G` keeps the `G` evicted tokens it scores
highest (a layer by the mean score of the layers up to it), with their neighbours, exactly beside sinks and window
(`docs/recall_slots.md` in the `modeling_ahn` repository). Without slots (the default) the model is the plain AHN;
exports to the official format leave the classifier out.

```python
model = AutoModelForCausalLM.from_pretrained(shipped_repo('gdn'), trust_remote_code=True, num_recall_slots=64)
```

```bash
ahn demo --recall     # a pass key planted at 10 % of Julius Caesar (~35k tokens), asked at the end
```

Trained by `{command}` on {report["train_sequences"]} sequences of {cfg["length"]} tokens (`ahn corpora` training
split: {cfg["corpus"]}) with {cfg["facts"]} facts planted in each, {report["seconds"]:.0f} s on one CPU thread. On
{report["heldout_sequences"]} held-out sequences, per layer, the share of planted facts with a value token among the
sequence's 64 highest scores: {min(top64):.2f}–{max(top64):.2f}; in its top 1 %: {min(top1):.2f}–{max(top1):.2f}
(`recall_report.json`).
"""


def ship(adapter: Path, run: Path) -> None:
    mine, theirs = load_file(str(adapter / "model.safetensors")), load_file(str(run / "model.safetensors"))
    memory = {k: v for k, v in mine.items() if ".ahn.recall." not in k}
    differ = [k for k, v in memory.items() if k not in theirs or not torch.equal(v, theirs[k])]
    if differ:
        raise SystemExit(f"{run} was trained over another memory ({len(differ)} tensors differ, e.g. {differ[0]}): "
                         f"retrain it with `ahn train-recall --model {adapter}`")
    recall = {k: v for k, v in theirs.items() if ".ahn.recall." in k}
    if not recall:
        raise SystemExit(f"{run} holds no retention classifier (model.layers.*.ahn.recall.*)")
    save_file({**memory, **recall}, str(adapter / "model.safetensors"), metadata={"format": "pt"})
    cfg_path = adapter / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["recall_head"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    report = json.loads((run / "recall_report.json").read_text())
    command = (run / "train_command.txt").read_text().split("#")[0].strip()
    shutil.copy(run / "recall_report.json", adapter / "recall_report.json")
    (adapter / "recall_command.txt").write_text((run / "train_command.txt").read_text())
    card = (adapter / "README.md").read_text()
    if SECTION in card:  # replace the section (up to the next heading of the same level)
        head, rest = card.split(SECTION, 1)
        nxt = rest.find("\n## ")
        card = head.rstrip() + "\n\n" + (rest[nxt + 1:] if nxt >= 0 else "")
    at = card.find("\n## Quality report")
    section = card_section(report, command)
    card = card[:at] + "\n\n" + section + card[at:] if at >= 0 else card.rstrip() + "\n\n" + section
    (adapter / "README.md").write_text(card)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", type=Path, help="the installed adapter folder (adapters/<name>)")
    ap.add_argument("run", type=Path, help="the `ahn train-recall --out` folder")
    args = ap.parse_args(argv)
    ship(args.adapter, args.run)
    print(f"{args.adapter}: retention classifier from {args.run} added (recall_head: true)")


if __name__ == "__main__":
    main()
