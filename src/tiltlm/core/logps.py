"""Sequence log-probs: log pi(y|x) = sum over completion tokens of log pi(y_t | x, y_<t), always in fp32.

Two exact ways:
* plain   -- the model's full logits (R, L, V), log_softmax, gather: the seed's `response_logprob`.
* chunked -- run the backbone only, pick the hidden states that predict completion tokens, and push them through
             the LM head a chunk at a time (matmul, logsumexp, gather) under activation checkpointing, so the
             (tokens x vocabulary) logits never exist in full -- not in forward, not in backward. Prompt and padding
             positions never touch the LM head at all.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..types import PairLogps, TokenizedPair
from .batching import ModelBatch, collate


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without its LM head (returns final-norm hidden states), e.g. LlamaForCausalLM.model."""
    inner = getattr(model, "get_base_model", None)  # peft wrapper -> the transformers model
    if inner is not None:
        model = inner()
    return getattr(model, model.base_model_prefix)


def logit_transform(config) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Post-LM-head logit transforms some architectures apply inside forward(); we must apply them too."""
    fns = []
    scale = getattr(config, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and scale != 1:
        fns.append(lambda x: x * scale)
    div = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    if isinstance(div, (int, float)) and div != 1:
        fns.append(lambda x: x / div)
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3: cap * tanh(logits / cap)
    if isinstance(cap, (int, float)) and cap > 0:
        fns.append(lambda x: torch.tanh(x / cap) * cap)
    if not fns:
        return None

    def apply(x):
        for f in fns:
            x = f(x)
        return x

    return apply


def _token_logps_chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       labels: torch.Tensor, transform) -> torch.Tensor:
    # fp32 operands; under autocast (--bf16) the product itself runs in bf16, like the plain path's LM head, and
    # its result is upcast so logsumexp and the gathered log-prob are always fp32. linear(), not `@ weight.t()`:
    # autocast caches its cast of the weight itself but never of a view, so this way the head is cast once per step
    # (training/precision.py step_region), not once per chunk and again in each chunk's recompute
    logits = torch.nn.functional.linear(hidden.float(), weight.float()).float()
    if bias is not None:
        logits = logits + bias.float()
    if transform is not None:
        logits = transform(logits)
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_token_logps(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor, *,
                        chunk_size: int = 1024, transform=None) -> torch.Tensor:
    """log softmax(hidden @ W^T)[label] for (T, H) hidden states, `chunk_size` rows at a time.

    Each chunk is checkpointed: only its (chunk, H) input is kept, and its (chunk, V) logits are recomputed in
    backward. Peak extra memory is one chunk of logits instead of T x V.
    """
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start:start + chunk_size], labels[start:start + chunk_size]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            out.append(checkpoint(_token_logps_chunk, h, weight, bias, y, transform, use_reentrant=False))
        else:
            out.append(_token_logps_chunk(h, weight, bias, y, transform))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def token_logps(model: torch.nn.Module, batch: ModelBatch, *, chunked: bool = True,
                chunk_size: int = 1024) -> torch.Tensor:
    """Per-completion-token log-probs (T,), fp32, in the order of batch.labels.

    A function of the plain (unsharded) model; a sharded model runs this same function inside its root unit
    (the training strategy wraps it, see parallel/fsdp.py), so nothing here knows how the model is held."""
    mask = batch.attention_mask(getattr(model.config, "_attn_implementation", "sdpa") or "sdpa",
                                dtype=next(model.parameters()).dtype)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False)
    if not chunked:
        logits = model(**kwargs).logits  # (R, L, V): what the seed's response_logprob materialises
        picked = logits[batch.gather_rows, batch.gather_pos].float()  # (T, V)
        return torch.log_softmax(picked, dim=-1).gather(-1, batch.labels[:, None]).squeeze(-1)
    hidden = backbone_of(model)(**kwargs).last_hidden_state  # (R, L, H), final norm applied
    picked = hidden[batch.gather_rows, batch.gather_pos]  # (T, H): only positions that predict completions
    return chunked_token_logps(picked, model.get_output_embeddings(), batch.labels, chunk_size=chunk_size,
                               transform=logit_transform(model.config))


def sequence_logps(token_lp: torch.Tensor, batch: ModelBatch) -> PairLogps:
    """Sum per-token log-probs into per-sequence sums (and counts) -> PairLogps in batch pair order."""
    n_seq = 2 * batch.num_pairs
    sums = torch.zeros(n_seq, dtype=torch.float32, device=token_lp.device).index_add(0, batch.seq_ids, token_lp)
    counts = torch.bincount(batch.seq_ids, minlength=n_seq).float()
    return PairLogps(chosen=sums[0::2], rejected=sums[1::2], chosen_tokens=counts[0::2], rejected_tokens=counts[1::2])


def completion_logps(model: torch.nn.Module, batch: ModelBatch, *, chunked: bool = True,
                     chunk_size: int = 1024) -> PairLogps:
    return sequence_logps(token_logps(model, batch, chunked=chunked, chunk_size=chunk_size), batch)


@torch.no_grad()
def score_pairs(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, batch_size: int = 8,
                prefix_sharing: bool = True, chunked: bool = True, chunk_size: int = 1024,
                pad_token_id: int = 0, progress=None) -> PairLogps:
    """Log-probs of many pairs under `model` (no grad), returned in the order of `pairs`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(pairs), batch_size):
        batch = collate(pairs[start:start + batch_size], prefix_sharing=prefix_sharing,
                        pad_token_id=pad_token_id).to(device)
        parts.append(completion_logps(model, batch, chunked=chunked, chunk_size=chunk_size))
        if progress is not None:
            progress(len(batch.pair_index))
    model.train(was_training)
    if not parts:
        z = torch.zeros(0)
        return PairLogps(z, z, z, z)
    cat = lambda name: torch.cat([getattr(p, name) for p in parts]).cpu()  # noqa: E731
    return PairLogps(cat("chosen"), cat("rejected"), cat("chosen_tokens"), cat("rejected_tokens"))


def check_fast_path(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, pad_token_id: int = 0,
                    tol: float = 1e-3) -> Optional[str]:
    """Compare the fast layout (prefix-shared, chunked) with the plain path on a few real pairs.

    Run once at start-up so an architecture with an unusual head (a transform we don't know) is caught instead of
    silently training on wrong log-probs. Returns None if they agree, else a message.
    """
    sample = list(pairs[:2])
    if not sample:
        return None
    fast = score_pairs(model, sample, prefix_sharing=True, chunked=True, pad_token_id=pad_token_id)
    plain = score_pairs(model, sample, prefix_sharing=False, chunked=False, pad_token_id=pad_token_id)
    worst = max((fast.chosen - plain.chosen).abs().max().item(), (fast.rejected - plain.rejected).abs().max().item())
    scale = max(1.0, plain.chosen.abs().max().item())
    if not math.isfinite(worst) or worst > tol * scale:
        return (f"fast log-prob path differs from the plain path by {worst:.3g} nats on this model; "
                "falling back to --no-prefix-sharing --no-chunked-logps")
    return None
