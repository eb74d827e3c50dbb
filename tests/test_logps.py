"""Every log-prob fast path equals the plain path (and a one-sequence-at-a-time loop) to 1e-5 in fp32.

(plus rtol 1e-6: a sum of ~180 nats has an fp32 ulp of 1.5e-5, so reduction order alone moves the last bit.)
"""

import pytest
import torch

from tiltlm.core.batching import collate, micro_batches
from tiltlm.core.logps import completion_logps
from tiltlm.model.scoring import ScoringPath
from tiltlm.types import TokenizedPair

from tiny_models import LAYOUTS, naive_logps, random_pairs, seed_response_logprob, tiny_model


def layout_logps(model, pairs, prefix, packed, chunked, chunk_size=7):
    batch = collate(pairs, prefix_sharing=prefix, packing=packed, max_tokens_per_row=40)
    return completion_logps(model, batch, chunked=chunked, chunk_size=chunk_size)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "gemma2"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_equal_naive_loop(kind, layout):
    model = tiny_model(kind)
    pairs = random_pairs(6, seed=1)
    want_c, want_r = naive_logps(model, pairs)
    got = layout_logps(model, pairs, *LAYOUTS[layout])
    torch.testing.assert_close(got.chosen, want_c, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.rejected, want_r, atol=1e-5, rtol=1e-6)
    assert got.chosen_tokens.tolist() == [len(p.chosen_ids) for p in pairs]
    assert got.rejected_tokens.tolist() == [len(p.rejected_ids) for p in pairs]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_eager_attention_masks_match(kind):
    """The additive 4D mask used for eager attention gives the same numbers as SDPA's boolean mask."""
    pairs = random_pairs(4, seed=2)
    sdpa = layout_logps(tiny_model(kind, attn="sdpa"), pairs, True, True, True)
    eager = layout_logps(tiny_model(kind, attn="eager"), pairs, True, True, True)
    torch.testing.assert_close(sdpa.chosen, eager.chosen, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gradients_equal_plain_path(kind):
    pairs = random_pairs(5, seed=3)
    grads = {}
    for name, (prefix, packed, chunked) in LAYOUTS.items():
        model = tiny_model(kind)
        out = layout_logps(model, pairs, prefix, packed, chunked)
        # a loss that weights chosen and rejected differently, so a swapped gradient would show
        (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for name, g in grads.items():
        torch.testing.assert_close(g, grads["plain"], atol=1e-5, rtol=1e-4, msg=f"{name} gradient differs")


def test_seed_response_logprob_agrees():
    """Our plain path is the seed's response_logprob (right-padded, response mask)."""
    model = tiny_model("llama")
    pairs = random_pairs(4, seed=4)
    rows = [p.prompt_ids + p.chosen_ids for p in pairs]
    L = max(map(len, rows))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(pairs, rows)):
        ids[i, :len(r)] = torch.tensor(r)
        attn[i, :len(r)] = 1
        resp[i, len(p.prompt_ids):len(r)] = 1
    want = seed_response_logprob(model, ids, attn, resp)
    got = ScoringPath(prefix_sharing=False, packing=False, chunked=False).score(model, pairs)
    torch.testing.assert_close(got.chosen, want, atol=1e-5, rtol=1e-6)


def test_prefix_row_layout_by_hand():
    """prompt [1,7] chosen [8,9] rejected [10]: one row, positions restart, labels from the right positions."""
    pair = TokenizedPair(index=0, prompt_ids=[1, 7], chosen_ids=[8, 9], rejected_ids=[10])
    b = collate([pair], prefix_sharing=True)
    assert b.input_ids.tolist() == [[1, 7, 8, 9, 10]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    # chosen 8 <- pos 1, chosen 9 <- pos 2; rejected 10 <- pos 1 (last prompt token, used twice)
    assert list(zip(b.gather_pos.tolist(), b.labels.tolist(), b.seq_ids.tolist())) == [
        (1, 8, 0), (2, 9, 0), (1, 10, 1)]
    mask = b.attention_mask("sdpa")[0, 0].int().tolist()
    assert mask[4] == [1, 1, 0, 0, 1]  # rejected token sees the prompt and itself, not the chosen tokens


def test_micro_batches_keep_every_pair_once():
    pairs = random_pairs(11, seed=5)
    for prefix in (False, True):
        for packing in (False, True):
            mbs = micro_batches(pairs, batch_size=3, prefix_sharing=prefix, packing=packing,
                                max_tokens_per_batch=30, pad_token_id=0)
            seen = sorted(i for mb in mbs for i in mb.pair_index.tolist())
            assert seen == [p.index for p in pairs]


def test_truncated_and_long_pairs_in_packed_rows():
    """A segment longer than the row budget gets its own row and still scores exactly."""
    model = tiny_model("llama")
    long = TokenizedPair(index=0, prompt_ids=[1] + list(range(3, 50)), chosen_ids=list(range(50, 90)),
                         rejected_ids=[4, 5], truncated=True)
    pairs = [long] + random_pairs(3, seed=6)
    want_c, want_r = naive_logps(model, pairs)
    got = completion_logps(model, collate(pairs, prefix_sharing=True, packing=True, max_tokens_per_row=20),
                           chunked=True)
    torch.testing.assert_close(got.chosen, want_c, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.rejected, want_r, atol=1e-5, rtol=1e-6)
