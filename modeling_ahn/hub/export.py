# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Export a complete AHN repo: what ``AhnPreTrainedModel.save_pretrained`` writes (config with ``auto_map``,
the remote-code payload, AHN weights, PEFT files, tokenizer) plus the full model card. Tooling, not payload."""

from __future__ import annotations

from pathlib import Path

from ..modeling_ahn import write_ahn_repo
from .card import render_model_card


def export_ahn_repo(save_directory, config, ahn_state_dict, generation_config=None, tokenizer=None,
                    eval_results=None, tokenizer_source=None, extra_card_sections=()) -> Path:
    """Write an adapter-only AHN repo from a config and its AHN tensors, with the full model card
    (``eval_results``: rows of its evaluation table; ``extra_card_sections``: markdown sections appended)."""
    out = write_ahn_repo(save_directory, config, ahn_state_dict, generation_config=generation_config,
                         tokenizer=tokenizer, tokenizer_source=tokenizer_source)
    saved = type(config).from_pretrained(out)  # the config as written (version, code hash)
    n_params = sum(v.numel() for v in ahn_state_dict.values())
    (out / "README.md").write_text(render_model_card(saved, n_params, eval_results=eval_results,
                                                     extra_sections=extra_card_sections))
    return out


def export_model(model, save_directory, tokenizer=None, eval_results=None, extra_card_sections=()) -> Path:
    """``model.save_pretrained(save_directory)`` with the full model card."""
    return export_ahn_repo(save_directory, model.config, model.ahn_state_dict(),
                           generation_config=getattr(model, "generation_config", None), tokenizer=tokenizer,
                           eval_results=eval_results, extra_card_sections=extra_card_sections)
