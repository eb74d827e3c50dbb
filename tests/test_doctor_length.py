"""Length bias both ways (failure mode 4): longer wins AND shorter wins, from the data, live, held out and at the
end, with the fix that fits the direction; and the single builder of the loss hyper-parameters the doctor reads."""

from __future__ import annotations

import json
import math
import random

import pytest

from tiltlm.core.losses import LOSSES, LossHParams
from tiltlm.doctor.checks import Doctor, initial_loss
from tiltlm.doctor.length import pair_length_effect, pooled_corr
from tiltlm.doctor.replay import diagnose_run

from test_doctor import healthy_stream

# the issue's HH harmless run: the last 12 training records' len_diff_margin_corr (-0.30 .. -0.73, mean -0.54),
# 32 pairs a record (logging every 4 steps of 8 pairs), held-out correlation -0.53 over 462 pairs
HH_LAST_12 = [-0.30, -0.52, -0.61, -0.45, -0.73, -0.58, -0.49, -0.66, -0.38, -0.55, -0.70, -0.51]


def length_run(corrs, *, pairs=32, evals=(), stats=None, scores=None):
    s = healthy_stream(len(corrs) + 1)
    for r, c in zip(s[1:], corrs):
        r["len_diff_margin_corr"], r["pairs"] = c, pairs
    doc = Doctor(beta=0.1, learning_rate=5e-7, loss_types=["sigmoid"])
    if stats is not None:
        doc.check_data(stats)
    ev = {e["step"]: e for e in evals}
    for r in s:
        doc.observe(r)
        if r["step"] in ev:
            doc.observe_eval(ev[r["step"]])
    doc.finish(scores)
    return [f for f in doc.findings if f.check == "length_bias"]


def test_shorter_wins_fires_live_with_its_direction_and_fix():
    quiet = [0.05 * math.sin(k) for k in range(20)]
    found = length_run(quiet + HH_LAST_12)
    assert len(found) == 1 and found[0].severity == "warning"
    # steps: record k of the list is step k + 2; the 5-record window first holds HH values 1-5 at step 26
    assert found[0].step == 26
    assert "SHORTER WINS" in found[0].message and "len_diff_margin_corr -0.5" in found[0].message
    assert "rejected reply is much longer than the chosen" in found[0].fix and "sigmoid_norm" in found[0].fix


def test_longer_wins_still_fires():
    found = length_run([0.05] * 10 + [0.45, 0.6, 0.55, 0.7, 0.5, 0.65] + [0.05] * 10)
    assert len(found) == 1 and "LONGER WINS" in found[0].message and "verbose" in found[0].message
    assert "chosen reply is much longer than the rejected" in found[0].fix


def test_length_balanced_run_stays_quiet():
    """Noise of a balanced run: 8 pairs a record, correlation ~ N(0, 1/sqrt(7)) around 0, 200 records."""
    rng = random.Random(0)
    corrs = [max(-0.99, min(0.99, rng.gauss(0.0, 0.38))) for _ in range(200)]
    assert length_run(corrs, pairs=8) == []
    # a small real correlation (the margin only weakly tracks length) is not a finding either
    assert length_run([rng.gauss(-0.15, 0.15) for _ in range(100)]) == []


def test_pooled_correlation_is_fisher_weighted():
    r, z = pooled_corr([0.5, -0.5], [13, 13])
    assert r == pytest.approx(0.0) and z == pytest.approx(0.0)
    r, z = pooled_corr([0.5], [103])
    assert r == pytest.approx(0.5) and z == pytest.approx(math.atanh(0.5) * 10)
    assert pooled_corr([0.2, 0.4], [None, 10]) == (pytest.approx(0.3), None)


def test_eval_records_fire_in_the_right_direction():
    evals = [{"step": 10, "eval/loss": 0.68, "eval/rewards/accuracies": 0.64, "eval/rewards/margins": 0.042,
              "eval/len_diff_margin_corr": -0.53, "eval/pairs": 462}]
    found = length_run([0.05] * 20, evals=evals)
    assert len(found) == 1 and found[0].step == 10
    assert "held-out" in found[0].message and "-0.53 over 462 pairs" in found[0].message
    assert "SHORTER WINS" in found[0].message
    small = [dict(evals[0], **{"eval/pairs": 12})]  # too few pairs to call it
    weak = [dict(evals[0], **{"eval/len_diff_margin_corr": 0.12})]
    assert length_run([0.05] * 20, evals=small) == [] and length_run([0.05] * 20, evals=weak) == []
    longer = [dict(evals[0], **{"eval/len_diff_margin_corr": 0.41})]
    assert "LONGER WINS" in length_run([0.05] * 20, evals=longer)[0].message


def _stats(mean, sd, frac, rej_frac, mc, mr):
    return {"chosen_longer_frac": frac, "rejected_longer_frac": rej_frac, "length_diff": {"mean": mean, "std": sd},
            "tokens": {"chosen": {"mean": mc}, "rejected": {"mean": mr}}}


def test_data_check_reads_the_mean_and_spread_of_the_length_difference():
    # the HH harmless dev file under SmolLM2's tokenizer: balanced by count, rejected longer by 8.4 +- 51.1 tokens
    hh = _stats(-8.38, 51.13, 0.45, 0.53, 39.7, 48.1)
    found = length_run([0.0] * 5, stats=hh)
    assert len(found) == 1 and found[0].severity == "info" and found[0].step == 0
    assert "rejected reply is longer on average" in found[0].message and "-8.4 ± 51.1" in found[0].message
    assert "by count chosen longer in 45%" in found[0].message and "'shorter wins'" in found[0].message
    assert "here chosen - rejected = -8.4 ± 51.1 tokens" in found[0].fix
    strong = length_run([0.0] * 5, stats=_stats(20.0, 40.0, 0.55, 0.40, 60, 40))  # 0.5 sd: a warning
    assert strong[0].severity == "warning" and "chosen reply is longer on average" in strong[0].message
    assert length_run([0.0] * 5, stats=_stats(0.4, 30.0, 0.49, 0.48, 40.2, 39.8)) == []  # balanced
    by_count = length_run([0.0] * 5, stats=_stats(3.0, 4.0, 0.80, 0.10, 12, 9))
    assert "chosen is longer than rejected in 80%" in by_count[0].message


def _scores(n=200, per_token=-0.05, seed=0):
    """pair_scores rows where every reply's log-ratio moved `per_token` nats a token (both fall: the longer falls
    more, so the SHORTER reply wins), plus noise: margin = 0.1 * per_token * (n_w - n_l) + noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        nc, nr = rng.randint(10, 80), rng.randint(10, 90)
        lw, ll = per_token * nc + rng.gauss(0, 0.3), per_token * nr + rng.gauss(0, 0.3)
        rows.append({"index": i, "policy_chosen": -50.0 + lw, "ref_chosen": -50.0, "policy_rejected": -60.0 + ll,
                     "ref_rejected": -60.0, "chosen_tokens": nc, "rejected_tokens": nr, "margin": 0.1 * (lw - ll)})
    return rows


def test_end_of_run_pairs_show_what_a_fix_would_change():
    rows = _scores()
    eff = pair_length_effect(rows, beta=0.1)
    assert eff.corr < -0.9 and abs(eff.corr_per_token) < 0.3  # per token the length no longer shows
    assert eff.matched_accuracy is not None and abs(eff.matched_accuracy - 0.5) < eff.accuracy - 0.5 + 0.3
    found = length_run([0.0] * 20, scores=rows)
    assert len(found) == 1 and found[0].severity == "warning" and "SHORTER WINS" in found[0].message
    assert "What a fix would change: read per token" in found[0].message and "length-balanced subset" in found[0].message
    # after the live check fired in the same direction the end-of-run numbers come as its follow-up (info)
    follow = length_run(HH_LAST_12, scores=rows)
    assert [f.severity for f in follow] == ["warning", "info"]
    assert length_run([0.0] * 20, scores=_scores(per_token=0.0)) == []  # no length effect: quiet


def _write_run(tmp_path, corrs, scores, stats):
    s = healthy_stream(len(corrs) + 1)
    for r, c in zip(s[1:], corrs):
        r["len_diff_margin_corr"], r["pairs"] = c, 32
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s))
    (tmp_path / "pair_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
    (tmp_path / "data_stats.json").write_text(json.dumps(stats))
    (tmp_path / "config.yaml").write_text("beta: 0.1\nlearning_rate: 5.0e-7\nloss_type: [sigmoid]\n")


def test_tilt_doctor_replay_gives_the_live_findings(tmp_path):
    stats, rows = _stats(-8.38, 51.13, 0.45, 0.53, 39.7, 48.1), _scores()
    _write_run(tmp_path, HH_LAST_12, rows, stats)
    live = length_run(HH_LAST_12, stats=stats, scores=rows)
    assert [f.to_dict() for f in diagnose_run(tmp_path)] == [f.to_dict() for f in live]
    assert [f.severity for f in live] == ["info", "warning", "info"]


# ---------------------------------------------------------------------- every loss hyper-parameter reaches the doctor
def test_loss_hparams_are_built_from_any_options_object():
    class Cfg:
        beta, label_smoothing, simpo_gamma, discopop_tau = 0.3, 0.1, None, 0.2

    hp = LossHParams.from_options(Cfg(), bco_delta=0.25)
    assert hp == LossHParams(beta=0.3, label_smoothing=0.1, simpo_gamma=0.5, discopop_tau=0.2, bco_delta=0.25)
    # config.yaml's dict: an int where a float belongs is a float; the other fields keep their types
    got = LossHParams.from_options({"beta": 1, "f_divergence_type": "js_divergence", "use_weighting": True,
                                    "ld_alpha": 0.5, "unrelated": "x"})
    assert got == LossHParams(beta=1.0, f_divergence_type="js_divergence", use_weighting=True, ld_alpha=0.5)
    assert isinstance(got.beta, float)


def test_exo_pair_with_label_smoothing_is_not_a_reference_mismatch(tmp_path):
    """exo_pair at policy == reference: -ln2 - (ln(1-eps) + ln eps)/2 = 0.5108 with eps = 0.1 (2.7612 with the 1e-3
    used when label_smoothing is 0): the doctor must compare with the run's own label_smoothing."""
    hp = LossHParams(beta=0.1, label_smoothing=0.1)
    start = -math.log(2) - 0.5 * (math.log(0.9) + math.log(0.1))
    assert initial_loss("exo_pair", hp) == pytest.approx(start) == pytest.approx(0.51083, abs=1e-5)
    assert LOSSES["exo_pair"].at_reference(hp) == pytest.approx(start)
    s = healthy_stream(12)
    s[0]["loss"] = start
    for r in s[1:]:
        r["loss"] = start * (1 - 0.1 * r["epoch"])
    doc = Doctor(hparams=hp, learning_rate=5e-7, loss_types=["exo_pair"])
    for r in s:
        doc.observe(r)
    assert [f.check for f in doc.findings] == []
    # tilt doctor builds the same hyper-parameters from config.yaml
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s))
    (tmp_path / "config.yaml").write_text("beta: 0.1\nlearning_rate: 5.0e-7\nloss_type: [exo_pair]\n"
                                          "label_smoothing: 0.1\n")
    assert [f.check for f in diagnose_run(tmp_path)] == []
    (tmp_path / "config.yaml").write_text("beta: 0.1\nlearning_rate: 5.0e-7\nloss_type: [exo_pair]\n")
    assert [f.check for f in diagnose_run(tmp_path)] == ["reference_mismatch"]  # eps 1e-3 expects 2.7612


def test_report_page_and_explain_show_margin_against_length(tmp_path):
    from tiltlm.commands.report import build_report
    from tiltlm.commands.report_length import length_table

    rows = _scores()
    _write_run(tmp_path, HH_LAST_12, rows, _stats(-8.38, 51.13, 0.45, 0.53, 39.7, 48.1))
    page = build_report(tmp_path).read_text()
    assert (tmp_path / "report" / "length.png").stat().st_size > 5000
    assert "Margin vs length difference" in page and 'alt="length"' in page and "shorter wins" in page
    table = length_table(rows, 0.1, bins=4).splitlines()
    assert "r = -0.9" in table[2] and len(table) == 4 + 4
    # bins of 50 pairs sorted by length difference: the most negative difference has the largest margin
    margins = [float(line.split()[-2]) for line in table[4:]]
    assert margins == sorted(margins, reverse=True) and margins[0] > 0 > margins[-1]


def test_data_stats_carry_the_length_difference(tmp_path):
    """data_stats.json as training writes it: 26 pairs 8 vs 6 words, 24 pairs 6 vs 8 (one token a word, EOS on both
    sides): difference +2 or -2, mean (52 - 48) / 50 = 0.08, sd sqrt(4 - 0.08^2)."""
    from tiny_models import real_data_stats

    stats = real_data_stats(tmp_path / "pairs.jsonl", [8] * 26 + [6] * 24, [6] * 26 + [8] * 24)
    assert stats["length_diff"]["mean"] == pytest.approx(0.08)
    assert stats["length_diff"]["std"] == pytest.approx(math.sqrt(4 - 0.08 ** 2))
    assert (stats["length_diff"]["p5"], stats["length_diff"]["p95"]) == (-2.0, 2.0)
    assert length_run([0.0] * 5, stats=stats) == []  # balanced
