"""`--report-to wandb`: Weights & Biases. WANDB_PROJECT (default `tiltlm`), WANDB_MODE=offline and the other
WANDB_* variables work as usual; the run's local files go under RUN_DIR/wandb. The config is the run's config,
the doctor's findings go into the summary (`doctor/<check>`) and the tags (`doctor:<check>`)."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Tracker, finding_text, scalars


class WandB(Tracker):
    package = "wandb"

    def __init__(self, run_dir: Path, config: dict, run_name: str):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tiltlm"), name=run_name, dir=str(run_dir),
                              config=config, tags=["tiltlm", *config.get("loss_type", [])],
                              reinit="create_new")

    def log(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def finding(self, finding: dict) -> None:
        self.run.summary[f"doctor/{finding['check']}"] = finding_text(finding)
        tag = f"doctor:{finding['check']}"
        if tag not in self.run.tags:
            self.run.tags = (*self.run.tags, tag)

    def close(self, ok: bool = True) -> None:
        self.run.finish(**({} if ok else {"exit_code": 1}))
