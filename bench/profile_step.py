"""Time (and optionally torch.profile) tiltlm training steps in one process, for A/B decisions.

    python bench/profile_step.py --bf16 --steps 3                    # s/step of the current code
    python bench/profile_step.py --bf16 --profile 1 --top 25         # + the op table of one step
    python bench/profile_step.py --bf16 --set gradient_checkpointing=false --set packing=true
    python bench/profile_step.py --set torch_compile=true            # compiled blocks: setup includes the compile

Uses the benchmark's inputs (bench/.cache, built by bench_dpo.py) and tiltlm's own setup and step functions; the
figures are for choosing between variants run back to back, not for the benchmark tables."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cast_once(on: bool, s) -> None:
    """on: the current code (each weight cast once per step); off: the cast per call and per recompute, as before
    Precision.step_region existed."""
    import contextlib

    from tiltlm.model.precision import Precision

    class PerCallCasts(Precision):
        def step_region(self):
            return contextlib.nullcontext()

    s.precision = (Precision if on else PerCallCasts)(**s.precision.__dict__)


def _checkpoint_half(on: bool, s) -> None:
    """on: the first half of the decoder layers checkpointed (as --activation-memory-budget picks them); off: all."""
    from tiltlm.model.checkpointing import checkpoint_first, decoder_layers

    n = len(decoder_layers(s.model))
    checkpoint_first(s.model, n // 2 if on else n)


def _torch_compile(on: bool, s) -> None:
    """on: the compiled decoder blocks (run with --set torch_compile=true); off: the same blocks' eager forward, in
    the same process (the same load on a shared machine)."""
    blocks = [m for m in s.model.modules() if "forward" in m.__dict__ or m in _COMPILED]
    for m in blocks:
        _COMPILED.setdefault(m, m.__dict__.get("forward"))
        if on:
            m.forward = _COMPILED[m]
        else:
            m.__dict__.pop("forward", None)
    assert blocks, "--ab torch_compile needs --set torch_compile=true"


_COMPILED: dict = {}
AB = {"cast_once": _cast_once, "torch_compile": _torch_compile,  # lever name -> fn(on, setup) switching it
      "checkpoint_half": _checkpoint_half}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step")
    ap.add_argument("--profile", type=int, default=0, help="profile this many steps after the measured ones")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ab", choices=sorted(AB), help="alternate steps with this lever off / on (same process)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE TrainConfig override (repeatable)")
    a = ap.parse_args(argv)

    import bench_dpo
    import torch

    from tiltlm.config import coerce, load_config
    from tiltlm.core.batching import step_pairs
    from tiltlm.parallel import strategy as strategies
    from tiltlm.training.loop import loss_hparams
    from tiltlm.training.optim import build_optimizer
    from tiltlm.model.loading import DTYPES
    from tiltlm.training.setup import open_run_dir, setup
    from tiltlm.training.step import backward_step

    torch.set_num_threads(a.threads)
    inputs = bench_dpo.prepare_inputs(["smollm2"], a.pairs)
    work = tempfile.mkdtemp(prefix="tilt-profile-")
    extra = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        extra[k] = coerce(k, v)
    cfg = load_config(overrides=dict(model=inputs["smollm2"], data=inputs["data"], output_dir=f"{work}/run",
                                     per_device_train_batch_size=a.batch_size, max_length=512, learning_rate=1e-6,
                                     beta=0.1, seed=42, progress=False, doctor=False, bf16=a.bf16,
                                     ref_cache_dir=f"{work}/refcache", **extra))
    cfg.validate()
    strategy = strategies.choose(cfg.dist, cfg.device, cfg.ddp_timeout, compute_dtype=DTYPES.get(cfg.mixed_precision))
    t = time.perf_counter()
    with open_run_dir(cfg) as run:
        s = setup(cfg, strategy, run, log=lambda line: print(line) if line.startswith("checkpointing") else None)
    print(f"setup {time.perf_counter() - t:.1f}s (torch_compile {cfg.torch_compile})", flush=True)
    params, optimizer, _ = build_optimizer(s.model, cfg, 100)
    hp = loss_hparams(cfg)
    s.model.train()

    cpu = {}

    def one_step(k: int) -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        pairs = step_pairs(s.train_pairs, k, a.batch_size, cfg.seed)
        with s.precision.step_region():
            backward_step(s, pairs, hp)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        cpu[k] = time.process_time() - c0  # CPU seconds: less sensitive than wall time to a shared machine
        return time.perf_counter() - t0

    if a.ab:
        one_step(0)
        ab = {False: [], True: []}
        for k in range(2 * a.steps):  # off then on, each on the same step's pairs (HH pairs vary in length)
            on = k % 2 == 1
            AB[a.ab](on, s)
            ab[on].append((one_step(k // 2 + 1), cpu[k // 2 + 1]))
        for on in (False, True):
            print(f"{a.ab}={'on' if on else 'off'}: s/step {' '.join(f'{x:.2f}' for x, _ in ab[on])}; "
                  f"best {min(x for x, _ in ab[on]):.2f}; CPU s/step best {min(c for _, c in ab[on]):.2f}",
                  flush=True)
        print(f"load {os.getloadavg()}")
        return 0
    times = [one_step(k) for k in range(a.steps + 1)]
    print(f"s/step {' '.join(f'{x:.2f}' for x in times[1:])} (warm-up {times[0]:.2f}); "
          f"best {min(times[1:]):.2f}; CPU s/step best {min(list(cpu.values())[1:]):.2f}; "
          f"load {os.getloadavg()[0]:.2f}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB",
          flush=True)
    if cfg.torch_compile:
        from torch._dynamo.utils import counters

        # graphs compiled in all (setup's check included); TORCH_LOGS=recompiles names each recompile's reason
        print(f"dynamo: {counters['stats']['unique_graphs']} graphs compiled, frames {dict(counters['frames'])}",
              flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(a.profile):
                one_step(a.steps + 1 + k)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
