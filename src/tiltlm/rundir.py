"""The run folder (`--output-dir`): every file in it, with its one writer and its one reader.

Training writes it (rank 0 only: other processes get a read-only view); `tilt doctor`, `tilt report`,
`tilt explain RUN_DIR` and `tilt eval` read it. Nothing else opens these files by name.

    config.yaml         the resolved TrainConfig, as the run actually ran (fast paths turned off at start-up say so)
    metrics.jsonl       one record per logging step (train) and per evaluation (keys prefixed `eval/`)
    data_stats.json     counts, skipped/truncated pairs, token lengths
    doctor.jsonl        the doctor's findings
    pair_scores.jsonl   per-pair log-probs, rewards and margins under the final policy
    reference.json      which reference cache file the run used
    skipped.jsonl, skipped_eval.jsonl   rows left out by --skip-invalid, with the reason
    checkpoints/        resumable checkpoints (training/checkpoint.py)
    tensorboard/        --report-to tensorboard
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from .errors import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
DATA_STATS = "data_stats.json"
DOCTOR = "doctor.jsonl"
PAIR_SCORES = "pair_scores.jsonl"
REFERENCE = "reference.json"
SKIPPED = "skipped.jsonl"
SKIPPED_EVAL = "skipped_eval.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; unparsable lines (e.g. a truncated last line of a killed run) are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def is_eval_record(record: dict) -> bool:
    return any(str(k).startswith("eval/") for k in record)


class RunDir:
    """One run folder. `writable=False` (processes other than rank 0) turns every write into a no-op."""

    def __init__(self, path: str | Path, *, writable: bool = True):
        self.path = Path(path)
        self.writable = writable

    # ------------------------------------------------------------------------------------------ create
    @classmethod
    def create(cls, output_dir: str, *, inputs: Iterable[Optional[str]] = (), resume: bool = False,
               overwrite: bool = False) -> "RunDir":
        """Validate and prepare the folder for a new (or resumed) run; the user's mistakes are ConfigErrors."""
        out = Path(output_dir).expanduser().resolve()
        for given in filter(None, inputs):
            d = Path(given).expanduser().resolve()
            if out == d or out in d.parents:
                raise ConfigError(f"output_dir {output_dir} contains the input {given}; "
                                  "choose a separate output folder")
        if out.exists() and any(out.iterdir()) and not resume and not overwrite:
            raise ConfigError(f"output_dir {output_dir} is not empty: pass --overwrite-output-dir to replace "
                              "it, or --resume auto to continue the run in it")
        if out.exists() and overwrite and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        return cls(out)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    # ------------------------------------------------------------------------------------------ writers
    def write_config(self, config: dict) -> None:
        if self.writable:
            self.file(CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))

    def write_json(self, name: str, obj: Any) -> None:
        if self.writable:
            self.file(name).write_text(json.dumps(obj, indent=1, default=float))

    def append(self, name: str, record: dict) -> None:
        if self.writable:
            with open(self.file(name), "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_records(self, name: str, records: Iterable[dict]) -> None:
        if self.writable:
            self.file(name).write_text("".join(json.dumps(r) + "\n" for r in records))

    def truncate_records(self, after_step: int) -> None:
        """On resume, drop records a killed run wrote after its last checkpoint (they will be written again)."""
        for name in (METRICS, DOCTOR):
            if self.file(name).is_file():
                self.write_records(name, [r for r in read_jsonl(self.file(name)) if r.get("step", 0) <= after_step])

    # ------------------------------------------------------------------------------------------ readers
    def read_config(self) -> dict:
        """config.yaml as a dict ({} when missing or unreadable: readers report what they lack)."""
        try:
            cfg = yaml.safe_load(self.file(CONFIG).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}
        return cfg if isinstance(cfg, dict) else {}

    def read_json(self, name: str) -> Optional[dict]:
        try:
            obj = json.loads(self.file(name).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return obj if isinstance(obj, dict) else None

    def read_records(self, name: str) -> Optional[list[dict]]:
        """The records of a JSONL file of the run, or None when it does not exist."""
        return read_jsonl(self.file(name)) if self.file(name).is_file() else None


__all__ = ["RunDir", "read_jsonl", "is_eval_record", "CONFIG", "METRICS", "DATA_STATS", "DOCTOR", "PAIR_SCORES",
           "REFERENCE", "SKIPPED", "SKIPPED_EVAL", "CHECKPOINTS", "TENSORBOARD"]
