"""Real faults through the real CLI: a filesystem that really fills up, real SIGKILLs, real concurrent processes,
broken model folders. Every answer must be one clear line (never a traceback) and nothing good may be lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

QUICK = ["--learning-rate", "1e-3", "--per-device-train-batch-size", "4", "--progress", "false", "--seed", "3"]


def tilt(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiltlm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def train_args(assets: Path, out: Path, cache: Path, *extra) -> list:
    return ["train", "--model", assets / "model", "--data", assets / "train12.jsonl", "--output-dir", out,
            "--ref-cache-dir", cache, *QUICK, *extra]


def one_clear_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a few MB (tmpfs, mounted as root); yields a function size_mb -> mount point."""
    mounts = []

    def mount(size_mb: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(point)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {p.stderr.strip()}")
        mounts.append(point)
        return point

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (the patched-write test in test_train.py covers the rest)")
    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(disk: Path) -> None:
    """Write zeros until the filesystem refuses: it is then full to the last block (unbuffered: nothing pending)."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ a full disk
def test_full_disk_everywhere_is_one_line_and_leaves_nothing_half_written(tiny_assets, tmp_path, small_disk):
    """12 MB: the run folder's small files fit, no checkpoint (~20 MB) does, nor the final model (~10 MB)."""
    disk = small_disk(12)
    p = tilt(*train_args(tiny_assets, disk / "run", disk / "cache", "--max-steps", "3", "--save-steps", "1"))
    line = one_clear_line(p)
    assert "cannot write the final model" in line and "no checkpoint was written" in line
    failed = [l for l in p.stdout.splitlines() if l.startswith("error: writing the checkpoint")]
    assert len(failed) == 3 and all("is the disk full?" in l for l in failed)  # torch.save's RuntimeError, named
    run = disk / "run"
    assert not list(run.glob(".tmp*")) and not list((run / "checkpoints").iterdir())
    assert not (run / "model.safetensors").exists() and not (run / "finished.json").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # the record of the run is complete


def test_full_disk_for_later_checkpoints_keeps_the_last_good_one_and_finishes(tiny_assets, small_disk):
    """32 MB: checkpoint-1 (~18 MB) fits, a second one beside it does not, the final model (~10 MB) does: the run
    goes on without more checkpoints and finishes."""
    disk = small_disk(32)
    p = tilt(*train_args(tiny_assets, disk / "run", disk / "cache", "--max-steps", "3", "--save-steps", "1",
                         "--save-total-limit", "5"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    failed = [l for l in p.stdout.splitlines() if l.startswith("error: writing the checkpoint")]
    assert failed and all("last good checkpoint" in l and "checkpoint-1" in l for l in failed)
    ckpts = sorted(x.name for x in (disk / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-1"]
    assert (disk / "run" / "model.safetensors").is_file() and (disk / "run" / "finished.json").is_file()


def test_a_disk_that_fills_during_training_stops_the_run_with_one_line(tiny_assets, tmp_path, small_disk):
    """The disk fills up while the run logs its metrics (no checkpoints): it stops with one line and exit 2; the
    records already written stay readable."""
    disk = small_disk(2)
    args = train_args(tiny_assets, disk / "run", tmp_path / "cache", "--max-steps", "2000")
    proc = subprocess.Popen([sys.executable, "-m", "tiltlm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (disk / "run" / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.02)
    fill(disk)  # someone else fills the disk
    out, err = proc.communicate(timeout=300)
    line = one_clear_line(subprocess.CompletedProcess(args, proc.returncode, out, err))
    assert "metrics.jsonl" in line and "No space left on device" in line
    from tiltlm.rundir import read_jsonl

    assert read_jsonl(disk / "run" / "metrics.jsonl")[0]["step"] == 1


def test_reference_cache_on_a_full_disk_is_a_warning(tiny_assets, tmp_path, small_disk):
    disk = small_disk(1)
    fill(disk)
    p = tilt(*train_args(tiny_assets, tmp_path / "run", disk / "cache", "--max-steps", "1"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "training goes on without caching the reference log-probs" in p.stdout
    assert not list(disk.glob("cache/*"))  # no half-written cache file


# ------------------------------------------------------------------------------------------------ relaunching
def test_relaunching_a_finished_run_is_a_no_op(tiny_assets, tmp_path):
    args = train_args(tiny_assets, tmp_path / "run", tmp_path / "cache", "--max-steps", "2")
    assert tilt(*args).returncode == 0
    model = tmp_path / "run" / "model.safetensors"
    before = model.stat().st_mtime_ns
    p = tilt(*args, "--resume", "auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "already finished at step 2" in p.stdout
    assert model.stat().st_mtime_ns == before  # the final model is not rewritten
    p = tilt(*train_args(tiny_assets, tmp_path / "run", tmp_path / "cache", "--max-steps", "3"), "--resume", "auto")
    assert p.returncode == 0 and "already finished" not in p.stdout  # a different command is not "the same run"


@pytest.mark.slow
def test_sigkill_during_the_final_save_then_resume_finishes_it_bitwise(tiny_assets, tmp_path):
    args = train_args(tiny_assets, tmp_path / "run", tmp_path / "cache", "--max-steps", "3", "--save-steps", "1")
    assert tilt(*train_args(tiny_assets, tmp_path / "ref", tmp_path / "cache", "--max-steps", "3",
                            "--save-steps", "1")).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "tiltlm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    scores = tmp_path / "run" / "pair_scores.jsonl"  # written just before the final model
    t0 = time.time()
    while not scores.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "finished.json").exists()
    p = tilt(*args, "--resume", "auto")
    assert p.returncode == 0, p.stderr[-3000:]
    want, got = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "run" /
                                                                                        "model.safetensors"))
    assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)
    assert not list((tmp_path / "run").glob(".tmp*"))


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_then_resume_starts_the_records_over(tiny_assets, tmp_path):
    """No checkpoint to resume from: the run starts fresh, and the killed run's metrics records go (each step is
    recorded once, by the run that finished)."""
    args = train_args(tiny_assets, tmp_path / "run", tmp_path / "cache", "--max-steps", "6", "--save-steps", "0")
    proc = subprocess.Popen([sys.executable, "-m", "tiltlm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics, t0 = tmp_path / "run" / "metrics.jsonl", time.time()
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    p = tilt(*args, "--resume", "auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "no checkpoint to resume from; starting fresh" in p.stdout + p.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------------ two runs
@pytest.mark.slow
def test_a_live_run_locks_its_folder_and_a_killed_one_does_not(tiny_assets, tmp_path):
    args = train_args(tiny_assets, tmp_path / "run", tmp_path / "cache", "--max-steps", "400", "--save-steps", "2")
    proc = subprocess.Popen([sys.executable, "-m", "tiltlm.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (tmp_path / "run" / "metrics.jsonl").exists():
            assert proc.poll() is None and time.time() - t0 < 300
            time.sleep(0.05)
        line = one_clear_line(tilt(*args, "--resume", "auto"))
        assert "in use by another running tilt train" in line and f"pid {proc.pid}" in line
        line = one_clear_line(tilt(*args, "--overwrite-output-dir"))  # not even an overwrite may touch it
        assert "in use" in line and (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    p = tilt(*train_args(tiny_assets, tmp_path / "run", tmp_path / "cache", "--max-steps", "4", "--save-steps", "2"),
             "--resume", "auto")
    assert p.returncode == 0, p.stderr[-3000:]  # the kernel released the dead run's lock


@pytest.mark.slow
def test_two_runs_sharing_a_reference_cache_at_the_same_time(tiny_assets, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "tiltlm.cli", *map(str, train_args(
        tiny_assets, tmp_path / f"run{k}", tmp_path / "cache", "--max-steps", "2"))], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for k in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    first = [json.loads((tmp_path / f"run{k}" / "metrics.jsonl").read_text().splitlines()[0]) for k in range(2)]
    assert first[0]["loss"] == first[1]["loss"] and first[0]["logps/chosen"] == first[1]["logps/chosen"]
    cache = sorted(f.name for f in (tmp_path / "cache").iterdir())  # no temporary file left behind by either
    assert len(cache) == 2 and cache[0].startswith("path-") and cache[0].endswith(".json"), cache  # the verdict
    assert cache[1].startswith("ref-") and cache[1].endswith(".parquet"), cache


def test_a_corrupted_reference_cache_is_detected_and_recomputed(tiny_assets, tmp_path):
    args = lambda name: train_args(tiny_assets, tmp_path / name, tmp_path / "cache", "--max-steps", "2")  # noqa
    assert tilt(*args("a")).returncode == 0
    (cache,) = (tmp_path / "cache").glob("*.parquet")
    table = pq.read_table(cache)  # a valid Parquet file whose numbers were changed: only the checksum can tell
    rows = table.to_pylist()
    rows[0]["chosen_logp"] += 1.0
    pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata(table.schema.metadata), cache)
    p = tilt(*args("b"))
    assert p.returncode == 0 and "checksum does not match" in p.stdout and "recomputing" in p.stdout
    a, b = ((tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in "ab")
    assert json.loads(a[0])["loss"] == json.loads(b[0])["loss"]


# ------------------------------------------------------------------------------------------------ broken inputs
def _model_copy(tiny_assets, tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_assets / "model", model)
    return model


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_broken_weight_file_is_one_line(tiny_assets, tmp_path, damage):
    model = _model_copy(tiny_assets, tmp_path)
    weights = model / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    p = tilt("train", "--model", model, "--data", tiny_assets / "train12.jsonl", "--output-dir", tmp_path / "o",
             "--max-steps", "1", *QUICK)
    assert "cannot load the model from" in one_clear_line(p)


def test_a_tokenizer_from_another_model_is_one_line(tiny_assets, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = _model_copy(tiny_assets, tmp_path)
    small = AutoConfig.from_pretrained(model)
    small.vocab_size = 1000
    AutoModelForCausalLM.from_config(small).save_pretrained(model)  # a 1,000-token model with a 49k tokenizer
    p = tilt("train", "--model", model, "--data", tiny_assets / "train12.jsonl", "--output-dir", tmp_path / "o",
             "--max-steps", "1", *QUICK)
    assert "does not belong to this model" in one_clear_line(p)


def test_pairs_longer_than_the_model_context_are_one_line(tiny_assets, tmp_path):
    model = _model_copy(tiny_assets, tmp_path)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 16}))
    p = tilt("train", "--model", model, "--data", tiny_assets / "train12.jsonl", "--output-dir", tmp_path / "o",
             "--max-steps", "1", *QUICK)
    assert "max_position_embeddings" in one_clear_line(p)


def test_a_yaml_option_of_the_wrong_type_is_one_line(tiny_assets, tmp_path):
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"model: {tiny_assets / 'model'}\ndata: {tiny_assets / 'train12.jsonl'}\n"
                   f"output_dir: {tmp_path / 'o'}\nbeta: [0.1, 0.2]\n")
    assert "beta" in one_clear_line(tilt("train", "--config", cfg))


@pytest.mark.parametrize("remove", [("pad_token",), ("pad_token", "eos_token")])
def test_a_tokenizer_without_a_pad_token(tiny_assets, tmp_path, remove):
    """No pad token: EOS pads (padding is masked out, as TRL does) and training runs; neither pad nor EOS: one line."""
    model = _model_copy(tiny_assets, tmp_path)
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in tok_cfg.items() if k not in remove}))
    p = tilt("train", "--model", model, "--data", tiny_assets / "train12.jsonl", "--output-dir", tmp_path / "o",
             "--max-steps", "1", "--ref-cache-dir", tmp_path / "cache", *QUICK)
    if remove == ("pad_token",):
        assert p.returncode == 0, p.stderr[-3000:]
    else:
        assert "neither a pad token nor an EOS token" in one_clear_line(p)


def test_a_report_on_a_full_disk_is_one_line(tiny_assets, tmp_path, small_disk):
    run = tmp_path / "run"
    assert tilt(*train_args(tiny_assets, run, tmp_path / "cache", "--max-steps", "2")).returncode == 0
    disk = small_disk(1)
    for name in ("metrics.jsonl", "config.yaml", "data_stats.json", "pair_scores.jsonl"):
        shutil.copy(run / name, disk / name)
    fill(disk)  # the disk is full before the report starts
    line = one_clear_line(tilt("report", disk))
    assert "No space left on device" in line or "cannot write" in line
