"""Replay a run folder (finished or still running) through the DPO doctor: the same checks the live run made."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.losses import LossHParams, parse_loss_types
from ..rundir import DATA_STATS, METRICS, PAIR_SCORES, RunDir
from .checks import Doctor, DoctorThresholds, Finding, as_number, is_finite


def diagnose_run(run_dir, thresholds: Optional[DoctorThresholds] = None) -> list[Finding]:
    """Replay RUN_DIR's metrics.jsonl (with its data_stats.json, config.yaml and pair_scores.jsonl) through a fresh
    Doctor, built with every loss hyper-parameter of config.yaml as the live run built it."""
    run = RunDir(Path(run_dir), writable=False)
    records = run.read_records(METRICS)
    if records is None:
        raise FileNotFoundError(f"{run.file(METRICS)} not found (is {run_dir} a tiltlm run directory?)")
    cfg = run.read_config()
    try:
        loss_types = parse_loss_types(cfg.get("loss_type") or ["sigmoid"])
    except ValueError:  # a loss this version does not know: the generic checks still apply
        raw = cfg.get("loss_type")
        loss_types = [t.strip() for t in raw.split(",")] if isinstance(raw, str) else [str(t) for t in raw]
    lr = as_number(cfg, "learning_rate")
    if lr is None:
        lrs = [x for x in (as_number(r, "learning_rate") for r in records) if is_finite(x)]
        lr = max(lrs) if lrs else None
    try:
        hparams = LossHParams.from_options(cfg)
    except (TypeError, ValueError):  # a hand-edited config.yaml: the defaults, as a run without one
        hparams = LossHParams()
    if not (is_finite(hparams.beta) and hparams.beta > 0):
        hparams = LossHParams.from_options(hparams, beta=0.1)
    doctor = Doctor(hparams=hparams, learning_rate=lr, loss_types=loss_types, thresholds=thresholds)
    doctor.check_data(run.read_json(DATA_STATS) or {})
    for rec in records:
        doctor.observe(rec)
    doctor.finish(run.read_records(PAIR_SCORES) or [])
    return doctor.findings
