"""The DPO training loop. `train()` reads top to bottom: set up, then one loop you can read on one screen."""

from __future__ import annotations

import math
import signal
import time
import warnings
from dataclasses import dataclass

import torch

from . import checkpoint as ckpt
from . import dist, fsdp, lora
from .batching import micro_batches
from .config import ConfigError, TrainConfig
from .losses import REFERENCE_FREE, LossHParams, compute_loss
from .metrics import MetricWindow
from .models import fingerprint, load_model, load_tokenizer, resolve_device
from .dist import cached_reference  # reference.cached_reference, split over ranks under torchrun
from .run import RunDir, pair_scores, schedule, step_pairs
from .logps import check_fast_path, completion_logps


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite losses K steps in a row); the message says why and what to do."""


@dataclass
class Setup:
    cfg: TrainConfig
    run: RunDir
    device: torch.device
    tokenizer: object
    policy: torch.nn.Module
    train_pairs: list
    eval_pairs: list
    examples: dict  # index -> PreferenceExample (for reports)
    reference: object  # callable ModelBatch -> PairLogps, or None (reference-free losses)
    eval_reference: object


def setup(cfg: TrainConfig, log=print) -> Setup:
    from .data import prepare_dataset  # heavy-ish imports kept out of `tilt --help`

    if not cfg.model or not cfg.data or not cfg.output_dir:
        raise ConfigError("--model, --data and --output-dir are required")
    dist.init(cfg)  # joins torchrun's process group when WORLD_SIZE > 1 (no-op otherwise)
    run = dist.prepare_run(cfg, log)  # rank 0 writes the run folder; other ranks write nothing
    device = dist.device(cfg.device)  # cuda:LOCAL_RANK under torchrun on GPUs
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    data_kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                   prompt_delimiter=cfg.prompt_delimiter, skip_invalid=cfg.skip_invalid)
    examples, pairs, stats = prepare_dataset(cfg.data, tokenizer, skipped_path=str(run.path / "skipped.jsonl"),
                                             **data_kw)
    eval_examples, eval_pairs = [], []
    if cfg.eval_data:
        eval_examples, eval_pairs, eval_stats = prepare_dataset(
            cfg.eval_data, tokenizer, skipped_path=str(run.path / "skipped_eval.jsonl"), **data_kw)
        stats["eval"] = {k: eval_stats[k] for k in ("rows", "valid", "skipped", "truncated") if k in eval_stats}
        # eval pairs get their own index range so they never collide with training pairs in caches
        offset = max((p.index for p in pairs), default=-1) + 1
        for p in eval_pairs:
            p.index += offset
        eval_examples = [type(e)(**{**e.__dict__, "index": e.index + offset}) for e in eval_examples]
    elif cfg.eval_split > 0:
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(pairs), generator=g).tolist()
        n_eval = max(1, int(len(pairs) * cfg.eval_split))
        held = set(perm[:n_eval])
        eval_pairs = [p for k, p in enumerate(pairs) if k in held]
        pairs = [p for k, p in enumerate(pairs) if k not in held]
    if not pairs:
        raise ConfigError(f"no training pairs left in {cfg.data}")
    run.write_json("data_stats.json", stats)
    log(f"data: {len(pairs)} training pairs, {len(eval_pairs)} eval pairs; {stats.get('skipped', 0)} skipped, "
        f"{stats.get('truncated', 0)} truncated to max_length={cfg.max_length}")

    policy = load_model(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    problem = check_fast_path(policy, pairs, pad_token_id=tokenizer.pad_token_id)
    if problem and (cfg.prefix_sharing or cfg.chunked_logps or cfg.packing):
        log(f"warning: {problem}")
        cfg.prefix_sharing = cfg.chunked_logps = cfg.packing = False
    policy = lora.apply(cfg, policy, log)
    if cfg.gradient_checkpointing and not getattr(policy, "supports_gradient_checkpointing", False):
        log(f"note: {type(policy).__name__} does not support gradient checkpointing; training without it")
    elif cfg.gradient_checkpointing:  # exact: the same forward, recomputed during backward
        if hasattr(policy, "activation_checkpointing_enable"):  # transformers >= 5.x name
            policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    reference = eval_reference = None
    if not all(t in REFERENCE_FREE for t in cfg.loss_type):
        ref_path = cfg.ref_model or cfg.model
        ref_model = policy if lora.uses_policy_as_reference(cfg) else load_model(
            ref_path, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
        if cfg.precompute_ref_log_probs:
            # the policy at step 0 IS the reference: score with it before training, then no second model exists
            fp = lora.fingerprint(cfg, fingerprint(ref_path))
            kw = dict(cache_dir=cfg.ref_cache_dir, batch_size=cfg.per_device_eval_batch_size,
                      pad_token_id=tokenizer.pad_token_id, chunk_size=cfg.logps_chunk_size, log=log,
                      progress=cfg.progress)
            reference, path, _ = cached_reference(ref_model, fp, cfg.dtype, pairs, **kw)
            eval_reference = cached_reference(ref_model, fp, cfg.dtype, eval_pairs, **kw)[0] if eval_pairs else None
            run.write_json("reference.json", {"cache": str(path), "model_fingerprint": fp})
            if ref_model is not policy:
                del ref_model
        else:
            if dist.fsdp_enabled():
                ref_model = fsdp.shard_model(ref_model)  # the frozen reference is sharded like the policy
            reference = eval_reference = lora.live_reference(cfg, policy, ref_model)  # LoRA: adapter off
    if dist.fsdp_enabled():  # after the (unsharded, distributed) reference pass: shard the policy
        policy = fsdp.shard_model(policy)
        log(f"fsdp: policy sharded over {dist.context().world} ranks "
            f"({len(fsdp.transformer_blocks(policy))} blocks + root)")
    by_index = {e.index: e for e in examples}
    by_index.update({e.index: e for e in eval_examples})
    return Setup(cfg, run, device, tokenizer, policy, pairs, eval_pairs, by_index, reference, eval_reference)


def forward_pairs(s: Setup, batch, hp: LossHParams, reference=None):
    """Policy log-probs, reference log-probs and the loss for one micro-batch (training reference by default)."""
    reference = reference or s.reference
    policy = completion_logps(s.policy, batch, chunked=s.cfg.chunked_logps, chunk_size=s.cfg.logps_chunk_size)
    ref = reference(batch) if reference is not None else None
    return policy, ref, compute_loss(s.cfg.loss_type, s.cfg.loss_weights, policy, ref, hp)


@torch.no_grad()
def evaluate(s: Setup, hp: LossHParams) -> dict:
    window = MetricWindow()
    cfg = s.cfg
    own = dist.shard(s.eval_pairs)  # each rank evaluates its share
    mine = own or s.eval_pairs[:1]  # (an empty share still runs one batch under FSDP: matching collectives)
    batches = [b for start in range(0, len(mine), cfg.per_device_eval_batch_size)
               for b in micro_batches(mine[start:start + cfg.per_device_eval_batch_size],
                                      batch_size=cfg.per_device_eval_batch_size, prefix_sharing=cfg.prefix_sharing,
                                      packing=False, max_tokens_per_batch=cfg.max_tokens_per_batch,
                                      pad_token_id=s.tokenizer.pad_token_id)]
    for batch, real in fsdp.pad_calls(batches):
        out = forward_pairs(s, batch.to(s.device), hp, s.eval_reference)
        if real and own:  # a rank with no eval pairs of its own ran one only to match FSDP's collectives
            window.add(*out)
    return {f"eval/{k}": v for k, v in dist.reduce_window(window).compute().items()}


def train(cfg: TrainConfig, log=print) -> dict:
    t_setup = time.perf_counter()
    log = dist.rank_zero(log) if dist.init(cfg).enabled else log  # rank 0 prints
    s = setup(cfg, log=log)
    log(f"setup took {time.perf_counter() - t_setup:.1f}s")
    cfg, run = s.cfg, s.run
    params = [p for p in s.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    pairs_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * dist.context().world
    steps_per_epoch = math.ceil(len(s.train_pairs) / pairs_per_step)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    scheduler = schedule(optimizer, cfg, total_steps)
    state = {"step": 0, "pairs_seen": 0, "nonfinite_total": 0, "bco_sum": 0.0, "bco_n": 0}
    moving_ref = lora.moving_reference_model(cfg, s.reference)  # TR-DPO's separate reference: checkpointed too
    if cfg.resume:
        found = ckpt.find_resumable(run.checkpoints, cfg.resume, log=log)
        if found is not None:
            state = ckpt.load_checkpoint(found, model=s.policy, optimizer=optimizer, scheduler=scheduler,
                                         reference=moving_ref)
            run.truncate_metrics(after_step=state["step"])
            log(f"resumed from {found} at step {state['step']}")
        else:
            log("no checkpoint to resume from; starting fresh")
    doctor = run.doctor(cfg)
    stop = {"signal": None}
    handlers = {sig: signal.signal(sig, lambda n, _f: stop.update(signal=n)) for sig in (signal.SIGINT,
                                                                                          signal.SIGTERM)}
    bar = run.progress(total_steps, state["step"])
    window, consecutive_bad, last, last_eval = MetricWindow(), 0, {}, {}
    s.policy.train()
    try:
        while state["step"] < total_steps and stop["signal"] is None:
            step, t_step = state["step"], time.perf_counter()
            hp = LossHParams(beta=cfg.beta, label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
                             discopop_tau=cfg.discopop_tau, bco_delta=state["bco_sum"] / max(state["bco_n"], 1))
            pairs = step_pairs(s.train_pairs, step, pairs_per_step, cfg.seed)
            losses, step_window, before = [], MetricWindow(), dict(state)
            batches = micro_batches(dist.shard(pairs), batch_size=cfg.per_device_train_batch_size,
                                    prefix_sharing=cfg.prefix_sharing, packing=cfg.packing,
                                    max_tokens_per_batch=cfg.max_tokens_per_batch,
                                    pad_token_id=s.tokenizer.pad_token_id)
            calls = fsdp.pad_calls(batches)
            for k, (batch, real) in enumerate(calls):
                fsdp.set_gradient_sync(s.policy, k == len(calls) - 1)  # FSDP: reduce-scatter once per step
                policy, ref, out = forward_pairs(s, batch.to(s.device), hp)
                # sum / (pairs in the step): any split into micro-batches gives the same gradient
                (out.losses.sum() * (1.0 if real else 0.0) / len(pairs)).backward()
                if not real:  # FSDP padding call (fsdp.pad_calls): same collectives, no contribution
                    continue
                step_window.add(policy, ref, out)
                losses.append(out.losses.detach())
                rewards = torch.cat([out.chosen_rewards, out.rejected_rewards]).detach()
                state["bco_sum"] += float(rewards.sum())
                state["bco_n"] += rewards.numel()
            if not dist.fsdp_enabled():  # (FSDP reduce-scatters its gradients itself, fsdp.py)
                dist.all_reduce_grads(params)  # SUM over ranks = the gradient of the whole step (see dist.py)
            step_window = dist.reduce_window(step_window)  # every rank holds the global sums
            dist.sync_counters(state, before, "bco_sum", "bco_n")
            grad_norm = dist.clip_grad_norm(params, cfg.max_grad_norm)  # global fp64 norm BEFORE clipping
            finite = dist.all_true(math.isfinite(grad_norm) and all(bool(torch.isfinite(x).all()) for x in losses))
            if finite:
                optimizer.step()
                consecutive_bad = 0
                window.merge(step_window)
            else:  # skip the update, keep the schedule moving so step numbers stay aligned
                consecutive_bad += 1
                state["nonfinite_total"] += 1
                log(f"warning: step {step + 1}: non-finite loss or gradient; update skipped "
                    f"(pairs {sorted(p.index for p in pairs)})")
                if consecutive_bad >= cfg.max_nonfinite_steps:
                    raise TrainingError(f"{consecutive_bad} consecutive non-finite steps at step {step + 1}: lower "
                                        "the learning rate, use float32, or check the pairs listed above")
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # a skipped first update makes torch warn about the call order
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
            state["step"] += 1
            state["pairs_seen"] += len(pairs)
            lora.maybe_sync_reference(cfg, s.policy, s.reference, state["step"])  # TR-DPO
            window.note_step(grad_norm, time.perf_counter() - t_step)
            if state["step"] % cfg.logging_steps == 0 or state["step"] == total_steps:
                last = {"step": state["step"], "epoch": state["pairs_seen"] / len(s.train_pairs),
                        "pairs_seen": state["pairs_seen"], **window.compute(),
                        "learning_rate": scheduler.get_last_lr()[0], "nonfinite_steps": state["nonfinite_total"]}
                run.log_metrics(last, doctor, bar)
                window = MetricWindow()
            if s.eval_pairs and cfg.eval_steps > 0 and state["step"] % cfg.eval_steps == 0:
                last_eval = run.log_eval({"step": state["step"], **evaluate(s, hp)}, doctor)
            if cfg.save_steps > 0 and state["step"] % cfg.save_steps == 0:
                run.save_checkpoint(state, s.policy, optimizer, scheduler, moving_ref)
            bar.update(1)
    finally:
        bar.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)
    if stop["signal"] is not None:
        run.save_checkpoint(state, s.policy, optimizer, scheduler, moving_ref)
        log(f"stopped by signal {stop['signal']} at step {state['step']}; resume with --resume auto")
        return {**last, "interrupted": True}
    if s.eval_pairs:
        if last_eval.get("step") != state["step"]:  # not already evaluated at this very step
            last_eval = run.log_eval({"step": state["step"], **evaluate(s, hp)}, doctor)
        last = {**last, **last_eval}
    scores = pair_scores(s, hp, forward_pairs)  # (under FSDP every rank scores the same pairs: collectives)
    run.finish(s, doctor, scores, fsdp.full_state_dict(s.policy) if dist.fsdp_enabled() else None)
    return last
