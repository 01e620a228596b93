# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn eval``: the same lm-evaluation-harness tasks for an AHN model, its base with full attention and its base
with sinks + sliding-window attention, at several lengths; a table, JSON and a score-vs-length plot.

Each (method, task, length) is one unit, stored as soon as it finishes, so an interrupted run resumes. Long
inputs are never truncated: every method is evaluated with ``max_length`` = the AHN config's effective context,
and a run that still sees lm-eval's "Left truncation applied" warning is flagged in the results. Full-attention
rows beyond the base's trained length are extrapolation and are marked as such. Not part of the payload.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .task_data import parse_length

METHODS = ("full", "swa", "ahn")
METHOD_LABELS = {"full": "full attention", "swa": "sinks+SWA", "ahn": "AHN"}
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multiquery", "niah_multivalue", "ruler_vt", "ruler_cwe", "ruler_fwe",
               "ruler_qa_squad", "ruler_qa_hotpot")
RULER_OFFLINE = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
RULER_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
DATA_TASK_PREFIXES = ("ahn_longbench", "ahn_infinitebench", "ahn_lveval")
# Metrics read as "the score" of a task, in order of preference; lower-is-better ones are flagged.
PRIMARY_METRICS = ("score", "acc", "exact_match", "token_perplexity", "word_perplexity")
LOWER_IS_BETTER = ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity")

# The paper's benchmark settings (§3, Tables 2, 3, 5): tasks, lossless memory, input budget.
PAPER_PRESETS = {
    "longbench": dict(tasks=["ahn_longbench"], window=8064, sinks=128, lengths=["32000"], max_input_tokens=32000,
                      note="LongBench, six tasks of average length > 8k (Table 3): 128 sinks + 8,064 window, inputs "
                           "middle-truncated to 32,000 tokens; data_dir holds LongBench's {task}.jsonl files"),
    "infinitebench": dict(tasks=["ahn_infinitebench"], window=32640, sinks=128, lengths=["128000"],
                          max_input_tokens=128000,
                          note="InfiniteBench En.QA / Zh.QA (Table 2): 128 sinks + 32,640 window, middle truncation "
                               "to 128k; data_dir holds longbook_qa_eng.jsonl and longbook_qa_chn.jsonl"),
    "lveval": dict(tasks=["ahn_lveval"], window=32640, sinks=128, lengths=["256000"], max_input_tokens=256000,
                   note="LV-Eval's 11 datasets at the 128k level (Table 2): 128 sinks + 32,640 window, middle "
                        "truncation to 256k, keyword-recall-gated F1; data_dir holds {dataset}_128k.jsonl"),
    "ruler128k": dict(tasks=["ahn_ruler_niah"], window=32640, sinks=128, lengths=["131072"], max_input_tokens=None,
                      note="RULER NIAH at 128k (Table 5): 128 sinks + 32,640 window; the essay-haystack tasks need "
                           "the Paul Graham essays dataset in the HF cache"),
}

logger = logging.getLogger(__name__)


def lm_eval_include_path() -> str:
    """The directory of the ``ahn_*`` task YAMLs, for ``--include_path`` or ``TaskManager(include_path=...)``."""
    from importlib import resources

    return str(resources.files("modeling_ahn.lm_eval_tasks"))


_MANAGER = None


def task_manager(metadata: dict | None = None):
    """A ``TaskManager`` over lm-eval's tasks and ours, with ``metadata`` for every task it loads. Indexing the
    tasks takes seconds, so the index is built once and shared by managers that differ only in metadata."""
    import copy

    from lm_eval.tasks import TaskManager

    global _MANAGER
    if _MANAGER is None:
        _MANAGER = TaskManager(include_path=lm_eval_include_path())
    try:
        from lm_eval.tasks._factory import TaskFactory

        manager = copy.copy(_MANAGER)
        manager.metadata = metadata or {}
        manager._factory = TaskFactory(meta=metadata or {})
        return manager
    except (ImportError, AttributeError, TypeError):  # another lm-eval layout: index anew
        return TaskManager(include_path=lm_eval_include_path(), metadata=metadata or {})


def resolve_tasks(names: list[str], manager=None) -> dict[str, list[str]]:
    """Each requested task or group -> the leaf tasks it runs; a clear error naming close matches otherwise."""
    manager = manager or task_manager()
    known = set(manager.all_tasks)
    out = {}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown task {name!r}.{hint} `lm_eval ls tasks --include_path $(python -c "
                             "'import modeling_ahn; print(modeling_ahn.lm_eval_include_path())')` lists them.")
        out[name] = sorted(_leaves(manager, name))
    return out


def _leaves(manager, name) -> set[str]:
    entry = manager.task_index.get(name)
    kind = getattr(getattr(entry, "kind", None), "name", "TASK")
    if kind == "GROUP" and entry.yaml_path is not None:
        from lm_eval.tasks._yaml_loader import load_yaml

        subtasks = load_yaml(entry.yaml_path, resolve_func=False).get("task", [])
        subtasks = [t if isinstance(t, str) else t.get("task") for t in subtasks]
    elif kind == "TAG":
        subtasks = [t for t, e in manager.task_index.items() if name in (e.tags or ())]
    else:
        return {name}
    leaves = set()
    for sub in subtasks:
        leaves |= _leaves(manager, sub)
    return leaves or {name}


@dataclass
class EvalSettings:
    model: str
    tasks: list[str]
    lengths: list[int]
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    base: str | None = None
    window: int | None = None
    sinks: int | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 1
    dtype: str = "auto"
    apply_chat_template: bool = False
    data_dir: str | None = None
    corpus_dir: str | None = None
    max_input_tokens: int | None = None
    full_beyond_context: str = "mark"  # mark | skip | error
    device: str | None = None
    recall_slots: int = 0  # recall slots of the "ahn" method (docs/recall_slots.md); 0: the plain AHN
    recall_score: str | None = None  # learned | novelty | None (the best the adapter has)


def _check_settings(s: EvalSettings, leaves: dict[str, list[str]]) -> None:
    bad = [m for m in s.methods if m not in METHODS]
    if bad or not s.methods:
        raise ValueError(f"--compare takes a comma list of {', '.join(METHODS)}; got {','.join(s.methods)!r}")
    if s.full_beyond_context not in ("mark", "skip", "error"):
        raise ValueError("--full-beyond-context is one of mark, skip, error")
    all_leaves = {t for ts in leaves.values() for t in ts}
    ruler = sorted(t for t in all_leaves if t in RULER_TASKS)
    odd = [L for L in s.lengths if L not in RULER_LENGTHS]
    if ruler and odd:
        raise ValueError(f"RULER ({', '.join(ruler)}) scores only lengths {', '.join(map(str, RULER_LENGTHS))}; "
                         f"got {', '.join(map(str, odd))}.")
    needs_data = sorted(t for t in all_leaves if t.startswith(DATA_TASK_PREFIXES))
    if needs_data:
        if not s.data_dir:
            raise ValueError(f"{', '.join(needs_data[:3])}{' ...' if len(needs_data) > 3 else ''} read a local copy "
                             "of the benchmark: pass --data-dir DIR (the README says what it must contain).")
        if not Path(s.data_dir).expanduser().is_dir():
            raise FileNotFoundError(f"--data-dir {s.data_dir} does not exist.")


def _load_models(s: EvalSettings, method: str, config):
    """(model, tokenizer) for one method; ``config`` is the AHN repo's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_name = s.base or config.base_model_name_or_path
    dtype = s.dtype if s.dtype == "auto" else getattr(torch, s.dtype)
    kw = {"dtype": dtype}
    if s.device:
        kw["device_map"] = s.device
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(base_name, **kw)
    else:
        over = {k: v for k, v in (("sliding_window", s.window), ("num_sinks", s.sinks)) if v is not None}
        if method == "ahn" and s.recall_slots:
            over.update(num_recall_slots=s.recall_slots, recall_score=s.recall_score)
        if s.base:
            over["base_model"] = s.base
        model = AutoModelForCausalLM.from_pretrained(s.model, trust_remote_code=True, **over, **kw)
    try:
        tok = AutoTokenizer.from_pretrained(s.model, trust_remote_code=True)
    except (OSError, ValueError):
        tok = AutoTokenizer.from_pretrained(base_name)
    return model.eval(), tok


class _TruncationWatch(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.hits = 0

    def emit(self, record):
        if "truncat" in record.getMessage().lower():
            self.hits += 1


def _primary(task_results: dict, length: int) -> tuple[str, float, bool] | None:
    metrics = {k.split(",")[0]: v for k, v in task_results.items()
               if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name, float(metrics[name]), name not in LOWER_IS_BETTER
    if str(length) in metrics and metrics[str(length)] != -1:  # RULER: one score key per length
        return str(length), float(metrics[str(length)]), True
    for name, v in metrics.items():
        return name, float(v), name not in LOWER_IS_BETTER
    return None


def _no_nltk_download() -> None:
    """lm-eval's RULER module downloads nltk's punkt_tab at import unless it is installed; only the essay
    haystacks use it, and the offline RULER tasks do not. Point nltk at an empty stand-in so that nothing tries the
    network."""
    import tempfile

    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        root = Path(tempfile.mkdtemp(prefix="ahn-nltk-"))
        (root / "tokenizers" / "punkt_tab").mkdir(parents=True)
        nltk.data.path.insert(0, str(root))


def run_unit(lm, s: EvalSettings, task: str, leaves: list[str], length: int, tokenizer_name: str) -> dict:
    """One task (whose leaf tasks are ``leaves``) at one length through lm-eval's Python API; its leaf scores and
    whether anything was truncated."""
    from lm_eval import simple_evaluate

    meta = {"tokenizer": tokenizer_name, "max_seq_lengths": [length], "seed": s.seed}
    if s.limit:
        meta["num_samples"] = s.limit
    for k in ("data_dir", "corpus_dir", "max_input_tokens"):
        if getattr(s, k) is not None:
            meta[k] = getattr(s, k)
    if any(t in RULER_TASKS for t in leaves) and all(t in RULER_OFFLINE or t not in RULER_TASKS for t in leaves):
        _no_nltk_download()
    watch = _TruncationWatch()
    lm_logger = logging.getLogger("lm_eval")
    lm_logger.addHandler(watch)
    t0 = time.time()
    try:
        res = simple_evaluate(model=lm, tasks=[task], task_manager=task_manager(meta), limit=s.limit,
                              log_samples=False, apply_chat_template=s.apply_chat_template, random_seed=s.seed,
                              numpy_random_seed=s.seed, torch_random_seed=s.seed, fewshot_random_seed=s.seed,
                              bootstrap_iters=0)
    finally:
        lm_logger.removeHandler(watch)
    groups = set(res.get("group_subtasks", {})) - {t for subs in res.get("group_subtasks", {}).values() for t in subs}
    scores = {}
    for name, r in res["results"].items():
        if name in groups and len(res["results"]) > 1:
            continue
        p = _primary(r, length)
        if p is not None:
            scores[name] = {"metric": p[0], "value": p[1], "higher_is_better": p[2],
                            "samples": res.get("n-samples", {}).get(name, {}).get("effective")}
    return {"scores": scores, "truncation_warnings": watch.hits, "seconds": round(time.time() - t0, 2)}


def evaluate(s: EvalSettings, out_dir: str | os.PathLike, resume: bool = True, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run every unit not already stored in ``out_dir``; returns the report (also ``results.json``)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    leaves = resolve_tasks(s.tasks)
    _check_settings(s, leaves)
    settings_path, units_path = out / "settings.json", out / "units.json"
    mine = {k: portable_path(v) if k in ("model", "base", "data_dir", "corpus_dir") else v
            for k, v in asdict(s).items() if k not in ("batch_size", "device")}
    if settings_path.exists() and not overwrite:
        # (a setting an older version did not store had its default then)
        defaults = asdict(EvalSettings(model="", tasks=[], lengths=[]))
        old = {**{k: defaults[k] for k in mine}, **json.loads(settings_path.read_text())}
        diff = sorted(k for k in set(old) | set(mine) if k not in ("methods", "lengths", "tasks")
                      and old.get(k) != mine.get(k))
        if not resume:
            raise FileExistsError(f"{out} holds an evaluation; pass --resume to continue it or --overwrite.")
        if diff:
            raise ValueError(f"{out} holds an evaluation with other settings ({', '.join(diff)}); use another --out "
                             "or --overwrite.")
    if overwrite and units_path.exists():
        units_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(mine, indent=2))
    done = json.loads(units_path.read_text()) if units_path.exists() else {}

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(s.model, trust_remote_code=True)
    if getattr(config, "model_type", None) != "ahn":
        raise ValueError(f"{s.model} is not an AHN repo (model_type {config.model_type!r}); give an exported AHN "
                         "repo or directory (ahn export / save_pretrained).")
    base_context = int(config.base_config.max_position_embeddings)
    effective = int(config.max_position_embeddings)
    too_long = [L for L in s.lengths if L > effective]
    if too_long:
        raise ValueError(f"lengths {too_long} exceed the AHN model's effective context {effective} "
                         "(config.max_position_embeddings).")
    beyond = [L for L in s.lengths if L > base_context]
    if "full" in s.methods and beyond:
        msg = (f"lengths {', '.join(map(str, beyond))} exceed the base's trained context {base_context} "
               "(base_config.max_position_embeddings): full attention there is extrapolation")
        if s.full_beyond_context == "error":
            raise ValueError(msg + "; drop those lengths, drop 'full' from --compare, or pass "
                                   "--full-beyond-context mark (rows marked) / skip.")
        logger.warning("%s; those rows are %s.", msg, "marked" if s.full_beyond_context == "mark" else "skipped")

    units = [(m, t, L) for m in s.methods for L in s.lengths for t in s.tasks
             if not (m == "full" and L > base_context and s.full_beyond_context == "skip")]
    todo = [u for u in units if "/".join(map(str, u)) not in done]
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="ahn eval", unit="unit", disable=not progress)
    from .streaming_lm import StreamingLM

    for method in [m for m in s.methods if any(u[0] == m for u in todo)]:
        model, tok = _load_models(s, method, config)
        tok_name = s.model if (Path(s.model) / "tokenizer_config.json").exists() else (
            s.base or config.base_model_name_or_path)
        # log-likelihoods chunk by chunk (memory flat in length), generation as lm-eval's hf model
        lm = StreamingLM(pretrained=model, tokenizer=tok, max_length=effective, batch_size=s.batch_size)
        mode = model.attention_mode(method) if method == "swa" else contextlib.nullcontext()
        with mode:
            for m, task, L in [u for u in todo if u[0] == method]:
                bar.set_postfix_str(f"{method} {task} {L}")
                unit = run_unit(lm, s, task, leaves[task], L, tok_name)
                unit["extrapolated"] = method == "full" and L > base_context
                if unit["truncation_warnings"]:
                    logger.warning("%s/%s/%d: lm-eval reported truncation (%d warnings): scores are of truncated "
                                   "inputs", method, task, L, unit["truncation_warnings"])
                done["/".join(map(str, (m, task, L)))] = unit
                tmp = units_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(done, indent=1, sort_keys=True))
                os.replace(tmp, units_path)
                bar.update(1)
        del lm, model
    bar.close()
    report = summarize(s, done, base_context, config)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "table.md").write_text(table(report) + "\n")
    plot(report, out / "scores.png")
    return report


def portable_path(path):
    """A path as stored in results: the home directory as ``~``, so that no machine's user path is recorded."""
    if not isinstance(path, str):
        return path
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path


def summarize(s: EvalSettings, done: dict, base_context: int, config) -> dict:
    rows = {}
    for key, unit in done.items():
        method, task, L = key.rsplit("/", 2)
        if method not in s.methods or task not in s.tasks or int(L) not in s.lengths:
            continue
        for leaf, sc in unit["scores"].items():
            rows.setdefault(leaf, {}).setdefault(method, {})[L] = {
                **sc, "extrapolated": unit.get("extrapolated", False), "truncated": unit["truncation_warnings"] > 0}
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "processor": platform.processor(),
        "torch": torch.__version__, "model": portable_path(s.model),
        "base": portable_path(s.base or config.base_model_name_or_path),
        "ahn_type": config.ahn_type, "window": s.window or config.sliding_window,
        "sinks": s.sinks if s.sinks is not None else config.num_sinks, "base_context": base_context,
        "recall_slots": s.recall_slots, "recall_score": s.recall_score if s.recall_slots else None,
        "lengths": s.lengths, "methods": s.methods, "limit": s.limit, "seed": s.seed,
        "apply_chat_template": s.apply_chat_template, "scores": rows,
    }


def table(report: dict) -> str:
    lengths = [str(L) for L in report["lengths"]]
    head = "| task | metric | method | " + " | ".join(_fmt_len(int(L)) for L in lengths) + " |"
    lines = [head, "|" + "---|" * (3 + len(lengths))]
    marks = set()
    for task in sorted(report["scores"]):
        for method in report["methods"]:
            cells = report["scores"][task].get(method, {})
            if not cells:
                continue
            metric = _metric_label(next(iter(cells.values()))["metric"])
            vals = []
            for L in lengths:
                c = cells.get(L)
                if c is None:
                    vals.append("–")
                    continue
                mark = ("†" if c["extrapolated"] else "") + ("‡" if c["truncated"] else "")
                marks |= set(mark)
                vals.append(f"{c['value']:.3f}{mark}")
            lines.append(f"| {task} | {metric} | {METHOD_LABELS[method]} | " + " | ".join(vals) + " |")
    if "†" in marks:
        lines.append(f"\n† full attention beyond the base's trained context ({report['base_context']} tokens): "
                     "extrapolation.")
    if "‡" in marks:
        lines.append("\n‡ lm-eval reported truncation: these inputs were cut.")
    return "\n".join(lines)


def _metric_label(metric: str) -> str:
    return "score" if metric.isdigit() else metric  # RULER names its score by the length


def _fmt_len(L: int) -> str:
    return f"{L // 1024}k" if L % 1024 == 0 else str(L)


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install 'modeling-ahn[eval]')")
        return
    tasks = sorted(report["scores"])
    if not tasks:
        return
    cols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(6.5, 5 * cols), 3.6 * nrows + 0.6), squeeze=False)
    colors = {"full": "tab:blue", "swa": "tab:orange", "ahn": "tab:green"}
    for ax, task in zip(axes.flat, tasks):
        metric = None
        for method in report["methods"]:
            cells = report["scores"][task].get(method, {})
            pts = sorted((int(L), c) for L, c in cells.items())
            if not pts:
                continue
            metric = _metric_label(pts[0][1]["metric"])
            inside = [(L, c["value"]) for L, c in pts if not c["extrapolated"]]
            outside = [(L, c["value"]) for L, c in pts if c["extrapolated"]]
            if inside:
                ax.plot(*zip(*inside), "o-", color=colors[method], label=METHOD_LABELS[method])
            if outside:
                joined = inside[-1:] + outside
                ax.plot(*zip(*joined), "--", color=colors[method], alpha=0.6)
                ax.plot(*zip(*outside), "o", mfc="none", color=colors[method],
                        label=f"{METHOD_LABELS[method]} (extrapolated)")
        ax.axvline(report["base_context"], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["lengths"], [_fmt_len(L) for L in report["lengths"]])
        ax.minorticks_off()
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("tokens")
        ax.set_ylabel(metric or "score")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(f"{Path(report['model']).name}: window {report['window']}, {report['sinks']} sinks\n"
                 f"(dotted line: the base's trained context, {report['base_context']} tokens)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_lengths(text: str) -> list[int]:
    return [parse_length(x) for x in str(text).split(",") if x.strip()]


__all__ = ["EvalSettings", "PAPER_PRESETS", "evaluate", "lm_eval_include_path", "resolve_tasks", "task_manager"]
