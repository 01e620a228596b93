"""lm-evaluation-harness integration: no truncation, exact batching, the ahn_* task suite, ``ahn eval``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from modeling_ahn.evaluation import task_data as ed  # noqa: E402
from modeling_ahn.evaluation.harness import EvalSettings, evaluate, lm_eval_include_path, resolve_tasks  # noqa: E402

from .conftest import COMMON, save_ahn_repo  # noqa: E402

P = COMMON["max_position_embeddings"]  # the tiny base's trained context: 512
L2 = 2 * P  # lengths of 2x the base's context
W, S = 64, 4
PROSE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
         "of a wife. However little known the feelings or views of such a man may be on his first entering a "
         "neighbourhood, this truth is so well fixed in the minds of the surrounding families. ")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny base (context 512) on disk, an exported AHN repo over it, and a synthetic held-out corpus."""
    root = tmp_path_factory.mktemp("eval")
    base, _ = save_ahn_repo(root, W, S)
    corpus = root / "corpora"
    for source in ("austen", "pg_essays"):
        d = corpus / "heldout" / source
        d.mkdir(parents=True)
        for i in range(2):
            (d / f"doc{i}.txt").write_text(f"Chapter {i}. " + PROSE * 40)
    return dict(root=root, base=base, repo=str(root / "repo"), corpus=str(corpus))


def _max_len_seen(model):
    seen = [0]

    def hook(_m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            seen[0] = max(seen[0], ids.shape[-1] + (model_cache_len(kwargs)))

    def model_cache_len(kwargs):
        c = kwargs.get("cache", kwargs.get("past_key_values"))
        return c.get_seq_length() if c is not None else 0

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


# ---------------------------------------------------------------------- HFLM reads no truncating limit


def test_hflm_sees_the_effective_context_not_the_base_limit(env):
    from lm_eval.models.huggingface import HFLM

    cfg = json.loads((Path(env["repo"]) / "config.json").read_text())
    assert "text_config" not in cfg and cfg["base_config"]["max_position_embeddings"] == P
    tok_cfg = json.loads((Path(env["repo"]) / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == cfg["max_position_embeddings"]  # not the base's limit
    lm = HFLM(pretrained=env["repo"], trust_remote_code=True, batch_size=1, device="cpu", dtype="float32")
    assert type(lm.model).__name__ == "AhnForCausalLM"
    assert lm.max_length == cfg["max_position_embeddings"] >= 2**20


def test_simple_evaluate_by_path_reads_past_the_base_context(env, caplog):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=lm_eval_include_path(), metadata={
        "tokenizer": env["repo"], "max_seq_lengths": [L2], "num_samples": 2})
    with caplog.at_level(logging.WARNING):
        res = simple_evaluate(model="hf", model_args=dict(pretrained=env["repo"], trust_remote_code=True,
                                                          dtype="float32"),
                              tasks=["ahn_passkey_mc"], task_manager=tm, device="cpu", log_samples=True,
                              bootstrap_iters=0)
    assert not [r for r in caplog.records if "truncat" in r.getMessage().lower()]
    assert res["results"]["ahn_passkey_mc"]["acc,none"] in (0.0, 0.5, 1.0)
    tok = AutoTokenizer.from_pretrained(env["repo"])
    prompt = res["samples"]["ahn_passkey_mc"][0]["arguments"][0][0]
    assert len(tok(prompt)["input_ids"]) > P  # the request really is longer than the base's context


def _evaluate(lm, tasks, corpus, seed=0, n=3):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=lm_eval_include_path(), metadata={
        "tokenizer": lm.tokenizer, "max_seq_lengths": [L2], "num_samples": n, "seed": seed, "corpus_dir": corpus})
    return simple_evaluate(model=lm, tasks=tasks, task_manager=tm, log_samples=True, bootstrap_iters=0)


def test_python_api_long_inputs_untruncated_and_batch_size_invariant(env, caplog):
    """2x the base's context through HFLM(pretrained=model): no truncation warning, the model sees every token,
    and batch size 4 (left-padded generation, right-padded log-likelihoods) = batch size 1."""
    from lm_eval.models.huggingface import HFLM

    model = AutoModelForCausalLM.from_pretrained(env["repo"], trust_remote_code=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(env["repo"])
    seen, handle = _max_len_seen(model)
    tasks = ["ahn_passkey", "ahn_passkey_mc", "ahn_needle", "ahn_ppl_austen"]
    runs = {}
    with caplog.at_level(logging.WARNING):
        for bs in (1, 4):
            runs[bs] = _evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=bs), tasks, env["corpus"])
    handle.remove()
    assert not [r for r in caplog.records if "truncat" in r.getMessage().lower()]
    assert seen[0] >= L2 - 32  # whole prompts reached the model (prompt sized to L2 incl. the answer budget)
    for task in tasks:
        a, b = runs[1]["samples"][task], runs[4]["samples"][task]
        assert len(a) == len(b) == 3
        for x, y in zip(sorted(a, key=lambda s: s["doc_id"]), sorted(b, key=lambda s: s["doc_id"])):
            if task in ("ahn_passkey", "ahn_needle"):
                assert x["resps"] == y["resps"]  # identical greedy generations
            else:
                lx = torch.tensor([float(r[0]) for r in x["resps"][0]] if task.endswith("_mc") else
                                  [float(x["resps"][0][0])])
                ly = torch.tensor([float(r[0]) for r in y["resps"][0]] if task.endswith("_mc") else
                                  [float(y["resps"][0][0])])
                assert torch.allclose(lx, ly, atol=1e-3, rtol=1e-5), (task, lx, ly)
        ra, rb = runs[1]["results"][task], runs[4]["results"][task]
        for k, v in ra.items():
            if isinstance(v, float) and "stderr" not in k:
                assert v == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (task, k)


def test_readme_eval_block_runs_as_written(env, tmp_path):
    """The README's block: `lm_eval --model hf --model_args pretrained=$REPO,trust_remote_code=True` with no
    max_length at 4x the base's context, then `ahn eval --compare full,swa,ahn`."""
    from .test_readme import section_blocks

    block = section_blocks("Evaluation: lm-eval-harness and `ahn eval`", "bash")[0]
    env_vars = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "HF_HOME": str(tmp_path / "hf"), "REPO": env["repo"],
                "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          env=env_vars, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "truncat" not in (proc.stdout + proc.stderr).lower()
    results = json.loads(next((tmp_path / "runs" / "lm-eval").rglob("results_*.json")).read_text())["results"]
    assert set(results) == {"ahn_passkey", "ahn_passkey_mc"}
    assert results["ahn_passkey"]["2048,none"] == results["ahn_passkey"]["score,none"]  # the per-length key
    report = json.loads((tmp_path / "runs" / "eval-demo" / "results.json").read_text())
    assert report["scores"]["ahn_passkey"]["full"]["2048"]["extrapolated"]
    assert (tmp_path / "runs" / "eval-demo" / "scores.png").is_file()
    assert "| ahn_passkey_mc | acc | sinks+SWA |" in proc.stdout
    streamed = json.loads(next((tmp_path / "runs" / "lm-eval-ahn").rglob("results_*.json")).read_text())["results"]
    assert streamed["ahn_passkey_mc"]["acc,none"] == results["ahn_passkey_mc"]["acc,none"]


# ---------------------------------------------------------------------- the task generators


def test_generators_are_deterministic_and_sized(env):
    tok = AutoTokenizer.from_pretrained(env["repo"])
    kw = dict(tokenizer=tok, max_seq_lengths=[300, "1k"], num_samples=3, corpus_dir=env["corpus"])
    for fn in (ed.passkey, ed.passkey_mc, ed.needle, ed.ppl_austen):
        a, b = fn(seed=0, **kw)["test"].to_list(), fn(seed=0, **kw)["test"].to_list()
        assert a == b and len(a) == 6, fn.__name__
        assert [r["max_length"] for r in a] == [300] * 3 + [1024] * 3
        for r in a:
            text = r.get("input", r.get("text"))
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            budget = r["max_length"]  # prompt + answer prefix + answer budget fit the length
            if "gen_prefix" in r:
                gen = ed.NEEDLE_GEN_TOKENS if fn is ed.needle else ed.PASSKEY_GEN_TOKENS
                budget -= len(tok(" " + r["gen_prefix"], add_special_tokens=False)["input_ids"]) + gen
            assert budget - 12 <= n <= budget, (fn.__name__, n, budget)
    a, c = ed.passkey(seed=0, **kw)["test"].to_list(), ed.passkey(seed=1, **kw)["test"].to_list()
    assert [r["answer"] for r in a] != [r["answer"] for r in c]  # the seed matters
    for r in ed.passkey_mc(seed=0, **kw)["test"].to_list():
        assert r["choices"][r["label"]] == r["answer"] and len(set(r["choices"])) == 4
        assert r["answer"] in r["input"]
    for r in ed.needle(seed=0, **kw)["test"].to_list():
        assert "Dolores Park" in r["input"]


def test_scorers():
    doc = {"answer": "12345", "max_length": 4096}
    assert ed.passkey_results(doc, [" 12345. Remember"]) == {**ed._per_length(doc, 1.0), "score": 1.0}
    assert ed.passkey_results(doc, [" 123456"])["score"] == 0.0
    assert ed.needle_results({"max_length": 77}, [" to eat a sandwich in the park"])["score"] == 0.5
    assert ed.aggregate_ignoring_missing([-1, 1.0, 0.0, -1]) == 0.5


def test_middle_truncation_keeps_both_ends(env):
    tok = AutoTokenizer.from_pretrained(env["repo"])
    text = "START " + PROSE * 30 + " END"
    cut = ed.middle_truncate(tok, text, 100)
    ids = tok(cut, add_special_tokens=False)["input_ids"]
    assert cut.startswith("START") and cut.endswith("END") and abs(len(ids) - 100) <= 2
    assert ed.middle_truncate(tok, "short text", 100) == "short text"


# ---------------------------------------------------------------------- the paper's benchmarks from local data


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_paper_tasks_load_local_data_and_score(env, tmp_path):
    tok = AutoTokenizer.from_pretrained(env["repo"])
    d = tmp_path / "data"
    long_ctx = "BEGIN " + PROSE * 50 + " FINISH"
    _jsonl(d / "hotpotqa.jsonl", [{"input": "Who?", "context": long_ctx, "answers": ["Mr Darcy"], "length": 1,
                                   "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "a"}])
    _jsonl(d / "longbook_qa_eng.jsonl", [{"id": 0, "context": long_ctx, "input": "Who?", "answer": "Mr Darcy",
                                          "options": []}])
    _jsonl(d / "factrecall_en" / "factrecall_en_128k.jsonl",
           [{"input": "Who?", "context": long_ctx, "answers": ["David Beckham"], "answer_keywords": "David Beckham",
             "length": 1, "dataset": "factrecall_en", "language": "en"}])
    budget = 256
    for build, score, good in ((ed.longbench("hotpotqa"), ed.longbench_results("hotpotqa"), "Mr Darcy"),
                               (ed.infinitebench("longbook_qa_en"), ed.infinitebench_results("longbook_qa_en"),
                                "Mr Darcy"),
                               (ed.lveval("factrecall_en"), ed.lveval_results("factrecall_en"), "David Beckham")):
        (row,) = build(tokenizer=tok, data_dir=str(d), max_input_tokens=budget)["test"].to_list()
        n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        assert n <= budget + 2 and "BEGIN" in row["prompt"] and "FINISH" not in row["prompt"][:50]
        assert row["prompt"].rstrip().endswith(("Answer:", "concise.")), row["prompt"][-80:]
        assert score(row, [good])["score"] > 0.99 * (100 if "lveval" in build.__name__ else 1)
        assert score(row, ["something else entirely"])["score"] == 0.0
    with pytest.raises(FileNotFoundError, match="musique.jsonl"):
        ed.longbench("musique")(tokenizer=tok, data_dir=str(d))
    with pytest.raises(ValueError, match="data_dir"):
        ed.longbench("hotpotqa")(tokenizer=tok)


def test_lveval_keyword_gate():
    # the F1 counts only once enough of the answer's keywords are recalled (function words do not count)
    assert ed.keyword_gated_f1("the man of the house", "the man of the house", "Fitzwilliam Darcy", False) == 0.0
    assert ed.keyword_gated_f1("Fitzwilliam Darcy", "Fitzwilliam Darcy", "Fitzwilliam Darcy", False) == 1.0
    assert ed.keyword_gated_f1("Darcy was proud", "Darcy", None, False) == pytest.approx(0.5)
    assert ed.lveval_score("factrecall_zh", "贝克汉姆", "贝克汉姆", None) == 1.0


# ---------------------------------------------------------------------- ahn eval


def test_ahn_eval_compare_table_json_png_and_resume(env, tmp_path, monkeypatch):
    s = EvalSettings(model=env["repo"], tasks=["ahn_passkey", "ahn_ppl_austen"], lengths=[P // 2, L2],
                     methods=["full", "swa", "ahn"], limit=2, dtype="float32", corpus_dir=env["corpus"])
    out = tmp_path / "run"
    report = evaluate(s, out, progress=False)
    for name in ("results.json", "table.md", "scores.png", "units.json", "settings.json"):
        assert (out / name).is_file(), name
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = report["scores"]
    assert set(scores) == {"ahn_passkey", "ahn_ppl_austen"}
    for task in scores:
        assert set(scores[task]) == {"full", "swa", "ahn"}
        assert scores[task]["full"][str(L2)]["extrapolated"] and not scores[task]["full"][str(P // 2)]["extrapolated"]
        assert not scores[task]["ahn"][str(L2)]["extrapolated"]
        assert not any(c["truncated"] for m in scores[task].values() for c in m.values())
    ppl = scores["ahn_ppl_austen"]
    assert ppl["ahn"][str(L2)]["metric"] == "token_perplexity" and not ppl["ahn"][str(L2)]["higher_is_better"]
    # within the window every method is the base model: same perplexity
    assert ppl["ahn"][str(P // 2)]["value"] != ppl["swa"][str(L2)]["value"]
    table = (out / "table.md").read_text()
    assert "†" in table and "extrapolation" in table and "sinks+SWA" in table

    # resume: nothing runs again, the same report comes back
    import modeling_ahn.evaluation.harness as ev

    monkeypatch.setattr(ev, "run_unit", lambda *a, **k: pytest.fail("a finished unit ran again"))
    again = evaluate(s, out, progress=False)
    assert again["scores"] == report["scores"]
    with pytest.raises(ValueError, match="other settings.*seed"):
        evaluate(EvalSettings(**{**s.__dict__, "seed": 1}), out, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(s, out, resume=False, progress=False)


def test_ahn_eval_cli_and_paper_task(env, tmp_path, capsys):
    from modeling_ahn.cli import main

    d = tmp_path / "lv"
    _jsonl(d / "factrecall_en_128k.jsonl", [{"input": "Who?", "context": PROSE * 10, "answers": ["David Beckham"],
                                             "answer_keywords": "David Beckham"}])
    rc = main(["eval", "--model", env["repo"], "--compare", "ahn", "--tasks", "ahn_lveval_factrecall_en",
               "--lengths", "2k", "--data-dir", str(d), "--max-input-tokens", "700", "--out", str(tmp_path / "o"),
               "--dtype", "float32", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ahn_lveval_factrecall_en" in printed and "| AHN |" in printed


def test_offline_ruler_task_runs_through_ahn_eval(env, tmp_path, monkeypatch):
    """RULER's niah_single_1 at its smallest scored length, 4096 tokens (8x the base's context), offline."""
    import socket

    attempts = []

    def no_network(sock, address, *a, **k):  # recorded: a library may swallow the error
        attempts.append(address)
        raise OSError("network disabled in this test")

    def no_lookup(host, *a, **k):
        attempts.append(host)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    s = EvalSettings(model=env["repo"], tasks=["niah_single_1"], lengths=[4096], methods=["ahn"], limit=1,
                     dtype="float32")
    report = evaluate(s, tmp_path / "ruler", progress=False)
    cell = report["scores"]["niah_single_1"]["ahn"]["4096"]
    assert cell["metric"] == "4096" and 0.0 <= cell["value"] <= 1.0 and cell["samples"] == 1 and not cell["truncated"]
    assert attempts == []  # nltk's punkt_tab download (only the essay haystacks need it) was not tried


@pytest.mark.parametrize("kw, error, match", [
    (dict(tasks=["ahn_pasky"]), ValueError, "Unknown task 'ahn_pasky'.*ahn_passkey"),
    (dict(tasks=["niah_single_1"], lengths=[1000]), ValueError, "RULER.*4096"),
    (dict(tasks=["ahn_longbench_hotpotqa"]), ValueError, "--data-dir"),
    (dict(tasks=["ahn_longbench"], data_dir="/nonexistent/longbench"), FileNotFoundError, "does not exist"),
    (dict(lengths=[2**21]), ValueError, "effective context"),
    (dict(lengths=[L2], full_beyond_context="error"), ValueError, "trained context 512.*extrapolation"),
    (dict(methods=["full", "sliding"]), ValueError, "--compare"),
])
def test_ahn_eval_bad_input(env, tmp_path, kw, error, match):
    s = EvalSettings(**{"model": env["repo"], "tasks": ["ahn_passkey"], "lengths": [P], **kw})
    with pytest.raises(error, match=match):
        evaluate(s, tmp_path / "bad", progress=False)


def test_ahn_eval_refuses_a_plain_base(env, tmp_path):
    s = EvalSettings(model=env["base"], tasks=["ahn_passkey"], lengths=[P])
    with pytest.raises(ValueError, match="is not an AHN repo"):
        evaluate(s, tmp_path / "plain", progress=False)


def test_task_groups_resolve():
    leaves = resolve_tasks(["ahn_longctx", "ahn_ruler_offline", "ahn_longbench", "ahn_lveval", "ahn_infinitebench"])
    assert leaves["ahn_longctx"] == ["ahn_needle", "ahn_passkey", "ahn_passkey_mc", "ahn_ppl_austen"]
    assert leaves["ahn_ruler_offline"] == sorted(["niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt",
                                                  "ruler_cwe", "ruler_fwe"])
    assert len(leaves["ahn_longbench"]) == 6 and len(leaves["ahn_lveval"]) == 11
    assert len(leaves["ahn_infinitebench"]) == 2


def test_task_yamls_are_generated_from_the_script(tmp_path):
    """The committed YAMLs are exactly what lm_eval_tasks/_generate.py writes."""
    import importlib.util

    src = Path(lm_eval_include_path())
    spec = importlib.util.spec_from_file_location("gen", src / "_generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkey_dir = tmp_path / "tasks"
    monkey_dir.mkdir()
    gen.HERE = monkey_dir
    gen.main()
    made = {p.name: p.read_text() for p in monkey_dir.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in src.glob("*.yaml")}
    assert made == committed


def test_results_record_no_home_directory():
    from modeling_ahn.evaluation.harness import portable_path

    home = str(Path.home())
    assert portable_path(os.path.join(home, "x", "repo")) == os.path.join("~", "x", "repo")
    assert portable_path("/srv/models/repo") == "/srv/models/repo" and portable_path(None) is None
    assert portable_path(home + "other/repo") == home + "other/repo"  # only the directory itself, not a prefix
