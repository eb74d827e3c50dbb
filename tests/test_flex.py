"""FlexAttention for prefix-shared and packed rows (CPU part): the BlockMask is the dense mask's rule, and the forward
through tiltlm's flex hook equals the dense-mask SDPA forward. FlexAttention has no CPU backward in torch 2.13, so
gradients and training with it are checked on CUDA only (tests/test_gpu.py)."""

import warnings

import pytest
import torch

from tiltlm.config import load_config
from tiltlm.core.batching import PAD_SEG, collate, may_attend
from tiltlm.core.logps import completion_logps
from tiltlm.errors import ConfigError
from tiltlm.model import attention
from tiltlm.types import TokenizedPair

from tiny_models import naive_logps, random_pairs, tiny_model

SHARED_LAYOUTS = {"prefix": (True, False), "packed": (False, True), "prefix+packed": (True, True)}


@pytest.fixture(autouse=True)
def quiet_eager_flex():
    with warnings.catch_warnings():  # "flex_attention called without torch.compile()": eager is the point on CPU
        warnings.simplefilter("ignore", UserWarning)
        yield


def flex_model(kind):
    attention.register()
    model = tiny_model(kind, attn=attention.FLEX)
    attention.settle(model)
    return model


def test_may_attend_by_hand():
    """prompt [1,7] chosen [8,9] rejected [10] + one padding slot: the rule's matrix written out."""
    b = collate([TokenizedPair(index=0, prompt_ids=[1, 7], chosen_ids=[8, 9], rejected_ids=[10])],
                prefix_sharing=True)
    assert b.dense_mask()[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # chosen sees the prompt and earlier chosen tokens
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # rejected sees the prompt and itself, never the chosen tokens
    ]
    # a padding query sees itself only; nobody sees a padding key
    pad = torch.tensor(PAD_SEG)
    assert bool(may_attend(torch.tensor(3), torch.tensor(3), pad, pad, torch.tensor(0), torch.tensor(0)))
    assert not bool(may_attend(torch.tensor(3), torch.tensor(2), torch.tensor(0), pad, torch.tensor(0),
                               torch.tensor(0)))


@pytest.mark.parametrize("layout", list(SHARED_LAYOUTS))
def test_block_mask_is_the_dense_rule(layout):
    prefix, packed = SHARED_LAYOUTS[layout]
    b = collate(random_pairs(7, seed=3), prefix_sharing=prefix, packing=packed, max_tokens_per_row=40)
    bm = b.attention_mask("flex_attention")
    R, L = b.segment_ids.shape
    assert bm.shape == (R, 1, L, L)
    # the mask_mod evaluated on every (row, q, kv) is exactly the dense mask
    q = torch.arange(L)[:, None].expand(L, L)
    kv = torch.arange(L)[None, :].expand(L, L)
    mod = b.mask_mod()
    grid = torch.stack([mod(torch.full_like(q, r), 0, q, kv) for r in range(R)])[:, None]
    assert torch.equal(grid, b.dense_mask())
    assert b.attention_mask("flex_attention") is bm  # built once per micro-batch, reused (live reference)


def test_fully_masked_blocks_are_skipped():
    """Two 150-token prefix-shared pairs packed in one 300-token row: in 128-token blocks, the last query block
    (pair 2 only) never sees the first key block (pair 1 only), so that block is absent from the BlockMask."""
    def pair(i, tok):
        return TokenizedPair(index=i, prompt_ids=[1] + [tok] * 49, chosen_ids=[tok + 1] * 50, rejected_ids=[7] * 50)

    b = collate([pair(0, 10), pair(1, 20)], prefix_sharing=True, packing=True, max_tokens_per_row=300)
    assert b.input_ids.shape == (1, 300)
    assert b.attention_mask("flex_attention").to_dense()[0, 0].tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


@pytest.mark.parametrize("kind,layout", [("llama", "prefix"), ("llama", "packed"), ("llama", "prefix+packed"),
                                         ("qwen2", "prefix+packed"),
                                         ("gemma2", "prefix+packed")])  # gemma2: soft-capped attention (score_mod)
def test_flex_forward_equals_dense_mask_forward(kind, layout):
    """Same weights, same shared / packed batch: the flex hook (BlockMask) gives the dense-mask forward's log-probs,
    and both equal the one-sequence-at-a-time loop."""
    prefix, packed = SHARED_LAYOUTS[layout]
    pairs = random_pairs(6, seed=1)
    dense_model, flex = tiny_model(kind), flex_model(kind)
    assert flex.config._attn_implementation == attention.FLEX
    flex.load_state_dict(dense_model.state_dict())
    batch = collate(pairs, prefix_sharing=prefix, packing=packed, max_tokens_per_row=40)
    with torch.no_grad():
        want = completion_logps(dense_model, batch, chunked=True, chunk_size=7)
        got = completion_logps(flex, batch, chunked=True, chunk_size=7)
        naive_c, naive_r = naive_logps(dense_model, pairs)
    torch.testing.assert_close(got.chosen, want.chosen, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.rejected, want.rejected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.chosen, naive_c, atol=1e-5, rtol=1e-6)


def test_flex_model_keeps_sdpa_for_plain_rows():
    """A plain padded batch (2D mask) through the flex model takes the SDPA path and scores exactly."""
    pairs = random_pairs(5, seed=2)
    flex = flex_model("llama")
    with torch.no_grad():
        got = completion_logps(flex, collate(pairs, prefix_sharing=False), chunked=False)
        want_c, want_r = naive_logps(flex, pairs)
    torch.testing.assert_close(got.chosen, want_c, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.rejected, want_r, atol=1e-5, rtol=1e-6)


def test_an_architecture_without_flex_support_keeps_sdpa():
    """GPT-2's forward cannot take a BlockMask: the flex choice falls back to SDPA + the dense mask, still exact."""
    model = flex_model("gpt2")
    assert model.config._attn_implementation == "sdpa"
    pairs = random_pairs(4, seed=5)
    with torch.no_grad():
        got = completion_logps(model, collate(pairs, prefix_sharing=True, packing=True, max_tokens_per_row=40))
        want_c, _ = naive_logps(model, pairs)
    torch.testing.assert_close(got.chosen, want_c, atol=1e-5, rtol=1e-6)


def test_attention_choice_is_made_at_load_time():
    assert attention.resolve("auto", "cpu") == "sdpa"
    assert attention.resolve("auto", torch.device("cuda", 0)) == attention.FLEX
    assert attention.resolve("flex_attention", "cpu") == attention.FLEX
    assert attention.resolve("eager", "cuda") == "eager"


def test_attn_implementation_option(tmp_path):
    assert load_config(None, {"attn_implementation": "sdpa"}).attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match=r"attn_implementation must be one of auto \| sdpa \| eager \| flex_attention"):
        load_config(None, {"attn_implementation": "flash"})
