"""Tokenise preference pairs with exact prompt/completion boundaries.

The FULL texts (prompt+chosen, prompt+rejected) are tokenised jointly; `prompt_ids` is the longest common
prefix of the two full token sequences, capped so it never reaches past the prompt's own tokens (we compare
with the prompt-only tokenisation: a shared token prefix decodes to a prefix of the prompt). The completions
are the rest, so ``prompt_ids + chosen_ids`` IS the tokenisation of the full chosen text: a token that a BPE
merge spreads across the boundary (e.g. prompt "The answer is " + "42") belongs to the completion.

Plain text: BOS is prepended only if the tokenizer adds one by default (never twice); EOS is appended unless
the completion already ends with it. Conversational: the chat template renders the prompt (with the generation
prompt) and prompt+completion; those strings are tokenised with add_special_tokens=False (the template already
holds its specials), and nothing is added.

Truncation (only when prompt + completion > max_length): first, if `max_prompt_length` is set and the prompt is
longer, the prompt keeps its END (the part nearest the answer, as TRL does; a leading BOS is kept); then each
sequence keeps its first `max_length` tokens (the completion's tail is cut). A completion must keep >= 1 token,
otherwise the pair is a `prompt_too_long` issue.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..types import PreferenceExample, TokenizedPair
from ..errors import DataError, first_line
from .issues import RowIssue


class PromptTooLong(DataError):
    """The prompt alone leaves no room for a completion within max_length."""


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def adds_bos(tokenizer) -> bool:
    """True if the tokenizer prepends BOS by default (e.g. Llama), False otherwise (e.g. SmolLM2, GPT-2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_sp = list(tokenizer("a")["input_ids"])
    without = _encode(tokenizer, "a")
    return len(with_sp) > len(without) and with_sp[0] == bos


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def render_chat(ex: PreferenceExample, tokenizer, chat_kwargs: Optional[dict] = None) -> tuple[str, str, str]:
    """(prompt with generation prompt, prompt+chosen, prompt+rejected) rendered by the chat template;
    `chat_kwargs` (e.g. enable_thinking=False) are the template's extra variables."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the data is conversational (lists of messages) but the tokenizer has no chat template; "
                        "use a chat/instruct model's tokenizer, pass --chat-template FILE, or convert the data "
                        "to plain text")
    kw = dict(chat_kwargs or {})
    if ex.tools:
        kw["tools"] = ex.tools
    try:
        p = tokenizer.apply_chat_template(list(ex.prompt), add_generation_prompt=True, tokenize=False, **kw)
        c = tokenizer.apply_chat_template(list(ex.prompt) + list(ex.chosen), tokenize=False, **kw)
        r = tokenizer.apply_chat_template(list(ex.prompt) + list(ex.rejected), tokenize=False, **kw)
    except Exception as e:  # noqa: BLE001 - jinja2 errors, the template's own raise_exception(...)
        raise DataError(f"{ex.source}: the chat template cannot render this pair: {type(e).__name__}: "
                        f"{first_line(e)}") from None
    return p, c, r


def _texts(ex: PreferenceExample, tokenizer, chat_kwargs: Optional[dict] = None) -> tuple[str, str, str]:
    if ex.conversational:
        return render_chat(ex, tokenizer, chat_kwargs)
    return ex.prompt, ex.prompt + ex.chosen, ex.prompt + ex.rejected


def _add_specials(ex: PreferenceExample, tokenizer, ids_p: list, ids_c: list, ids_r: list, bos: bool):
    if ex.conversational:  # the chat template already holds every special token
        return ids_p, ids_c, ids_r
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos and bos_id is not None:
        ids_p, ids_c, ids_r = ([bos_id] + x if not x or x[0] != bos_id else x for x in (ids_p, ids_c, ids_r))
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is not None:
        ids_c, ids_r = (x + [eos_id] if not x or x[-1] != eos_id else x for x in (ids_c, ids_r))
    return ids_p, ids_c, ids_r


def full_token_ids(ex: PreferenceExample, tokenizer, *, bos: Optional[bool] = None,
                   chat_kwargs: Optional[dict] = None) -> tuple[list, list, list]:
    """Untruncated (prompt-only, full chosen, full rejected) ids, with the BOS/EOS policy of the module doc."""
    p, c, r = _texts(ex, tokenizer, chat_kwargs)
    return _add_specials(ex, tokenizer, _encode(tokenizer, p), _encode(tokenizer, c), _encode(tokenizer, r),
                         adds_bos(tokenizer) if bos is None else bos)


def _split(ex: PreferenceExample, tokenizer, ids_p: list, ids_c: list, ids_r: list, *, max_length: int,
           max_prompt_length: Optional[int]) -> TokenizedPair:
    k = min(_lcp(ids_c, ids_r), _lcp(ids_p, ids_c), _lcp(ids_p, ids_r), len(ids_c) - 1, len(ids_r) - 1)
    k = max(k, 0)
    prompt, chosen, rejected = ids_c[:k], ids_c[k:], ids_r[k:]
    truncated = False
    if len(prompt) + max(len(chosen), len(rejected)) > max_length:
        truncated = True
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            bos_id = getattr(tokenizer, "bos_token_id", None)
            if prompt and prompt[0] == bos_id and bos_id is not None and not ex.conversational:
                keep = max(max_prompt_length - 1, 0)
                prompt = [prompt[0]] + (prompt[-keep:] if keep else [])
            else:
                prompt = prompt[-max_prompt_length:] if max_prompt_length > 0 else []
        room = max_length - len(prompt)
        if room < 1:
            raise PromptTooLong(f"the prompt alone is {len(prompt)} tokens, max_length is {max_length}: "
                                "no room left for the completion (raise --max-length or set --max-prompt-length)")
        chosen, rejected = chosen[:room], rejected[:room]
    return TokenizedPair(index=ex.index, prompt_ids=list(prompt), chosen_ids=list(chosen),
                         rejected_ids=list(rejected), truncated=truncated)


def tokenize_pair(ex: PreferenceExample, tokenizer, *, max_length: int, max_prompt_length: Optional[int] = None,
                  chat_kwargs: Optional[dict] = None, _bos: Optional[bool] = None) -> TokenizedPair:
    """Exact-boundary TokenizedPair of one example (see module doc). Raises PromptTooLong / DataError."""
    ids_p, ids_c, ids_r = full_token_ids(ex, tokenizer, bos=_bos, chat_kwargs=chat_kwargs)
    return _split(ex, tokenizer, ids_p, ids_c, ids_r, max_length=max_length, max_prompt_length=max_prompt_length)


def tokenize_examples(examples: Sequence[PreferenceExample], tokenizer, *, max_length: int,
                      max_prompt_length: Optional[int] = None, chat_kwargs: Optional[dict] = None,
                      batch_size: int = 256) -> tuple[list[TokenizedPair], list[RowIssue]]:
    """Tokenise many examples; pairs whose prompt is too long become `prompt_too_long` RowIssues."""
    bos = adds_bos(tokenizer)
    pairs: list[TokenizedPair] = []
    issues: list[RowIssue] = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        texts = [t for ex in chunk for t in _texts(ex, tokenizer, chat_kwargs)]
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"]  # one batched call (fast tokenizers)
        for j, ex in enumerate(chunk):
            ids = _add_specials(ex, tokenizer, list(enc[3 * j]), list(enc[3 * j + 1]), list(enc[3 * j + 2]), bos)
            try:
                pairs.append(_split(ex, tokenizer, *ids, max_length=max_length, max_prompt_length=max_prompt_length))
            except PromptTooLong as e:
                issues.append(RowIssue(ex.source, "prompt", "prompt_too_long", str(e)))
    return pairs, issues
