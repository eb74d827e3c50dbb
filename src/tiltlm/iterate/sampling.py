"""Prompts in, seeded completions out: what `tilt generate` and every round of `tilt iterate` sample with.

Sampling is batched `model.generate` (left padding, the KV cache) under one seed set before the first batch, so
the same model, prompts, options and seed give the same completions, token for token. A completion's text is
what extends its prompt: for a plain-text prompt `prompt + completion` decodes to the whole sequence (so a pairs
file built from it tokenises back the way it was sampled); for a chat prompt it is the assistant's message.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..types import as_text


@dataclass
class Completion:
    prompt_index: int
    sample: int  # which of the prompt's n samples
    prompt: Any  # as given: a string, or a list of chat messages
    prompt_text: str  # as the model saw it (chat template applied)
    prompt_ids: list[int]
    completion: str
    completion_ids: list[int]  # generated ids, up to and including EOS when one was generated
    finished: bool  # EOS was generated (else max_new_tokens cut it)
    chat: bool  # the prompt went through the chat template

    def to_dict(self) -> dict:
        return {"prompt_index": self.prompt_index, "sample": self.sample, "prompt": self.prompt,
                "completion": self.completion, "tokens": len(self.completion_ids), "finished": self.finished}


def read_prompts(path: str) -> list[Any]:
    """Prompts from .jsonl ({"prompt": text or messages} per line), .json (a list) or plain text (one a line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file {path} not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif p.suffix == ".json":
        rows = json.loads(text)
    else:
        return [line for line in text.splitlines() if line.strip()]
    return [r["prompt"] if isinstance(r, dict) else r for r in rows]


def uses_chat(tokenizer, use_chat_template: bool = True) -> bool:
    return bool(use_chat_template and getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: Any, use_chat_template: bool = True) -> tuple[list[int], str]:
    """Token ids (and text) of a prompt: through the chat template when the tokenizer has one."""
    if uses_chat(tokenizer, use_chat_template):
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids, text
    prompt = as_text(prompt)
    return tokenizer(prompt).input_ids, prompt


def load_reward_fn(spec: str) -> Callable[[str, str], float]:
    """'module:function' -> a callable (prompt, completion) -> float. One-argument functions get the completion."""
    if ":" not in spec:
        raise ConfigError(f"a reward function is given as module:function, got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load the reward function {spec}: {e}") from None
    try:
        n_args = len([p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty])
    except (TypeError, ValueError):
        n_args = 1
    return (lambda p, c: float(fn(p, c))) if n_args >= 2 else (lambda p, c: float(fn(c)))


def _continuation(tokenizer, prompt_ids: list[int], new: list[int], prompt_text: str) -> str:
    """The text that extends the prompt's text: decode(prompt + new) minus decode(prompt) (word-level and BPE
    tokenizers differ in whether the first new word carries its space)."""
    full = tokenizer.decode(prompt_ids + new, skip_special_tokens=True)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    if full.startswith(head):
        return full[len(head):]
    return tokenizer.decode(new, skip_special_tokens=True)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Any], *, n: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 8,
             use_chat_template: bool = True) -> list[list[Completion]]:
    """`n` samples per prompt, one list per prompt in prompt order. Temperature 0 is greedy."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    chat = uses_chat(tokenizer, use_chat_template)
    rendered = [render_prompt(tokenizer, p, use_chat_template) for p in prompts]
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if temperature > 0 else \
        dict(do_sample=False)
    torch.manual_seed(seed)
    out: list[list[Completion]] = [[] for _ in prompts]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        seqs = [rendered[i][0] for i, _ in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):  # left padding for decoder-only generation
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=eos, use_cache=True, **sampling)
        for r, (i, j) in enumerate(chunk):
            new = gen[r, width:].tolist()
            finished = eos in new
            if finished:
                new = new[:new.index(eos) + 1]
            body = new[:-1] if finished else new
            pids, ptext = rendered[i]
            text = tokenizer.decode(body, skip_special_tokens=True) if chat else \
                _continuation(tokenizer, pids, body, ptext)
            out[i].append(Completion(i, j, prompts[i], ptext, pids, text, new, finished, chat))
    return out


@torch.no_grad()
def sequence_logps(model, samples: Sequence, *, batch_size: int = 256) -> torch.Tensor:
    """log pi(y|x) summed over each sample's completion tokens (anything with prompt_ids and completion_ids);
    shape (N,), float32."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        rows = [list(s.prompt_ids) + list(s.completion_ids) for s in chunk]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        comp = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (s, row) in enumerate(zip(chunk, rows)):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            comp[r, len(s.prompt_ids):len(row)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out.append((logp * comp[:, 1:]).sum(-1))
    return torch.cat(out) if out else torch.zeros(0)
