"""Where each metrics record goes: metrics.jsonl, the experiment trackers (`--report-to`), the Python callbacks,
the progress bar, and the live DPO doctor (whose findings go to doctor.jsonl, the log and the trackers).

Only rank 0 reports (other processes get a Reporter over a read-only RunDir: no files, no trackers, no callbacks,
no bar, no doctor).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm

from ..config import TrainConfig
from ..core.losses import LossHParams
from ..doctor.checks import Doctor, Finding
from ..rundir import DATA_STATS, DOCTOR, METRICS, RunDir, is_eval_record
from .trackers import Tracker, open_trackers


class _NoBar:
    def update(self, n=1): ...
    def close(self): ...
    def set_postfix(self, **kw): ...


class Reporter:
    """`doctor`: the Doctor's options (hparams, learning_rate, loss_types) to run it live, or None. `trackers` and
    `callbacks` get every record (callbacks a copy: what they do to it never reaches metrics.jsonl)."""

    def __init__(self, run: RunDir, *, log: Callable = print, doctor: Optional[dict] = None,
                 trackers: Sequence[Tracker] = (), callbacks: Sequence[Callable[[dict], None]] = (),
                 progress: bool = True, total_steps: int = 0, done_steps: int = 0):
        self.run, self.log = run, log
        self.trackers = list(trackers) if run.writable else []
        self.callbacks = list(callbacks) if run.writable else []
        self.doctor = self._start_doctor(doctor) if doctor is not None and run.writable else None
        self.bar = _NoBar()
        if progress and run.writable:
            self.bar = tqdm(total=total_steps, initial=done_steps, desc="dpo", unit="step", dynamic_ncols=True)

    @classmethod
    def for_run(cls, run: RunDir, cfg: TrainConfig, log: Callable, *, total_steps: int, done_steps: int,
                callbacks: Sequence[Callable[[dict], None]] = ()) -> "Reporter":
        doctor = dict(hparams=LossHParams.from_options(cfg), learning_rate=cfg.learning_rate,
                      loss_types=cfg.loss_type) if cfg.doctor else None
        names = [n for n in cfg.report_to if n != "none"]
        trackers = open_trackers(names, run.path, cfg.to_dict()) if run.writable else []
        return cls(run, log=log, doctor=doctor, trackers=trackers, callbacks=callbacks, progress=cfg.progress,
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
        for tracker in self.trackers:
            tracker.finding(d)
        self.log(f"doctor [{d['severity']}] {d['check']} at step {d['step']}: {d['message']}  Fix: {d['fix']}")

    def _record(self, record: dict) -> None:
        """metrics.jsonl, then the trackers and the callbacks: all of them get the same record."""
        self.run.append(METRICS, record)
        for tracker in self.trackers:
            tracker.log(record)
        for callback in self.callbacks:
            callback(dict(record))

    def train_record(self, record: dict) -> None:
        self._record(record)
        self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                             acc=f"{record.get('rewards/accuracies', float('nan')):.2f}",
                             margin=f"{record.get('rewards/margins', float('nan')):+.3f}",
                             kl=f"{record.get('kl_proxy', float('nan')):.3f}")
        for finding in self.doctor.observe(record) if self.doctor is not None else []:
            self._finding(finding)

    def eval_record(self, record: dict) -> dict:
        self._record(record)
        self.log(" ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        for finding in self.doctor.observe_eval(record) if self.doctor is not None else []:
            self._finding(finding)
        return record

    def step_done(self) -> None:
        self.bar.update(1)

    def finish(self, pair_scores: Sequence[dict] = ()) -> None:
        """The end of a finished run: the doctor's last checks (over the final policy's pair scores too), then the
        trackers are closed."""
        for finding in self.doctor.finish(list(pair_scores)) if self.doctor is not None else []:
            self._finding(finding)
        self.close()
        self.close_trackers(ok=True)

    def close(self) -> None:
        """The progress bar (the loop closes it however the steps end; the trackers stay open for the final eval)."""
        self.bar.close()

    def close_trackers(self, ok: bool) -> None:
        """Closed once; `ok=False`: the run was interrupted or failed (trackers that keep a status record it)."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(ok=ok)
