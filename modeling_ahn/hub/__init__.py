# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Hub tooling: export with a model card (``export``), the card itself (``card``), upload (``push``) and the
PEFT method (``peft_adapter``; imported on first use of ``AhnPeftConfig`` / ``AhnPeftModel``)."""

from .export import export_ahn_repo, export_model

__all__ = ["export_ahn_repo", "export_model"]
