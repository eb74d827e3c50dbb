"""Preference rows handed over in Python (a notebook): a `datasets.Dataset`, a pandas DataFrame or a list of dicts.

They take the same road as file rows (`read_rows` -> formats -> validation -> tokenisation), so every format and
check is the same; only the row's source differs: `train_dataset[3]` (0-based row index) instead of `file:line`.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from ..errors import DataError
from .issues import RowIssue


class InMemoryRows:
    """Rows of an in-memory dataset under a name (`train_dataset`, `eval_dataset`); str() is the name, so
    messages about it read like those about a file."""

    def __init__(self, data: Any, name: str):
        self.name = name
        self.kind = type(data).__module__.split(".")[0] + "." + type(data).__name__
        self._rows = _row_list(data, name)

    def __str__(self) -> str:
        return self.name

    def __len__(self) -> int:
        return len(self._rows)

    def describe(self) -> str:
        """What the run was given, for config.yaml and the model card: `in-memory datasets.Dataset (16 rows)`."""
        return f"in-memory {self.kind} ({len(self)} rows)"

    def rows(self) -> Iterator[tuple[str, Any]]:
        """(source, row dict) or (source, RowIssue), as `readers.read_rows` yields for a file."""
        for i, row in enumerate(self._rows):
            source = f"{self.name}[{i}]"
            if isinstance(row, dict):
                yield source, {str(k): _plain(v) for k, v in row.items()}
            else:
                yield source, RowIssue(source, "", "not_an_object",
                                       f"expected a dict with chosen/rejected fields, got {type(row).__name__}")
        if not self._rows:
            yield self.name, RowIssue(self.name, "", "empty_file", "the dataset contains no rows")


def _row_list(data: Any, name: str) -> list:
    if isinstance(data, (list, tuple)):
        return list(data)
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_dict"):  # pandas, without importing it
        return data.to_dict(orient="records")
    if type(data).__name__ == "DatasetDict":
        if "train" not in data:
            raise DataError(f"{name}: a DatasetDict without a \"train\" split; it has: {', '.join(data)}. "
                            f"Pass one split, e.g. {name}=ds[{next(iter(data), 'train')!r}]")
        data = data["train"]
    if type(data).__name__ == "Dataset" and hasattr(data, "features"):  # datasets.Dataset
        return [dict(row) for row in data]
    raise DataError(f"{name}: expected a datasets.Dataset, a pandas DataFrame or a list of dicts, "
                    f"got {type(data).__name__}")


def _plain(value: Any) -> Any:
    """Python values for the format checks: numpy arrays (DataFrame cells of lists) -> lists, NaN (a missing
    DataFrame cell) -> None, so they are reported as missing fields rather than as floats."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [{str(k): _plain(v) for k, v in m.items()} if isinstance(m, dict) else _plain(m) for m in value]
    return value
