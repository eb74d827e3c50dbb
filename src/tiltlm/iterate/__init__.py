"""Iterative on-policy DPO (`tilt iterate`, `tiltlm.iterate`): rounds of sample -> score -> pair -> DPO, each round
an ordinary training run in its own folder, replayable from its seed. See loop.py for the run folder."""

from .loop import IterateResult, iterate, run_iterate
from .options import IterateOptions

__all__ = ["iterate", "run_iterate", "IterateResult", "IterateOptions"]
