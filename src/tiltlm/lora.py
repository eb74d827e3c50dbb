"""Parameter-efficient DPO with LoRA (peft), and TR-DPO reference syncing.

* `apply` wraps the policy in a peft LoRA adapter (`--lora-r R`), or loads an existing adapter to continue
  training (`--lora-adapter DIR`). Only the adapter's parameters require gradients.
* The reference is the SAME model, never a second copy in memory:
    - fresh adapter: the base model = the policy with the adapter disabled (`with model.disable_adapter():`);
      LoRA's B matrices start at zero, so at step 0 the wrapped policy and the base model agree exactly, which is
      what the precomputed cache (the default) scores;
    - continuing an adapter: a frozen copy of that adapter, loaded a second time under the name "reference"
      (adapter weights only: a few MB) and switched on for the reference forward.
* The chunked log-prob path calls the backbone directly (logps.backbone_of unwraps peft); LoRA layers are
  injected into the Linear modules themselves, so they are applied there too (tested).
* `save` writes adapter_model.safetensors + adapter_config.json, and with `--merge-lora` the merged full model
  to OUTPUT_DIR/merged (loadable with AutoModelForCausalLM.from_pretrained).

TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment"): every
`ref_model_sync_steps` steps, theta_ref <- alpha * theta_policy + (1 - alpha) * theta_ref (alpha =
`ref_model_mixup_alpha`; alpha = 1 is the hard update). Needs a live reference (`--no-precompute-ref-log-probs`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import torch

from .config import ConfigError

REF_ADAPTER = "reference"


def enabled(cfg) -> bool:
    return cfg.lora_r > 0 or bool(cfg.lora_adapter)


def validate(cfg) -> None:
    if cfg.lora_r < 0:
        raise ConfigError(f"lora_r must be >= 0 (0 = LoRA off), got {cfg.lora_r}")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    if cfg.merge_lora and not enabled(cfg):
        raise ConfigError("--merge-lora needs --lora-r > 0 or --lora-adapter")
    if cfg.lora_adapter and not (Path(cfg.lora_adapter).expanduser() / "adapter_config.json").is_file():
        raise ConfigError(f"--lora-adapter {cfg.lora_adapter}: no adapter_config.json there (a peft adapter folder)")
    if cfg.dist not in ("ddp", "fsdp"):
        raise ConfigError(f"dist must be ddp or fsdp, got {cfg.dist!r}")
    if cfg.dist == "fsdp" and (enabled(cfg) or cfg.sync_ref_model):
        raise ConfigError("--dist fsdp with LoRA or --sync-ref-model is not supported yet; use --dist ddp "
                          "(a LoRA policy is small: every rank can hold it)")
    if cfg.sync_ref_model:
        if cfg.precompute_ref_log_probs:
            raise ConfigError("--sync-ref-model updates the reference during training, so it cannot be "
                              "precomputed: add --no-precompute-ref-log-probs")
        if not 0.0 < cfg.ref_model_mixup_alpha <= 1.0:
            raise ConfigError(f"ref_model_mixup_alpha must be in (0, 1], got {cfg.ref_model_mixup_alpha}")
        if cfg.ref_model_sync_steps < 1:
            raise ConfigError(f"ref_model_sync_steps must be >= 1, got {cfg.ref_model_sync_steps}")


def apply(cfg, model: torch.nn.Module, log: Callable = print) -> torch.nn.Module:
    """The policy to train: `model` itself, or `model` wrapped in a (new or loaded) LoRA adapter."""
    if not enabled(cfg):
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.lora_adapter:
        model = PeftModel.from_pretrained(model, str(Path(cfg.lora_adapter).expanduser()), is_trainable=True)
    else:
        targets = cfg.lora_target_modules
        targets = "all-linear" if list(targets) == ["all-linear"] else list(targets)
        lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)
    if cfg.lora_adapter or cfg.sync_ref_model:
        # the reference adapter: a frozen copy of the starting adapter (continuing), or of the fresh one (TR-DPO
        # needs reference weights to mix into; a fresh adapter's copy equals the base model exactly)
        add_reference_adapter(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"LoRA: training {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)")
    return model


def add_reference_adapter(model) -> None:
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


def fingerprint(cfg, model_fingerprint: str) -> str:
    """Reference-cache key part: the base model's fingerprint, plus the adapter's bytes when continuing one."""
    if not cfg.lora_adapter:
        return model_fingerprint
    from .models import fingerprint as fp

    return hashlib.sha256(f"{model_fingerprint}|{fp(cfg.lora_adapter)}".encode()).hexdigest()[:16]


class AdapterReference:
    """The reference as the policy itself with its adapter off (or switched to the frozen reference adapter)."""

    def __init__(self, model, *, chunked: bool = True, chunk_size: int = 1024):
        self.model, self.chunked, self.chunk_size = model, chunked, chunk_size

    @torch.no_grad()
    def __call__(self, batch):
        from .logps import completion_logps

        was_training = self.model.training
        self.model.eval()
        try:
            if has_reference_adapter(self.model):
                self.model.set_adapter(REF_ADAPTER, inference_mode=True)
                try:
                    return completion_logps(self.model, batch, chunked=self.chunked, chunk_size=self.chunk_size)
                finally:
                    self.model.set_adapter("default")
            with self.model.disable_adapter():
                return completion_logps(self.model, batch, chunked=self.chunked, chunk_size=self.chunk_size)
        finally:
            self.model.train(was_training)


def live_reference(cfg, policy, ref_model):
    """The live (not precomputed) reference: the adapter-off policy under LoRA, else the separate frozen model."""
    from .reference import LiveReference

    if enabled(cfg) and (ref_model is None or ref_model is policy):
        return AdapterReference(policy, chunked=cfg.chunked_logps, chunk_size=cfg.logps_chunk_size)
    return LiveReference(ref_model, chunked=cfg.chunked_logps, chunk_size=cfg.logps_chunk_size)


def uses_policy_as_reference(cfg) -> bool:
    """Whether no separate reference model is loaded: precompute with the step-0 policy, or LoRA adapter-off."""
    return (cfg.ref_model is None or cfg.ref_model == cfg.model) and (cfg.precompute_ref_log_probs or enabled(cfg))


@torch.no_grad()
def maybe_sync_reference(cfg, policy, reference, step: int) -> bool:
    """TR-DPO: after optimizer step `step` (1-based), mix the policy into the reference when it is due."""
    if not cfg.sync_ref_model or step % cfg.ref_model_sync_steps != 0 or reference is None:
        return False
    a = cfg.ref_model_mixup_alpha
    if isinstance(reference, AdapterReference):
        params = dict(policy.named_parameters())
        for name, p in params.items():
            if ".default." in name and "lora_" in name:
                params[name.replace(".default.", f".{REF_ADAPTER}.")].mul_(1 - a).add_(p.detach(), alpha=a)
        return True
    ref_model = reference.model
    for p_ref, p in zip(ref_model.parameters(), policy.parameters()):
        p_ref.mul_(1 - a).add_(p.detach().to(p_ref.dtype), alpha=a)
    return True


def moving_reference_model(cfg, reference) -> Optional[torch.nn.Module]:
    """The separate reference model that TR-DPO changes during training (it must go into checkpoints), else None.
    (A LoRA reference adapter lives inside the policy and is checkpointed with it.)"""
    if cfg.sync_ref_model and not isinstance(reference, AdapterReference):
        return getattr(reference, "model", None)
    return None


def save(policy, path: Path, tokenizer, merge: bool, log: Callable = print) -> bool:
    """Write the adapter (and the merged model under PATH/merged); False if `policy` is not a peft model."""
    if not hasattr(policy, "peft_config"):
        return False
    policy.save_pretrained(str(path), safe_serialization=True, selected_adapters=["default"])
    if merge:
        # in place (the run is over): no second full copy in memory
        if has_reference_adapter(policy):
            policy.delete_adapter(REF_ADAPTER)
        merged = policy.merge_and_unload()
        merged.save_pretrained(str(path / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(path / "merged"))
        log(f"saved the merged model to {path / 'merged'}")
    return True


def memory_note(model: Optional[torch.nn.Module]) -> dict:
    """Parameter bytes of a (peft) model: trainable vs frozen, for the LoRA memory test and the docs table."""
    tr = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    fr = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return {"trainable_bytes": tr, "frozen_bytes": fr}
