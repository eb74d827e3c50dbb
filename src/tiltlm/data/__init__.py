"""Preference data: read files, detect TRL's four formats, validate rows, tokenise with exact boundaries.

Public API (used by train.py and cli.py):
    DataError, RowIssue, read_rows, load_examples, validate_examples, tokenize_pair, prepare_dataset, add_cli
"""

from .cli import add_cli
from .formats import DEFAULT_DELIMITER, FORMATS, split_implicit_text
from .issues import ISSUE_KINDS, DataError, RowIssue, summarize_issues
from .prepare import check_file, load_examples, prepare_dataset, write_skipped
from .readers import read_rows
from .tokenize import PromptTooLong, adds_bos, load_tokenizer, tokenize_examples, tokenize_pair
from .validate import validate_examples

__all__ = [
    "DataError", "RowIssue", "read_rows", "load_examples", "validate_examples", "tokenize_pair",
    "prepare_dataset", "add_cli", "tokenize_examples", "load_tokenizer", "check_file", "summarize_issues",
    "split_implicit_text", "write_skipped", "PromptTooLong", "adds_bos", "ISSUE_KINDS", "FORMATS",
    "DEFAULT_DELIMITER",
]
