"""An offline Hugging Face hub cache built from local folders, for tests that use hub names (`org/name`) with
HF_HUB_OFFLINE=1: the standard cache layout huggingface_hub reads (blobs, refs/main, snapshots)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fixtures_gen as fg

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_split_parquet(root: Path, splits: dict[str, list[dict]]) -> Path:
    """A dataset folder as the Hub stores it: data/<split>-00000-of-00001.parquet and a README."""
    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        fg.write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", rows)
    (root / "README.md").write_text("# preference pairs\n")
    return root


def put_in_hub_cache(hub: Path, repo_type: str, repo_id: str, folder: Path) -> None:
    """Copy `folder` into the standard hub cache layout: blobs/<sha256>, refs/main, snapshots/<commit>/<file>
    (each a relative symlink to its blob), as huggingface_hub writes it."""
    repo = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
