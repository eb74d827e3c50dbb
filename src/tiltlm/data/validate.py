"""Semantic checks on normalised examples: empty texts, identical responses, roles, duplicates, prompt length."""

from __future__ import annotations

import json
from typing import Optional, Sequence

from ..types import PreferenceExample
from .issues import RowIssue
from .tokenize import tokenize_examples

ROLES = ("system", "user", "assistant", "tool")
# allowed role transitions after an optional leading system message
_NEXT = {None: ("user",), "user": ("assistant",), "assistant": ("user", "tool"), "tool": ("tool", "assistant")}


def _text_of(v) -> str:
    if isinstance(v, str):
        return v
    return "".join(m.get("content") or "" for m in v)


def _role_issues(ex: PreferenceExample) -> list[RowIssue]:
    out: list[RowIssue] = []
    for field, msgs in (("prompt", ex.prompt), ("chosen", ex.chosen), ("rejected", ex.rejected)):
        for j, m in enumerate(msgs):
            if m["role"] not in ROLES:
                out.append(RowIssue(ex.source, f"{field}[{j}].role", "unknown_role",
                                    f"role {m['role']!r} is not one of {', '.join(ROLES)}"))
                return out
    for field, comp in (("chosen", ex.chosen), ("rejected", ex.rejected)):
        if comp and comp[0]["role"] != "assistant":
            out.append(RowIssue(ex.source, f"{field}[0].role", "non_alternating",
                                f"a completion must start with an assistant message, got {comp[0]['role']!r}"))
            return out
        conv = list(ex.prompt) + list(comp)
        prev = None
        for j, m in enumerate(conv):
            role = m["role"]
            where = f"prompt[{j}]" if j < len(ex.prompt) else f"{field}[{j - len(ex.prompt)}]"
            if role == "system":
                if j != 0:
                    out.append(RowIssue(ex.source, f"{where}.role", "non_alternating",
                                        "a system message is only allowed as the first message"))
                    return out
                continue
            if role not in _NEXT[prev]:
                after = f"after {prev!r}" if prev else "as the first non-system message"
                out.append(RowIssue(ex.source, f"{where}.role", "non_alternating",
                                    f"role {role!r} {after}: user and assistant turns must alternate"))
                return out
            prev = role
    return out


def _key(ex: PreferenceExample) -> str:
    return json.dumps([ex.prompt, ex.chosen, ex.rejected], ensure_ascii=False, sort_keys=True)


def check_example(ex: PreferenceExample) -> list[RowIssue]:
    """Row-local checks (no tokenizer, no other rows)."""
    out: list[RowIssue] = []
    if not _text_of(ex.prompt).strip():
        out.append(RowIssue(ex.source, "prompt", "empty_prompt", "the prompt is empty"))
    for field in ("chosen", "rejected"):
        val = getattr(ex, field)
        if (not val) or not _text_of(val).strip():
            out.append(RowIssue(ex.source, field, "empty_response", f"{field} is empty (or only whitespace)"))
    if ex.chosen == ex.rejected:
        out.append(RowIssue(ex.source, "rejected", "identical_responses",
                            "chosen and rejected are identical: the pair carries no preference"))
    if ex.conversational:
        out.extend(_role_issues(ex))
    return out


def validate_examples(examples: Sequence[PreferenceExample], *, tokenizer=None, max_length: Optional[int] = None,
                      max_prompt_length: Optional[int] = None) -> list[RowIssue]:
    """All semantic issues of `examples`; with a tokenizer and max_length also `prompt_too_long`."""
    issues: list[RowIssue] = []
    seen: dict[str, str] = {}
    bad: set[int] = set()
    for ex in examples:
        row = check_example(ex)
        k = _key(ex)
        if k in seen:
            row.append(RowIssue(ex.source, "chosen", "duplicate_pair",
                                f"same prompt/chosen/rejected as {seen[k]}"))
        else:
            seen[k] = ex.source
        if row:
            bad.add(ex.index)
        issues.extend(row)
    if tokenizer is not None and max_length is not None:
        _, tok_issues = tokenize_examples([e for e in examples if e.index not in bad], tokenizer,
                                          max_length=max_length, max_prompt_length=max_prompt_length)
        issues.extend(tok_issues)
    return issues
