"""A tiny Llama-style causal LM and its supervised fine-tuning (SFT) on the task's neutral reviews."""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Optional

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass


def make_tiny_model(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A freshly initialised LlamaForCausalLM sized for the task's ~100-word vocabulary (~0.1M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def sft(
    model,
    tokenizer,
    texts: list[str],
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Next-token training on `texts` (each encoded as <bos> text <eos>); returns {"loss", "steps", "seconds"}.

    AdamW, linear warm-up over 5% of the steps then cosine decay; pad positions are ignored in the loss.
    """
    t0 = time.time()
    enc = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    model.train()
    loss_val = float("nan")
    for step in range(steps):
        idx = torch.randint(len(enc), (batch_size,), generator=gen).tolist()
        rows = [enc[i] for i in idx]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = out.loss.detach().item()
        if log is not None and (step + 1) % max(1, steps // 4) == 0:
            log(f"  sft step {step + 1}/{steps}  loss {loss_val:.3f}")
    model.eval()
    return {"loss": loss_val, "steps": steps, "seconds": time.time() - t0}
