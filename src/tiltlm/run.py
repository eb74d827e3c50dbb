"""The run directory and the small pieces of bookkeeping the training loop delegates to.

Kept out of train.py so the loop stays readable: where files go, how metrics are written, the data order,
the LR schedule, checkpoints with their failure handling, and the end-of-run artefacts.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml

from . import checkpoint as ckpt
from .batching import micro_batches
from .config import ConfigError, TrainConfig
from .types import TokenizedPair


def step_pairs(pairs: Sequence[TokenizedPair], step: int, pairs_per_step: int, seed: int) -> list[TokenizedPair]:
    """The pairs of optimizer step `step` (0-based): a seeded permutation per epoch, cut into consecutive steps.

    A pure function of (step, seed): resuming at step k replays exactly the order an uninterrupted run would see.
    The last step of an epoch may be smaller; its loss is still the mean over its own pairs.
    """
    steps_per_epoch = math.ceil(len(pairs) / pairs_per_step)
    epoch, within = divmod(step, steps_per_epoch)
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [pairs[i] for i in perm[within * pairs_per_step:(within + 1) * pairs_per_step]]


def schedule(optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear decay to 0 / cosine decay to 0 / constant."""
    warmup = cfg.warmup_steps or int(math.ceil(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _NoBar:
    def update(self, n=1): ...
    def close(self): ...
    def set_postfix(self, **kw): ...


@dataclass
class RunDir:
    path: Path
    cfg: TrainConfig
    log: Callable = print
    tb: Optional[object] = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @classmethod
    def prepare(cls, cfg: TrainConfig, log: Callable = print) -> "RunDir":
        out = Path(cfg.output_dir).expanduser().resolve()
        for data in filter(None, (cfg.data, cfg.eval_data, cfg.model)):
            d = Path(data).expanduser().resolve()
            if out == d or out in d.parents:
                raise ConfigError(f"output_dir {cfg.output_dir} contains the input {data}; "
                                  "choose a separate output folder")
        if out.exists() and any(out.iterdir()) and not cfg.resume and not cfg.overwrite_output_dir:
            raise ConfigError(f"output_dir {cfg.output_dir} is not empty: pass --overwrite-output-dir to replace "
                              "it, or --resume auto to continue the run in it")
        if out.exists() and cfg.overwrite_output_dir and not cfg.resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        run = cls(out, cfg, log)
        if cfg.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            run.tb = SummaryWriter(str(out / "tensorboard"))
        return run

    def write_json(self, name: str, obj) -> None:
        (self.path / name).write_text(json.dumps(obj, indent=1, default=float))

    def _append(self, name: str, record: dict) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop records a killed run wrote after its last checkpoint (they will be written again)."""
        for name in ("metrics.jsonl", "doctor.jsonl"):
            f = self.path / name
            if f.is_file():
                keep = [l for l in f.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= after_step]
                f.write_text("".join(l + "\n" for l in keep))

    def doctor(self, cfg: TrainConfig):
        if not cfg.doctor:
            return None
        from .diagnostics import Doctor

        doc = Doctor(beta=cfg.beta, learning_rate=cfg.learning_rate, loss_types=cfg.loss_type)
        stats = json.loads((self.path / "data_stats.json").read_text())
        for f in doc.check_data(stats):
            self._report(f)
        # replay records already on disk (resume) so the doctor's memory matches an uninterrupted run
        mfile = self.path / "metrics.jsonl"
        if mfile.is_file():
            for line in mfile.read_text().splitlines():
                rec = json.loads(line)
                doc.observe_eval(rec) if any(k.startswith("eval/") for k in rec) else doc.observe(rec)
        return doc

    def _report(self, finding) -> None:
        d = finding.to_dict()
        self._append("doctor.jsonl", d)
        self.log(f"doctor [{d['severity']}] {d['check']} at step {d['step']}: {d['message']}  Fix: {d['fix']}")

    def progress(self, total: int, done: int):
        if not self.cfg.progress:
            return _NoBar()
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc="dpo", unit="step", dynamic_ncols=True)

    def log_metrics(self, record: dict, doctor, bar) -> None:
        self._append("metrics.jsonl", record)
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                        acc=f"{record.get('rewards/accuracies', float('nan')):.2f}",
                        margin=f"{record.get('rewards/margins', float('nan')):+.3f}",
                        kl=f"{record.get('kl_proxy', float('nan')):.3f}")
        if doctor is not None:
            for f in doctor.observe(record):
                self._report(f)

    def log_eval(self, record: dict, doctor) -> dict:
        self._append("metrics.jsonl", record)
        self.log(" ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        if doctor is not None:
            for f in doctor.observe_eval(record):
                self._report(f)
        return record

    def _write_checkpoint(self, state: dict, model, optimizer, scheduler, reference=None):
        from . import dist

        kw = dict(model=model, optimizer=optimizer, scheduler=scheduler, loop_state=dict(state),
                  total_limit=self.cfg.save_total_limit)
        if dist.fsdp_enabled():  # every rank writes its shards (fsdp.py); TR-DPO is refused under FSDP
            from .fsdp import save_checkpoint as write_sharded

            return write_sharded(self.checkpoints, state["step"], **kw)
        return ckpt.save_checkpoint(self.checkpoints, state["step"], reference=reference, **kw)

    def save_checkpoint(self, state: dict, model, optimizer, scheduler, reference=None) -> None:
        try:
            path = self._write_checkpoint(state, model, optimizer, scheduler, reference)
            self.log(f"checkpoint: {path}")
        except OSError as e:  # e.g. disk full: the previous checkpoint is untouched; keep training
            good = ckpt.list_checkpoints(self.checkpoints)
            self.log(f"error: writing the checkpoint at step {state['step']} failed ({e}); "
                f"last good checkpoint: {good[-1] if good else 'none'}")

    def finish(self, setup, doctor, scores: list[dict], state_dict: Optional[dict] = None) -> None:
        """Write the per-pair scores and the final model (`state_dict`: the gathered weights under FSDP)."""
        with open(self.path / "pair_scores.jsonl", "w") as f:
            for row in scores:
                f.write(json.dumps(row) + "\n")
        if doctor is not None:
            for finding in doctor.finish():
                self._report(finding)
        from .lora import save as save_lora  # LoRA: the adapter (+ OUTPUT_DIR/merged with --merge-lora)

        if not save_lora(setup.policy, self.path, setup.tokenizer, self.cfg.merge_lora, self.log):
            setup.policy.save_pretrained(self.path, safe_serialization=True, state_dict=state_dict)
        setup.tokenizer.save_pretrained(self.path)
        if self.tb is not None:
            self.tb.close()
        self.log(f"saved model and tokenizer to {self.path}")


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in value)


@torch.no_grad()
def pair_scores(s, hp, forward_pairs: Callable, limit: int = 64) -> list[dict]:
    """Per-pair numbers under the final policy (eval pairs, else the first `limit` training pairs) for reports."""
    pairs = s.eval_pairs or s.train_pairs[:limit]
    rows = []
    for start in range(0, len(pairs), s.cfg.per_device_eval_batch_size):
        chunk = pairs[start:start + s.cfg.per_device_eval_batch_size]
        for batch in micro_batches(chunk, batch_size=len(chunk), prefix_sharing=s.cfg.prefix_sharing, packing=False,
                                   max_tokens_per_batch=s.cfg.max_tokens_per_batch,
                                   pad_token_id=s.tokenizer.pad_token_id):
            batch = batch.to(s.device)
            policy, ref, out = forward_pairs(s, batch, hp, s.eval_reference if s.eval_pairs else None)
            for k, idx in enumerate(batch.pair_index.tolist()):
                ex = s.examples.get(idx)
                rows.append({
                    "index": idx, "source": getattr(ex, "source", ""),
                    "prompt": _as_text(ex.prompt)[:2000] if ex else "",
                    "chosen": _as_text(ex.chosen)[:2000] if ex else "",
                    "rejected": _as_text(ex.rejected)[:2000] if ex else "",
                    "policy_chosen": float(policy.chosen[k]), "policy_rejected": float(policy.rejected[k]),
                    "ref_chosen": float(ref.chosen[k]) if ref is not None else None,
                    "ref_rejected": float(ref.rejected[k]) if ref is not None else None,
                    "chosen_tokens": int(policy.chosen_tokens[k]), "rejected_tokens": int(policy.rejected_tokens[k]),
                    "reward_chosen": float(out.chosen_rewards[k]), "reward_rejected": float(out.rejected_rewards[k]),
                    "margin": float(out.chosen_rewards[k] - out.rejected_rewards[k]), "loss": float(out.losses[k]),
                })
    return sorted(rows, key=lambda r: r["index"])
