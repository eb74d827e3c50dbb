"""Where each metrics record goes: metrics.jsonl, TensorBoard, the progress bar, and the live DPO doctor.

Only rank 0 reports (other processes get a Reporter over a read-only RunDir: no files, no bar, no doctor).
"""

from __future__ import annotations

from typing import Callable, Optional

from tqdm.auto import tqdm

from ..config import TrainConfig
from ..doctor.checks import Doctor, Finding
from ..rundir import DATA_STATS, DOCTOR, METRICS, TENSORBOARD, RunDir, is_eval_record


class _NoBar:
    def update(self, n=1): ...
    def close(self): ...
    def set_postfix(self, **kw): ...


class Reporter:
    """`doctor`: the Doctor's options (beta, learning_rate, loss_types) to run it live, or None."""

    def __init__(self, run: RunDir, *, log: Callable = print, doctor: Optional[dict] = None,
                 tensorboard: bool = False, progress: bool = True, total_steps: int = 0, done_steps: int = 0):
        self.run, self.log = run, log
        self.doctor = self._start_doctor(doctor) if doctor is not None and run.writable else None
        self.tb = None
        if tensorboard and run.writable:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.file(TENSORBOARD)))
        self.bar = _NoBar()
        if progress and run.writable:
            self.bar = tqdm(total=total_steps, initial=done_steps, desc="dpo", unit="step", dynamic_ncols=True)

    @classmethod
    def for_run(cls, run: RunDir, cfg: TrainConfig, log: Callable, *, total_steps: int, done_steps: int) -> "Reporter":
        doctor = dict(beta=cfg.beta, learning_rate=cfg.learning_rate, loss_types=cfg.loss_type) if cfg.doctor else None
        return cls(run, log=log, doctor=doctor, tensorboard=cfg.report_to == "tensorboard", progress=cfg.progress,
                   total_steps=total_steps, done_steps=done_steps)

    def _start_doctor(self, options: dict) -> Doctor:
        """A doctor that has checked the data statistics and, on resume, replayed the records already on disk
        (so its memory matches an uninterrupted run's)."""
        doctor = Doctor(**options)
        for finding in doctor.check_data(self.run.read_json(DATA_STATS) or {}):
            self._finding(finding)
        for rec in self.run.read_records(METRICS) or []:
            doctor.observe_eval(rec) if is_eval_record(rec) else doctor.observe(rec)
        return doctor

    def _finding(self, finding: Finding) -> None:
        d = finding.to_dict()
        self.run.append(DOCTOR, d)
        self.log(f"doctor [{d['severity']}] {d['check']} at step {d['step']}: {d['message']}  Fix: {d['fix']}")

    def train_record(self, record: dict) -> None:
        self.run.append(METRICS, record)
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                             acc=f"{record.get('rewards/accuracies', float('nan')):.2f}",
                             margin=f"{record.get('rewards/margins', float('nan')):+.3f}",
                             kl=f"{record.get('kl_proxy', float('nan')):.3f}")
        for finding in self.doctor.observe(record) if self.doctor is not None else []:
            self._finding(finding)

    def eval_record(self, record: dict) -> dict:
        self.run.append(METRICS, record)
        self.log(" ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        for finding in self.doctor.observe_eval(record) if self.doctor is not None else []:
            self._finding(finding)
        return record

    def step_done(self) -> None:
        self.bar.update(1)

    def finish(self) -> None:
        for finding in self.doctor.finish() if self.doctor is not None else []:
            self._finding(finding)
        self.close()

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
