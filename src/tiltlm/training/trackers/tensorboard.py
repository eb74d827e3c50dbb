"""`--report-to tensorboard`: scalars under RUN_DIR/tensorboard, the config and the doctor's findings as text."""

from __future__ import annotations

from pathlib import Path

import yaml

from ...rundir import TENSORBOARD
from .base import Tracker, finding_text, scalars


class TensorBoard(Tracker):
    package = "tensorboard"

    def __init__(self, run_dir: Path, config: dict, run_name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def log(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def finding(self, finding: dict) -> None:
        self.writer.add_text(f"doctor/{finding['check']}", finding_text(finding), finding["step"])

    def close(self, ok: bool = True) -> None:
        self.writer.close()
