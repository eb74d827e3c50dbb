"""The precision a model computes in: the weights' dtype (--dtype) and the autocast dtype (--bf16 / --fp16).
Part of the one scoring path (model/scoring.py): policy, reference and evaluation all compute under it."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .loading import DTYPES


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype  # how the weights are stored (--dtype)
    compute: Optional[torch.dtype]  # autocast dtype (--bf16 / --fp16), None = compute in the weights' dtype
    device_type: str  # "cpu" | "cuda"

    @classmethod
    def of(cls, dtype: str, mixed_precision: Optional[str], device: torch.device) -> "Precision":
        """From --dtype and the autocast dtype's name (TrainConfig.mixed_precision)."""
        compute = DTYPES[mixed_precision] if mixed_precision else None
        return cls(weights=DTYPES[dtype], compute=compute, device_type=device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    def step_region(self) -> contextlib.AbstractContextManager:
        """Around one optimizer step's forwards and backwards (every micro-batch, every checkpoint recompute):
        one autocast nesting level with autocast itself *off*. Autocast caches its cast of each fp32 weight (a leaf
        that requires grad) until the outermost autocast region exits, so inside this region each weight is cast
        to the compute dtype once per step -- a bf16 compute copy beside the fp32 master, as FSDP2's param_dtype
        keeps one -- instead of once per micro-batch and again in every recompute of a checkpointed block or LM-head
        chunk. The numbers are the same casts, so nothing changes but their count; gradients still flow through
        the cast into the fp32 weights' .grad (fp32 accumulation), and what runs outside autocast (the loss) still
        runs without it. The cache is dropped when the region exits, before the optimizer changes the weights."""
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def wrap(self, fn: Callable) -> Callable:
        """`fn` run under this precision's autocast (its backward then follows autocast's dtypes)."""
        if self.compute is None:
            return fn

        @functools.wraps(fn)
        def under_autocast(*args, **kwargs):
            with self.autocast():
                return fn(*args, **kwargs)

        return under_autocast

    @property
    def tag(self) -> str:
        """Names the numbers this precision produces: part of the reference cache key (e.g. float32+autocast-bfloat16)."""
        name = str(self.weights).removeprefix("torch.")
        return name if self.compute is None else f"{name}+autocast-{str(self.compute).removeprefix('torch.')}"

    def describe(self) -> str:
        if self.compute is None:
            return f"precision: {self.tag} (no autocast)"
        return (f"precision: weights {str(self.weights).removeprefix('torch.')}, forward/backward under "
                f"{str(self.compute).removeprefix('torch.')} autocast; log-probs and loss in float32")


def half_precision_warning(precision: Precision) -> Optional[str]:
    """A CPU without bf16/fp16 matrix instructions runs half-precision matmuls through slow fallback kernels
    (measured on a 2-core AVX2-only EPYC: bf16 1.2 vs fp32 86 GFLOP/s at 512x512): say so instead of letting
    --bf16 be a 70x slowdown. Linux flags only; None when fine or unknown."""
    if precision.device_type != "cpu" or precision.compute is None and precision.weights == torch.float32:
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None
    if flags & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"}:
        return None
    return ("this CPU has no bf16/fp16 matrix instructions (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): "
            "half-precision matmuls run through slow fallback kernels here, often tens of times slower than "
            "float32; drop --bf16/--fp16 and --dtype on this machine")
