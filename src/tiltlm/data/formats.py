"""Normalise raw rows in TRL's four preference formats into `PreferenceExample`s.

standard/explicit         {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
standard/implicit         {"chosen": "The sky is blue.", "rejected": "The sky is green."}
conversational/explicit   {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}
conversational/implicit   {"chosen": [full conversation], "rejected": [full conversation]}

Extra columns are ignored. Implicit prompts are split off here (see `split_implicit_text`). A string `prompt` next
to full conversations (HuggingFaceH4/ultrafeedback_binarized) is ignored as TRL's extract_prompt does: the shared
leading messages are the prompt. `Columns` maps other column names onto prompt/chosen/rejected, and a system
column's text becomes the conversation's first (system) message (Intel/orca_dpo_pairs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..types import PreferenceExample
from .issues import RowIssue

DEFAULT_DELIMITER = "\n\nAssistant:"
_ROLE = re.compile(r"^(prompt|chosen|rejected)")
FORMATS = ("standard/explicit", "standard/implicit", "conversational/explicit", "conversational/implicit")


@dataclass(frozen=True)
class Columns:
    """Which columns of a row hold the prompt, the two responses and (optionally) a system prompt."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    system: Optional[str] = None

    def renamed(self) -> dict[str, str]:
        """{column in the file: the role it plays}, for the columns that are not the default names."""
        given = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        out = {col: role for role, col in given.items() if col != role}
        if self.system:
            out[self.system] = "system"
        return out


DEFAULT_COLUMNS = Columns()


def _is_messages(v: Any) -> bool:
    return isinstance(v, list)


def _check_messages(source: str, field: str, msgs: list) -> Optional[RowIssue]:
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            return RowIssue(source, f"{field}[{j}]", "wrong_type",
                            f"a message must be an object with role and content, got {type(m).__name__}")
        for key in ("role", "content"):
            if key == "content" and m.get("content") is None and m.get("tool_calls"):
                continue  # an assistant turn that only calls tools (TRL's tool-calling format)
            if key not in m or m[key] is None:
                return RowIssue(source, f"{field}[{j}].{key}", "missing_field", f"message has no {key!r}")
            if not isinstance(m[key], str):
                return RowIssue(source, f"{field}[{j}].{key}", "wrong_type",
                                f"message {key} must be a string, got {type(m[key]).__name__}")
    return None


TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # kept for the chat template (TRL's tool-calling format)


def _clean(msgs: list) -> list[dict]:
    """Keep role and content, and the tool-calling keys when set (other keys, such as Arrow's null columns,
    are dropped)."""
    return [{"role": m["role"], "content": m.get("content") or "",
             **{k: m[k] for k in TOOL_KEYS if m.get(k) is not None}} for m in msgs]


def row_tools(source: str, row: dict) -> Union[Optional[list], RowIssue]:
    """The `tools` column (JSON schemas, or their JSON text): passed to the chat template's `tools`, as TRL."""
    tools = row.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            return RowIssue(source, "tools", "wrong_type", "tools must be a list of JSON schemas (or its JSON text)")
    if not isinstance(tools, list):
        return RowIssue(source, "tools", "wrong_type", f"tools must be a list, got {type(tools).__name__}")
    return tools


def split_implicit_text(chosen: str, rejected: str, delimiter: Optional[str] = None) -> Optional[int]:
    """Character position where the shared prompt ends, or None if no split leaves two non-empty completions.

    1. If the common prefix contains the turn marker (`delimiter`, default "\\n\\nAssistant:"), cut right after
       its last occurrence, so completions start with the assistant's reply (" Sure...").
    2. Otherwise cut at the end of the common prefix, backing off so that no word is split, the prompt does
       not end in whitespace (the completion carries the leading space, as in TRL's " blue."), and both
       completions are non-empty (handles one text being a prefix of the other).
    """
    lcp = len(os.path.commonprefix([chosen, rejected]))
    marker = delimiter if delimiter else DEFAULT_DELIMITER
    k = chosen.rfind(marker, 0, lcp)
    if k >= 0 and k + len(marker) <= lcp:
        cut = k + len(marker)
        if cut < len(chosen) and cut < len(rejected):
            return cut
        return None

    def ok(c: int) -> bool:
        if c >= len(chosen) or c >= len(rejected):
            return False
        if chosen[c - 1].isspace():
            return False
        for t in (chosen, rejected):
            if t[c - 1].isalnum() and t[c].isalnum():
                return False
        return True

    c = lcp
    while c > 0 and not ok(c):
        c -= 1
    return c if c > 0 else None


def row_to_example(index: int, source: str, row: dict, *, prompt_delimiter: Optional[str] = None,
                   columns: Columns = DEFAULT_COLUMNS) -> Union[tuple[PreferenceExample, str], RowIssue]:
    """Build a PreferenceExample (and its format name) from one raw row, or return the first RowIssue."""
    cols = {"prompt": columns.prompt, "chosen": columns.chosen, "rejected": columns.rejected}
    for key in ("chosen", "rejected"):
        col = cols[key]
        if col not in row or row[col] is None:
            have = ", ".join(sorted(map(str, row))) or "none"
            return RowIssue(source, col, "missing_field", f"no {col!r} field (fields present: {have})")
        if not isinstance(row[col], (str, list)):
            return RowIssue(source, col, "wrong_type",
                            f"{col} must be a string or a list of messages, got {type(row[col]).__name__}")
    system = row.get(columns.system) if columns.system else None
    if system is not None and not isinstance(system, str):
        return RowIssue(source, columns.system, "wrong_type", f"the system prompt must be a string, got "
                                                              f"{type(system).__name__}")
    out = _to_example(index, source, row[cols["chosen"]], row[cols["rejected"]], row.get(cols["prompt"]),
                      prompt_delimiter)
    if isinstance(out, RowIssue):  # name the file's column, not the role it plays
        out.field = _ROLE.sub(lambda m: cols[m.group(1)], out.field)
        return out
    tools = row_tools(source, row)
    if isinstance(tools, RowIssue):
        return tools
    if tools:
        if not out[0].conversational:
            return RowIssue(source, "tools", "wrong_type", "a tools column needs conversational rows (messages)")
        out = (dataclasses.replace(out[0], tools=tools), out[1] + "+tools")
    if not columns.system:
        return out
    return with_system(out[0], system or ""), out[1] + "+system"


def with_system(ex: PreferenceExample, system: str) -> PreferenceExample:
    """The example as a conversation (rendered by the chat template) that opens with `system` when it is not
    blank: plain text becomes a user turn and two assistant turns, so every row of a file with a system column
    is rendered the same way, with or without its system text. A prompt that opens with a system message keeps
    its own."""
    head = [{"role": "system", "content": system}] if system.strip() else []
    if ex.conversational:
        prompt = list(ex.prompt)
        if prompt and prompt[0]["role"] == "system":
            head = []
        return PreferenceExample(ex.index, ex.source, head + prompt, ex.chosen, ex.rejected, conversational=True,
                                 tools=ex.tools)
    return PreferenceExample(ex.index, ex.source, head + [{"role": "user", "content": ex.prompt}],
                             [{"role": "assistant", "content": ex.chosen}],
                             [{"role": "assistant", "content": ex.rejected}], conversational=True)


def _to_example(index: int, source: str, chosen, rejected, prompt, prompt_delimiter: Optional[str]
                ) -> Union[tuple[PreferenceExample, str], RowIssue]:
    if prompt is not None and not isinstance(prompt, (str, list)):
        return RowIssue(source, "prompt", "wrong_type",
                        f"prompt must be a string or a list of messages, got {type(prompt).__name__}")
    conv = _is_messages(chosen)
    if conv and _is_messages(rejected) and isinstance(prompt, str):
        if chosen[:1] == rejected[:1] and chosen[:1]:
            prompt = None  # ultrafeedback_binarized: full conversations + the prompt's text; TRL ignores the text
        else:  # responses only: the text is the user's turn
            prompt = [{"role": "user", "content": prompt}]
    for key, val in (("rejected", rejected), ("prompt", prompt)):
        if val is not None and _is_messages(val) != conv:
            kind = "a list of messages" if conv else "a string"
            return RowIssue(source, key, "wrong_type",
                            f"{key} must be {kind} like chosen (mixing plain text and messages)")
    if conv:
        for key, val in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if val is not None:
                issue = _check_messages(source, key, val)
                if issue:
                    return issue
        chosen, rejected = _clean(chosen), _clean(rejected)
        if prompt is not None:
            ex = PreferenceExample(index, source, _clean(prompt), chosen, rejected, conversational=True)
            return ex, "conversational/explicit"
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if chosen == rejected:  # identical conversations: the last message is the "completion" of both
            n = len(chosen) - 1 if chosen else 0
        if n == 0 or n >= len(chosen) or n >= len(rejected):
            return RowIssue(source, "chosen", "no_distinct_completion",
                            "chosen and rejected must share leading messages and each continue with its own "
                            f"messages (they share {n} of {len(chosen)}/{len(rejected)} messages)")
        ex = PreferenceExample(index, source, chosen[:n], chosen[n:], rejected[n:], conversational=True)
        return ex, "conversational/implicit"
    if prompt is not None:
        return PreferenceExample(index, source, prompt, chosen, rejected), "standard/explicit"
    if not os.path.commonprefix([chosen, rejected]):
        return RowIssue(source, "prompt", "empty_prompt",
                        "no prompt field and chosen/rejected share no common prefix to use as the prompt")
    cut = split_implicit_text(chosen, rejected, prompt_delimiter)
    if cut is None:
        return RowIssue(source, "chosen", "no_distinct_completion",
                        "cannot split the shared prompt so that chosen and rejected each keep a non-empty "
                        "completion (is one text a prefix of the other?)")
    ex = PreferenceExample(index, source, chosen[:cut], chosen[cut:], rejected[cut:])
    return ex, "standard/implicit"
