"""Scorer functions for tests/test_iterate.py, loaded by `tilt iterate --scorer fn:iterate_scorers:...`."""

import os
import time
from pathlib import Path

from tiltlm.demo.task import reward


def lexicon(completion: str) -> float:
    return reward(completion)


def constant(completion: str) -> float:
    return 0.0


def blocking_lexicon(completion: str) -> float:
    """The lexicon reward, except that it hangs (after writing RUN/blocked) once round 1 is sampling: round 1's
    held-out curve point is written just before its samples are scored, so a SIGKILL then lands mid-sampling."""
    run = os.environ.get("TILT_TEST_BLOCK_RUN")
    if run and (Path(run) / "round-001" / "heldout.json").is_file():
        (Path(run) / "blocked").write_text("scoring round 1's samples\n")
        time.sleep(600)
    return reward(completion)
