"""`tilt data check FILE`: validate a preference data file and print a summary of its problems."""

from __future__ import annotations

import argparse
import sys

from ..data.issues import summarize_issues
from ..data.prepare import check_file, format_name, pair_stats
from ..errors import ConfigError, DataError
from ..model.loading import load_tokenizer


def add_cli(subparsers) -> None:
    """Register `tilt data check FILE [--model PATH_OR_GGUF] [--max-length N] ...` on an argparse subparsers."""
    data = subparsers.add_parser("data", help="inspect and validate preference data files")
    data_sub = data.add_subparsers(dest="data_command", metavar="{check}")
    data_sub.required = True
    check = data_sub.add_parser(
        "check", help="validate every row; exit 0 if clean, 1 if there are problems",
        description="Validate a preference data file (JSONL, JSON, Parquet, CSV/TSV, or a datasets folder) "
                    "in any of TRL's four preference formats. Prints a table of issue kinds with the first "
                    "offending file:line and field. With --model, also tokenises and checks prompt length.")
    check.add_argument("file", help="data file or saved datasets folder")
    check.add_argument("--model", default=None, help="HF model folder or .gguf file whose tokenizer to use")
    check.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=1024,
                       help="prompt + completion tokens per sequence (with --model; default 1024)")
    check.add_argument("--max-prompt-length", "--max_prompt_length", dest="max_prompt_length", type=int,
                       default=None)
    check.add_argument("--prompt-delimiter", "--prompt_delimiter", dest="prompt_delimiter", default=None,
                       help='implicit-prompt split marker (default: auto, "\\n\\nAssistant:")')
    check.add_argument("--all", dest="examples_per_kind", action="store_const", const=10**9, default=1,
                       help="list every offending row, not just the first of each kind")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        tokenizer = None
        if args.model:
            tokenizer = _tokenizer(args.model)
        examples, pairs, issues, rows, formats = check_file(
            args.file, tokenizer, max_length=args.max_length if tokenizer is not None else None,
            max_prompt_length=args.max_prompt_length, prompt_delimiter=args.prompt_delimiter)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: {rows} rows, {len(examples)} valid, format {format_name(formats)}", file=out)
    if pairs:
        st = pair_stats(pairs)
        tk = st["tokens"]
        print(f"tokens (mean / p95 / max): prompt {tk['prompt']['mean']:.0f} / {tk['prompt']['p95']:.0f} / "
              f"{tk['prompt']['max']}, chosen {tk['chosen']['mean']:.0f} / {tk['chosen']['p95']:.0f} / "
              f"{tk['chosen']['max']}, rejected {tk['rejected']['mean']:.0f} / {tk['rejected']['p95']:.0f} / "
              f"{tk['rejected']['max']}; truncated at max_length={args.max_length}: {st['truncated']}; "
              f"chosen longer than rejected: {st['chosen_longer_frac']:.0%}", file=out)
    if not issues:
        print("no problems found", file=out)
        return 0
    print(summarize_issues(issues, rows=rows, path=args.file, examples_per_kind=args.examples_per_kind), file=out)
    return 1


def _tokenizer(path: str):
    """The model's tokenizer, its failures reported as a DataError (this command's error type)."""
    try:
        return load_tokenizer(path)
    except ConfigError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/... for a bad folder
        raise DataError(f"cannot load a tokenizer from {path}: {e}") from None
