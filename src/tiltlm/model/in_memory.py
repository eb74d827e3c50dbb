"""A model handed over in Python (`tiltlm.train(model=...)`): adopt it as the policy, key its reference cache,
and make its frozen reference copy.

The reference-cache key of a folder hashes its files (loading.fingerprint); an in-memory model has no files, so
its key hashes what the files would hold: the config and every tensor of the state dict (name, dtype, shape and
bytes, a peft adapter's included). Two models with the same key compute the same log-probs; any changed weight
gives a new key. It reads every weight once (about a second per 500 MB on CPU), and only when the reference
log-probs are precomputed.
"""

from __future__ import annotations

import copy
import hashlib

import torch

from ..errors import ConfigError
from .loading import DTYPES, disable_dropout


def dtype_name(model) -> str:
    """`float32` | `bfloat16` | `float16`: the dtype an in-memory model trains in (its own)."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_input_embeddings"):
        raise ConfigError(f"model= expects a transformers (or peft) causal LM or a path, got {type(model).__name__}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    names = {v: k for k, v in DTYPES.items()}
    if dtype not in names:
        raise ConfigError(f"the model's parameters are {dtype}; tiltlm trains float32, bfloat16 or float16")
    return names[dtype]


def adopt(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as the policy: dropout off, on `device`. Trained in place: the caller's object is the policy."""
    disable_dropout(model)
    return model.to(device)


@torch.no_grad()
def state_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of an in-memory model: its config and every state-dict tensor (see the module doc)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update((config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else "").encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    return "mem-" + h.hexdigest()[:16]


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The reference: a copy of the policy as it is before training, never updated."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()
