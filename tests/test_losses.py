"""Loss registry tests with HAND-DERIVED values (the arithmetic is in the comments).

Notation: lw = logpi_w - logref_w, ll = logpi_l - logref_l, h = lw - ll, m = beta*h (the reward margin).
"""

import math

import pytest
import torch

from tiltlm.core.losses import LOSSES, REFERENCE_FREE, LossHParams, compute_loss, register
from tiltlm.types import PairLogps

LN2 = math.log(2.0)


def pair(c, r, nc=1.0, nr=1.0, dtype=torch.float32, grad=False):
    t = lambda v: torch.tensor([v], dtype=dtype, requires_grad=grad)  # noqa: E731
    return PairLogps(t(c), t(r), torch.tensor([nc], dtype=dtype), torch.tensor([nr], dtype=dtype))


# ------------------------------------------------------------------------------------------------ seed walkthrough
# policy -3.5 / -6.0, ref -4.0 / -5.0, beta = 0.5
#   lw = -3.5 - (-4.0) = +0.5          ll = -6.0 - (-5.0) = -1.0
#   r_w = 0.5 * 0.5 = +0.25            r_l = 0.5 * (-1.0) = -0.5
#   m = 0.25 - (-0.5) = 0.75
#   sigma(0.75) = 1 / (1 + e^-0.75) = 1 / 1.4723666 = 0.6791787
#   loss = -ln 0.6791787 = 0.3868710
#   d loss / dm = -sigma(-0.75) = -0.3208213;  d m / d logpi_w = beta  =>  d loss / d logpi_w = -0.1604107
SEED_LOSS = 0.3868710
SEED_SIG_NEG = 0.3208213


def test_seed_walkthrough_values_and_gradient():
    pol = pair(-3.5, -6.0, grad=True)
    ref = pair(-4.0, -5.0)
    out = LOSSES["sigmoid"](pol, ref, LossHParams(beta=0.5))
    assert out.losses.item() == pytest.approx(SEED_LOSS, abs=1e-4)
    assert out.chosen_rewards.item() == pytest.approx(0.25, abs=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(-0.5, abs=1e-6)
    assert (out.chosen_rewards - out.rejected_rewards).item() == pytest.approx(0.75, abs=1e-6)
    assert not out.chosen_rewards.requires_grad  # rewards are diagnostics, detached
    out.losses.sum().backward()
    assert pol.chosen.grad.item() == pytest.approx(-0.5 * SEED_SIG_NEG, abs=1e-5)  # -beta*sigma(-m)
    assert pol.rejected.grad.item() == pytest.approx(+0.5 * SEED_SIG_NEG, abs=1e-5)
    assert torch.sigmoid(torch.tensor(-0.75)).item() == pytest.approx(SEED_SIG_NEG, abs=1e-4)


def test_seed_manual_central_difference():
    # central difference of the DPO loss in logpi_w, step 1e-3 (float64): must match -beta*sigma(-m)
    hp, ref, e = LossHParams(beta=0.5), pair(-4.0, -5.0, dtype=torch.float64), 1e-3
    f = lambda c: LOSSES["sigmoid"](pair(c, -6.0, dtype=torch.float64), ref, hp).losses.item()  # noqa: E731
    assert (f(-3.5 + e) - f(-3.5 - e)) / (2 * e) == pytest.approx(-0.5 * SEED_SIG_NEG, abs=1e-6)


def test_cdpo_and_robust_at_seed():
    # eps = 0.1, m = 0.75; -ln sigma(0.75) = 0.3868710, -ln sigma(-0.75) = softplus(0.75) = 0.75 + 0.3868710 = 1.1368710
    #   cDPO   = 0.9 * 0.3868710 + 0.1 * 1.1368710           = 0.3481839 + 0.1136871 = 0.4618710
    #   robust = (0.9 * 0.3868710 - 0.1 * 1.1368710) / 0.8    = (0.3481839 - 0.1136871) / 0.8 = 0.2931210
    hp = LossHParams(beta=0.5, label_smoothing=0.1)
    pol, ref = pair(-3.5, -6.0), pair(-4.0, -5.0)
    assert LOSSES["sigmoid"](pol, ref, hp).losses.item() == pytest.approx(0.4618710, abs=1e-5)
    assert LOSSES["robust"](pol, ref, hp).losses.item() == pytest.approx(0.2931210, abs=1e-5)


# ------------------------------------------------------------------------------------------------ step 0
# policy == reference: logpi_w = logref_w = -4.0 over 2 tokens, logpi_l = logref_l = -6.0 over 4 tokens; beta = 0.1.
# lw = ll = h = 0 for every reference-based loss.
STEP0_BETA = 0.1
EXO_EPS = 1e-3  # exo_pair's eps when label_smoothing == 0
STEP0 = {
    "sigmoid": LN2,  # -ln sigma(0) = ln 2
    "robust": LN2,  # (1 * ln 2 + 0) / 1
    "hinge": 1.0,  # relu(1 - 0)
    "ipo": 25.0,  # (0 - 1/(2*0.1))^2 = 5^2
    "sigmoid_norm": LN2,  # -ln sigma(0)
    "bco_pair": 2 * LN2,  # -ln sigma(0 - 0) - ln sigma(-(0 - 0))
    "nca_pair": 2 * LN2,  # ln2 + 0.5 ln2 + 0.5 ln2
    "sppo_hard": 50.0,  # (0 - 5)^2 + (0 + 5)^2
    "apo_zero": 1.0,  # (1 - 0.5) + 0.5
    "apo_down": 1.0,  # 0.5 + (1 - 0.5)
    "discopop": 0.5 * LN2 + 0.5,  # w = sigma(0) = 0.5: 0.5 * ln2 + 0.5 * e^0
    "aot": LN2,  # sorted (pi_w - pi_l) = (-4 - -6) = 2 = sorted (ref_w - ref_l): -ln sigma(0.1 * 0)
    "aot_unpaired": LN2,  # sorted lw = 0 = sorted ll: -ln sigma(0)
    # 0.5 (ln 0.5 - ln 0.999) + 0.5 (ln 0.5 - ln 0.001) = -ln2 - (ln 0.999 + ln 0.001)/2
    #   = -0.6931472 - (-0.0010005 - 6.9077553)/2 = -0.6931472 + 3.4543779 = 2.7612307
    "exo_pair": -LN2 - 0.5 * (math.log(1 - EXO_EPS) + math.log(EXO_EPS)),
    # reference-free: per-token means pw = -4/2 = -2.0, pl = -6/4 = -1.5
    #   z = 0.1 * (-2.0 - (-1.5)) - 0.5 = -0.05 - 0.5 = -0.55;  loss = ln(1 + e^0.55) = ln 2.7332530 = 1.0054861
    "simpo": 1.0054861,
    "sft": 2.0,  # -(-4.0 / 2)
}


def test_step0_table_covers_registry():
    # a newly registered loss must come with a hand-derived step-0 value here
    assert set(STEP0) == set(LOSSES)
    assert math.isclose(STEP0["exo_pair"], 2.7612307, abs_tol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_step0_value(name):
    pol = pair(-4.0, -6.0, 2.0, 4.0)
    ref = None if name in REFERENCE_FREE else pair(-4.0, -6.0, 2.0, 4.0)
    out = LOSSES[name](pol, ref, LossHParams(beta=STEP0_BETA))
    assert out.losses.shape == (1,)
    assert out.losses.dtype == torch.float32
    assert out.losses.item() == pytest.approx(STEP0[name], abs=1e-4)
    if name not in REFERENCE_FREE and name != "sigmoid_norm":
        assert out.chosen_rewards.item() == 0.0 and out.rejected_rewards.item() == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_lossspec_at_reference_is_the_hand_derived_step0_value(name):
    """The LossSpec's declared value at policy == reference (what the doctor's step-1 check compares with) is the
    hand-derived table above, and equals the loss function itself at zero log-ratios for other hyper-parameters."""
    spec = LOSSES[name]
    if spec.reference_free:
        assert spec.at_reference is None
        return
    assert spec.at_reference(LossHParams(beta=STEP0_BETA)) == pytest.approx(STEP0[name], abs=1e-6)
    for hp in (LossHParams(beta=0.5, label_smoothing=0.2, bco_delta=0.3), LossHParams(beta=0.05, discopop_tau=0.2)):
        p = pair(-3.0, -7.0, 3.0, 5.0, dtype=torch.float64)
        assert spec.at_reference(hp) == pytest.approx(LOSSES[name](p, p, hp).losses.item(), abs=1e-9)


def test_step0_robust_label_smoothing_still_ln2():
    # ((1-eps) ln2 - eps ln2) / (1 - 2 eps) = ln2 for any eps
    p = pair(-4.0, -6.0)
    assert LOSSES["robust"](p, p, LossHParams(label_smoothing=0.2)).losses.item() == pytest.approx(LN2, abs=1e-5)


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck(name):
    g = torch.Generator().manual_seed(0)
    B = 5
    rand = lambda: (-10 * torch.rand(B, generator=g, dtype=torch.float64)).requires_grad_(True)  # noqa: E731
    pc, pr, rc, rl = rand(), rand(), rand(), rand()
    nc = torch.randint(1, 9, (B,), generator=g).double()
    nr = torch.randint(1, 9, (B,), generator=g).double()
    hp = LossHParams(beta=0.3, label_smoothing=0.1, discopop_tau=0.5, bco_delta=0.2)

    def fn(pc, pr, rc, rl):
        return LOSSES[name](PairLogps(pc, pr, nc, nr), PairLogps(rc, rl, nc, nr), hp).losses

    out = fn(pc, pr, rc, rl)
    assert out.dtype == torch.float64 and out.shape == (B,) and torch.isfinite(out).all()
    if name == "hinge":  # keep away from the kink at beta*h = 1
        assert ((1 - 0.3 * ((pc - rc) - (pr - rl))).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(fn, (pc, pr, rc, rl), eps=1e-6, atol=1e-5, fast_mode=True)


def test_half_precision_inputs_are_upcast():
    p = PairLogps(torch.tensor([-3.5], dtype=torch.bfloat16), torch.tensor([-6.0], dtype=torch.bfloat16),
                  torch.tensor([1.0]), torch.tensor([1.0]))
    r = pair(-4.0, -5.0)
    out = LOSSES["sigmoid"](p, r, LossHParams(beta=0.5))
    assert out.losses.dtype == torch.float32
    assert out.losses.item() == pytest.approx(SEED_LOSS, abs=1e-4)


def test_stable_at_extreme_margins():
    for name in LOSSES:
        ref = pair(0.0, 0.0)
        for c in (-1e4, 1e4):
            pol = pair(c, 0.0, grad=True)
            out = LOSSES[name](pol, None if name in REFERENCE_FREE else ref, LossHParams(discopop_tau=0.05))
            if name == "discopop" and c < 0:
                continue  # exp(-x) legitimately overflows for a hugely wrong pair
            assert torch.isfinite(out.losses).all(), (name, c)
            out.losses.sum().backward()
            assert torch.isfinite(pol.chosen.grad).all(), (name, c)


# ------------------------------------------------------------------------------------------------ fixed points
def _grad_at(name, h, hp, nc=1.0):
    pol = pair(h, 0.0, nc, 1.0, dtype=torch.float64, grad=True)  # ref = 0, so lw = h, ll = 0
    out = LOSSES[name](pol, pair(0.0, 0.0, nc, 1.0, dtype=torch.float64), hp)
    out.losses.sum().backward()
    return out.losses.item(), pol.chosen.grad.item()


def test_cdpo_optimum():
    # d/dx [-(1-e) ln sig(x) - e ln sig(-x)] = -(1-e) sig(-x) + e sig(x) = 0  <=>  sig(x) = 1-e  <=>  x = logit(1-e)
    # eps = 0.1, beta = 0.1: h* = ln(0.9/0.1) / 0.1 = ln 9 / 0.1 = 21.972246
    hp = LossHParams(beta=0.1, label_smoothing=0.1)
    h_star = math.log(9.0) / 0.1
    assert h_star == pytest.approx(21.972246, abs=1e-5)
    assert _grad_at("sigmoid", h_star, hp)[1] == pytest.approx(0.0, abs=1e-9)
    assert _grad_at("sigmoid", h_star - 1, hp)[1] < 0  # below the optimum: push logpi_w up
    assert _grad_at("sigmoid", h_star + 1, hp)[1] > 0  # beyond it: pull back (plain DPO never does)
    assert _grad_at("sigmoid", h_star + 1, LossHParams(beta=0.1))[1] < 0


def test_ipo_optimum():
    # h_n* = 1/(2 beta) = 5 at beta = 0.1; with nw = 2 tokens lw must be 2 * 5 = 10 (ll = 0)
    hp = LossHParams(beta=0.1)
    loss, grad = _grad_at("ipo", 10.0, hp, nc=2.0)
    assert loss == pytest.approx(0.0, abs=1e-12) and grad == pytest.approx(0.0, abs=1e-12)
    # at lw = 0: loss (0 - 5)^2 = 25; d/dlogpi_w = 2 (h_n - 5) / nw = 2 * (-5) / 2 = -5
    assert _grad_at("ipo", 0.0, hp, nc=2.0) == pytest.approx((25.0, -5.0))


def test_hinge_zero_beyond_margin():
    hp = LossHParams(beta=0.1)
    assert _grad_at("hinge", 12.0, hp) == (0.0, 0.0)  # beta*h = 1.2 >= 1
    assert _grad_at("hinge", 30.0, hp) == (0.0, 0.0)
    # beta*h = 0.5 < 1: loss 1 - 0.5 = 0.5, d/dlogpi_w = -beta = -0.1
    assert _grad_at("hinge", 5.0, hp) == pytest.approx((0.5, -0.1))


# ------------------------------------------------------------------------------------------------ mixing
def test_compute_loss_rpo_mix():
    # seed pair with nw = 7 tokens: sigmoid 0.3868710; sft = -(-3.5)/7 = 0.5
    # [sigmoid, sft] with weights [1, 0.5]: 0.3868710 + 0.5 * 0.5 = 0.6368710
    pol, ref = pair(-3.5, -6.0, 7.0, 3.0), pair(-4.0, -5.0, 7.0, 3.0)
    out = compute_loss(["sigmoid", "sft"], [1.0, 0.5], pol, ref, LossHParams(beta=0.5))
    assert out.losses.item() == pytest.approx(0.6368710, abs=1e-5)
    assert out.chosen_rewards.item() == pytest.approx(0.25) and out.rejected_rewards.item() == pytest.approx(-0.5)
    assert out.extras["loss/sigmoid"].item() == pytest.approx(SEED_LOSS, abs=1e-5)
    assert out.extras["loss/sft"].item() == pytest.approx(0.5)
    # rewards come from the first PREFERENCE loss even when sft is listed first
    out2 = compute_loss(["sft", "sigmoid"], None, pol, ref, LossHParams(beta=0.5))
    assert out2.losses.item() == pytest.approx(SEED_LOSS + 0.5, abs=1e-5)
    assert out2.chosen_rewards.item() == pytest.approx(0.25)


def test_compute_loss_single_and_sft_only():
    pol, ref = pair(-3.5, -6.0, 7.0, 3.0), pair(-4.0, -5.0)
    single = compute_loss(["sigmoid"], None, pol, ref, LossHParams(beta=0.5))
    assert single.extras == {} and single.losses.item() == pytest.approx(SEED_LOSS, abs=1e-5)
    # sft only, ref may be None: rewards = beta * per-token means = 0.5 * (-3.5/7), 0.5 * (-6/3)
    only = compute_loss(["sft"], None, pol, None, LossHParams(beta=0.5))
    assert only.chosen_rewards.item() == pytest.approx(-0.25) and only.rejected_rewards.item() == pytest.approx(-1.0)


def test_compute_loss_errors():
    pol, ref = pair(-3.5, -6.0), pair(-4.0, -5.0)
    with pytest.raises(ValueError, match="unknown loss_type 'sigmod'.*did you mean 'sigmoid'"):
        compute_loss(["sigmod"], None, pol, ref, LossHParams())
    with pytest.raises(ValueError, match="weights"):
        compute_loss(["sigmoid", "sft"], [1.0], pol, ref, LossHParams())
    with pytest.raises(ValueError, match="reference"):
        compute_loss(["sigmoid"], None, pol, None, LossHParams())
    with pytest.raises(ValueError, match="twice"):
        register("sigmoid")(lambda p, r, h: None)


def test_reference_free_losses_ignore_ref():
    pol = pair(-4.0, -6.0, 2.0, 4.0)
    for name in REFERENCE_FREE:
        a = LOSSES[name](pol, None, LossHParams()).losses
        b = LOSSES[name](pol, pair(-1.0, -2.0, 2.0, 4.0), LossHParams()).losses
        assert torch.equal(a, b)


def test_simpo_rewards_and_gamma():
    # rewards = beta * per-token means = 0.1 * (-2.0), 0.1 * (-1.5); with gamma = 0: z = -0.05, loss = softplus(0.05)
    pol = pair(-4.0, -6.0, 2.0, 4.0)
    out = LOSSES["simpo"](pol, None, LossHParams(beta=0.1, simpo_gamma=0.0))
    assert out.chosen_rewards.item() == pytest.approx(-0.2) and out.rejected_rewards.item() == pytest.approx(-0.15)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(0.05)), abs=1e-6)


def test_batch_shapes():
    B = 4
    p = PairLogps(torch.randn(B), torch.randn(B), torch.full((B,), 3.0), torch.full((B,), 5.0))
    r = PairLogps(torch.randn(B), torch.randn(B), torch.full((B,), 3.0), torch.full((B,), 5.0))
    out = compute_loss(list(LOSSES), None, p, r, LossHParams())
    assert out.losses.shape == (B,) and out.chosen_rewards.shape == (B,)
    assert set(out.extras) == {f"loss/{n}" for n in LOSSES}


# ------------------------------------------------------------------------------------------------ TRL 1.16 losses
def two_pairs(pw, pl, rw, rl, nw=(1.0, 1.0), nl=(1.0, 1.0)):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairLogps(t(pw), t(pl), t(nw), t(nl)), PairLogps(t(rw), t(rl), t(nw), t(nl))


def test_aot_sorts_the_batch():
    # pair A: policy -1 / -3, ref -2 / -2;  pair B: policy -4 / -3, ref -1 / -4;  beta = 0.5
    #   u = logpi_w - logpi_l = [2, -1] -> sorted [-1, 2];  v = logref_w - logref_l = [0, 3] -> sorted [0, 3]
    #   sorted u - sorted v = [-1, -1]: both losses -ln sigma(-0.5) = softplus(0.5) = ln(1 + e^0.5) = 0.9740770
    #   (per pair DPO would give h = [2, -4]: softplus(-1) = 0.3132617 and softplus(2) = 2.1269280)
    pol, ref = two_pairs([-1.0, -4.0], [-3.0, -3.0], [-2.0, -1.0], [-2.0, -4.0])
    hp = LossHParams(beta=0.5)
    out = LOSSES["aot"](pol, ref, hp)
    assert out.losses.tolist() == pytest.approx([0.9740770, 0.9740770], abs=1e-6)
    assert LOSSES["sigmoid"](pol, ref, hp).losses.tolist() == pytest.approx([0.3132617, 2.1269280], abs=1e-6)
    # rewards stay the pairs' own: beta * lw = 0.5 * [1, -3], beta * ll = 0.5 * [-1, 1]
    assert out.chosen_rewards.tolist() == [0.5, -1.5] and out.rejected_rewards.tolist() == [-0.5, 0.5]
    # label smoothing 0.1: 0.9 * softplus(0.5) + 0.1 * softplus(-0.5) = 0.8766693 + 0.0474077 = 0.9240770
    smoothed = LOSSES["aot"](pol, ref, LossHParams(beta=0.5, label_smoothing=0.1)).losses
    assert smoothed.tolist() == pytest.approx([0.9240770] * 2, abs=1e-6)


def test_aot_unpaired_sorts_chosen_and_rejected_apart():
    # the same pairs: lw = [-1 - -2, -4 - -1] = [1, -3] -> sorted [-3, 1];  ll = [-1, 1] -> sorted [-1, 1]
    #   differences [-2, 0], beta = 0.5: softplus(1) = 1.3132617 and softplus(0) = ln 2
    pol, ref = two_pairs([-1.0, -4.0], [-3.0, -3.0], [-2.0, -1.0], [-2.0, -4.0])
    out = LOSSES["aot_unpaired"](pol, ref, LossHParams(beta=0.5))
    assert out.losses.tolist() == pytest.approx([1.3132617, LN2], abs=1e-6)


def test_sft_is_the_batch_token_mean_as_trl():
    # chosen log-probs -3 over 1 token and -6 over 5 tokens: TRL's sft = (3 + 6) / (1 + 5) = 1.5 for both pairs
    # (the mean of per-pair means, (3/1 + 6/5) / 2 = 2.1, would weigh the 1-token answer as much as the 5-token one)
    pol, _ = two_pairs([-3.0, -6.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0], nw=(1.0, 5.0))
    out = LOSSES["sft"](pol, None, LossHParams(beta=0.5))
    assert out.losses.tolist() == [1.5, 1.5]
    assert out.chosen_rewards.tolist() == pytest.approx([0.5 * -3.0, 0.5 * -6.0 / 5])


def test_bco_pair_has_no_reward_shift_as_trl():
    # lw = 1, ll = -1, beta = 0.5: -ln sigma(0.5) - ln sigma(0.5) = 2 softplus(-0.5) = 2 * 0.4740770 = 0.9481540
    pol, ref = pair(-1.0, -3.0, dtype=torch.float64), pair(-2.0, -2.0, dtype=torch.float64)
    assert LOSSES["bco_pair"](pol, ref, LossHParams(beta=0.5)).losses.item() == pytest.approx(0.9481540, abs=1e-6)
    # the paper's shift delta stays available to `tilt explain`: delta = 0.5 -> -ln sigma(0) - ln sigma(1)
    shifted = LOSSES["bco_pair"](pol, ref, LossHParams(beta=0.5, bco_delta=0.5)).losses.item()
    assert shifted == pytest.approx(LN2 + 0.3132617, abs=1e-6)
