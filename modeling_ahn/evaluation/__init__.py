# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""Evaluation: the ``ahn eval`` harness over lm-eval (``harness``), the offline data of the ``ahn_*`` lm-eval
tasks (``task_data``) and the long-context probes (perplexity segments, passkey, needle: ``probes``)."""
