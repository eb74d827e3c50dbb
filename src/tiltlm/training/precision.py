"""Mixed precision, TRL's meaning: `--bf16` / `--fp16` keep fp32 master weights and run the model's forward (and so
its backward) under torch.autocast; log-prob sums, logsumexp and the loss stay in fp32 (core/logps.py upcasts the
logits, the loss runs outside autocast).

* `Precision`   -- (model/precision.py) which dtype the forward computes in: part of the one scoring path
                   (model/scoring.py) through which the policy, the reference pass, a live reference and evaluation
                   all compute in the same precision (the reference cache key names it).
* `LossScaler`  -- fp16's dynamic loss scaling: small gradients would underflow fp16, so the loss is multiplied by
                   `scale`; gradients are divided by it before clipping; an overflow skips the step and halves the
                   scale, `growth_interval` good steps in a row double it (torch.amp.GradScaler's rule, written out
                   so the loop, not a wrapper around the optimizer, decides and counts skipped steps).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..model.precision import Precision, half_precision_warning

__all__ = ["LossScaler", "Precision", "half_precision_warning"]



class LossScaler:
    """Dynamic loss scaling for fp16 (a no-op scale of 1 when `enabled` is False)."""

    INIT_SCALE = 2.0 ** 16  # torch.amp.GradScaler's default

    def __init__(self, enabled: bool, growth_interval: int = 2000, factor: float = 2.0):
        self.enabled = enabled
        self.scale = self.INIT_SCALE if enabled else 1.0
        self.growth_interval, self.factor = growth_interval, factor
        self.good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    @torch.no_grad()
    def unscale_(self, params: Sequence[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if self.enabled and grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, overflow: bool) -> None:
        """After each step: halve on an overflow, double after `growth_interval` good steps in a row."""
        if not self.enabled:
            return
        if overflow:
            self.scale /= self.factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"loss_scale": self.scale, "loss_scale_good_steps": self.good_steps} if self.enabled else {}

    def load_state_dict(self, d: dict) -> None:
        if self.enabled and "loss_scale" in d:
            self.scale, self.good_steps = float(d["loss_scale"]), int(d.get("loss_scale_good_steps", 0))
