"""Load a Hugging Face causal LM (local folder, .gguf file or hub name) and its tokenizer; fingerprint it for caches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch

from safetensors import SafetensorError

from .. import hub
from ..errors import ConfigError, first_line
from . import attention, layer_rules

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_path(path: str, revision: Optional[str] = None) -> Path:
    """A local path as given; a hub name `org/name` -> its snapshot folder in the hub cache (fetched if needed)."""
    return Path(hub.snapshot(path, "model", revision) if hub.is_hub_name(path) else path).expanduser()


def split_model_path(path: str, revision: Optional[str] = None) -> tuple[str, Optional[str]]:
    """'dir/model.gguf' -> ('dir', 'model.gguf'); a folder -> (folder, None); a hub name `org/name` -> (its
    snapshot folder in the hub cache, None). Errors are user mistakes."""
    p = local_path(path, revision)
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json (expected a Hugging Face model folder "
                              "saved with save_pretrained, or a .gguf file)")
        return str(p), None
    if not p.exists():
        raise ConfigError(f"model not found: {path} (a local folder, a .gguf file, or a hub name org/name)")
    raise ConfigError(f"model path {path} is neither a model folder nor a .gguf file")


def load_tokenizer(path: str, *, trust_remote_code: bool = False, revision: Optional[str] = None,
                   chat_template: Optional[str] = None, chat_template_kwargs: Optional[dict] = None):
    """The model's tokenizer (pad = EOS when it has no pad token). `chat_template`: a Jinja file that replaces the
    tokenizer's template; the template in use is rendered once here with `chat_template_kwargs`, so a broken one
    is one clear line before any data is read."""
    from transformers import AutoTokenizer

    folder, gguf = split_model_path(path, revision)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"cannot load a tokenizer from {path}: {first_line(e)}") from None
    return with_chat_template(with_pad_token(tok, path), chat_template, chat_template_kwargs, path)


def with_pad_token(tok, name: str):
    """`tok`, given EOS as its pad token when it has none (padding is always masked out: any id works, EOS is the
    convention, as in TRL)."""
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ConfigError(f"the tokenizer of {name} has neither a pad token nor an EOS token: set pad_token in "
                              "its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


def with_chat_template(tok, chat_template: Optional[str], chat_template_kwargs: Optional[dict], name: str):
    """`tok` with its chat template replaced by the Jinja file `chat_template` (if given), rendered once with
    `chat_template_kwargs` so a broken template is one clear line before any data is read."""
    if chat_template:
        tok.chat_template = _read_template(chat_template)
    if chat_template or chat_template_kwargs:
        check_chat_template(tok, chat_template or f"the chat template of {name}", chat_template_kwargs or {})
    return tok


def _read_template(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"chat template file {path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"chat template file {path} is not UTF-8 text (expected a Jinja template)") from None


def check_chat_template(tok, name: str, kwargs: dict) -> None:
    """Render a two-turn conversation with the template (the user's kwargs included), or raise one line."""
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"--chat-template-kwargs given, but the tokenizer has no chat template ({name})")
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        tok.apply_chat_template(convo, tokenize=False, **kwargs)
        tok.apply_chat_template(convo[:1], tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - jinja2 syntax/undefined/raise_exception errors, bad kwargs
        raise ConfigError(f"{name} does not render: {type(e).__name__}: {first_line(e)}") from None


def checkpoint_dtype(path: str, revision: Optional[str] = None) -> str:
    """`--dtype auto`: the dtype the checkpoint's config.json declares (`dtype`, or the older `torch_dtype`), as
    from_pretrained(dtype="auto") picks it; float32 for a .gguf file or when none of float32/bfloat16/float16 is
    declared."""
    folder, gguf = split_model_path(path, revision)
    config = Path(folder) / "config.json"
    if gguf or not config.is_file():
        return "float32"
    try:
        declared = json.loads(config.read_text())
    except (OSError, ValueError):
        return "float32"
    name = str(declared.get("dtype") or declared.get("torch_dtype") or "float32").removeprefix("torch.")
    return name if name in DTYPES else "float32"


def load_model(path: str, *, dtype: str = "float32", device: str | torch.device = "cpu",
               trust_remote_code: bool = False, attn_implementation: str = "auto",
               revision: Optional[str] = None) -> torch.nn.Module:
    """`attn_implementation`: auto | sdpa | eager | flex_attention, resolved for `device` by model/attention.py
    (auto: FlexAttention for shared/packed rows on CUDA, SDPA otherwise); eager if the architecture has neither."""
    from transformers import AutoModelForCausalLM

    folder, gguf = split_model_path(path, revision)
    kwargs = dict(gguf_file=gguf, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    attn = attention.resolve(attn_implementation, device)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn, **kwargs)
        except ValueError as e:  # an architecture without SDPA (or attention-interface) support
            if attn == "eager" or "attention" not in str(e).lower():
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
    attention.settle(model)
    disable_dropout(model)
    layer_rules.install(model)  # each attention layer's own mask rule in shared and packed rows
    return model.to(device)


def disable_dropout(model: torch.nn.Module) -> None:
    """DPO compares the policy with a frozen reference: any train-mode randomness would make the two differ at
    step 0. Off: every nn.Dropout, and every float rate a module or the config keeps for functional dropout or noise
    (OPT's layers copy `dropout` / `layerdrop` at init, PhiMoE its jitter noise). model/scoring.py then checks that
    a train-mode forward equals an eval-mode one."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_random_rate(name, value):
                setattr(module, name, 0.0)
    configs = [model.config]
    if hasattr(model.config, "get_text_config") and model.config.get_text_config() is not model.config:
        configs.append(model.config.get_text_config())
    for config in configs:
        for name, value in list(vars(config).items()):
            if _is_random_rate(name, value):
                setattr(config, name, 0.0)


def _is_random_rate(name: str, value) -> bool:
    return (isinstance(value, float) and not isinstance(value, bool) and value > 0
            and any(k in name for k in ("dropout", "pdrop", "layerdrop", "jitter")))


def fingerprint(path: str, revision: Optional[str] = None) -> str:
    """Content hash of a model: config, weights and any remote code (sha256 over file bytes). Keys the reference
    cache and the start-up check's verdict. Hashed once per process for unchanged files (a run asks twice)."""
    p = local_path(path, revision)
    files = [p] if p.is_file() else sorted(
        f for f in p.iterdir() if f.suffix in (".json", ".safetensors", ".bin", ".gguf", ".model", ".py")
        and not f.name.startswith("trainer_state"))
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        _FINGERPRINTS[stamp] = h.hexdigest()[:16]
    return _FINGERPRINTS[stamp]


_FINGERPRINTS: dict[tuple, str] = {}
