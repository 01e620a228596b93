# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Training AHN adapters by self-distillation (``distill``) on text, jsonl or ``datasets`` data (``data``)."""
