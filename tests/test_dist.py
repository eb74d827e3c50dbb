"""Data-parallel DPO on CPU: 2 processes (torchrun, gloo) x batch b must equal 1 process x batch 2b.

The 2-rank runs are real `torchrun --nproc_per_node 2 -m tiltlm.cli train ...` subprocesses (one also through the
`tilt train --nproc 2` convenience), compared with an in-process single-process run: per-step metrics, the
precomputed reference table, eval metrics and the final weights, within 1e-6. A checkpoint written by 2 ranks
resumes on 2 ranks to the same weights as the uninterrupted 2-rank run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiltlm import train
from tiltlm.config import load_config
from tiltlm.parallel import comm
from tiltlm.training import checkpoint as ckpt

QUIET = lambda *a, **k: None  # noqa: E731
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
KEYS = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
        "logps/chosen", "logps/rejected", "logps_per_token/chosen", "logps_per_token/rejected", "kl_proxy",
        "tokens/chosen", "tokens/rejected", "len_diff_margin_corr", "learning_rate", "pairs", "pairs_seen", "epoch")


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


def opts(assets, out, **kw):
    o = dict(model=str(assets / "model"), data=str(assets / "train.jsonl"), output_dir=str(out),
             eval_data=str(assets / "eval6.jsonl"), eval_steps=2, learning_rate=1e-3, max_steps=4,
             per_device_train_batch_size=4, per_device_eval_batch_size=2, progress=False, seed=0,
             ref_cache_dir=str(out) + "-cache", doctor=False)
    o.update(kw)
    return o


def torchrun(assets, out, *, nproc_flag=False, timeout=240, **kw):
    o = opts(assets, out, **kw)
    args = ["train"]
    for k, v in o.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if nproc_flag:  # the `tilt train --nproc 2` convenience
        cmd = [sys.executable, "-m", "tiltlm.cli", *args, "--nproc", "2"]
    else:
        cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tiltlm.cli", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def records(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(out):
    return load_file(str(Path(out) / "model.safetensors"))


@pytest.fixture(scope="module")
def single(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)
    train(load_config(None, opts(assets, out, per_device_train_batch_size=4)), log=QUIET)
    return out


@pytest.fixture(scope="module")
def double(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    p = torchrun(assets, out, per_device_train_batch_size=2, save_steps=2)
    return out, p


def test_shard_is_disjoint_and_complete(monkeypatch):
    items = list(range(11))
    got = []
    for rank in range(3):
        monkeypatch.setattr(comm, "_WORLD", comm.World(rank=rank, size=3))
        got.append(comm.shard(items))
    assert sorted(x for part in got for x in part) == items
    assert all(len(part) in (3, 4) for part in got)
    monkeypatch.setattr(comm, "_WORLD", comm.World())
    assert comm.shard(items) == items and comm.all_true(True) and comm.sum_scalars(1.5, 2) == [1.5, 2]


def assert_same_run(single, out2, proc, n_records=6):
    """The 2-rank run at out2 logged the same metrics and saved the same weights as the 1-process run (1e-6)."""
    one, two = records(single), records(out2)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    train1, train2 = [r for r in one if "loss" in r], [r for r in two if "loss" in r]
    assert len(train1) == 4 and train1[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    for a, b in zip(train1, train2):
        for key in KEYS:
            assert (key in a) == (key in b), key
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-6, rel=1e-6), (key, a["step"])
        assert b["pairs"] == a["pairs"] == 4
    evals1, evals2 = [r for r in one if "eval/loss" in r], [r for r in two if "eval/loss" in r]
    assert len(evals1) == len(evals2) == 2  # steps 2 and 4 (= the end: not evaluated twice)
    for a, b in zip(evals1, evals2):
        for key, v in a.items():
            assert b[key] == pytest.approx(v, abs=1e-6, rel=1e-6), key
    assert evals2[0]["eval/pairs"] == 6  # every eval pair once, none twice
    w1, w2 = weights(single), weights(out2)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-6, rtol=0), name
    # rank 0 alone logs and writes: one line per record, no duplicates
    assert len(two) == len(one) == n_records  # 4 train lines, evals at steps 2 and 4
    assert proc.stdout.count("final:") == 1


def test_two_ranks_equal_one_process_with_double_batch(single, double):
    assert_same_run(single, *double)


def test_distributed_reference_pass_equals_single_process(single, double):
    out2, _ = double
    from tiltlm.model.reference import CachedReference

    a = CachedReference.load(json.loads((single / "reference.json").read_text())["cache"]).to_rows()
    b = CachedReference.load(json.loads((out2 / "reference.json").read_text())["cache"]).to_rows()
    assert [r["index"] for r in a] == [r["index"] for r in b]  # gathered: every pair, once, in order
    for x, y in zip(a, b):
        assert y["chosen_logp"] == pytest.approx(x["chosen_logp"], abs=1e-5)
        assert y["rejected_logp"] == pytest.approx(x["rejected_logp"], abs=1e-5)
        assert (x["chosen_tokens"], x["rejected_tokens"]) == (y["chosen_tokens"], y["rejected_tokens"])


def test_checkpoint_from_two_ranks_resumes_on_two_ranks(assets, double, tmp_path):
    full, _ = double
    part = tmp_path / "part"
    shutil.copytree(full, part)  # the same 2-rank run, then "crash" after step 2
    (part / "config.yaml").unlink()
    ckpts = ckpt.list_checkpoints(part / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(ckpts[-1])
    for f in ("model.safetensors", "finished.json"):  # what a crash after step 2 leaves
        (part / f).unlink()
    torchrun(assets, part, nproc_flag=True, per_device_train_batch_size=2, save_steps=2, resume="auto",
             ref_cache_dir=str(full) + "-cache")
    wa, wb = weights(full), weights(part)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-7, rtol=0), name
    steps = [(r["step"], "eval/loss" in r) for r in records(part)]
    assert steps == [(r["step"], "eval/loss" in r) for r in records(full)]


# ------------------------------------------------------------------------------------------------ FSDP2
@pytest.fixture(scope="module")
def double_fsdp(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_fsdp") / "run"
    p = torchrun(assets, out, per_device_train_batch_size=2, save_steps=2, dist="fsdp")
    return out, p


def test_fsdp_two_ranks_equal_one_process_with_double_batch(single, double_fsdp):
    assert_same_run(single, *double_fsdp)
    assert "fsdp" in double_fsdp[1].stdout.lower()


def test_fsdp_checkpoint_is_sharded_checksummed_and_resumes_on_two_ranks(assets, double_fsdp, tmp_path):
    full, _ = double_fsdp
    ckpts = ckpt.list_checkpoints(full / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4"]
    manifest = json.loads((ckpts[0] / "manifest.json").read_text())["files"]
    shards = [name for name in manifest if name.startswith("sharded/") and name.endswith(".distcp")]
    assert len(shards) == 2, manifest  # one file of model + optimizer shards per rank, each checksummed
    assert "model.safetensors" not in manifest and ckpt.verify(ckpts[0]) is None
    part = tmp_path / "part"
    shutil.copytree(full, part)
    (part / "config.yaml").unlink()
    shutil.rmtree(part / "checkpoints" / "checkpoint-4")
    for f in ("model.safetensors", "finished.json"):
        (part / f).unlink()
    torchrun(assets, part, per_device_train_batch_size=2, save_steps=2, resume="auto", dist="fsdp",
             ref_cache_dir=str(full) + "-cache")
    wa, wb = weights(full), weights(part)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-7, rtol=0), name
    assert [r["step"] for r in records(part)] == [r["step"] for r in records(full)]


def test_fsdp_live_sharded_reference_packing_and_accumulation_equal_one_process(assets, tmp_path):
    """Live (sharded) reference, packing (ranks may get different numbers of micro-batches: padded calls) and
    gradient accumulation: 2 FSDP ranks x (1 pair x 2 micro-batches) == 1 process x (2 pairs x 2 micro-batches)."""
    kw = dict(precompute_ref_log_probs=False, packing=True, max_tokens_per_batch=64, gradient_accumulation_steps=2,
              eval_steps=0)
    one = tmp_path / "one"
    train(load_config(None, opts(assets, one, per_device_train_batch_size=2, **kw)), log=QUIET)
    two = tmp_path / "two"
    proc = torchrun(assets, two, per_device_train_batch_size=1, dist="fsdp", **kw)
    a, b = records(one), records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == 5
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "eval/loss", "eval/rewards/accuracies"):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=1e-6, rel=1e-6), (key, x["step"])
    wa, wb = weights(one), weights(two)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-6, rtol=0), name
    assert proc.returncode == 0


def test_fsdp_refuses_lora_with_a_clear_message(assets, tmp_path):
    o = opts(assets, tmp_path / "run", dist="fsdp", lora_r=4)
    args = ["train"] + [x for k, v in o.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    p = subprocess.run([sys.executable, "-m", "tiltlm.cli", *args, "--nproc", "2"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert p.returncode == 2, p.stderr[-2000:]  # refused before any process is started
    assert "--dist fsdp with LoRA" in p.stderr and "Traceback" not in p.stdout + p.stderr


# ------------------------------------------------------------------------------------------------ changing world size
def _crash_after_step_2(run, to):
    """A copy of a finished 4-step run as a crash after step 2 leaves it: checkpoint-2 and the records."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / "checkpoint-4")
    for f in ("config.yaml", "model.safetensors", "finished.json"):
        (to / f).unlink()
    return to


@pytest.mark.parametrize("written_by", ["ddp", "fsdp"])
def test_a_two_rank_checkpoint_resumes_in_one_process(assets, single, double, double_fsdp, tmp_path, written_by):
    """Whole-model (DDP) and sharded (FSDP, re-assembled by torch.distributed.checkpoint) checkpoints of 2 ranks x
    batch 2 resume in one process x batch 4: the same global steps, so the weights of the 1-process run."""
    full = (double if written_by == "ddp" else double_fsdp)[0]
    part = _crash_after_step_2(full, tmp_path / "part")
    train(load_config(None, opts(assets, part, per_device_train_batch_size=4, save_steps=2, resume="auto",
                                 ref_cache_dir=str(full) + "-cache")), log=QUIET)
    wa, wb = weights(single), weights(part)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-6, rtol=0), name


def test_a_one_process_checkpoint_resumes_on_two_ranks(assets, single, tmp_path):
    one = tmp_path / "one"
    train(load_config(None, opts(assets, one, per_device_train_batch_size=4, save_steps=2)), log=QUIET)
    part = _crash_after_step_2(one, tmp_path / "part")
    torchrun(assets, part, per_device_train_batch_size=2, save_steps=2, resume="auto", ref_cache_dir=str(one) + "-cache")
    wa, wb = weights(single), weights(part)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-6, rtol=0), name


def test_a_one_process_checkpoint_under_fsdp_is_refused_with_the_reason(assets, tmp_path):
    one = tmp_path / "one"
    train(load_config(None, opts(assets, one, per_device_train_batch_size=4, save_steps=2)), log=QUIET)
    part = _crash_after_step_2(one, tmp_path / "part")
    o = opts(assets, part, per_device_train_batch_size=2, save_steps=2, resume="auto", dist="fsdp",
             ref_cache_dir=str(one) + "-cache")
    args = [a for k, v in o.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    p = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tiltlm.cli", "train", *args],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "holds whole-model weights" in p.stderr and "resume it with --dist ddp or in one process" in p.stderr
    assert "[rank0]: Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------ a rank dies
@pytest.mark.slow
def test_a_killed_rank_stops_the_other_with_one_line_and_resume_is_bitwise(assets, tmp_path):
    """SIGKILL one of 2 DDP ranks mid-run: the surviving rank's collective fails at once (no hang), it says so in
    one line, and `--resume auto` on 2 ranks ends with the weights of the uninterrupted 2-rank run."""
    def command(out, *extra):
        return [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tiltlm.cli", "train", "--model",
                str(assets / "model"), "--data", str(assets / "train.jsonl"), "--output-dir", str(out),
                "--max-steps", "24", "--save-steps", "4", "--per-device-train-batch-size", "2", "--learning-rate",
                "1e-3", "--progress", "false", "--ref-cache-dir", str(tmp_path / "cache"), "--doctor", "false",
                "--ddp-timeout", "60", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "run"
    launcher = subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (out / "checkpoints" / "checkpoint-4").exists():
        assert launcher.poll() is None and time.time() - t0 < 300, "the run ended before checkpoint-4"
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(max(workers, key=int)), signal.SIGKILL)  # the later-started worker (rank 1)
    text, _ = launcher.communicate(timeout=180)  # no hang: gloo reports the closed connection at once
    assert launcher.returncode != 0
    assert "error: rank 0: another process of this run died or stopped answering" in text
    assert "[rank0]: Traceback" not in text
    done = subprocess.run(command(out, "--resume", "auto"), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    want, got = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("dist", ["ddp", "fsdp"])
def test_bf16_on_two_ranks_trains_like_bf16_in_one_process(assets, tmp_path, dist):
    """--bf16 under DDP (gradients summed in fp32) and FSDP2 (MixedPrecisionPolicy: bf16 compute over the fp32
    sharded master weights, fp32 reduce-scatter). Each rank scores other rows than the single process does, and
    FSDP also rounds the norm weights to bf16, so agreement is to bf16's resolution, not 1e-6."""
    kw = dict(bf16=True, eval_steps=0)
    one = tmp_path / "one"
    train(load_config(None, opts(assets, one, per_device_train_batch_size=4, **kw)), log=QUIET)
    two = tmp_path / "two"
    proc = torchrun(assets, two, per_device_train_batch_size=2, dist=dist, **kw)
    a, b = [r for r in records(one) if "loss" in r], [r for r in records(two) if "loss" in r]
    assert len(a) == len(b) == 4 and b[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=5e-3)
        assert y["logps/chosen"] == pytest.approx(x["logps/chosen"], rel=1e-2)
    wa, wb = weights(one), weights(two)
    assert all(wb[k].dtype == torch.float32 for k in wb)  # the master weights, not a bf16 copy
    change = lambda w: torch.cat([(w[k] - w0[k]).flatten() for k in sorted(w0)])  # noqa: E731
    w0 = load_file(str(assets / "model" / "model.safetensors"))
    da, db = change(wa), change(wb)
    assert float(da @ db / (da.norm() * db.norm())) > 0.95
    assert "bfloat16" in proc.stdout


def test_fsdp_rank_without_pairs_in_a_short_last_step_pads_its_calls(assets, tmp_path):
    """5 pairs, 4 per step on 2 ranks: step 2 has 1 pair, so rank 1 has none and must still match rank 0's
    collective calls (a zero-weight spare call) instead of raising."""
    five = tmp_path / "five.jsonl"
    five.write_text("".join((assets / "train.jsonl").read_text().splitlines(keepends=True)[:5]))
    out = tmp_path / "run"
    torchrun(assets, out, data=str(five), dist="fsdp", per_device_train_batch_size=2, max_steps=2, eval_steps=0)
    train_records = [r for r in records(out) if "loss" in r]
    assert [r["pairs"] for r in train_records] == [4, 1]
    assert (out / "model.safetensors").is_file()
