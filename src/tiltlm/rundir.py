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
    finished.json       written last, after the final model: the step and the options of the finished run
    checkpoints/        resumable checkpoints (training/checkpoint.py)
    tensorboard/, wandb/  --report-to tensorboard / wandb (their local files)
    README.md           the model card (huggingface_hub ModelCard), written with the final model
    .lock               held (flock) by the live run that writes the folder; the kernel releases it when the
                        process ends, however it ends, so a crashed run never leaves the folder locked
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from .errors import ConfigError, writing

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
DATA_STATS = "data_stats.json"
DOCTOR = "doctor.jsonl"
PAIR_SCORES = "pair_scores.jsonl"
REFERENCE = "reference.json"
SKIPPED = "skipped.jsonl"
SKIPPED_EVAL = "skipped_eval.jsonl"
FINISHED = "finished.json"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
MODEL_CARD = "README.md"


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


def _comparable(options: dict) -> dict:
    """The options that define a run (not how it was started: a scheduler relaunch adds --resume auto)."""
    skip = {"resume", "overwrite_output_dir", "progress"}
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in skip}, default=str))


def is_eval_record(record: dict) -> bool:
    return any(str(k).startswith("eval/") for k in record)


class RunDir:
    """One run folder. `writable=False` (processes other than rank 0) turns every write into a no-op."""

    def __init__(self, path: str | Path, *, writable: bool = True):
        self.path = Path(path)
        self.writable = writable
        self._lock_fd: Optional[int] = None

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
        out.mkdir(parents=True, exist_ok=True)
        run = cls(out)
        run.lock()  # before anything in it is judged or removed: another live run may be writing it
        contents = [p for p in out.iterdir() if p.name != LOCK]
        if contents and not resume and not overwrite:
            run.unlock()
            raise ConfigError(f"output_dir {output_dir} is not empty: pass --overwrite-output-dir to replace "
                              "it, or --resume auto to continue the run in it")
        if overwrite and not resume:
            for p in contents:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        return run

    def lock(self) -> None:
        """Hold the folder's lock for the life of this process; a live holder is a ConfigError naming its pid."""
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"output_dir {self.path} is in use by another running tilt train (pid {holder}); "
                              "wait for it to finish or choose another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def finished_step(self, options: dict) -> Optional[int]:
        """The step a finished run with these options ended at (same command relaunched), else None."""
        done = self.read_json(FINISHED)
        if done and done.get("options") == _comparable(options):
            return int(done["step"])
        return None

    def mark_finished(self, step: int, options: dict) -> None:
        """Written after the final model: a relaunch of the same command has nothing left to do."""
        self.write_json(FINISHED, {"step": step, "options": _comparable(options)})

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    # ------------------------------------------------------------------------------------------ writers
    # Every writer raises one OSError naming the file when the write fails (a full disk included: errors.writing).
    def write_config(self, config: dict) -> None:
        self._write(CONFIG, yaml.safe_dump(config, sort_keys=False))

    def write_json(self, name: str, obj: Any) -> None:
        self._write(name, json.dumps(obj, indent=1, default=float))

    def append(self, name: str, record: dict) -> None:
        if self.writable:
            with writing(str(self.file(name))), open(self.file(name), "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_text(self, name: str, text: str) -> None:
        self._write(name, text)

    def write_records(self, name: str, records: Iterable[dict]) -> None:
        self._write(name, "".join(json.dumps(r) + "\n" for r in records))

    def _write(self, name: str, text: str) -> None:
        """Replace the file whole: written beside it, then renamed, so a failed write leaves the old one."""
        if not self.writable:
            return
        tmp = self.file(f".{name}.tmp")
        try:
            with writing(str(self.file(name))):
                tmp.write_text(text)
                os.replace(tmp, self.file(name))
        finally:
            tmp.unlink(missing_ok=True)

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
           "REFERENCE", "SKIPPED", "SKIPPED_EVAL", "FINISHED", "LOCK", "CHECKPOINTS", "TENSORBOARD", "MODEL_CARD"]
