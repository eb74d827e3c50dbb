"""`--report-to trackio`: Trackio (local SQLite under TRACKIO_DIR, default ~/.cache/huggingface/trackio; a Space
with TRACKIO_SPACE_ID). TRACKIO_PROJECT names the project (default `tiltlm`). The config is the run's config, each
doctor finding an alert (warning or info) at its step."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Tracker, finding_text, scalars


class Trackio(Tracker):
    package = "trackio"

    def __init__(self, run_dir: Path, config: dict, run_name: str):
        import trackio

        self.levels = {"warning": trackio.AlertLevel.WARN, "info": trackio.AlertLevel.INFO}
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "tiltlm"), name=run_name, config=config,
                                space_id=os.environ.get("TRACKIO_SPACE_ID"), auto_log_cpu=False,
                                auto_log_gpu=False, embed=False)

    def log(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def finding(self, finding: dict) -> None:
        self.run.alert(title=f"doctor: {finding['check']}", text=finding_text(finding),
                       level=self.levels.get(finding["severity"], self.levels["warning"]), step=finding["step"])

    def close(self, ok: bool = True) -> None:
        self.run.finish()
