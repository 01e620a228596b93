# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn``: command-line tools (export, convert, push). Not part of the remote-code payload."""

from __future__ import annotations

import argparse
import sys

from .configuration_ahn import DEFAULT_NUM_SINKS, DEFAULT_SLIDING_WINDOW


def _add_settings(p, defaults=True):
    note = f" (default {DEFAULT_SLIDING_WINDOW}, the paper's)" if defaults else ""
    p.add_argument("--sliding-window", type=int, default=DEFAULT_SLIDING_WINDOW if defaults else None,
                   help="inference window W" + note)
    p.add_argument("--num-sinks", type=int, default=DEFAULT_NUM_SINKS if defaults else None,
                   help="attention sinks S" + (f" (default {DEFAULT_NUM_SINKS})" if defaults else ""))


def cmd_export(args) -> int:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from .configuration_ahn import AhnConfig
    from .modeling_ahn import _read_adapter_weights, write_ahn_repo

    if args.source:
        config = AhnConfig.from_pretrained(args.source)
        state = _read_adapter_weights(args.source, {})
        for key in ("sliding_window", "num_sinks"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        config.validate_ahn()
        out = write_ahn_repo(args.out, config, state, tokenizer_source=args.source)
    else:
        if not (args.base and args.weights):
            raise SystemExit("ahn export: give --from REPO, or --base BASE and --weights FILE.safetensors")
        kwargs = {k: getattr(args, k) for k in ("sliding_window", "num_sinks") if getattr(args, k) is not None}
        config = AhnConfig(base_config=AutoConfig.from_pretrained(args.base), base_model_name_or_path=args.base,
                           ahn_type=args.ahn_type, full_attention_layers=args.full_attention_layers, **kwargs)
        out = write_ahn_repo(args.out, config, load_file(args.weights))
    print(f"exported {out}")
    return 0


def cmd_convert(args) -> int:
    from .conversion.bytedance import convert_bytedance

    out = convert_bytedance(args.ahn_path, args.out, base=args.base, sliding_window=args.sliding_window,
                            num_sinks=args.num_sinks, extract_base=args.extract_base, revision=args.revision,
                            base_revision=args.base_revision)
    print(f"converted {args.ahn_path} -> {out}")
    return 0


def cmd_push(args) -> int:
    from .hub import push

    files = push(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    total = sum(size for _, size in files)
    verb = "would upload" if args.dry_run else "uploaded"
    for name, size in files:
        print(f"{size:>12,}  {name}")
    private = " (private)" if args.private else ""
    print(f"{verb} {len(files)} files ({total / 1e6:.2f} MB) to {args.repo_id}{private}")
    return 0


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

    p = sub.add_parser("push", help="upload an exported repo folder to the Hub")
    p.add_argument("folder")
    p.add_argument("repo_id", help="org/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.set_defaults(func=cmd_push)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"ahn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
