"""TRL's dataset mixtures (`datasets:` in a YAML config, DatasetMixtureConfig) and `dataset_config`.

Each entry names a source as `--data` does (a file, a folder, a hub dataset) plus `name` / `data_dir` (a subfolder
of it: a dataset's configuration), `data_files` (files inside it), `split`, `columns` (the columns kept) and
`fraction` (TRL 1.16's rule: fractions normalised to sum to one, the mixture as large as it can be without
oversampling any dataset, the first round(fraction * N) rows of each). The rows are concatenated in order and
then go the way of an in-memory dataset (formats, checks, tokenisation), named `datasets[i]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from .memory import InMemoryRows
from .readers import read_file
from .sources import read_rows, resolve

ENTRY_KEYS = ("path", "name", "data_dir", "data_files", "split", "columns", "fraction")


def config_folder(path: str, config: Optional[str]) -> str:
    """`--data` narrowed to its `dataset_config` (load_dataset's `name`): the subfolder of that name."""
    if not config:
        return path
    sub = resolve(path) / config
    if not sub.is_dir():
        found = sorted(p.name for p in resolve(path).iterdir() if p.is_dir() and not p.name.startswith("."))
        raise ConfigError(f"dataset_config {config!r}: {path} has no folder of that name (it has: "
                          f"{', '.join(found) or 'none'})")
    return str(sub)


def _entry_rows(i: int, entry: dict) -> list[dict]:
    unknown = set(entry) - set(ENTRY_KEYS)
    if unknown or "path" not in entry:
        raise ConfigError(f"datasets[{i}]: an entry takes {', '.join(ENTRY_KEYS)} (path required), got "
                          f"{sorted(entry)}")
    folder = config_folder(str(entry["path"]), entry.get("name"))
    if entry.get("data_dir"):
        folder = str(Path(resolve(folder)) / str(entry["data_dir"]))
    split = str(entry.get("split") or "train")
    files = entry.get("data_files")
    if files:
        names = [files] if isinstance(files, str) else list(files.get(split, [])) if isinstance(files, dict) \
            else list(files)
        rows = [row for f in names for _, row in read_file(str(Path(resolve(folder)) / f))]
    else:
        rows = [row for _, row in read_rows(folder, split)]
    columns = entry.get("columns")
    rows = [r for r in rows if isinstance(r, dict)]  # a bad row is reported by the checks of the mixture itself
    return [{c: r.get(c) for c in columns} for r in rows] if columns else rows


def mixture_rows(entries: list[dict[str, Any]]) -> InMemoryRows:
    parts = [_entry_rows(i, dict(e)) for i, e in enumerate(entries)]
    fractions = [e.get("fraction") for e in entries]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions):
            raise ConfigError("datasets: set `fraction` for every entry of the mixture or for none")
        total = sum(float(f) for f in fractions)
        shares = [float(f) / total for f in fractions]
        size = min(len(p) / s for p, s in zip(parts, shares) if s > 0)  # the largest N that oversamples none
        parts = [p[:round(s * size)] for p, s in zip(parts, shares)]
    rows = [r for p in parts for r in p]
    if not rows:
        raise ConfigError("datasets: the mixture has no rows")
    return InMemoryRows(rows, "datasets")
