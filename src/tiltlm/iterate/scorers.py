"""Scorers: what turns a round's completions into numbers, chosen with one option (`--scorer`).

    fn:MODULE:FUNCTION   a Python function (prompt, completion) -> float, or completion -> float (as `tilt generate`
                         takes it with --reward-fn)
    rm:MODEL             a reward model (AutoModelForSequenceClassification: a local folder or a hub name), batched,
                         in the run's precision; the score is its first logit
    judge[:MODEL]        an LM judge: a causal LM reads a prompt template (a file you can edit, --judge-template)
                         that asks for a score from a list of labels ("1".."5"); the score is the expected label
                         under the judge's next-token distribution restricted to the labels (one forward per
                         completion, no sampling, so it replays exactly). Without MODEL the judge is the policy of
                         the round itself, as in Self-Rewarding LMs (Yuan et al. 2024).

Every scorer is called as `scorer(completions, policy=...)` and returns one float per completion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..errors import ConfigError
from ..model.loading import DTYPES, load_model, load_tokenizer, split_model_path
from ..types import as_text
from .sampling import Completion, load_reward_fn, uses_chat

DEFAULT_JUDGE_TEMPLATE = Path(__file__).with_name("judge_template.txt")
DEFAULT_LABELS = ("1", "2", "3", "4", "5")


class FunctionScorer:
    kind = "function"

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_reward_fn(spec)

    def __call__(self, completions: Sequence[Completion], policy=None, tokenizer=None) -> list[float]:
        return [self.fn(c.prompt_text, c.completion) for c in completions]


def _as_messages(c: Completion) -> list[dict]:
    prompt = c.prompt if isinstance(c.prompt, list) else [{"role": "user", "content": as_text(c.prompt)}]
    return [*prompt, {"role": "assistant", "content": c.completion}]


class RewardModelScorer:
    """A sequence classifier's first logit for prompt + completion: the conversation through the reward model's
    own chat template when it has one and the prompt was a chat prompt, else the plain text prompt + completion."""

    kind = "reward_model"

    def __init__(self, path: str, *, dtype: str = "float32", device: torch.device = torch.device("cpu"),
                 batch_size: int = 16, autocast: Optional[torch.dtype] = None):
        from transformers import AutoModelForSequenceClassification

        folder, _ = split_model_path(path)
        self.tokenizer = load_tokenizer(path)
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=DTYPES[dtype]).to(device)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load a reward model (AutoModelForSequenceClassification) from {path}: "
                              f"{str(e).splitlines()[0]}") from None
        if self.model.config.pad_token_id is None:  # it finds each row's last token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        self.device, self.batch_size, self.autocast = device, batch_size, autocast

    def text(self, c: Completion) -> str:
        if c.chat and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(_as_messages(c), tokenize=False)
        return as_text(c.prompt_text) + c.completion

    @torch.no_grad()
    def __call__(self, completions: Sequence[Completion], policy=None, tokenizer=None) -> list[float]:
        scores: list[float] = []
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            for start in range(0, len(completions), self.batch_size):
                texts = [self.text(c) for c in completions[start:start + self.batch_size]]
                enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    logits = self.model(**enc).logits
                scores.extend(float(x) for x in logits[:, 0].float().cpu())
        finally:
            self.tokenizer.padding_side = side
        return scores


class JudgeScorer:
    """An LM judge. The template is text with {prompt} and {completion}; it is sent as a user message through the
    judge's chat template when it has one, else as plain text, and the judge's next token is read off."""

    kind = "judge"

    def __init__(self, model_path: Optional[str] = None, *, template: Optional[str] = None,
                 labels: Sequence[str] = DEFAULT_LABELS, dtype: str = "float32",
                 device: torch.device = torch.device("cpu"), batch_size: int = 16):
        path = Path(template) if template else DEFAULT_JUDGE_TEMPLATE
        try:
            self.template = path.read_text(encoding="utf-8").rstrip("\n")  # the answer follows the last line
        except OSError as e:
            raise ConfigError(f"cannot read the judge template {path}: {e.strerror or e}") from None
        try:
            self.template.format(prompt="", completion="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"the judge template {path} may only use {{prompt}} and {{completion}} (double other "
                              f"braces): {e!r}") from None
        self.model_path, self.labels, self.batch_size = model_path, list(labels), batch_size
        self.values = [float(v) for v in self.labels]
        self.model = load_model(model_path, dtype=dtype, device=device) if model_path else None
        self.tokenizer = load_tokenizer(model_path) if model_path else None

    def label_ids(self, tokenizer) -> list[int]:
        ids = []
        for label in self.labels:
            toks = tokenizer(label, add_special_tokens=False).input_ids
            if len(toks) != 1 or toks[0] == tokenizer.unk_token_id:
                raise ConfigError(f"the judge label {label!r} is not one token of the judge's tokenizer "
                                  f"({toks}); choose labels that are (--judge-labels)")
            ids.append(toks[0])
        return ids

    def rendered(self, tokenizer, c: Completion) -> list[int]:
        text = self.template.format(prompt=as_text(c.prompt if not isinstance(c.prompt, list) else
                                                   c.prompt[-1].get("content", "")), completion=c.completion)
        if uses_chat(tokenizer):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False).input_ids
        return tokenizer(text).input_ids

    @torch.no_grad()
    def __call__(self, completions: Sequence[Completion], policy=None, tokenizer=None) -> list[float]:
        model, tok = (self.model, self.tokenizer) if self.model is not None else (policy, tokenizer)
        if model is None or tok is None:
            raise ConfigError("the LM judge has no model: give judge:MODEL, or let the policy judge itself")
        label_ids = torch.tensor(self.label_ids(tok))
        values = torch.tensor(self.values, dtype=torch.float64)
        device = next(model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.eval()
        scores: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            rows = [self.rendered(tok, c) for c in completions[start:start + self.batch_size]]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):  # left padding: every row's last position is its next-token slot
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1].float().cpu()
            probs = torch.softmax(logits[:, label_ids].double(), dim=-1)
            scores.extend(float(x) for x in probs @ values)
        return scores


def make_scorer(spec: str, *, dtype: str = "float32", device: torch.device = torch.device("cpu"),
                batch_size: int = 16, autocast: Optional[torch.dtype] = None, judge_template: Optional[str] = None,
                judge_labels: Optional[Sequence[str]] = None) -> Any:
    """`fn:module:function` | `rm:MODEL` | `judge` | `judge:MODEL` (a bare `module:function` is a function too)."""
    kind, _, rest = spec.partition(":")
    if kind == "rm":
        if not rest:
            raise ConfigError("--scorer rm:MODEL needs the reward model's folder or hub name")
        return RewardModelScorer(rest, dtype=dtype, device=device, batch_size=batch_size, autocast=autocast)
    if kind == "judge":
        labels = list(judge_labels) if judge_labels else list(DEFAULT_LABELS)
        try:
            [float(v) for v in labels]
        except ValueError:
            raise ConfigError(f"judge labels must be numbers (they are the scores), got {labels}") from None
        return JudgeScorer(rest or None, template=judge_template, labels=labels, dtype=dtype, device=device,
                           batch_size=batch_size)
    if kind == "fn":
        return FunctionScorer(rest)
    if rest:
        return FunctionScorer(spec)
    raise ConfigError(f"--scorer {spec!r}: expected fn:MODULE:FUNCTION, rm:MODEL, judge or judge:MODEL")


def finite(scores: Sequence[float], where: str) -> list[float]:
    bad = [k for k, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise ConfigError(f"the scorer returned a non-finite score for {len(bad)} {where} (first: #{bad[0]})")
    return list(scores)
