"""``!function utils.<name>`` hooks of the ahn_* tasks: thin names over ``modeling_ahn.evaluation.task_data``.

lm-eval loads this file by path, so it imports the installed package rather than its siblings.
"""

from modeling_ahn.evaluation import task_data as _d

passkey = _d.passkey
passkey_mc = _d.passkey_mc
needle = _d.needle
ppl_austen = _d.ppl_austen
ppl_gnu_standards = _d.ppl_gnu_standards
ppl_pg_essays = _d.ppl_pg_essays
passkey_results = _d.passkey_results
passkey_mc_results = _d.passkey_mc_results
needle_results = _d.needle_results
perplexity_results = _d.perplexity_results
aggregate_ignoring_missing = _d.aggregate_ignoring_missing

for _name in _d.LONGBENCH_TASKS:
    globals()[f"longbench_{_name}"] = _d.longbench(_name)
    globals()[f"longbench_{_name}_results"] = _d.longbench_results(_name)
for _name in _d.INFINITEBENCH_TASKS:
    globals()[f"infinitebench_{_name}"] = _d.infinitebench(_name)
    globals()[f"infinitebench_{_name}_results"] = _d.infinitebench_results(_name)
for _name in _d.LVEVAL_TASKS:
    globals()[f"lveval_{_name}"] = _d.lveval(_name)
    globals()[f"lveval_{_name}_results"] = _d.lveval_results(_name)
