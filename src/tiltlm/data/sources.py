"""Where rows come from: one data file, a folder, or a hub dataset, and which split of it is read.

- a file (JSONL / JSON / Parquet / CSV / TSV): the data itself, no splits.
- a folder written by `datasets`' save_to_disk: a Dataset (no splits) or a DatasetDict (its named splits).
- any other folder: data files named by split, found the way `datasets` itself finds them
  (`data/train_prefs-00000-of-00001.parquet` -> "train_prefs", `train.jsonl` / `test.jsonl` -> "train" / "test",
  files with no split in their name -> "train").
- a hub dataset `org/name` that is not a local path: its data files in the hub cache (hub.py), read as a folder.

Rows keep the real file they come from in their source ("file:line" or "file#i"), so every issue can be opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

from .. import hub
from ..errors import DataError
from .issues import RowIssue
from .memory import InMemoryRows
from .readers import SUFFIXES, Row, read_file

_SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


def resolve(path: str) -> Path:
    """The local file or folder behind `path` (a hub dataset name -> its snapshot folder in the hub cache)."""
    if hub.is_hub_name(path):
        return Path(hub.snapshot(path, "dataset"))
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data file not found: {path}")
    return p


def available_splits(path: str) -> Optional[list[str]]:
    """The split names of `path`, or None when it has no splits (a single file, a saved Dataset)."""
    p = resolve(path)
    if p.is_file():
        return None
    if _is_saved(p):
        ds = _load_saved(p, path)
        return list(ds) if hasattr(ds, "keys") else None
    return list(_split_files(p, path))


def read_rows(path: str | InMemoryRows, split: str = "train") -> Iterator[tuple[str, Row]]:
    """Yield the rows of `path` (its `split` where it has splits), bad rows as RowIssue (see readers.py)."""
    if isinstance(path, InMemoryRows):  # a dataset handed over in Python (tiltlm.train(train_dataset=...))
        yield from path.rows()
        return
    p = resolve(path)
    if p.is_file():
        yield from read_file(path if Path(path).expanduser().exists() else str(p))
        return
    if _is_saved(p):
        yield from _read_saved_dataset(p, path, split)
        return
    files = _split_files(p, path)
    for f in _pick(files, split, path):
        yield from read_file(f)


def _is_saved(p: Path) -> bool:
    return any((p / name).exists() for name in _SAVED_MARKERS)


def _pick(splits: dict, split: str, path: str):
    if split not in splits:
        raise DataError(f"{path} has no split {split!r}; its splits: {', '.join(splits)} (choose with "
                        "--dataset-train-split, or --dataset-test-split for the eval data)")
    return splits[split]


def _split_files(p: Path, path: str) -> dict[str, list[str]]:
    """{split: its data files} of a folder of data files, as `datasets` names the splits."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(p))
        files = DataFilesDict.from_patterns(patterns, base_path=str(p))
    except Exception:  # noqa: BLE001 - datasets raises EmptyDatasetError / FileNotFoundError for no data files
        files = {}
    out = {str(k): [str(f) for f in v] for k, v in files.items()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise DataError(f"{path}: a folder with no data files ({', '.join(SUFFIXES)}) and not one written by "
                        "datasets' save_to_disk")
    for fs in out.values():
        bad = [f for f in fs if not f.lower().endswith(SUFFIXES)]
        if bad:
            raise DataError(f"{bad[0]}: unsupported file type in the dataset folder {path}; expected one of "
                            f"{', '.join(SUFFIXES)}")
    return out


def _load_saved(p: Path, path: str):
    import datasets

    try:
        return datasets.load_from_disk(os.fspath(p))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot load the saved dataset: {e}") from None


def _read_saved_dataset(p: Path, path: str, split: str) -> Iterator[tuple[str, Row]]:
    ds = _load_saved(p, path)
    if hasattr(ds, "keys"):  # a DatasetDict
        ds = _pick(ds, split, path)
        path = os.path.join(path, split)
    n = 0
    for i, row in enumerate(ds):
        n += 1
        yield f"{path}#{i}", dict(row)
    if n == 0:
        yield path, RowIssue(path, "", "empty_file", "the dataset contains no rows")
