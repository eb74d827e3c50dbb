"""Problems found in user data: `RowIssue` (one bad row) and `DataError` (a clear summary, never a traceback)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional


# Every issue kind, in the order summaries list them.
ISSUE_KINDS = (
    "empty_file",
    "invalid_encoding",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "empty_prompt",
    "empty_response",
    "identical_responses",
    "no_distinct_completion",
    "unknown_role",
    "non_alternating",
    "duplicate_pair",
    "prompt_too_long",
)


@dataclass
class RowIssue:
    """One problem with one row. ``source`` is "path:line" (1-based file line) or "path#i" (0-based row index)."""

    source: str
    field: str
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source} [{self.field}]" if self.field else self.source
        return f"{where} {self.kind}: {self.message}"

    def to_json(self) -> dict:
        """The skipped.jsonl record: {"source", "field", "kind", "reason"}."""
        return {"source": self.source, "field": self.field, "kind": self.kind, "reason": self.message}


def _kind_order(kind: str) -> int:
    return ISSUE_KINDS.index(kind) if kind in ISSUE_KINDS else len(ISSUE_KINDS)


def summarize_issues(issues: Iterable[RowIssue], *, rows: Optional[int] = None, path: str = "",
                     examples_per_kind: int = 1) -> str:
    """A table: one line per issue kind with its count and the first offending location, field and message."""
    issues = list(issues)
    if not issues:
        return f"{path}: no problems found" if path else "no problems found"
    counts = Counter(i.kind for i in issues)
    firsts: dict[str, list[RowIssue]] = {}
    for i in issues:
        firsts.setdefault(i.kind, [])
        if len(firsts[i.kind]) < examples_per_kind:
            firsts[i.kind].append(i)
    n_bad_rows = len({i.source for i in issues})
    head = f"{path}: " if path else ""
    of = f" of {rows}" if rows is not None else ""
    lines = [f"{head}{n_bad_rows}{of} rows have problems ({len(issues)} issues)", ""]
    kinds = sorted(counts, key=_kind_order)
    w_kind = max(len("kind"), *(len(k) for k in kinds))
    w_n = max(len("count"), *(len(str(counts[k])) for k in kinds))
    lines.append(f"  {'kind':<{w_kind}}  {'count':>{w_n}}  first at")
    for k in kinds:
        for j, iss in enumerate(firsts[k]):
            loc = f"{iss.source} [{iss.field}]" if iss.field else iss.source
            label, cnt = (k, str(counts[k])) if j == 0 else ("", "")
            lines.append(f"  {label:<{w_kind}}  {cnt:>{w_n}}  {loc}: {iss.message}")
    return "\n".join(lines)
