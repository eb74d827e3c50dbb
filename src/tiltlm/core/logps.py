"""Sequence log-probs: log pi(y|x) = sum over completion tokens of log pi(y_t | x, y_<t), always in fp32.

Two exact ways:
* plain   -- the model's full logits (R, L, V), log_softmax, gather: the seed's `response_logprob`.
* chunked -- run the backbone only, pick the hidden states that predict completion tokens, and push them through
             the LM head a chunk at a time (matmul, logsumexp, gather) under activation checkpointing, so the
             (tokens x vocabulary) logits never exist in full -- not in forward, not in backward. Prompt and padding
             positions never touch the LM head at all.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint

from ..types import PairLogps
from .batching import ModelBatch


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without its LM head (returns final-norm hidden states), e.g. LlamaForCausalLM.model: the model's
    own accessor (`get_decoder`) first, then `base_model_prefix`, then `.model` (Llama-4's prefix is
    "language_model" but its decoder is `.model`)."""
    inner = getattr(model, "get_base_model", None)  # peft wrapper -> the transformers model
    if inner is not None:
        model = inner()
    try:
        decoder = model.get_decoder()
    except AttributeError:
        decoder = None
    for candidate in (decoder, getattr(model, model.base_model_prefix, None), getattr(model, "model", None)):
        # a decoder embeds tokens (ModernBERT's get_decoder() is its output Linear: not one)
        if isinstance(candidate, torch.nn.Module) and candidate is not model and hasattr(candidate,
                                                                                         "get_input_embeddings"):
            return candidate
    raise AttributeError(f"{type(model).__name__}: no decoder module found (get_decoder, base_model_prefix)")


def logit_transform(config) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Post-LM-head logit transforms some architectures apply inside forward(); we must apply them too. (The
    start-up check in model/scoring.py compares the chunked head with the model's own forward, so a transform
    missing here turns the chunked head off instead of training on wrong numbers.)"""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    fns = []
    scale = getattr(config, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and scale != 1:
        fns.append(lambda x: x * scale)
    mult = getattr(config, "lm_head_multiplier", None)  # Falcon-H1: logits * lm_head_multiplier
    if isinstance(mult, (int, float)) and mult != 1:
        fns.append(lambda x: x * mult)
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
    (the training strategy wraps it, see parallel/fsdp.py), so nothing here knows how the model is held.
    Plain padded rows are fed exactly as the model's own forward of one sequence (right padding, a 2D padding mask,
    the model's default positions); shared and packed rows add their 4D mask and restarted position ids."""
    kwargs = dict(input_ids=batch.input_ids, use_cache=False)
    kwargs["attention_mask"] = batch.attention_mask(getattr(model.config, "_attn_implementation", "sdpa") or "sdpa",
                                                    dtype=next(model.parameters()).dtype)
    if batch.shared_segments:
        kwargs["position_ids"] = batch.position_ids
    if not chunked:
        logits = model(**kwargs).logits  # (R, L, V): what the seed's response_logprob materialises
        picked = logits[batch.gather_rows, batch.gather_pos].float()  # (T, V)
        return torch.log_softmax(picked, dim=-1).gather(-1, batch.labels[:, None]).squeeze(-1)
    hidden = backbone_of(model)(**kwargs).last_hidden_state  # (R, L, H), final norm applied
    picked = hidden[batch.gather_rows, batch.gather_pos]  # (T, H): only positions that predict completions
    return chunked_token_logps(picked, model.get_output_embeddings(), batch.labels, chunk_size=chunk_size,
                               transform=logit_transform(model.config))


def completion_positions(seq_ids: torch.Tensor, n_seq: int) -> torch.Tensor:
    """For every completion token (in batch.labels order), its 0-based position within its own completion.

    Every layout lists a sequence's tokens in completion order (core/batching.py), so a token's position is its rank
    among the tokens of its sequence: a stable sort by sequence id, minus where each sequence starts."""
    order = torch.argsort(seq_ids, stable=True)
    counts = torch.bincount(seq_ids, minlength=n_seq)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(seq_ids)
    pos[order] = torch.arange(seq_ids.numel(), device=seq_ids.device) - starts[seq_ids[order]]
    return pos


def sequence_logps(token_lp: torch.Tensor, batch: ModelBatch,
                   log_sum_sq: Optional[torch.Tensor] = None) -> PairLogps:
    """Sum per-token log-probs into per-sequence sums (and counts) -> PairLogps in batch pair order.

    Also the LD-DPO tails: the sums over each completion's tokens past the pair's shared length min(n_w, n_l) (zero
    for the shorter one). With `log_sum_sq` (per token, log sum_v p_v^2: token_log_sum_sq_probs) its per-sequence
    sums, detached, for WPO's weights."""
    n_seq = 2 * batch.num_pairs
    dtype = torch.promote_types(token_lp.dtype, torch.float32)  # fp32 sums (fp64 stays fp64: exact-value tests)
    zeros = lambda: torch.zeros(n_seq, dtype=dtype, device=token_lp.device)  # noqa: E731
    sums = zeros().index_add(0, batch.seq_ids, token_lp.to(dtype))
    counts = torch.bincount(batch.seq_ids, minlength=n_seq).float()
    shared = torch.minimum(counts[0::2], counts[1::2]).repeat_interleave(2)  # per sequence: its pair's shared length
    in_tail = completion_positions(batch.seq_ids, n_seq) >= shared[batch.seq_ids]
    tails = zeros().index_add(0, batch.seq_ids, torch.where(in_tail, token_lp, 0.0).to(dtype))
    sq = None if log_sum_sq is None else zeros().index_add(0, batch.seq_ids, log_sum_sq.detach().to(dtype))
    return PairLogps(chosen=sums[0::2], rejected=sums[1::2], chosen_tokens=counts[0::2], rejected_tokens=counts[1::2],
                     chosen_tail=tails[0::2], rejected_tail=tails[1::2],
                     chosen_log_sum_sq=None if sq is None else sq[0::2],
                     rejected_log_sum_sq=None if sq is None else sq[1::2])


def _log_sum_sq(logits: torch.Tensor) -> torch.Tensor:
    # log sum_v p_v^2 = log sum_v exp(2 z_v) - 2 log sum_v exp(z_v), in fp32
    logits = logits.float()
    return torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def token_log_sum_sq_probs(model: torch.nn.Module, batch: ModelBatch, *, chunked: bool = True,
                           chunk_size: int = 1024) -> torch.Tensor:
    """Per completion token (batch.labels order), log sum_v pi(v | context)^2, fp32, no gradient: WPO's
    normaliser (Zhou et al. 2024, arXiv:2406.11827, Eq. 2, TRL's `log_sum_sq_probs`).

    A separate no-grad forward of the same batch (so --use-weighting costs about one more forward per micro-batch);
    the same LM head, picked positions and logit transforms as token_logps."""
    mask = batch.attention_mask(getattr(model.config, "_attn_implementation", "sdpa") or "sdpa",
                                dtype=next(model.parameters()).dtype)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False)
    if not chunked:
        return _log_sum_sq(model(**kwargs).logits[batch.gather_rows, batch.gather_pos])
    hidden = backbone_of(model)(**kwargs).last_hidden_state[batch.gather_rows, batch.gather_pos]
    head, transform = model.get_output_embeddings(), logit_transform(model.config)
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):  # (chunk, V) logits at a time, as chunked_token_logps
        logits = hidden[start:start + chunk_size].float() @ head.weight.float().t()
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias.float()
        parts.append(_log_sum_sq(logits if transform is None else transform(logits)))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def completion_logps(model: torch.nn.Module, batch: ModelBatch, *, chunked: bool = True,
                     chunk_size: int = 1024) -> PairLogps:
    return sequence_logps(token_logps(model, batch, chunked=chunked, chunk_size=chunk_size), batch)
