# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The ``ahn`` command line (``python -m modeling_ahn.cli``)."""

from .main import build_parser, distill_config, main

__all__ = ["build_parser", "distill_config", "main"]
