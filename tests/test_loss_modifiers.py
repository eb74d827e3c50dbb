"""TRL 1.16's three modifiers of every loss, with HAND-DERIVED values: f_divergence_type (f-DPO), ld_alpha (LD-DPO)
and use_weighting (WPO); the per-token pieces sequence_logps gives them; their config checks.

Side by side with TRL's own code: tests/test_trl_parity.py.
"""

import math

import pytest
import torch

from tiltlm.config import TrainConfig
from tiltlm.core.batching import collate
from tiltlm.core.logps import completion_positions, sequence_logps, token_log_sum_sq_probs
from tiltlm.core.losses import LOSSES, LossHParams, check_modifiers, compute_loss
from tiltlm.errors import ConfigError
from tiltlm.types import PairLogps, TokenizedPair

LN2 = math.log(2.0)


def one_pair(pw, pl, rw=0.0, rl=0.0, nw=1.0, nl=1.0):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return PairLogps(t(pw), t(pl), t(nw), t(nl)), PairLogps(t(rw), t(rl), t(nw), t(nl))


# ------------------------------------------------------------------------------------------------ f-divergences
# lw = ln 2 (pi/ref = t_w = 2), ll = -ln 2 (t_l = 1/2), beta = 1; sigmoid loss = softplus(-(f'(t_w) - f'(t_l)))
#   reverse_kl  f'(t) = ln t:             2 ln 2                  -> ln(1 + 1/4) = 0.2231436
#   forward_kl  f'(t) = 1 - 1/t:          (1 - 1/2) - (1 - 2) = 1.5 -> ln(1 + e^-1.5) = 0.2014133
#   js          f'(t) = ln(2t/(1+t)):     ln(4/3) - ln(2/3) = ln 2 -> ln(1 + 1/2) = 0.4054651
#   alpha 0.5   f'(t) = (t^-0.5 - 1)/-0.5 = 2 (1 - t^-0.5): 2(1 - 1/sqrt2) - 2(1 - sqrt2) = sqrt 2
#                                                           -> ln(1 + e^-1.4142136) = 0.2176217
F_DIV_SIGMOID = {"reverse_kl": 0.2231436, "forward_kl": 0.2014133, "js_divergence": 0.4054651,
                 "alpha_divergence": 0.2176217}


@pytest.mark.parametrize("divergence", sorted(F_DIV_SIGMOID))
def test_f_divergence_sigmoid_hand_values(divergence):
    pol, ref = one_pair(LN2, -LN2)
    out = LOSSES["sigmoid"](pol, ref, LossHParams(beta=1.0, f_divergence_type=divergence))
    assert out.losses.item() == pytest.approx(F_DIV_SIGMOID[divergence], abs=1e-6)
    # the rewards stay beta * log(pi/ref) whatever the divergence (TRL's metrics)
    assert out.chosen_rewards.item() == pytest.approx(LN2) and out.rejected_rewards.item() == pytest.approx(-LN2)


def test_alpha_divergence_other_coefs():
    pol, ref = one_pair(LN2, -LN2)
    # alpha = 1 is the limit ln t: reverse KL exactly
    one = LOSSES["sigmoid"](pol, ref, LossHParams(beta=1.0, f_divergence_type="alpha_divergence",
                                                  f_alpha_divergence_coef=1.0))
    assert one.losses.item() == pytest.approx(math.log(1.25), abs=1e-12)
    # alpha = 0.2: f'(t) = (t^-0.8 - 1) / -0.8: f'(2) = (0.5743492 - 1)/-0.8 = 0.5320635,
    #   f'(1/2) = (1.7411011 - 1)/-0.8 = -0.9263764; hinge at beta = 0.5: 1 - 0.5 * 1.4584399 = 0.2707800
    hinge = LOSSES["hinge"](pol, ref, LossHParams(beta=0.5, f_divergence_type="alpha_divergence",
                                                  f_alpha_divergence_coef=0.2))
    assert hinge.losses.item() == pytest.approx(0.2707800, abs=1e-6)


def test_f_divergence_ipo_divides_the_scores_by_length():
    # js: f'(2) = ln(4/3) = 0.2876821 over 2 tokens, f'(1/2) = ln(2/3) = -0.4054651 over 1 token, beta = 0.5:
    #   h_n = 0.1438410 + 0.4054651 = 0.5493061;  loss = (0.5493061 - 1)^2 = 0.2031250 (= (ln(4/3)/2 + ln(3/2) - 1)^2)
    pol, ref = one_pair(LN2, -LN2, nw=2.0)
    out = LOSSES["ipo"](pol, ref, LossHParams(beta=0.5, f_divergence_type="js_divergence"))
    assert out.losses.item() == pytest.approx((math.log(4 / 3) / 2 + math.log(1.5) - 1) ** 2, abs=1e-12)
    assert out.losses.item() == pytest.approx(0.2031250, abs=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergence_keeps_every_step0_value(divergence):
    # policy == reference: every f'(1) - f'(1) = 0 and each score is 0, so at_reference holds for every divergence
    p, _ = one_pair(-3.0, -7.0, nw=3.0, nl=5.0)
    for name, spec in LOSSES.items():
        if spec.f_divergence:
            hp = LossHParams(beta=0.3, label_smoothing=0.1, f_divergence_type=divergence)
            assert spec(p, p, hp).losses.item() == pytest.approx(spec.at_reference(hp), abs=1e-9), name


def test_f_divergence_refused_where_trl_refuses_it():
    # TRL 1.16's list: sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft (plus tiltlm's simpo,
    # which has no reference to diverge from)
    allowed = {n for n, s in LOSSES.items() if s.f_divergence or s.reference_free}
    assert allowed == {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft", "simpo"}
    hp = LossHParams(f_divergence_type="js_divergence")
    for name in set(LOSSES) - allowed:
        with pytest.raises(ValueError, match=f"does not apply to {name}"):
            check_modifiers([name], hp)
    with pytest.raises(ValueError, match="unknown f_divergence_type 'kl'"):
        check_modifiers(["sigmoid"], LossHParams(f_divergence_type="kl"))


# ------------------------------------------------------------------------------------------------ LD-DPO
def ld_batch():
    # pair 0: chosen 3 tokens, rejected 1 (shared length 1); pair 1: chosen 1, rejected 4 (shared 1)
    return collate([TokenizedPair(0, [1, 2], [3, 4, 5], [6]), TokenizedPair(1, [1], [7], [8, 9, 10, 11])],
                   prefix_sharing=True)


def test_sequence_logps_tails():
    batch = ld_batch()
    # completion positions: each sequence's tokens count 0, 1, 2 ... in label order
    assert completion_positions(batch.seq_ids, 4).tolist() == [0, 1, 2, 0, 0, 0, 1, 2, 3]
    token_lp = -torch.arange(1.0, 10.0)  # -1 ... -9 in label order: seqs 0,0,0 | 1 | 2 | 3,3,3,3
    p = sequence_logps(token_lp, batch)
    # pair 0: chosen -1-2-3 = -6, its tail past 1 token -2-3 = -5; rejected -4, no tail
    # pair 1: chosen -5, no tail; rejected -6-7-8-9 = -30, tail -7-8-9 = -24
    assert p.chosen.tolist() == [-6.0, -5.0] and p.rejected.tolist() == [-4.0, -30.0]
    assert p.chosen_tail.tolist() == [-5.0, 0.0] and p.rejected_tail.tolist() == [0.0, -24.0]
    assert p.chosen_log_sum_sq is None  # only with WPO


def test_ld_dpo_hand_value():
    # pair 0 of ld_batch, reference log-probs 0: alpha = 0.5 -> chosen -1 + 0.5 * -5 = -3.5, rejected -4
    #   lw - ll = 0.5, beta = 1: softplus(-0.5) = 0.4740770  (plain DPO: -6 - -4 = -2 -> softplus(2) = 2.1269280)
    batch = ld_batch()
    policy = sequence_logps(-torch.arange(1.0, 10.0), batch)
    ref = sequence_logps(torch.zeros(9), batch)
    ld = compute_loss(["sigmoid"], None, policy, ref, LossHParams(beta=1.0, ld_alpha=0.5))
    plain = compute_loss(["sigmoid"], None, policy, ref, LossHParams(beta=1.0))
    assert ld.losses[0].item() == pytest.approx(0.4740770, abs=1e-6)
    assert plain.losses[0].item() == pytest.approx(2.1269280, abs=1e-6)
    assert ld.chosen_rewards[0].item() == pytest.approx(-3.5)  # TRL's rewards are the LD-weighted log-ratios
    # sft reads the plain log-probs (TRL's sft uses the per-token log-probs): (6 + 5) / (3 + 1) = 2.75 per pair
    mix = compute_loss(["sigmoid", "sft"], None, policy, ref, LossHParams(beta=1.0, ld_alpha=0.5))
    assert mix.extras["loss/sft"].tolist() == [2.75, 2.75]


def test_ld_alpha_range():
    with pytest.raises(ValueError, match=r"ld_alpha must be in \[0, 1\]"):
        check_modifiers(["sigmoid"], LossHParams(ld_alpha=1.5))


# ------------------------------------------------------------------------------------------------ WPO
def test_wpo_hand_value():
    # chosen: 2 tokens each with log p = ln 0.5 where log sum_v p_v^2 = ln 0.5 (p = (1/2, 1/2)): mean 0, w_w = 1
    # rejected: 1 token with log p = ln 0.25 where log sum p^2 = ln 0.5: mean ln 0.5, w_l = 0.5;  pair weight 0.5
    # policy == reference: sigmoid = ln 2, weighted ln 2 / 2 = 0.3465736
    batch = collate([TokenizedPair(0, [1], [3, 4], [5])], prefix_sharing=False)
    lp = torch.tensor([math.log(0.5), math.log(0.5), math.log(0.25)])
    policy = sequence_logps(lp, batch, log_sum_sq=torch.full((3,), math.log(0.5)))
    out = compute_loss(["sigmoid"], None, policy, policy.detach(), LossHParams(use_weighting=True))
    assert out.extras["wpo_weight"].item() == pytest.approx(0.5, abs=1e-7)
    assert out.losses.item() == pytest.approx(LN2 / 2, abs=1e-7)


def test_wpo_weights_carry_no_gradient():
    lp = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    batch = collate([TokenizedPair(0, [1], [3, 4], [5])], prefix_sharing=False)
    policy = sequence_logps(lp, batch, log_sum_sq=torch.full((3,), -0.7))
    ref = PairLogps(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([2.0]), torch.tensor([1.0]))
    hp = LossHParams(beta=0.5, use_weighting=True)
    out = compute_loss(["sigmoid"], None, policy, ref, hp)
    out.losses.sum().backward()
    # d/d logpi_w of w * (-ln sigma(m)) with w constant: -w * beta * sigma(-m)
    m = 0.5 * ((-1.5 + 1.0) - (-2.0 + 1.0))
    w = out.extras["wpo_weight"].item()
    assert lp.grad[0].item() == pytest.approx(-w * 0.5 * torch.sigmoid(torch.tensor(-m)).item(), abs=1e-6)
    with pytest.raises(ValueError, match="does not apply to aot"):
        check_modifiers(["aot"], hp)
    with pytest.raises(ValueError, match="log sum_v p_v"):
        compute_loss(["sigmoid"], None, sequence_logps(lp.detach(), batch), ref, hp)


def test_token_log_sum_sq_probs_is_log_sum_of_squared_probs():
    from tiny_models import tiny_model

    pairs = [TokenizedPair(0, [1, 7, 8], [9, 10], [11, 12, 13]), TokenizedPair(1, [1], [14], [15, 16])]
    for kind in ("llama", "gemma2"):  # gemma2: the soft-capped logits, as its forward applies them
        model = tiny_model(kind)
        for prefix_sharing, chunked in ((False, False), (True, True)):
            batch = collate(pairs, prefix_sharing=prefix_sharing)
            got = token_log_sum_sq_probs(model, batch, chunked=chunked, chunk_size=3)
            want = []
            for p in pairs:  # one sequence at a time, full logits: log sum_v softmax(z)_v^2
                for comp in (p.chosen_ids, p.rejected_ids):
                    logits = model(input_ids=torch.tensor([p.prompt_ids + comp])).logits[0].double()
                    probs = torch.softmax(logits, -1)[len(p.prompt_ids) - 1:-1]
                    want.append(torch.log((probs ** 2).sum(-1)))
            order = sequence_order(batch)
            assert torch.allclose(got.double(), torch.cat(want)[order], atol=1e-5), (kind, prefix_sharing, chunked)
            assert not got.requires_grad


def sequence_order(batch):
    """Index into [seq 0 tokens, seq 1 tokens, ...] of each label of `batch` (its tokens listed by sequence)."""
    counts = torch.bincount(batch.seq_ids, minlength=2 * batch.num_pairs)
    starts = torch.cumsum(counts, 0) - counts
    return starts[batch.seq_ids] + completion_positions(batch.seq_ids, 2 * batch.num_pairs)


# ------------------------------------------------------------------------------------------------ config
def test_config_fields_have_trl_defaults_and_are_checked():
    cfg = TrainConfig()
    assert (cfg.f_divergence_type, cfg.f_alpha_divergence_coef, cfg.use_weighting, cfg.ld_alpha) == (
        "reverse_kl", 0.5, False, None)
    TrainConfig(loss_type=["ipo"], f_divergence_type="alpha_divergence", ld_alpha=0.0, use_weighting=True).validate()
    for bad, match in ((dict(f_divergence_type="js"), "unknown f_divergence_type 'js'"),
                       (dict(loss_type=["apo_zero"], f_divergence_type="forward_kl"), "does not apply to apo_zero"),
                       (dict(loss_type=["aot"], use_weighting=True), "does not apply to aot"),
                       (dict(ld_alpha=-0.1), "ld_alpha must be in"),
                       (dict(use_weighting=True, dist="fsdp"), "not supported with --dist fsdp")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad).validate()


# ------------------------------------------------------------------------------------------------ a training run
def test_training_with_wpo_and_ld_dpo(tiny_assets, tmp_path):
    """WPO and LD-DPO through tiltlm.train: at step 1 (policy == reference) every pair's sigmoid loss is ln 2 times
    its WPO weight, so the logged loss is ln 2 * wpo_weight and the doctor (which knows) stays quiet; the cached
    reference (with its LD tails) trains exactly like the live one."""
    import json

    import tiltlm

    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:  # answers of different lengths, so the LD tails are not empty
        for i in range(8):
            f.write(json.dumps({"prompt": f"Question {i}: can you help me?", "chosen": " Sure." + " Gladly." * (i % 3),
                                "rejected": " No." + " Never, go away." * ((i + 1) % 4)}) + "\n")
    common = dict(model=str(tiny_assets / "model"), train_dataset=str(data), learning_rate=1e-3, max_steps=2,
                  per_device_train_batch_size=4, progress=False, seed=0, use_weighting=True, ld_alpha=0.5,
                  log=lambda *a, **k: None)
    runs = {}
    for name, precompute in (("cached", True), ("live", False)):
        out = tmp_path / name
        tiltlm.train(output_dir=str(out), ref_cache_dir=str(tmp_path / "cache"), precompute_ref_log_probs=precompute,
                     **common)
        runs[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        first = runs[name][0]
        assert 0 < first["wpo_weight"] < 1.5
        assert first["loss"] == pytest.approx(LN2 * first["wpo_weight"], abs=1e-6)
        findings = (out / "doctor.jsonl").read_text() if (out / "doctor.jsonl").exists() else ""
        assert "reference_mismatch" not in findings
    for a, b in zip(runs["cached"], runs["live"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/chosen"] == pytest.approx(b["rewards/chosen"], abs=1e-5)
    assert runs["cached"][1]["rewards/margins"] != 0  # the second step saw a trained policy


def test_reference_cache_keeps_the_ld_tails():
    from tiltlm.model.reference import CachedReference

    rows = [dict(index=7, chosen_logp=-3.0, rejected_logp=-5.0, chosen_tokens=3, rejected_tokens=1,
                 chosen_tail_logp=-1.5, rejected_tail_logp=0.0)]
    ref = CachedReference.from_rows(rows)
    assert ref.has_tails and ref.to_rows() == [{**rows[0]}]
    picked = ref(collate([TokenizedPair(7, [1], [2, 3, 4], [5])], prefix_sharing=True))
    assert picked.chosen_tail.tolist() == [-1.5] and picked.rejected_tail.tolist() == [0.0]
    # a table written before the tails existed loads, but is not a cache hit (it is recomputed once)
    old = CachedReference.from_rows([{k: v for k, v in rows[0].items() if "tail" not in k}])
    assert not old.has_tails and picked.chosen.tolist() == [-3.0]
