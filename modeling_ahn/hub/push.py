# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``ahn push``: upload an exported AHN repo folder to the Hub. Tooling, not payload."""

from __future__ import annotations

from pathlib import Path


def list_upload(folder: str | Path) -> list[tuple[str, int]]:
    """The files ``ahn push`` would upload (relative path, bytes), hidden files and caches excluded."""
    folder = Path(folder)
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            files.append((rel.as_posix(), p.stat().st_size))
    return files


def push(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, token=None):
    """Upload an exported AHN repo folder with ``huggingface_hub``; ``dry_run`` only lists the files."""
    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise ValueError(f"{folder} is not an exported AHN repo (config.json and model.safetensors are needed).")
    files = list_upload(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, ignore_patterns=[".*", "__pycache__/*"])
    return files
