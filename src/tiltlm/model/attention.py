"""Which attention kernel a loaded model uses, and tiltlm's FlexAttention hook into transformers.

The choice is made once, when a model is loaded (`resolve`), never in the training loop:

* CUDA, `auto`: FLEX, an attention function registered in transformers' `AttentionInterface`. It runs
  FlexAttention (compiled once) when the batch hands it a BlockMask -- prefix-shared and packed rows, whose mask
  (`core.batching.may_attend`) is block-sparse, so fully masked 128x128 blocks are skipped -- and SDPA otherwise:
  a plain padded batch keeps SDPA's causal kernel.
* CPU, `auto`: `sdpa`; shared and packed rows get the same rule as a dense 4D boolean mask. (FlexAttention has a CPU
  forward -- eager, unfused -- but no CPU backward in torch 2.13, so it cannot train there; tests use its forward.)
* `sdpa` / `eager` / `flex_attention` (= FLEX) when asked for explicitly (`--attn-implementation`).

Our own hook rather than transformers' `flex_attention` implementation: that one compiles flex_attention on every
device (CPU compilation is slow and, in torch 2.13, wrong for lengths that are not a multiple of the block size),
always passes a score_mod (a known source of NaN gradients with a block mask and such lengths, pytorch#153799), and
sends plain padded batches through a flex mask instead of SDPA's causal kernel.
"""

from __future__ import annotations

import torch

FLEX = "tiltlm_flex"  # the name our hook is registered under in transformers' AttentionInterface
CHOICES = ("auto", "sdpa", "eager", "flex_attention")

_compiled_flex = None


def resolve(requested: str, device) -> str:
    """The attention implementation to load a model with, for `requested` (one of CHOICES) on `device`."""
    if requested == "auto":
        requested = "flex_attention" if torch.device(device).type == "cuda" else "sdpa"
    if requested == "flex_attention":
        register()
        return FLEX
    return requested


def settle(model: torch.nn.Module) -> str:
    """After loading: an architecture whose forward cannot take a BlockMask (transformers' `_supports_flex_attn` is
    False, e.g. GPT-2) keeps SDPA and its dense masks instead of FLEX. Returns the implementation in use."""
    if model.config._attn_implementation == FLEX and not getattr(model, "_supports_flex_attn", False):
        model.set_attn_implementation("sdpa")
    return model.config._attn_implementation


def register() -> None:
    """Make FLEX a valid `attn_implementation` for transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLEX, flex_or_sdpa_attention)
    AttentionMaskInterface.register(FLEX, sdpa_mask)  # a 2D padding mask becomes SDPA's (causal when no padding)


def flex_or_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask, scaling=None, dropout: float = 0.0, softcap=None, **kwargs):
    """transformers' attention-function signature: (B, heads, L, D) inputs -> ((B, L, heads, D) output, None).

    A BlockMask -> FlexAttention; anything else (None, a 4D boolean or additive mask) -> transformers' SDPA."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      softcap=softcap, **kwargs)
    if dropout > 0 or kwargs.get("s_aux") is not None:
        raise ValueError("FlexAttention here supports neither attention dropout nor attention sinks: "
                         "use --attn-implementation sdpa")
    n_rep = query.shape[1] // key.shape[1]
    gqa = n_rep > 1
    if gqa and n_rep & (n_rep - 1):  # the fused kernel shares a KV head among a power-of-two number of query heads
        key, value = (x.repeat_interleave(n_rep, dim=1) for x in (key, value))
        gqa = False
    score_mod = None
    if softcap:  # Gemma 2: attention logits soft-capped before the softmax
        def score_mod(score, b, h, q, kv):
            return softcap * torch.tanh(score / softcap)
    out = flex_kernel(query.device)(query, key, value, score_mod=score_mod, block_mask=attention_mask,
                                    scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def flex_kernel(device: torch.device):
    """flex_attention compiled once (CUDA: the fused Triton kernel that skips masked blocks), or eager on CPU
    (unfused: materialises the scores; forward only, for tests)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex
