# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Model cards of exported AHN repos (``hub_cards/model_card.md`` filled in). Tooling, not payload."""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path

from ..memory_ahn import AHN_TYPES, unofficial_options


def _template(name: str = "model_card.md") -> str:
    return resources.files("modeling_ahn.hub_cards").joinpath(name).read_text()


def base_license(base: str | None) -> str:
    """The base model's licence from its model card (local dir or Hub cache), else ``other``. A local directory is
    never looked up on the Hub (without a card of its own it has no licence to read: no request, no retries)."""
    if not base:
        return "other"
    try:
        from huggingface_hub import ModelCard

        card_path = Path(base) / "README.md"
        if Path(base).is_dir() and not card_path.exists():
            return "other"
        card = ModelCard.load(card_path if card_path.exists() else base)
        return card.data.get("license") or "other"
    except Exception:
        return "other"


def eval_table(rows) -> str:
    """Markdown table from a list of dicts (same keys), e.g. ``[{"task": ..., "full": ..., "ahn": ...}]``."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row.get(c, ''):.4g}" if isinstance(row.get(c), float) else
                                        str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def render_training_section(recipe: dict) -> str:
    """A "Training" card section: the distillation recipe as a two-column table."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in recipe.items())
    return ("## Training\n\nSelf-distilled from the frozen base (teacher: full attention; student: sinks + window + "
            "AHN; only the AHN trains) with `ahn distill`:\n\n| setting | value |\n|---|---|\n" + rows + "\n")


def render_model_card(config, num_params: int, eval_results=None, repo_id: str | None = None,
                      extra_sections=()) -> str:
    """Render ``hub_cards/model_card.md`` for an AHN repo."""
    base = config.base_model_name_or_path or "unknown"
    is_hub_id = not Path(base).exists() and base.count("/") == 1
    rev = config.base_model_revision
    ahn_layers = config.ahn_layers
    n_layers = config.base_config.num_hidden_layers
    section = ""
    if eval_results:
        section = "## Evaluation\n\n" + eval_table(eval_results) + "\n"
    beyond = unofficial_options(config)
    if beyond:
        section = "\n".join([section, (
            "## Beyond the official format\n\nThis adapter uses options that the ByteDance release does not "
            f"have: {', '.join(f'`{name}`' for name in beyond)} (see `configuration_ahn.py`). The remote code here "
            "runs them; the official AHN code cannot load these weights.\n")])
    section = "\n".join([section, *extra_sections]).strip()
    values = dict(
        base_model=base,
        base_url=f"https://huggingface.co/{base}" if is_hub_id else base,
        base_revision_note=f" (revision `{rev}`)" if rev else "",
        license=base_license(base),
        title=f"AHN-{config.ahn_type.upper()} for {base.rstrip('/').split('/')[-1]}",
        ahn_type=config.ahn_type,
        ahn_tag=AHN_TYPES[config.ahn_type].lower(),
        ahn_name=AHN_TYPES[config.ahn_type],
        num_params=f"{num_params:,} ({num_params / 1e6:.2f}M)",
        ahn_layers="all" if len(ahn_layers) == n_layers else f"{len(ahn_layers)} of {n_layers} ({ahn_layers})",
        sliding_window=f"{config.sliding_window:,}",
        num_sinks=config.num_sinks,
        ahn_version=getattr(config, "ahn_version", None) or "?",
        code_hash=getattr(config, "ahn_code_hash", None) or "?",
        repo_id=repo_id or "<org>/<this-repo>",
        eval_section=section,
    )
    return string.Template(_template()).substitute(values).rstrip() + "\n"
