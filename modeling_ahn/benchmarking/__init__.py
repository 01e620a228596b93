# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Benchmarking: ``ahn bench`` (``bench``), the paper's FLOP/KV-byte accounting (``accounting``) and the choice
of a fast floating-point type per device (``devices``)."""
