"""Writes the ahn_* task YAMLs of this directory (run from anywhere: python lm_eval_tasks/_generate.py).

The YAMLs are committed; this script is how they were made, so that a change to one family changes all of it.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
LONGBENCH = {  # name: (metric keys of lm-eval's scorer, max_gen_toks, until) as lm-eval's own configs
    "dureader": (("score", "rouge_zh_score"), 128, []),
    "hotpotqa": (("score", "qa_f1_score"), 32, []),
    "musique": (("score", "qa_f1_score"), 32, []),
    "narrativeqa": (("score", "qa_f1_score"), 128, []),
    "qmsum": (("score", "rouge_score"), 512, []),
    "triviaqa": (("score", "qa_f1_score"), 32, ["\n"]),
}
INFINITEBENCH = {"longbook_qa_en": 40, "longbook_qa_chn": 40}
LVEVAL = ("hotpotwikiqa_mixup", "loogle_SD_mixup", "loogle_CR_mixup", "loogle_MIR_mixup", "multifieldqa_en_mixup",
          "multifieldqa_zh_mixup", "factrecall_en", "factrecall_zh", "cmrc_mixup", "lic_mixup", "dureader_mixup")
RULER_OFFLINE = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
RULER_128K = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
              "niah_multikey_3", "niah_multivalue", "niah_multiquery")


def q(s) -> str:
    return json.dumps(s, ensure_ascii=False)


def per_length(first: str) -> str:
    rows = [f"  - metric: {first}\n    aggregation: mean\n    higher_is_better: true"]
    rows += [f"  - metric: \"{n}\"\n    aggregation: !function utils.aggregate_ignoring_missing\n"
             "    higher_is_better: true" for n in LENGTHS]
    return "metric_list:\n" + "\n".join(rows) + "\n"


def gen_task(name, fn, results, doc_to_text, target, prefix, max_gen, until, metrics, tag, extra=""):
    return (f"tag:\n  - {tag}\ntask: {name}\ndataset_path: \"\"\ndataset_name: \"\"\noutput_type: generate_until\n"
            f"test_split: test\ncustom_dataset: !function utils.{fn}\ndoc_to_text: {q(doc_to_text)}\n"
            f"doc_to_target: {q(target)}\n" + (f"gen_prefix: {q(prefix)}\n" if prefix else "") +
            f"target_delimiter: \" \"\nprocess_results: !function utils.{results}\n"
            f"generation_kwargs:\n  do_sample: false\n  temperature: 0.0\n  max_gen_toks: {max_gen}\n"
            f"  until: {q(until)}\n{metrics}{extra}metadata:\n  version: 1.0\n")


def main():
    files = {}
    # --- generated offline probes -------------------------------------------------------------------
    files["ahn_passkey.yaml"] = gen_task(
        "ahn_passkey", "passkey", "passkey_results", "{{input}}", "{{answer}}", "{{gen_prefix}}", 12, ["\n"],
        per_length("score"), "ahn_longctx_tasks")
    files["ahn_needle.yaml"] = gen_task(
        "ahn_needle", "needle", "needle_results", "{{input}}", "{{answer}}", "{{gen_prefix}}", 32, ["\n"],
        per_length("score"), "ahn_longctx_tasks")
    files["ahn_passkey_mc.yaml"] = (
        "tag:\n  - ahn_longctx_tasks\ntask: ahn_passkey_mc\ndataset_path: \"\"\ndataset_name: \"\"\n"
        "output_type: multiple_choice\ntest_split: test\ncustom_dataset: !function utils.passkey_mc\n"
        "doc_to_text: \"{{input}}\\n\\nThe pass key is\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "target_delimiter: \" \"\nprocess_results: !function utils.passkey_mc_results\n"
        + per_length("acc") + "metadata:\n  version: 1.0\n")
    for source in ("austen", "gnu_standards", "pg_essays"):
        files[f"ahn_ppl_{source}.yaml"] = (
            f"tag:\n  - ahn_longctx_tasks\ntask: ahn_ppl_{source}\ndataset_path: \"\"\ndataset_name: \"\"\n"
            f"output_type: loglikelihood_rolling\ntest_split: test\ncustom_dataset: !function utils.ppl_{source}\n"
            "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\nprocess_results: !function utils.perplexity_results\n"
            "metric_list:\n"
            "  - metric: token_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
            "  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
            "  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n"
            "metadata:\n  version: 1.0\n")
    files["_ahn_longctx.yaml"] = ("group: ahn_longctx\ntask:\n  - ahn_passkey\n  - ahn_passkey_mc\n  - ahn_needle\n"
                                  "  - ahn_ppl_austen\nmetadata:\n  version: 1.0\n")
    files["_ahn_ruler_offline.yaml"] = ("group: ahn_ruler_offline\ntask:\n"
                                        + "".join(f"  - {t}\n" for t in RULER_OFFLINE) + "metadata:\n  version: 1.0\n")
    # --- the paper's benchmarks, from local data ------------------------------------------------------
    for name, (keys, max_gen, until) in LONGBENCH.items():
        metrics = "metric_list:\n" + "".join(f"  - metric: {k}\n    aggregation: mean\n    higher_is_better: true\n"
                                             for k in keys)
        files[f"ahn_longbench_{name}.yaml"] = gen_task(
            f"ahn_longbench_{name}", f"longbench_{name}", f"longbench_{name}_results", "{{prompt}}", "{{answers}}",
            None, max_gen, until, metrics, "ahn_paper_tasks")
    files["_ahn_longbench.yaml"] = ("group: ahn_longbench\ntask:\n"
                                    + "".join(f"  - ahn_longbench_{n}\n" for n in LONGBENCH)
                                    + "aggregate_metric_list:\n  - metric: score\n    weight_by_size: false\n"
                                    "metadata:\n  version: 1.0\n")
    score = "metric_list:\n  - metric: score\n    aggregation: mean\n    higher_is_better: true\n"
    for name, max_gen in INFINITEBENCH.items():
        files[f"ahn_infinitebench_{name}.yaml"] = gen_task(
            f"ahn_infinitebench_{name}", f"infinitebench_{name}", f"infinitebench_{name}_results", "{{prompt}}",
            "{{answer[0]}}", None, max_gen, ["\n"], score, "ahn_paper_tasks")
    files["_ahn_infinitebench.yaml"] = ("group: ahn_infinitebench\ntask:\n"
                                        + "".join(f"  - ahn_infinitebench_{n}\n" for n in INFINITEBENCH)
                                        + "aggregate_metric_list:\n  - metric: score\n    weight_by_size: false\n"
                                        "metadata:\n  version: 1.0\n")
    for name in LVEVAL:
        files[f"ahn_lveval_{name}.yaml"] = gen_task(
            f"ahn_lveval_{name}", f"lveval_{name}", f"lveval_{name}_results", "{{prompt}}", "{{answers[0]}}", None,
            16 if name.startswith("factrecall") else 64, [], score, "ahn_paper_tasks")
    files["_ahn_lveval.yaml"] = ("group: ahn_lveval\ntask:\n" + "".join(f"  - ahn_lveval_{n}\n" for n in LVEVAL)
                                 + "aggregate_metric_list:\n  - metric: score\n    weight_by_size: false\n"
                                 "metadata:\n  version: 1.0\n")
    files["_ahn_ruler_128k.yaml"] = ("group: ahn_ruler_niah\ntask:\n" + "".join(f"  - {t}\n" for t in RULER_128K)
                                     + "metadata:\n  version: 1.0\n")
    for old in HERE.glob("*.yaml"):
        old.unlink()
    for name, text in files.items():
        (HERE / name).write_text("# generated by _generate.py; edit that, not this file\n" + text, encoding="utf-8")
    print(f"wrote {len(files)} YAML files to {HERE}")


if __name__ == "__main__":
    main()
