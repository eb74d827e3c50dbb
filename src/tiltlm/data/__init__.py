"""Preference data: read files, detect TRL's four formats, validate rows, tokenise with exact boundaries.

Public API (used by training and the commands):
    DataError, RowIssue, read_rows, load_examples, validate_examples, tokenize_pair, prepare_dataset,
    Columns, available_splits
"""

from .formats import DEFAULT_COLUMNS, DEFAULT_DELIMITER, FORMATS, Columns, split_implicit_text
from ..errors import DataError
from .issues import ISSUE_KINDS, RowIssue, summarize_issues
from .prepare import CheckedData, check_file, load_examples, prepare_dataset, write_skipped
from .sources import available_splits, read_rows
from .tokenize import PromptTooLong, adds_bos, tokenize_examples, tokenize_pair
from .validate import validate_examples

__all__ = [
    "DataError", "RowIssue", "read_rows", "load_examples", "validate_examples", "tokenize_pair",
    "prepare_dataset", "tokenize_examples", "check_file", "summarize_issues",
    "split_implicit_text", "write_skipped", "PromptTooLong", "adds_bos", "ISSUE_KINDS", "FORMATS",
    "DEFAULT_DELIMITER", "Columns", "DEFAULT_COLUMNS", "CheckedData", "available_splits",
]
