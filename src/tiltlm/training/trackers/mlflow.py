"""`--report-to mlflow`: MLflow, through its client (no global active run). MLFLOW_TRACKING_URI picks the store
(MLflow's default: ./mlflow.db), MLFLOW_EXPERIMENT_NAME the experiment (default `tiltlm`). The config becomes the
run's params, the doctor's findings its tags (`doctor.<check>`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .base import Tracker, finding_text, scalars

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


class MLflow(Tracker):
    package = "mlflow"

    def __init__(self, run_dir: Path, config: dict, run_name: str):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tiltlm")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                             tags={"tiltlm.output_dir": str(run_dir)}).info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in config.items()]
        self.client.log_batch(self.run_id, params=params)

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, record["step"])
                                                    for k, v in scalars(record).items()])

    def finding(self, finding: dict) -> None:
        self.client.set_tag(self.run_id, f"doctor.{finding['check']}", finding_text(finding))

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "KILLED")
