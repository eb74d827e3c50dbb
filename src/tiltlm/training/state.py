"""The small pieces of state the training loop carries from step to step, each a named helper.

* `LoopState`  -- where the run is (step, pairs seen, skipped steps); saved in every checkpoint as
                  loop_state.json, so a resumed run continues exactly.
* `NonfiniteGuard` -- a step with a non-finite loss or gradient is skipped; too many in a row stop the run (an fp16
                    step whose loss is finite but whose scaled gradients overflowed is loss scaling at work: it is
                    skipped and counted as `overflow_steps`, and does not count towards stopping).
* `StopSignals` -- SIGINT/SIGTERM ask the loop to stop after the current step (it then checkpoints).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Optional

from ..errors import TrainingError
from .precision import LossScaler


@dataclass
class LoopState:
    step: int = 0
    pairs_seen: int = 0
    nonfinite_total: int = 0
    overflow_total: int = 0  # fp16 steps skipped because the scaled gradients overflowed (the scale then halves)
    scaler: LossScaler = field(default_factory=lambda: LossScaler(enabled=False))

    def to_dict(self) -> dict:
        """The loop_state.json record (flat keys, as checkpoints have always stored them)."""
        return {"step": self.step, "pairs_seen": self.pairs_seen, "nonfinite_total": self.nonfinite_total,
                "overflow_total": self.overflow_total,
                **self.scaler.state_dict()}

    def precision_metrics(self) -> dict:
        """fp16 only: the loss scale and the overflow-skipped steps so far (metric names of TRL's fp16 runs)."""
        return {"loss_scale": self.scaler.scale, "overflow_steps": self.overflow_total} if self.scaler.enabled else {}

    @classmethod
    def from_dict(cls, d: dict, scaler: LossScaler) -> "LoopState":
        scaler.load_state_dict(d)
        return cls(step=int(d["step"]), pairs_seen=int(d["pairs_seen"]), nonfinite_total=int(d["nonfinite_total"]),
                   overflow_total=int(d.get("overflow_total", 0)), scaler=scaler)


class NonfiniteGuard:
    """Counts updates skipped for a non-finite loss or gradient (the schedule still moves, so step numbers stay
    aligned); `limit` of them in a row is a TrainingError that says what to try."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def passed(self) -> None:
        self.in_a_row = 0

    def skipped(self, state: LoopState, pair_indices: list[int], log) -> None:
        self.in_a_row += 1
        state.nonfinite_total += 1
        log(f"warning: step {state.step + 1}: non-finite loss or gradient; update skipped (pairs {pair_indices})")
        if self.in_a_row >= self.limit:
            raise TrainingError(f"{self.in_a_row} consecutive non-finite steps at step {state.step + 1}: lower the "
                                "learning rate, use float32, or check the pairs listed above")


class StopSignals:
    """`with StopSignals() as stop:` -- SIGINT/SIGTERM set `stop.signal` instead of killing the process, so the
    loop can finish its step and write a checkpoint; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal is not None


__all__ = ["LoopState", "NonfiniteGuard", "StopSignals"]
