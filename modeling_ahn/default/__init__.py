# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""The embedded default: SmolLM2-135M-Instruct fetched from PyPI (``model``), the public-domain corpora it is
trained and evaluated on (``corpora``), the adapters shipped for it (``shipped``) and ``ahn demo`` (``demo``)."""
