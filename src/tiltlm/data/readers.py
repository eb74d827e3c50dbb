"""Read raw rows from JSONL / JSON / Parquet / CSV / TSV files or a `datasets.save_to_disk` folder.

`read_rows` yields ``(source, row_dict)`` or ``(source, RowIssue)``; it never raises for a bad row, only for a
path it cannot read at all (`DataError`). Sources are "path:line" (1-based, header counted) for text files and
"path#i" (0-based row index) for Parquet / datasets folders / JSON objects without line information.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Union

from ..errors import DataError
from .issues import RowIssue
from .memory import InMemoryRows

Row = Union[dict, RowIssue]
_BAD_BYTES = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


def _has_bad_bytes(s: str) -> bool:
    """True if a string decoded with errors='surrogateescape' contained bytes that are not valid UTF-8."""
    return _BAD_BYTES.search(s) is not None


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")


def read_rows(path: str | InMemoryRows) -> Iterator[tuple[str, Row]]:
    """Yield the rows of a data file (or saved dataset folder), bad rows as RowIssue (see module doc)."""
    if isinstance(path, InMemoryRows):  # a dataset handed over in Python (tiltlm.train(train_dataset=...))
        yield from path.rows()
        return
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {path}")
    if p.is_dir():
        yield from _read_saved_dataset(p, path)
        return
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of "
                        f"{', '.join(SUFFIXES)} or a folder written by datasets' save_to_disk")
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet,
              ".csv": _read_csv, ".tsv": _read_csv}[suffix]
    n = 0
    for item in reader(p, path):
        n += 1
        yield item
    if n == 0:
        yield path, RowIssue(path, "", "empty_file", "the file contains no rows")


def _check_object(source: str, obj: Any) -> Row:
    if isinstance(obj, dict):
        return obj
    return RowIssue(source, "", "not_an_object",
                    f"expected a JSON object with chosen/rejected fields, got {type(obj).__name__}")


def _read_jsonl(p: Path, path: str) -> Iterator[tuple[str, Row]]:
    text = _read_text(p)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        src = f"{path}:{lineno}"
        if _has_bad_bytes(line):
            yield src, RowIssue(src, "", "invalid_encoding", "line is not valid UTF-8")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield src, RowIssue(src, "", "invalid_json", f"not valid JSON: {e.msg} (column {e.colno})")
            continue
        yield src, _check_object(src, obj)


def _read_json(p: Path, path: str) -> Iterator[tuple[str, Row]]:
    text = _read_text(p)
    if _has_bad_bytes(text):
        lineno = next(i for i, ln in enumerate(text.splitlines(), 1) if _has_bad_bytes(ln))
        src = f"{path}:{lineno}"
        yield src, RowIssue(src, "", "invalid_encoding", "file is not valid UTF-8")
        return
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        src = f"{path}:{e.lineno}"
        yield src, RowIssue(src, "", "invalid_json", f"not valid JSON: {e.msg} (column {e.colno})")
        return
    if isinstance(data, list):
        lines = _array_element_lines(text)
        for i, obj in enumerate(data):
            src = f"{path}:{lines[i]}" if lines and i < len(lines) else f"{path}#{i}"
            yield src, _check_object(src, obj)
        return
    if isinstance(data, dict):
        for key in ("train", "data"):
            if isinstance(data.get(key), list):
                for i, obj in enumerate(data[key]):
                    src = f"{path}#{key}[{i}]"
                    yield src, _check_object(src, obj)
                return
        if "chosen" in data or "rejected" in data:  # a single object
            yield f"{path}#0", data
            return
    raise DataError(f"{path}: expected a JSON list of objects, or an object with a \"train\" or \"data\" list")


def _array_element_lines(text: str) -> list[int]:
    """1-based line of each element of a top-level JSON array (empty list if the layout is unexpected)."""
    dec = json.JSONDecoder()
    i = text.find("[")
    out: list[int] = []
    if i < 0:
        return out
    i += 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return out
        out.append(text.count("\n", 0, i) + 1)
        try:
            _, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return []


def _maybe_messages(value: Any) -> Any:
    """CSV cells are strings: decode a JSON list (conversational format) stored in a cell."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            obj = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(obj, list) and all(isinstance(m, dict) for m in obj):
            return obj
    return value


def _read_csv(p: Path, path: str) -> Iterator[tuple[str, Row]]:
    text = _read_text(p)
    delim = "\t" if p.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise DataError(f"{path}:1: cannot parse the CSV header: {e}") from None
    header = [h.strip() for h in header]
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            src = f"{path}:{start}"
            yield src, RowIssue(src, "", "invalid_json", f"malformed CSV row: {e}")
            return
        if not values or all(not v.strip() for v in values):
            continue
        src = f"{path}:{start}"
        if any(_has_bad_bytes(v) for v in values):
            yield src, RowIssue(src, "", "invalid_encoding", "row is not valid UTF-8")
            continue
        row = {h: _maybe_messages(v) for h, v in zip(header, values)}
        yield src, row


def _read_parquet(p: Path, path: str) -> Iterator[tuple[str, Row]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read Parquet file: {e}") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}#{i}", row


def _read_saved_dataset(p: Path, path: str) -> Iterator[tuple[str, Row]]:
    if not (p / "dataset_dict.json").exists() and not (p / "dataset_info.json").exists() \
            and not (p / "state.json").exists():
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk "
                        "(no dataset_dict.json / state.json)")
    import datasets

    try:
        ds = datasets.load_from_disk(os.fspath(p))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot load the saved dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a \"train\" split; it has: {', '.join(ds)}. "
                            f"Point to one split folder, e.g. {os.path.join(path, next(iter(ds)))}")
        ds = ds["train"]
        path = os.path.join(path, "train")
    n = 0
    for i, row in enumerate(ds):
        n += 1
        yield f"{path}#{i}", dict(row)
    if n == 0:
        yield path, RowIssue(path, "", "empty_file", "the dataset contains no rows")
