"""Load a local Hugging Face causal LM (folder or .gguf file) and its tokenizer; fingerprint it for caches."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch

from safetensors import SafetensorError

from ..errors import ConfigError, first_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def split_model_path(path: str) -> tuple[str, Optional[str]]:
    """'dir/model.gguf' -> ('dir', 'model.gguf'); a folder -> (folder, None). Errors are user mistakes."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json (expected a Hugging Face model folder "
                              "saved with save_pretrained, or a .gguf file)")
        return str(p), None
    if not p.exists():
        raise ConfigError(f"model not found: {path} (tiltlm loads local folders and .gguf files only; "
                          "nothing is downloaded)")
    raise ConfigError(f"model path {path} is neither a model folder nor a .gguf file")


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder, gguf = split_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"cannot load a tokenizer from {path}: {first_line(e)}") from None
    return with_pad_token(tok, path)


def with_pad_token(tok, name: str):
    """`tok`, given EOS as its pad token when it has none (padding is always masked out: any id works, EOS is the
    convention, as in TRL)."""
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ConfigError(f"the tokenizer of {name} has neither a pad token nor an EOS token: set pad_token in "
                              "its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, *, dtype: str = "float32", device: str | torch.device = "cpu",
               trust_remote_code: bool = False, attn_implementation: str = "sdpa") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    folder, gguf = split_model_path(path)
    kwargs = dict(gguf_file=gguf, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn_implementation, **kwargs)
        except ValueError as e:  # architectures without SDPA support
            if "scaled_dot_product_attention" not in str(e):
                raise
            model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:  # missing / truncated weights ...
        raise ConfigError(f"cannot load the model from {path}: {first_line(e)}") from None
    if gguf is not None:
        # transformers dequantises GGUF weights to `dtype` on load but keeps a gguf "quantizer" marker that makes
        # save_pretrained refuse; the weights are plain tensors now, so the trained model is saved as safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    disable_dropout(model)
    return model.to(device)


def disable_dropout(model: torch.nn.Module) -> None:
    """DPO compares the policy with a frozen reference: dropout would make the two differ at step 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)


def fingerprint(path: str) -> str:
    """Content hash of a model: config + weights (sha256 over file bytes). Used to key the reference cache."""
    p = Path(path).expanduser()
    files = [p] if p.is_file() else sorted(
        f for f in p.iterdir() if f.suffix in (".json", ".safetensors", ".bin", ".gguf", ".model")
        and not f.name.startswith("trainer_state"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]
