"""Parameter-efficient DPO with LoRA adapters (peft): the adapter, its reference, its files.

* `apply` wraps the policy in a peft LoRA adapter (`--lora-r R`), or loads an existing adapter to continue
  training (`--lora-adapter DIR`). Only the adapter's parameters require gradients.
* The reference is the SAME model, never a second copy in memory (`reference_weights` switches to it):
    - fresh adapter: the base model = the policy with the adapter disabled; LoRA's B matrices start at zero, so at
      step 0 the wrapped policy and the base model agree exactly, which is what the precomputed cache scores;
    - continuing an adapter (or TR-DPO): a frozen copy of the starting adapter, loaded a second time under the
      name "reference" (adapter weights only: a few MB) and switched on for the reference forward.
* The chunked log-prob path calls the backbone directly (core.logps.backbone_of unwraps peft); LoRA layers are
  injected into the Linear modules themselves, so they are applied there too (tested).
* `save` writes adapter_model.safetensors + adapter_config.json, and with `merge` the merged full model to
  PATH/merged (loadable with AutoModelForCausalLM.from_pretrained).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..errors import ConfigError
from .loading import fingerprint as model_fingerprint

REF_ADAPTER = "reference"


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def apply(model: torch.nn.Module, *, r: int, alpha: float, dropout: float, target_modules: Optional[Sequence[str]],
          modules_to_save: Optional[Sequence[str]] = None, use_rslora: bool = False, use_dora: bool = False,
          disable_dropout: bool = True, adapter: Optional[str] = None, reference_adapter: bool = False,
          log: Callable = print) -> torch.nn.Module:
    """`model` wrapped in a new LoRA adapter of rank `r` (TRL's get_peft_config: bias "none", CAUSAL_LM;
    target_modules None = peft's default for the architecture), or in the peft adapter at `adapter` (trainable).

    `disable_dropout` (TRL's default): the adapter's dropout is switched off too, as TRL's DPOTrainer does after
    wrapping. `reference_adapter`: also keep a frozen copy of the starting adapter as the reference (continuing
    an adapter, or TR-DPO, which needs reference weights to mix the policy into)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter:
        model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()), is_trainable=True)
    else:
        targets = None if target_modules is None else \
            "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
        lc = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM",
                        bias="none", modules_to_save=list(modules_to_save) if modules_to_save else None,
                        use_rslora=use_rslora, use_dora=use_dora)
        try:
            model = get_peft_model(model, lc)
        except ValueError as e:  # peft knows no default target modules for this architecture
            raise ConfigError(f"LoRA: {e} (pass --lora-target-modules, e.g. all-linear)") from None
    if disable_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    if adapter or reference_adapter:
        add_reference_adapter(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"LoRA: training {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)")
    return model


def add_reference_adapter(model) -> None:
    """A frozen copy of the "default" adapter, named "reference"."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    model.add_adapter(REF_ADAPTER, model.peft_config["default"])
    state = get_peft_model_state_dict(model, adapter_name="default")
    set_peft_model_state_dict(model, state, adapter_name=REF_ADAPTER)
    model.set_adapter("default")  # keeps "reference" frozen, "default" trainable
    for name, p in model.named_parameters():
        if f".{REF_ADAPTER}." in name:
            p.requires_grad_(False)


def has_reference_adapter(model) -> bool:
    return REF_ADAPTER in getattr(model, "peft_config", {})


@contextlib.contextmanager
def reference_weights(model) -> Iterator[None]:
    """Run the policy as its reference: the frozen "reference" adapter if there is one, else no adapter."""
    if has_reference_adapter(model):
        model.set_adapter(REF_ADAPTER, inference_mode=True)
        try:
            yield
        finally:
            model.set_adapter("default")
    else:
        with model.disable_adapter():
            yield


@torch.no_grad()
def mix_into_reference_adapter(model, alpha: float) -> None:
    """reference adapter <- alpha * trained adapter + (1 - alpha) * reference adapter (TR-DPO's soft update)."""
    params = dict(model.named_parameters())
    for name, p in params.items():
        if ".default." in name and "lora_" in name:
            params[name.replace(".default.", f".{REF_ADAPTER}.")].mul_(1 - alpha).add_(p.detach(), alpha=alpha)


def adapter_weights(model) -> Optional[dict]:
    """What a checkpoint of a LoRA policy holds: the adapter weights only (trainable, plus the frozen `reference`
    adapter that TR-DPO moves); the base weights never change and are reloaded from --model. None: not peft."""
    if not is_peft(model):
        return None
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad or "lora_" in n}


def fingerprint(base_fingerprint: str, adapter: Optional[str]) -> str:
    """Reference-cache key part: the base model's fingerprint, plus the adapter's bytes when continuing one."""
    if not adapter:
        return base_fingerprint
    return hashlib.sha256(f"{base_fingerprint}|{model_fingerprint(adapter)}".encode()).hexdigest()[:16]


def save(policy, path: Path, tokenizer, merge: bool, log: Callable = print) -> None:
    """Write the adapter (and with `merge` the merged model under PATH/merged)."""
    policy.save_pretrained(str(path), safe_serialization=True, selected_adapters=["default"])
    if merge:
        # in place (the run is over): no second full copy in memory
        if has_reference_adapter(policy):
            policy.delete_adapter(REF_ADAPTER)
        merged = policy.merge_and_unload()
        merged.save_pretrained(str(path / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(path / "merged"))
        log(f"saved the merged model to {path / 'merged'}")


__all__ = ["REF_ADAPTER", "is_peft", "apply", "add_reference_adapter", "has_reference_adapter", "reference_weights",
           "mix_into_reference_adapter", "adapter_weights", "fingerprint", "save"]
