"""The CUDA path (`pytest -m gpu`, `make test-gpu`; every test here is skipped without CUDA).

* every fast path equals the plain path on CUDA: fp32 to 1e-4; bf16 (torch.autocast) to the documented tolerance
  below, gradients included;
* FlexAttention (tiltlm's hook, BlockMask) equals the dense-mask SDPA path, forward and gradients, on rows longer
  than one 128-token block;
* a short training run per layout (plain, prefix-shared, packed) on CUDA agrees with the plain layout;
* DDP and FSDP2 under NCCL with one rank equal the single-process run;
* checkpoints carry the CUDA RNG state, and under deterministic settings (CUBLAS_WORKSPACE_CONFIG=:4096:8 +
  torch.use_deterministic_algorithms) a resumed CUDA run is bitwise identical to an uninterrupted one.

bf16 tolerance: autocast runs the matmuls in bf16 (8 mantissa bits: a relative step of 2^-8 = 0.4%), log-probs are
accumulated in fp32. Two layouts differ only in summation order inside bf16 matmuls and attention, so each
sequence's log-prob sum agrees to 2% relative (+0.05 nats), and each gradient to 5% of its norm.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiltlm import train
from tiltlm.config import load_config
from tiltlm.core.batching import collate
from tiltlm.core.logps import completion_logps
from tiltlm.model import attention
from tiltlm.training.checkpoint import rng_state, set_rng_state

from tiny_models import LAYOUTS, random_pairs, tiny_model, tiny_model_dir, write_pairs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on one)")]

QUIET = lambda *a, **k: None  # noqa: E731
TOL = {"fp32": dict(atol=1e-4, rtol=1e-4, grad=1e-4), "bf16": dict(atol=5e-2, rtol=2e-2, grad=5e-2)}


def cuda_model(kind="llama", attn=None):
    """A tiny model on CUDA with head dimension 16 (the flex kernel's minimum), loaded as `tilt train` would."""
    attn = attn or attention.resolve("auto", "cuda")
    model = tiny_model(kind, attn=attn, hidden=64)
    attention.settle(model)
    return model.cuda()


def pairs_across_blocks():
    """Short pairs plus pairs whose rows cross 128-token blocks, at lengths that are not multiples of 128."""
    return random_pairs(6, seed=1) + [p for p in random_pairs(3, seed=2, max_prompt=150, max_completion=40)
                                      if p.index < 3]


def logps_and_grad(model, pairs, layout, precision):
    prefix, packed, chunked = LAYOUTS[layout]
    model.zero_grad(set_to_none=True)
    batch = collate(pairs, prefix_sharing=prefix, packing=packed, max_tokens_per_row=300).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = completion_logps(model, batch, chunked=chunked, chunk_size=7)
    (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()  # unequal weights: a swapped gradient would show
    grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return out, grad


def assert_grad_close(got, want, tol, what):
    err = (got - want).norm() / want.norm()
    assert err <= tol, f"{what}: gradient differs by {err:.3g} of its norm"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fast_paths_equal_plain_path_on_cuda(kind, precision):
    model, pairs, tol = cuda_model(kind), pairs_across_blocks(), TOL[precision]
    assert model.config._attn_implementation == attention.FLEX
    want, want_grad = logps_and_grad(model, pairs, "plain", precision)
    for layout in LAYOUTS:
        got, grad = logps_and_grad(model, pairs, layout, precision)
        torch.testing.assert_close(got.chosen, want.chosen, atol=tol["atol"], rtol=tol["rtol"], msg=layout)
        torch.testing.assert_close(got.rejected, want.rejected, atol=tol["atol"], rtol=tol["rtol"], msg=layout)
        assert_grad_close(grad, want_grad, tol["grad"], layout)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_flex_attention_equals_dense_mask_on_cuda(precision):
    flex, dense = cuda_model("llama"), cuda_model("llama", attn="sdpa")
    dense.load_state_dict(flex.state_dict())
    pairs, tol = pairs_across_blocks(), TOL[precision]
    for layout in ("prefix", "packed", "prefix+packed+chunked"):
        got, grad = logps_and_grad(flex, pairs, layout, precision)
        want, want_grad = logps_and_grad(dense, pairs, layout, precision)
        torch.testing.assert_close(got.chosen, want.chosen, atol=tol["atol"], rtol=tol["rtol"], msg=layout)
        torch.testing.assert_close(got.rejected, want.rejected, atol=tol["atol"], rtol=tol["rtol"], msg=layout)
        assert_grad_close(grad, want_grad, tol["grad"], layout)


# ------------------------------------------------------------------------------------------------ training runs
@pytest.fixture(scope="module")
def gpu_assets(tmp_path_factory, smollm2_tokenizer):
    root = tmp_path_factory.mktemp("gpu_assets")
    tiny_model_dir(root / "model", smollm2_tokenizer, hidden=64)  # head dimension 16
    write_pairs(root / "train.jsonl", n=16)
    return root


def opts(assets, out, **kw):
    return {**dict(model=str(assets / "model"), data=str(assets / "train.jsonl"), output_dir=str(out),
                   learning_rate=1e-3, per_device_train_batch_size=4, max_steps=4, progress=False, seed=0,
                   device="cuda", ref_cache_dir=str(out) + "-cache", doctor=False), **kw}


def run(assets, out, **kw):
    train(load_config(None, opts(assets, out, **kw)), log=QUIET)
    return records(out)


def records(out):
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def weights(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "model.safetensors"))


@pytest.fixture(scope="module")
def plain_run(gpu_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    return run(gpu_assets, out, prefix_sharing=False, chunked_logps=False, gradient_checkpointing=False), out


@pytest.mark.parametrize("flags", [
    dict(),  # the defaults: prefix sharing (FlexAttention), chunked log-probs, gradient checkpointing
    dict(packing=True, max_tokens_per_batch=64),
    dict(prefix_sharing=False),
])
def test_short_training_run_per_layout_on_cuda(gpu_assets, plain_run, tmp_path, flags):
    base, base_dir = plain_run
    recs = run(gpu_assets, tmp_path / "run", **flags)
    assert recs[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # policy == reference at step 0
    for x, y in zip(base, recs):
        for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-4, rel=1e-4), (key, x["step"])
    wa, wb = weights(base_dir), weights(tmp_path / "run")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-4, rtol=1e-3)


def cli_run(assets, out, launcher, env=None, **kw):
    """`tilt train` in a fresh process (torchrun, or python -c with deterministic settings)."""
    flags = [x for k, v in opts(assets, out, **kw).items() for x in (f"--{k.replace('_', '-')}", str(v))]
    p = subprocess.run([*launcher, "train", *flags], env={**os.environ, "TOKENIZERS_PARALLELISM": "false",
                                                         **(env or {})}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]


@pytest.mark.parametrize("dist", ["ddp", "fsdp"])
def test_one_rank_under_nccl_equals_one_process(gpu_assets, tmp_path, dist):
    single, out = tmp_path / "single", tmp_path / dist
    run(gpu_assets, single)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cli_run(gpu_assets, out, [torchrun, "--standalone", "--nproc_per_node", "1", "-m", "tiltlm.cli"], dist=dist)
    for x, y in zip(records(single), records(out)):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
    wa, wb = weights(single), weights(out)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-4)


def test_checkpoint_restores_the_cuda_rng_state():
    torch.cuda.manual_seed(3)
    state = rng_state()
    assert state["cuda"], "the checkpoint's RNG state must hold the CUDA generators"
    first = torch.rand(5, device="cuda")
    torch.rand(7, device="cuda")  # move on
    set_rng_state(state)
    assert torch.equal(torch.rand(5, device="cuda"), first)


# cuBLAS needs a fixed workspace before its first call, and index_add / scatter backward need their deterministic
# kernels: both only take effect in a fresh process
DETERMINISTIC = dict(
    launcher=[sys.executable, "-c", "import sys, torch; torch.use_deterministic_algorithms(True); "
              "from tiltlm.commands.cli import main; sys.exit(main(sys.argv[1:]))"],
    env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})


def test_resume_on_cuda_is_bitwise_under_deterministic_settings(gpu_assets, tmp_path):
    """Uninterrupted 4 steps vs a run that lost everything after checkpoint-2 and resumed (each a fresh process)."""
    full, part = tmp_path / "full", tmp_path / "part"
    cli_run(gpu_assets, full, **DETERMINISTIC)
    cli_run(gpu_assets, part, save_steps=2, **DETERMINISTIC)
    shutil.rmtree(part / "checkpoints" / "checkpoint-4")
    for f in ("model.safetensors", "finished.json"):  # what a crash after step 2 leaves
        (part / f).unlink()
    cli_run(gpu_assets, part, save_steps=2, resume="auto", **DETERMINISTIC)
    wa, wb = weights(full), weights(part)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name  # bitwise
