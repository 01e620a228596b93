"""The ahn_* lm-evaluation-harness tasks (YAML + ``utils.py``); ``modeling_ahn.lm_eval_include_path()`` returns this
directory for ``--include_path`` / ``TaskManager(include_path=...)``."""
