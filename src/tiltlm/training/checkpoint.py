"""Atomic, checksummed, resumable checkpoints.

A checkpoint is a folder `checkpoints/checkpoint-STEP/` holding the policy weights and optimizer state (as the
parallel strategy holds them: safetensors + state.pt for a whole model, one DCP shard per rank under `sharded/`
for FSDP), the scheduler, every RNG state and the loop position, and a `manifest.json` with the sha256 of each
file.
It is written into a temporary folder, fsync'ed, and renamed into place, so a crash or a full disk mid-write never
leaves a half checkpoint under a valid name; on resume a checkpoint whose files are missing or whose checksums
do not match is reported and the previous good one is used. Only safetensors and torch.load(weights_only=True).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from ..errors import ConfigError, writing
from ..parallel import comm

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, *, strategy, model, optimizer, scheduler, loop_state: dict,
                    total_limit: int = 2, weights: Optional[dict] = None, reference=None) -> Optional[Path]:
    """Write checkpoint-STEP atomically and keep the newest `total_limit`; a collective (every rank calls it).

    Raises OSError on every rank if any rank's write failed (the temporary folder is removed, earlier checkpoints
    are untouched). `weights`: a partial state dict to save instead of the whole model (LoRA adapter).
    `reference`: a live reference model that changes during training (TR-DPO), saved too so that a resumed run
    continues from the mixed reference. Returns the folder (on rank 0; None elsewhere)."""
    world = comm.world()
    final = ckpt_root / f"checkpoint-{step}"
    tmp = ckpt_root / f".tmp-checkpoint-{step}"
    error: Optional[OSError] = None
    if world.is_main:
        try:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            error = e
    comm.barrier()
    state: dict = {}
    if comm.all_true(error is None):
        try:
            with writing(f"checkpoint-{step}"):
                state = strategy.save_model_state(tmp, model, optimizer, weights)
        except OSError as e:
            error = e
        except BaseException:
            if world.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not comm.all_true(error is None):
        if world.is_main:
            _discard(tmp)
        comm.barrier()
        raise error or OSError(f"another rank failed to write its part of checkpoint-{step}")
    path = None
    if world.is_main:
        try:
            with writing(f"checkpoint-{step}"):
                if reference is not None:
                    save_model(reference, str(tmp / "reference.safetensors"))
                torch.save({**state, "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "state.pt")
                (tmp / "loop_state.json").write_text(json.dumps(loop_state, indent=1))
                path = seal(tmp, final, ckpt_root, step, total_limit)
        except BaseException as e:
            _discard(tmp)
            error = e if isinstance(e, OSError) else None
            if error is None:
                raise
    if not comm.all_true(error is None):
        raise error or OSError(f"rank 0 failed to seal checkpoint-{step}")
    return path


def _discard(tmp: Path) -> None:
    """Remove a failed checkpoint's temporary folder and give its space back. The failed writer's open file
    handles sit in reference cycles of its traceback; until they are collected a full disk stays full (a deleted
    file's space is freed only when its last handle closes), and every later write fails too."""
    shutil.rmtree(tmp, ignore_errors=True)
    gc.collect()


def seal(tmp: Path, final: Path, ckpt_root: Path, step: int, total_limit: int) -> Path:
    """fsync every file of the finished temporary folder, write the checksum manifest, rename it into place and
    drop all but the newest `total_limit` checkpoints. Files in sub-folders (sharded checkpoints) count too."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    for f in files:
        _fsync(f)
    manifest = {"step": step, "files": {f.relative_to(tmp).as_posix(): {"sha256": _sha256(f),
                                                                         "bytes": f.stat().st_size}
                                        for f in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync(tmp / MANIFEST)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(ckpt_root)
    for old in list_checkpoints(ckpt_root)[:-total_limit] if total_limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """checkpoint-N folders, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def verify(ckpt: Path) -> Optional[str]:
    """None if the checkpoint is complete and every checksum matches, else what is wrong."""
    mpath = ckpt / MANIFEST
    if not mpath.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError:
        return "manifest is corrupt"
    for name, meta in manifest.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
            return f"{name} fails its checksum"
    return None


def find_resumable(ckpt_root: Path, requested: str, log=print) -> Optional[Path]:
    """`auto`: newest valid checkpoint under ckpt_root (None if there is none); else the given path, verified."""
    if requested != "auto":
        path = Path(requested)
        problem = verify(path) if path.is_dir() else "not found"
        if problem:
            raise ConfigError(f"cannot resume from {requested}: {problem}")
        return path
    for ckpt in reversed(list_checkpoints(ckpt_root)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        log(f"warning: skipping damaged checkpoint {ckpt}: {problem}; trying the previous one")
    return None


def load_checkpoint(ckpt: Path, *, strategy, model, optimizer, scheduler, reference=None) -> dict:
    """Restore model/optimizer/scheduler/RNG in place (and a TR-DPO reference); returns the loop state."""
    state = torch.load(ckpt / "state.pt", weights_only=True)
    strategy.load_model_state(ckpt, model, optimizer, state)
    if reference is not None and (ckpt / "reference.safetensors").is_file():
        load_model(reference, str(ckpt / "reference.safetensors"))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((ckpt / "loop_state.json").read_text())
