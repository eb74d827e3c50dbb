"""`tilt doctor` on an iterate run folder: each round's pair check (no_signal_round) and its training run replayed
through the DPO doctor, every finding tagged with its round."""

from __future__ import annotations

from pathlib import Path

from ..doctor.checks import Finding
from ..doctor.replay import diagnose_run
from ..doctor.rounds import check_round_pairs
from ..rundir import METRICS, RunDir
from .loop import PAIR_STATS, TRAIN, round_dir


def diagnose_iterate_run(run_dir: str | Path) -> list[tuple[int, Finding]]:
    """(round, finding) for every round folder of RUN_DIR, in round order."""
    out: list[tuple[int, Finding]] = []
    k = 0
    while round_dir(run_dir, k).is_dir():
        folder = round_dir(run_dir, k)
        stats = RunDir(folder, writable=False).read_json(PAIR_STATS)
        if stats is not None:
            out += [(k, f) for f in check_round_pairs(k, stats)]
        if (folder / TRAIN / METRICS).is_file():
            out += [(k, f) for f in diagnose_run(folder / TRAIN)]
        k += 1
    return out
