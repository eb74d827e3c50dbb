"""Load a data file into validated examples and tokenised pairs, with statistics, before any training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from ..types import PreferenceExample, TokenizedPair
from .formats import row_to_example
from ..errors import DataError
from .issues import RowIssue, summarize_issues
from .readers import read_rows
from .tokenize import tokenize_examples
from .validate import validate_examples


def load_examples_with_formats(path: str, *, prompt_delimiter: Optional[str] = None
                               ) -> tuple[list[PreferenceExample], list[RowIssue], int, Counter]:
    """(examples, structural issues, number of rows read, Counter of format names)."""
    examples: list[PreferenceExample] = []
    issues: list[RowIssue] = []
    formats: Counter = Counter()
    rows = 0
    for index, (source, row) in enumerate(read_rows(path)):
        if isinstance(row, RowIssue):
            issues.append(row)
            if row.kind != "empty_file":
                rows += 1
            continue
        rows += 1
        out = row_to_example(index, source, row, prompt_delimiter=prompt_delimiter)
        if isinstance(out, RowIssue):
            issues.append(out)
        else:
            examples.append(out[0])
            formats[out[1]] += 1
    return examples, issues, rows, formats


def load_examples(path: str, *, prompt_delimiter: Optional[str] = None
                  ) -> tuple[list[PreferenceExample], list[RowIssue]]:
    """Read and normalise every row of `path`. Rows that cannot be read or normalised become RowIssues."""
    examples, issues, _, _ = load_examples_with_formats(path, prompt_delimiter=prompt_delimiter)
    return examples, issues


def _dist(values: Sequence[int]) -> dict:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": int(a.max())}


def format_name(formats: Counter) -> str:
    if not formats:
        return "unknown"
    if len(formats) == 1:
        return next(iter(formats))
    return "mixed (" + ", ".join(f"{k}: {v}" for k, v in formats.most_common()) + ")"


def pair_stats(pairs: Sequence[TokenizedPair]) -> dict:
    return {
        "truncated": sum(p.truncated for p in pairs),
        "tokens": {"prompt": _dist([len(p.prompt_ids) for p in pairs]),
                   "chosen": _dist([len(p.chosen_ids) for p in pairs]),
                   "rejected": _dist([len(p.rejected_ids) for p in pairs])},
        "chosen_longer_frac": (sum(len(p.chosen_ids) > len(p.rejected_ids) for p in pairs) / len(pairs))
        if pairs else 0.0,
        "rejected_longer_frac": (sum(len(p.chosen_ids) < len(p.rejected_ids) for p in pairs) / len(pairs))
        if pairs else 0.0,
    }


def check_file(path: str, tokenizer=None, *, max_length: Optional[int] = None,
               max_prompt_length: Optional[int] = None, prompt_delimiter: Optional[str] = None):
    """Everything `prepare_dataset` checks, without raising: (examples, pairs, issues, rows, formats).

    `examples` and `pairs` hold only the rows without issues (pairs empty without a tokenizer)."""
    examples, issues, rows, formats = load_examples_with_formats(path, prompt_delimiter=prompt_delimiter)
    sem = validate_examples(examples)
    issues = issues + sem
    bad = {i.source for i in sem}
    examples = [e for e in examples if e.source not in bad]
    pairs: list[TokenizedPair] = []
    if tokenizer is not None and examples:
        pairs, tok_issues = tokenize_examples(examples, tokenizer, max_length=max_length or 10**9,
                                              max_prompt_length=max_prompt_length)
        if tok_issues:
            issues += tok_issues
            bad = {i.source for i in tok_issues}
            examples = [e for e in examples if e.source not in bad]
    return examples, pairs, issues, rows, formats


def write_skipped(path: str, issues: Sequence[RowIssue]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for i in issues:
            f.write(json.dumps(i.to_json(), ensure_ascii=False) + "\n")


def prepare_dataset(path: str, tokenizer, *, max_length: int, max_prompt_length: Optional[int] = None,
                    prompt_delimiter: Optional[str] = None, skip_invalid: bool = False,
                    skipped_path: Optional[str] = None
                    ) -> tuple[list[PreferenceExample], list[TokenizedPair], dict]:
    """Load, validate and tokenise every row of `path` before training.

    With issues and not `skip_invalid`: raise DataError with a summary table. With `skip_invalid`: write each
    rejected row's issues to `skipped_path` (JSONL: source, field, kind, reason) and continue with the rest.
    Returns (valid examples, their TokenizedPairs in the same order, stats)."""
    examples, pairs, issues, rows, formats = check_file(
        path, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
        prompt_delimiter=prompt_delimiter)
    if issues and not skip_invalid:
        raise DataError(summarize_issues(issues, rows=rows, path=path)
                        + "\n\nFix these rows, or pass --skip-invalid to train on the valid rows only "
                          "(the others are written to skipped.jsonl).")
    if not examples:
        msg = summarize_issues(issues, rows=rows, path=path) if issues else f"{path}: no rows"
        raise DataError(f"no valid preference pairs in {path}\n{msg}")
    if skip_invalid and skipped_path is not None:
        write_skipped(skipped_path, issues)
    first_kind: dict[str, str] = {}  # each skipped row counted once, under its first issue's kind
    for i in issues:
        if i.kind != "empty_file":
            first_kind.setdefault(i.source, i.kind)
    by_kind = Counter(first_kind.values())
    stats = {"rows": rows, "valid": len(examples), "skipped": len(first_kind),
             "skipped_by_kind": dict(by_kind), "format": format_name(formats), **pair_stats(pairs)}
    return examples, pairs, stats
