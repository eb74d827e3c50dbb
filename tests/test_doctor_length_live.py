"""Length bias during real (tiny) training runs: a run whose longer reply wins is caught live and held out, in that
direction; a run whose pairs are length-balanced stays quiet; `tilt doctor` on the finished run says the same."""

import json
import random
from pathlib import Path

import pytest

from tiltlm import train
from tiltlm.config import load_config
from tiltlm.doctor.replay import diagnose_run

QUIET = lambda *a, **k: None  # noqa: E731
GOOD = [" Happy to help with that.", " Sure, I can help.", " Of course, gladly."]
BAD = [" Whatever, not my problem.", " No, do it alone.", " Not my job, sorry."]


def write_length_pairs(path: Path, n: int, seed: int, chosen_reps, rejected_reps) -> Path:
    """Polite (chosen) and rude (rejected) sentences, each reply `reps(rng)` sentences long."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            prompt = f"Question {i}: can you help me with task {rng.randint(0, 999)}? Answer:"
            chosen = "".join(rng.choice(GOOD) for _ in range(chosen_reps(rng)))
            rejected = "".join(rng.choice(BAD) for _ in range(rejected_reps(rng)))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run(assets, tmp_path: Path, train_file: Path, eval_file: Path) -> Path:
    out = tmp_path / "run"
    opts = dict(model=str(assets / "model"), data=str(train_file), eval_data=str(eval_file), output_dir=str(out),
                learning_rate=2e-3, per_device_train_batch_size=8, max_steps=16, logging_steps=1, eval_steps=8,
                progress=False, ref_cache_dir=str(tmp_path / "cache"), seed=0)
    train(load_config(None, opts), log=QUIET)
    return out


def test_longer_wins_run_is_caught_and_replayed(tiny_assets, tmp_path):
    longer = lambda rng: rng.randint(2, 4)  # noqa: E731  chosen: 2-4 polite sentences; rejected: one rude one
    once = lambda rng: 1  # noqa: E731
    tr = write_length_pairs(tmp_path / "train.jsonl", 64, 0, longer, once)
    ev = write_length_pairs(tmp_path / "eval.jsonl", 48, 1, longer, once)
    out = run(tiny_assets, tmp_path, tr, ev)
    found = [f for f in rows(out / "doctor.jsonl") if f["check"] == "length_bias"]
    assert found and found[0]["step"] == 0 and "chosen is longer than rejected in 100%" in found[0]["message"]
    later = [f for f in found if f["step"] > 0]
    assert later and all("LONGER WINS" in f["message"] for f in later), found
    assert any(f["message"].startswith("len_diff_margin_corr +") for f in later)  # live, from the train records
    assert any(f["message"].startswith("on the held-out pairs") for f in later)  # and on the eval records
    assert all("chosen reply is much longer" in f["fix"] for f in found)
    evals = [r for r in rows(out / "metrics.jsonl") if "eval/len_diff_margin_corr" in r]
    assert evals[-1]["eval/len_diff_margin_corr"] > 0.3
    assert [f.to_dict() for f in diagnose_run(out)] == rows(out / "doctor.jsonl")  # tilt doctor: the same


def test_length_balanced_run_stays_quiet(tiny_assets, tmp_path):
    same = lambda rng: rng.randint(1, 3)  # noqa: E731  both sides 1-3 sentences, drawn alike
    tr = write_length_pairs(tmp_path / "train.jsonl", 64, 0, same, same)
    ev = write_length_pairs(tmp_path / "eval.jsonl", 48, 1, same, same)
    out = run(tiny_assets, tmp_path, tr, ev)
    assert [f for f in rows(out / "doctor.jsonl") if f["check"] == "length_bias"] == []
    evals = [r for r in rows(out / "metrics.jsonl") if "eval/rewards/accuracies" in r]
    assert evals[-1]["eval/rewards/accuracies"] > 0.8  # it did learn the preference
