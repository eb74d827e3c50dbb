"""The DPO training loop. `train()` reads top to bottom on one screen: set up, then
step -> micro-batches -> loss -> strategy -> optimizer -> log / eval / save. It never asks which parallel strategy
runs (parallel/strategy.py) or how the reference is computed (setup.py)."""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple, Optional

import torch

from ..config import TrainConfig
from ..core.batching import step_pairs
from ..core.losses import LossHParams
from ..core.metrics import MetricWindow
from ..model.lora import adapter_weights
from ..parallel import comm
from ..parallel import strategy as strategies
from . import checkpoint as ckpt
from . import tr_dpo
from .evaluation import evaluate, finish_run
from .optim import UpdateProbe, build_optimizer, total_steps
from ..model.loading import DTYPES
from .precision import LossScaler
from .reporting import Reporter
from .setup import Inputs, Setup, open_run_dir, setup
from .state import LoopState, NonfiniteGuard, StopSignals
from .step import backward_step


class Trained(NamedTuple):
    metrics: dict  # the final metrics (the last train record and the last eval)
    model: Optional[torch.nn.Module]  # the trained policy; None when a finished run was relaunched
    tokenizer: object


def train(cfg: TrainConfig, log=print) -> dict:
    """Train with `cfg`; returns the final metrics (and writes everything into cfg.output_dir)."""
    return run_training(cfg, log).metrics


def run_training(cfg: TrainConfig, log=print, inputs: Optional[Inputs] = None) -> Trained:
    """Train with `cfg` (and what a Python caller handed over in `inputs`); everything goes into cfg.output_dir."""
    t_setup = time.perf_counter()
    cfg.validate()  # a TrainConfig built in Python gets the same checks as one from flags or YAML
    requested = cfg.to_dict()  # setup may turn fast paths off; a relaunch is compared with what was asked
    strategy = strategies.choose(cfg.dist, cfg.device, cfg.ddp_timeout,  # world size 1 = one process: same code
                                 compute_dtype=DTYPES.get(cfg.mixed_precision))
    log = comm.rank_zero(log)
    with open_run_dir(cfg, inputs) as run:  # holds the folder's lock until the run returns or fails
        done = run.finished_step(requested) if cfg.resume else None
        if done is not None:  # a scheduler relaunching a finished run: nothing to redo, nothing to rewrite
            log(f"{cfg.output_dir}: already finished at step {done}; nothing to do")
            return Trained({"step": done, "already_finished": True}, None, None)
        s = setup(cfg, strategy, run, log=log, inputs=inputs)
        log(f"setup took {time.perf_counter() - t_setup:.1f}s")
        return Trained(_train(s, requested, log), s.model, s.tokenizer)


def _train(s: Setup, requested: dict, log) -> dict:
    cfg, run, strategy = s.cfg, s.run, s.strategy
    pairs_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * strategy.world.size
    steps = total_steps(cfg, len(s.train_pairs), pairs_per_step)
    per_epoch = math.ceil(len(s.train_pairs) / pairs_per_step)
    log_every, eval_every, save_every = (cfg.every(what, steps, per_epoch) for what in ("logging", "eval", "save"))
    params, optimizer, scheduler = build_optimizer(s.model, cfg, steps)
    state = LoopState(scaler=LossScaler(enabled=cfg.fp16))
    moving_ref = tr_dpo.moving_reference_model(s.reference) if cfg.sync_ref_model else None
    checkpoint_kw = dict(strategy=strategy, model=s.model, optimizer=optimizer, scheduler=scheduler,
                         reference=moving_ref)
    if cfg.resume:
        state = resume(s, cfg.resume, checkpoint_kw, log) or state
    report = Reporter.for_run(run, cfg, log, total_steps=steps, done_steps=state.step, callbacks=s.inputs.callbacks)
    window, nonfinite, last, last_eval = MetricWindow(), NonfiniteGuard(cfg.max_nonfinite_steps), {}, {}
    probe = UpdateProbe(params, seed=cfg.seed)  # how much of each update the stored weights keep (doctor)
    hp = loss_hparams(cfg)
    s.model.train()
    with StopSignals() as stop:
        try:
            while state.step < steps and not stop.requested:
                t_step = time.perf_counter()
                hp = loss_hparams(cfg)
                pairs = step_pairs(s.train_pairs, state.step, pairs_per_step, cfg.seed)
                with s.precision.step_region():  # each weight cast to the compute dtype once per step
                    step_window, finite = backward_step(s, pairs, hp, loss_scale=state.scaler.scale)
                strategy.reduce_gradients(params)  # SUM over processes = the gradient of the whole step
                state.scaler.unscale_(params)  # fp16: back to true gradients before clipping (else a no-op)
                step_window = strategy.reduce(step_window)  # every process holds the global sums
                grad_norm = strategy.clip_grad_norm(params, cfg.max_grad_norm)  # global fp64 norm BEFORE clipping
                finite, kept = strategy.all_true(finite), None
                if finite and math.isfinite(grad_norm):
                    probe.before(optimizer)
                    optimizer.step()
                    kept = probe.kept(optimizer)
                    nonfinite.passed()
                    window.merge(step_window)
                elif finite and state.scaler.scale > 1:  # fp16: the scale, not the step, was too large
                    state.overflow_total += 1
                else:
                    nonfinite.skipped(state, sorted(p.index for p in pairs), log)
                state.scaler.update(overflow=not (finite and math.isfinite(grad_norm)))
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # a skipped first update makes torch warn about the call order
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                state.step += 1
                state.pairs_seen += len(pairs)
                if cfg.sync_ref_model and tr_dpo.due(state.step, cfg.ref_model_sync_steps):
                    tr_dpo.sync_reference(s.reference, s.model, cfg.ref_model_mixup_alpha)
                window.note_step(grad_norm, time.perf_counter() - t_step, update_kept=kept)
                if state.step % log_every == 0 or state.step == steps:
                    last = {"step": state.step, "epoch": state.pairs_seen / len(s.train_pairs),
                            "pairs_seen": state.pairs_seen, **window.compute(),
                            "learning_rate": scheduler.get_last_lr()[0], "nonfinite_steps": state.nonfinite_total,
                            **state.precision_metrics()}
                    report.train_record(last)
                    window = MetricWindow()
                if s.eval_pairs and eval_every > 0 and state.step % eval_every == 0 and state.step < steps:
                    last_eval = report.eval_record({"step": state.step, **evaluate(s, hp)})
                if save_every > 0 and state.step % save_every == 0:
                    save(s, state, checkpoint_kw, log)
                report.step_done()
        except BaseException:
            report.close_trackers(ok=False)
            raise
        finally:
            report.close()
    if stop.requested:
        report.close_trackers(ok=False)
        save(s, state, checkpoint_kw, log)
        log(f"stopped by signal {stop.signal} at step {state.step}; resume with --resume auto")
        return {**last, "interrupted": True}
    scores = [] if s.eval_pairs else None  # the final evaluation's forwards give the pair scores too
    if s.eval_pairs:
        last_eval = report.eval_record({"step": state.step, **evaluate(s, hp, rows=scores)})
    finish_run(s, report, hp, log, step=state.step, options=requested, scores=scores)
    return {**last, **last_eval}


def loss_hparams(cfg: TrainConfig) -> LossHParams:
    return LossHParams.from_options(cfg)


def resume(s: Setup, requested: str, checkpoint_kw: dict, log) -> LoopState | None:
    """Restore the newest good checkpoint (`auto`) or the given one; None when there is none to resume."""
    found = ckpt.find_resumable(s.run.checkpoints, requested, log=log)
    if found is None:
        log("no checkpoint to resume from; starting fresh")
        s.run.truncate_records(after_step=0)  # a run killed before its first checkpoint: its records start over
        return None
    state = LoopState.from_dict(ckpt.load_checkpoint(found, **checkpoint_kw), LossScaler(enabled=s.cfg.fp16))
    s.run.truncate_records(after_step=state.step)
    log(f"resumed from {found} at step {state.step}")
    return state


def save(s: Setup, state: LoopState, checkpoint_kw: dict, log) -> None:
    """Write a checkpoint; a failed write (e.g. a full disk) keeps the previous one and training goes on."""
    try:
        path = ckpt.save_checkpoint(s.run.checkpoints, state.step, loop_state=state.to_dict(),
                                    total_limit=s.cfg.save_total_limit, weights=adapter_weights(s.model),
                                    **checkpoint_kw)
        log(f"checkpoint: {path}")
    except OSError as e:
        good = ckpt.list_checkpoints(s.run.checkpoints)
        log(f"error: writing the checkpoint at step {state.step} failed ({e}); "
            f"last good checkpoint: {good[-1] if good else 'none'}")
