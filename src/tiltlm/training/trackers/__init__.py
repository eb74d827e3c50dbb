"""Experiment trackers for `--report-to` (several at once): one small module each, behind `base.Tracker`.

`check_installed` runs before any work (a missing package is one clear line); `open_trackers` opens them on
rank 0 with the run's config. The names are config.TRACKERS."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from ...config import TRACKERS
from ...errors import ConfigError
from .base import Tracker, finding_text, scalars
from .mlflow import MLflow
from .tensorboard import TensorBoard
from .trackio import Trackio
from .wandb import WandB

KINDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "trackio": Trackio}
assert tuple(KINDS) == TRACKERS, "config.TRACKERS and the tracker modules must list the same names"
PINS = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb==0.31.0", "mlflow": "mlflow-skinny==3.17.2",
        "trackio": "trackio==0.43.0"}  # as in requirements.txt


def check_installed(names: Sequence[str]) -> None:
    for name in names:
        try:
            importlib.import_module(KINDS[name].package)
        except ImportError:
            raise ConfigError(f"--report-to {name} needs the {KINDS[name].package!r} package, which is not "
                              f"installed: pip install {PINS[name]}") from None


def open_trackers(names: Sequence[str], run_dir: Path, config: dict) -> list[Tracker]:
    check_installed(names)
    return [KINDS[name](run_dir, config, run_name=run_dir.name) for name in names]


__all__ = ["Tracker", "KINDS", "check_installed", "open_trackers", "scalars", "finding_text"]
