"""Load a data file into validated examples and tokenised pairs, with statistics, before any training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..types import PreferenceExample, TokenizedPair
from .formats import DEFAULT_COLUMNS, Columns, row_to_example
from ..errors import DataError
from .issues import RowIssue, summarize_issues
from .sources import read_rows
from .tokenize import tokenize_examples
from .validate import validate_examples


def load_examples_with_formats(path: str, *, prompt_delimiter: Optional[str] = None, split: str = "train",
                               columns: Columns = DEFAULT_COLUMNS
                               ) -> tuple[list[PreferenceExample], list[RowIssue], int, Counter]:
    """(examples, structural issues, number of rows read, Counter of format names)."""
    examples: list[PreferenceExample] = []
    issues: list[RowIssue] = []
    formats: Counter = Counter()
    rows = 0
    seen_object = False
    for index, (source, row) in enumerate(read_rows(path, split)):
        if isinstance(row, RowIssue):
            issues.append(row)
            if row.kind != "empty_file":
                rows += 1
            continue
        if not seen_object:  # the first row of the file says which columns it has
            _check_columns(path, row, columns)
            seen_object = True
        rows += 1
        out = row_to_example(index, source, row, prompt_delimiter=prompt_delimiter, columns=columns)
        if isinstance(out, RowIssue):
            issues.append(out)
        else:
            examples.append(out[0])
            formats[out[1]] += 1
    return examples, issues, rows, formats


def _check_columns(path: str, row: dict, columns: Columns) -> None:
    """A column the user named must exist: its absence is one line about the file, not one issue per row.
    Image columns are vision-language data, which tiltlm does not train on: one line too."""
    if any(row.get(c) is not None for c in ("images", "image")):
        raise DataError(f"{path}: an images column: vision-language (VLM) preference training is not supported; "
                        "tiltlm trains text-only causal LMs")
    for col, role in columns.renamed().items():
        if col not in row:
            flag = f"--{role}-column"
            raise DataError(f"{path}: no column {col!r} (given by {flag}); its columns: "
                            f"{', '.join(map(str, row)) or 'none'}")


def load_examples(path: str, *, prompt_delimiter: Optional[str] = None, split: str = "train",
                  columns: Columns = DEFAULT_COLUMNS) -> tuple[list[PreferenceExample], list[RowIssue]]:
    """Read and normalise every row of `path`. Rows that cannot be read or normalised become RowIssues."""
    examples, issues, _, _ = load_examples_with_formats(path, prompt_delimiter=prompt_delimiter, split=split,
                                                        columns=columns)
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
        # what a summed-log-prob margin can learn from: the mean and spread of chosen minus rejected tokens
        "length_diff": _diff_dist([len(p.chosen_ids) - len(p.rejected_ids) for p in pairs]),
    }


def _diff_dist(values: Sequence[int]) -> dict:
    if not values:
        return {"mean": 0.0, "std": 0.0, "p5": 0.0, "p95": 0.0}
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "p5": float(np.percentile(a, 5)),
            "p95": float(np.percentile(a, 95))}


@dataclass
class CheckedData:
    """What `check_file` found. `examples` / `pairs`: the rows that will train (in the same order; pairs empty
    without a tokenizer). `invalid`: malformed rows (refused without --skip-invalid). `duplicates`: repeats of an
    earlier pair (kept unless drop_duplicates). `too_long`: prompts that leave no room under max_length (skipped)."""

    examples: list[PreferenceExample]
    pairs: list[TokenizedPair]
    invalid: list[RowIssue]
    duplicates: list[RowIssue]
    too_long: list[RowIssue]
    rows: int
    formats: Counter


def check_file(path: str, tokenizer=None, *, max_length: Optional[int] = None,
               max_prompt_length: Optional[int] = None, prompt_delimiter: Optional[str] = None,
               split: str = "train", columns: Columns = DEFAULT_COLUMNS, drop_duplicates: bool = False,
               chat_kwargs: Optional[dict] = None) -> CheckedData:
    """Everything `prepare_dataset` checks, without raising for a bad row."""
    examples, issues, rows, formats = load_examples_with_formats(path, prompt_delimiter=prompt_delimiter,
                                                                 split=split, columns=columns)
    sem = validate_examples(examples)
    invalid = issues + [i for i in sem if i.kind != "duplicate_pair"]
    bad = {i.source for i in invalid}
    duplicates = [i for i in sem if i.kind == "duplicate_pair" and i.source not in bad]
    if drop_duplicates:
        bad |= {i.source for i in duplicates}
    examples = [e for e in examples if e.source not in bad]
    pairs: list[TokenizedPair] = []
    too_long: list[RowIssue] = []
    if tokenizer is not None and examples:
        pairs, too_long = tokenize_examples(examples, tokenizer, max_length=max_length or 10**9,
                                            max_prompt_length=max_prompt_length, chat_kwargs=chat_kwargs)
        long = {i.source for i in too_long}
        examples = [e for e in examples if e.source not in long]
    return CheckedData(examples, pairs, invalid, duplicates, too_long, rows, formats)


def write_skipped(path: str, issues: Sequence[RowIssue]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for i in issues:
            f.write(json.dumps(i.to_json(), ensure_ascii=False) + "\n")


def prepare_dataset(path: str, tokenizer, *, max_length: int, max_prompt_length: Optional[int] = None,
                    prompt_delimiter: Optional[str] = None, skip_invalid: bool = False,
                    skipped_path: Optional[str] = None, split: str = "train", columns: Columns = DEFAULT_COLUMNS,
                    drop_duplicates: bool = False, chat_kwargs: Optional[dict] = None,
                    log: Callable[[str], None] = print
                    ) -> tuple[list[PreferenceExample], list[TokenizedPair], dict]:
    """Load, validate and tokenise every row of `path` (its `split`) before training.

    Malformed rows and not `skip_invalid`: raise DataError with a summary table. Repeated pairs are kept (TRL
    trains on them) with a counted warning, or dropped with `drop_duplicates`. A prompt that alone leaves no room
    under `max_length` is a length budget, not bad data: the pair is skipped with a counted warning. Every skipped
    row is written to `skipped_path` (JSONL: source, field, kind, reason).
    Returns (kept examples, their TokenizedPairs in the same order, stats)."""
    c = check_file(path, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                   prompt_delimiter=prompt_delimiter, split=split, columns=columns,
                   drop_duplicates=drop_duplicates, chat_kwargs=chat_kwargs)
    if c.invalid and not skip_invalid:
        raise DataError(summarize_issues(c.invalid, rows=c.rows, path=path)
                        + "\n\nFix these rows, or pass --skip-invalid to train on the valid rows only "
                          "(the others are written to skipped.jsonl).")
    skipped = c.invalid + (c.duplicates if drop_duplicates else []) + c.too_long
    if not c.examples:
        msg = summarize_issues(skipped, rows=c.rows, path=path) if skipped else f"{path}: no rows"
        raise DataError(f"no valid preference pairs in {path}\n{msg}")
    if skipped_path is not None and (skip_invalid or skipped):
        write_skipped(skipped_path, skipped)
    for line in _warnings(path, c, drop_duplicates, max_length):
        log(line)
    first_kind: dict[str, str] = {}  # each skipped row counted once, under its first issue's kind
    for i in skipped:
        if i.kind != "empty_file":
            first_kind.setdefault(i.source, i.kind)
    stats = {"rows": c.rows, "valid": len(c.examples), "skipped": len(first_kind),
             "skipped_by_kind": dict(Counter(first_kind.values())), "duplicates": len(c.duplicates),
             "format": format_name(c.formats), **pair_stats(c.pairs)}
    return c.examples, c.pairs, stats


def _warnings(path: str, c: CheckedData, drop_duplicates: bool, max_length: int) -> list[str]:
    out = []
    if c.duplicates:
        what = "dropped (--drop-duplicates)" if drop_duplicates else \
            "kept, as TRL does; --drop-duplicates removes them"
        out.append(f"warning: {path}: {len(c.duplicates)} duplicate pairs {what}; first: {c.duplicates[0].source} "
                   f"({c.duplicates[0].message})")
    if c.too_long:
        out.append(f"warning: {path}: skipped {len(c.too_long)} pairs whose prompt alone leaves no room under "
                   f"--max-length {max_length} (first: {c.too_long[0].source}); raise --max-length, or set "
                   "--max-prompt-length to keep the end of each prompt")
    return out
