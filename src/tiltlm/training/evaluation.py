"""Held-out evaluation during training, and the end of a run: per-pair scores, the final model, the doctor's
last checks."""

from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

import torch

from ..core.losses import LossHParams
from ..core.metrics import MetricWindow
from ..errors import TrainingError, writing
from ..model import lora
from ..model.scoring import longest_first
from ..parallel import comm
from ..rundir import PAIR_SCORES
from ..types import LossOutput, PairLogps, as_text
from . import checkpoint as ckpt
from .model_card import write_model_card
from .reporting import Reporter
from .setup import Setup
from .step import forward_pairs


def _batches(s: Setup, pairs: list, batch_size: int) -> list:
    """The run's scoring path over `pairs`, `batch_size` pairs (or, packed, one token budget) at a time."""
    return [b for start in range(0, len(pairs), batch_size)
            for b in s.path.micro_batches(pairs[start:start + batch_size], batch_size=batch_size,
                                          pad_token_id=s.tokenizer.pad_token_id)]


@torch.no_grad()
def evaluate(s: Setup, hp: LossHParams, rows: Optional[list] = None) -> dict:
    """`eval/...` metrics over the eval pairs; each process evaluates its share, the sums are combined. With `rows`
    (the final evaluation), every pair's pair_scores record is collected from the same forwards, on every
    process."""
    window, mine = MetricWindow(), []
    own = longest_first(s.strategy.shard(s.eval_pairs), s.path.prefix_sharing)  # sums: the order does not matter
    spare = _batches(s, s.eval_pairs[:1], 1)[0]  # a process without eval pairs may still owe collective calls
    with s.precision.step_region():  # each weight cast once for the whole evaluation
        for batch, real in s.strategy.micro_calls(_batches(s, own, s.cfg.per_device_eval_batch_size), spare=spare):
            policy, ref, out = forward_pairs(s, batch.to(s.device), hp, s.eval_reference)
            if real:
                window.add(policy, ref, out)
                if rows is not None:
                    mine += [score_row(idx, s.examples.get(idx), policy, ref, out, k)
                             for k, idx in enumerate(batch.pair_index.tolist())]
    if rows is not None:
        rows += sorted((r for part in comm.gather_objects(mine) for r in part), key=lambda r: r["index"])
    return {f"eval/{k}": v for k, v in s.strategy.reduce(window).compute().items()}


@torch.no_grad()
def pair_scores(s: Setup, hp: LossHParams, limit: int = 64) -> list[dict]:
    """Per-pair numbers under the final policy for reports: the first `limit` training pairs of a run without eval
    pairs (a run with them takes its rows from the final evaluation: `evaluate(..., rows=)`).
    (Under FSDP every process scores the same pairs: the forwards are collectives.)"""
    pairs = longest_first(s.train_pairs[:limit], s.path.prefix_sharing)  # rows sorted by index below
    rows = []
    with s.precision.step_region():
        for batch in _batches(s, pairs, s.cfg.per_device_eval_batch_size):
            batch = batch.to(s.device)
            policy, ref, out = forward_pairs(s, batch, hp)
            rows += [score_row(idx, s.examples.get(idx), policy, ref, out, k)
                     for k, idx in enumerate(batch.pair_index.tolist())]
    return sorted(rows, key=lambda r: r["index"])


def score_row(index: int, example, policy: PairLogps, ref: Optional[PairLogps], out: LossOutput, k: int) -> dict:
    """One pair_scores.jsonl record: pair `k` of a micro-batch, with its texts (for the report's hardest pairs)."""
    return {
        "index": index, "source": getattr(example, "source", ""),
        "prompt": as_text(example.prompt)[:2000] if example else "",
        "chosen": as_text(example.chosen)[:2000] if example else "",
        "rejected": as_text(example.rejected)[:2000] if example else "",
        "policy_chosen": float(policy.chosen[k]), "policy_rejected": float(policy.rejected[k]),
        "ref_chosen": float(ref.chosen[k]) if ref is not None else None,
        "ref_rejected": float(ref.rejected[k]) if ref is not None else None,
        "chosen_tokens": int(policy.chosen_tokens[k]), "rejected_tokens": int(policy.rejected_tokens[k]),
        "reward_chosen": float(out.chosen_rewards[k]), "reward_rejected": float(out.rejected_rewards[k]),
        "margin": float(out.chosen_rewards[k] - out.rejected_rewards[k]), "loss": float(out.losses[k]),
    }


def finish_run(s: Setup, report: Reporter, hp: LossHParams, log: Callable, *, step: int, options: dict,
               scores: Optional[list[dict]] = None) -> None:
    """Write pair_scores.jsonl (`scores`: the final evaluation's rows, else scored here), run the doctor's end-of-run
    checks, save the final model and tokenizer with its model card, and mark the run finished (last, so a run killed
    before it is completed by `--resume auto`)."""
    scores = pair_scores(s, hp) if scores is None else scores
    state_dict = s.strategy.full_state_dict(s.model)  # gathered to rank 0 under FSDP (a collective)
    run = s.run
    if not run.writable:
        return
    run.write_records(PAIR_SCORES, scores)
    report.finish(scores)
    save_final_model(s, state_dict, log)
    write_card(s)
    run.mark_finished(step, options)


def write_card(s: Setup) -> None:
    """README.md beside the weights: names the base model and data as given (paths, or the in-memory objects)."""
    given = s.inputs
    base = s.cfg.model or getattr(given.model, "name_or_path", "") or "an in-memory model"
    write_model_card(s.run, s.cfg.to_dict(), base_model=base,
                     data=str(s.cfg.data or (given.train_data.describe() if given.train_data else "")),
                     eval_label=s.cfg.eval_data or (given.eval_data.describe() if given.eval_data else None),
                     adapter=lora.is_peft(s.model), command=given.command)


def save_final_model(s: Setup, state_dict: Optional[dict], log: Callable) -> None:
    """The model (or LoRA adapter, + merged/ with --merge-lora) and tokenizer, written into a staging folder and
    then moved into the run folder: a failed write (a full disk) leaves no half-written model behind."""
    run, staging = s.run, s.run.file(".tmp-final")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with writing("the final model"):
            if lora.is_peft(s.model):
                lora.save(s.model, staging, s.tokenizer, s.cfg.merge_lora, log)
            else:
                s.model.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)
            s.tokenizer.save_pretrained(staging)
            for item in staging.iterdir():
                if (run.path / item.name).is_dir():
                    shutil.rmtree(run.path / item.name)
                os.replace(item, run.path / item.name)
    except OSError as e:
        kept = ckpt.list_checkpoints(run.checkpoints)
        hint = (f"the trained weights are in {kept[-1]}: free some space and run the same command with --resume auto"
                " to write the final model" if kept else "no checkpoint was written (--save-steps keeps some)")
        raise TrainingError(f"{e}; {hint}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"saved model and tokenizer to {run.path}")
