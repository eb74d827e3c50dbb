"""Which attention rule each layer of a model follows, read from its config, and the hook that gives every layer
its own mask in prefix-shared and packed rows.

A model passes one attention mask down its layers. For plain padded rows it builds the per-layer masks itself
(causal, sliding window, chunked) from a 2D padding mask. For shared and packed rows we hand it a prepared 4D mask,
which transformers uses as given for every layer: a sliding-window layer would then attend without its window. So
each attention module whose layer has a rule of its own gets a forward pre-hook that swaps the mask for the same
batch's mask under that rule (`ModelBatch.attention_mask(..., rule)`, reached through the mask's `tiltlm_for_rule`).
The swap happens inside the module call, so recomputation under activation checkpointing sees it too.

The rules come from the config, not from a list of model names: `layer_types` ("full_attention",
"sliding_attention", "chunked_attention", or a recurrent / linear-attention kind), else `sliding_window` on every
layer (Mistral, Phi-3, Starcoder2), and `attention_chunk_size` for chunked layers. Token mixers that are not
attention (state-space, recurrent, linear attention) carry state from one token to the next, so a shared row would
run the chosen branch's state into the rejected one: `stateful_mixers` names them, and the scoring path then uses
plain rows. The start-up check (model/scoring.py) still compares every fast path with the plain forward, so a rule
read wrongly here turns the fast path off instead of training on wrong numbers.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from ..core.batching import FULL, LayerRule

ATTENTION_KINDS = ("full_attention", "sliding_attention", "chunked_attention")
# module classes that mix tokens through a running state rather than attention (the mixer itself, not the blocks,
# norms and models named after the architecture)
_STATEFUL = re.compile(r"Mamba|GatedDeltaNet|LinearAttention|LightningAttention|ShortConv|Recurrent|Rwkv|RWKV|"
                       r"LSTM|Lstm|SSM|Ssm|Retention|Hyena|Rglru|Mixer$")
_CONTAINER = re.compile(r"(ForCausalLM|Model|PreTrainedModel|Norm|RMSNorm|Block|DecoderLayer|Layer|Cache|"
                        r"Embeddings?|Output)$|FeedForward|Mlp|MLP|Moe|MoE|Expert")
# layer-type names of token mixers with a running state (others name attention kinds, MLPs or MoE blocks)
_STATEFUL_KIND = re.compile(r"mamba|linear|recurren|rwkv|conv|ssm|lstm|delta|retention|hyena|rnn", re.I)
_HOOKED = "_tiltlm_layer_rules"


def text_config(model: torch.nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _int(x) -> Optional[int]:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) and x > 0 else None


def rule_of(module: torch.nn.Module, config) -> Optional[LayerRule]:
    """The rule of one attention module (it has a `layer_idx`); None when its layer type is not attention."""
    config = getattr(module, "config", None) or config
    types = getattr(config, "layer_types", None)
    idx = getattr(module, "layer_idx", None)
    kind = types[idx] if isinstance(types, (list, tuple)) and isinstance(idx, int) and idx < len(types) else None
    window = _int(getattr(module, "sliding_window", None)) or _int(getattr(config, "sliding_window", None))
    if kind is None:  # no per-layer types: a configured window applies to every layer (Mistral, Phi-3, Starcoder2)
        uses_window = getattr(config, "use_sliding_window", True) is not False
        return LayerRule(window=window) if window and uses_window else FULL
    if kind == "sliding_attention":
        return LayerRule(window=window)
    if kind == "chunked_attention":
        return LayerRule(chunk=_int(getattr(config, "attention_chunk_size", None)))
    return FULL if kind == "full_attention" else None


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The self-attention modules of the decoder: an integer `layer_idx` and a class name ending in Attention."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "layer_idx", None), int) and type(m).__name__.endswith("Attention")]


def stateful_mixers(model: torch.nn.Module) -> list[str]:
    """Names of the token-mixing kinds that carry a state across tokens (layer types or module classes)."""
    config = text_config(model)
    kinds = {t for t in getattr(config, "layer_types", None) or [] if isinstance(t, str) and _STATEFUL_KIND.search(t)}
    kinds |= {type(m).__name__ for _, m in model.named_modules()
              if _STATEFUL.search(type(m).__name__) and not _CONTAINER.search(type(m).__name__)}
    return sorted(kinds)


def layer_rules(model: torch.nn.Module) -> dict[LayerRule, int]:
    """How many attention layers follow each rule (for the log line and the tests)."""
    return _count(_module_rules(model))


def _module_rules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, LayerRule]]:
    config = text_config(model)
    return [(m, rule) for _, m in attention_modules(model) if (rule := rule_of(m, config)) is not None]


def _count(pairs: list[tuple[torch.nn.Module, LayerRule]]) -> dict[LayerRule, int]:
    out: dict[LayerRule, int] = {}
    for _, rule in pairs:
        out[rule] = out.get(rule, 0) + 1
    return out


def install(model: torch.nn.Module) -> dict[LayerRule, int]:
    """Hook every attention module whose rule is not plain causal attention (idempotent). Returns layer_rules."""
    pairs = _module_rules(model)
    if not getattr(model, _HOOKED, False):
        for module, rule in pairs:
            if rule != FULL:
                module.register_forward_pre_hook(_swap_mask(rule), with_kwargs=True)
        setattr(model, _HOOKED, True)
    return _count(pairs)


def _swap_mask(rule: LayerRule):
    def hook(module, args, kwargs):
        pick = getattr(kwargs.get("attention_mask"), "tiltlm_for_rule", None)
        if pick is None:  # a plain padded batch: the model built this layer's own mask
            return None
        return args, {**kwargs, "attention_mask": pick(rule)}

    return hook


def describe(rules: dict[LayerRule, int]) -> str:
    return ", ".join(f"{n} x {rule.describe()}" for rule, n in rules.items()) or "no attention layers found"
