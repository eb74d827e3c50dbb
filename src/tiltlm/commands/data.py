"""`tilt data check FILE`: validate a preference data file and print a summary of its problems."""

from __future__ import annotations

import argparse
import sys

from ..config import load_config
from ..data.issues import summarize_issues
from ..data.prepare import check_file, format_name, pair_stats
from ..errors import ConfigError, DataError
from ..model.loading import load_tokenizer
from ..training.setup import data_options

# `tilt train` options that also decide what `tilt data check` reads (same names, same meaning)
TRAIN_OPTIONS = ("revision", "dataset_train_split", "prompt_column", "chosen_column", "rejected_column",
                 "system_column", "chat_template", "chat_template_kwargs")


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
    check.add_argument("file", help="data file, folder (saved DatasetDict, split files) or hub dataset org/name")
    check.add_argument("--model", default=None, help="model folder, .gguf file or hub name whose tokenizer to use")
    check.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None,
                       help="prompt + completion tokens per sequence (with --model; default 1024)")
    check.add_argument("--max-prompt-length", "--max_prompt_length", dest="max_prompt_length", type=int,
                       default=None)
    check.add_argument("--prompt-delimiter", "--prompt_delimiter", dest="prompt_delimiter", default=None,
                       help='implicit-prompt split marker (default: auto, "\\n\\nAssistant:")')
    for name in TRAIN_OPTIONS:
        check.add_argument(f"--{name.replace('_', '-')}", f"--{name}", dest=name, default=None,
                           nargs="+" if name == "chat_template_kwargs" else None, help="as for tilt train")
    check.add_argument("--all", dest="examples_per_kind", action="store_const", const=10**9, default=1,
                       help="list every offending row, not just the first of each kind")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Exit 1 if `tilt train` would refuse the data (malformed rows); duplicates and prompts too long for
    --max-length are warnings, as in training."""
    out = sys.stdout
    try:
        cfg = load_config(None, {name: getattr(args, name) for name in ("max_length", "max_prompt_length",
                                                                         "prompt_delimiter", *TRAIN_OPTIONS)
                                 if getattr(args, name) is not None})
        tokenizer = None
        if args.model:
            tokenizer = _tokenizer(args.model, cfg)
        c = check_file(args.file, tokenizer, max_length=cfg.max_length if tokenizer is not None else None,
                       split=cfg.dataset_train_split, **data_options(cfg))
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: {c.rows} rows, {len(c.examples)} valid, format {format_name(c.formats)}", file=out)
    if c.pairs:
        st = pair_stats(c.pairs)
        tk = st["tokens"]
        print(f"tokens (mean / p95 / max): prompt {tk['prompt']['mean']:.0f} / {tk['prompt']['p95']:.0f} / "
              f"{tk['prompt']['max']}, chosen {tk['chosen']['mean']:.0f} / {tk['chosen']['p95']:.0f} / "
              f"{tk['chosen']['max']}, rejected {tk['rejected']['mean']:.0f} / {tk['rejected']['p95']:.0f} / "
              f"{tk['rejected']['max']}; truncated at max_length={cfg.max_length}: {st['truncated']}; "
              f"chosen longer than rejected: {st['chosen_longer_frac']:.0%}, rejected longer: "
              f"{st['rejected_longer_frac']:.0%}; length difference chosen - rejected: "
              f"{st['length_diff']['mean']:+.1f} ± {st['length_diff']['std']:.1f} tokens", file=out)
    warnings = c.duplicates + c.too_long
    if warnings:
        print("warnings (training keeps duplicates unless --drop-duplicates, and skips prompts too long):\n"
              + summarize_issues(warnings, rows=c.rows, path=args.file, examples_per_kind=args.examples_per_kind),
              file=out)
    if not c.invalid:
        print("no problems found" if not warnings else "no malformed rows", file=out)
        return 0
    print(summarize_issues(c.invalid, rows=c.rows, path=args.file, examples_per_kind=args.examples_per_kind),
          file=out)
    return 1


def _tokenizer(path: str, cfg):
    """The model's tokenizer, its failures reported as a DataError (this command's error type)."""
    try:
        return load_tokenizer(path, revision=cfg.revision, chat_template=cfg.chat_template,
                              chat_template_kwargs=cfg.chat_template_kwargs)
    except ConfigError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/... for a bad folder
        raise DataError(f"cannot load a tokenizer from {path}: {e}") from None
