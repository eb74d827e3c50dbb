"""The speed levers of issue 20 change how often work is done, never the numbers: one bf16 cast of each weight per
optimizer step (`Precision.step_region`), fused AdamW, no-grad scoring in length order."""

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiltlm.core.batching import collate
from tiltlm.core.logps import sequence_logps, token_logps
from tiltlm.model.scoring import ScoringPath, longest_first
from tiltlm.training.optim import MasterWeightAdamW, can_fuse
from tiltlm.training.precision import Precision
from tiltlm.types import PairLogps

from tiny_models import naive_logps, random_pairs, tiny_model

BF16 = Precision(weights=torch.float32, compute=torch.bfloat16, device_type="cpu")


class WeightCasts(TorchDispatchMode):
    """Counts fp32 -> bf16 casts of the given weights (by shape and storage: autocast casts the weight itself)."""

    def __init__(self, weights):
        super().__init__()
        self.ptrs = {w.data_ptr() for w in weights}
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16 \
                and args[0].data_ptr() in self.ptrs:
            self.n += 1
        return func(*args, **kwargs)


def grads_of_a_step(model, batches, region: bool):
    """Two micro-batches' backward (gradient checkpointing on), under BF16; returns (grads, weight casts)."""
    model.zero_grad(set_to_none=True)
    fn = BF16.wrap(functools.partial(token_logps, chunked=True, chunk_size=8))
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with WeightCasts(weights) as casts:
        with BF16.step_region() if region else torch.autocast("cpu", enabled=False, cache_enabled=False):
            for batch in batches:
                lp = sequence_logps(fn(model, batch), batch)
                (lp.chosen - lp.rejected).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, casts.n, len(weights)


def test_step_region_casts_each_weight_once_per_step_and_changes_no_gradient():
    model = tiny_model("llama")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pairs = random_pairs(8, seed=3)
    batches = [collate(pairs[:4], prefix_sharing=True, pad_token_id=0), collate(pairs[4:], prefix_sharing=True,
                                                                                 pad_token_id=0)]
    per_call, casts_before, n_weights = grads_of_a_step(model, batches, region=False)
    once, casts_after, _ = grads_of_a_step(model, batches, region=True)
    # without the region: every weight cast in each micro-batch's forward and again in each recompute (the LM
    # head once per chunk, twice); inside it: once for the whole step
    assert casts_after == n_weights
    assert casts_before > 2 * 2 * (n_weights - 1)
    for name, g in per_call.items():
        assert once[name].dtype == torch.float32  # gradients accumulate in fp32 on the fp32 weights
        if name == "lm_head.weight":
            # used once per chunk: within one backward its chunks' bf16 gradients now meet on the one cast copy
            # and are summed in bf16 before the fp32 upcast (as FSDP2's bf16 param_dtype does): bf16-close
            assert float((once[name] - g).norm() / g.norm()) < 1e-2  # measured 0.3%
        else:  # used once per micro-batch: the same casts, the same numbers, summed in fp32 across micro-batches
            assert torch.equal(once[name], g), name


def test_step_region_is_nothing_without_autocast():
    fp32 = Precision(weights=torch.float32, compute=None, device_type="cpu")
    with fp32.step_region():
        assert not torch.is_autocast_enabled("cpu")


def test_fused_adamw_is_chosen_on_cpu_and_steps_like_the_per_tensor_loop():
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(64, 32) * 0.02), torch.nn.Parameter(torch.randn(32))]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    assert can_fuse(mine) is True
    loop = torch.optim.AdamW(ref, lr=1e-3, weight_decay=0.1, foreach=False)
    fused = MasterWeightAdamW(mine, lr=1e-3, weight_decay=0.1, fused=can_fuse(mine))
    for step in range(5):
        g = [torch.randn_like(p) for p in ref]
        for p, q, gi in zip(ref, mine, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        loop.step()
        fused.step()
    for p, q in zip(ref, mine):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-8)
    assert can_fuse([]) is None


def test_scoring_runs_longest_first_and_returns_the_callers_order():
    """ScoringPath.score batches the pairs longest first (little padding) and gives them back in the order given,
    with the log-probs of one forward per sequence."""
    model = tiny_model("llama")
    pairs = random_pairs(10, seed=2)
    order = [p.index for p in longest_first(pairs)]
    lengths = {p.index: len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs}
    assert [lengths[i] for i in order] == sorted(lengths.values(), reverse=True)
    got = ScoringPath(prefix_sharing=True, chunked=True).score(model, pairs, batch_size=3)
    want_c, want_r = naive_logps(model, pairs)
    torch.testing.assert_close(got.chosen, want_c, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.rejected, want_r, rtol=1e-6, atol=1e-5)
    assert got.chosen_tokens.tolist() == [float(len(p.chosen_ids)) for p in pairs]
