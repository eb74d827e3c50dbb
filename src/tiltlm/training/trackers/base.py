"""The one interface every experiment tracker implements (`--report-to`), and what they all send.

A tracker is opened once, on rank 0, with the run's resolved config; it gets every metrics record (the same dicts
written to metrics.jsonl: its numbers at the record's `step`) and every doctor finding; it is closed at the end.
"""

from __future__ import annotations

from pathlib import Path


class Tracker:
    """`package`: the pip package it needs (a missing one is one clear ConfigError before any work)."""

    package = ""

    def __init__(self, run_dir: Path, config: dict, run_name: str):
        raise NotImplementedError

    def log(self, record: dict) -> None:
        """The record's numbers, at its step."""
        raise NotImplementedError

    def finding(self, finding: dict) -> None:
        """A doctor finding: {"check", "severity", "step", "message", "fix"}."""
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        """`ok=False`: the run was interrupted or failed."""
        raise NotImplementedError


def scalars(record: dict) -> dict[str, float]:
    """What a tracker plots from a record: every number but the step itself (train and `eval/` keys alike)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def finding_text(finding: dict) -> str:
    """One line per finding, as the live doctor prints it."""
    return f"[{finding['severity']}] {finding['message']} Fix: {finding['fix']}"
