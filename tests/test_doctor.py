"""The DPO doctor: each check fires on a synthetic stream showing its failure mode; a healthy run fires nothing."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from tiltlm.commands.doctor import add_cli
from tiltlm.core.losses import LOSSES, LossHParams
from tiltlm.doctor.checks import Doctor, DoctorThresholds, Finding, initial_loss
from tiltlm.doctor.replay import diagnose_run

from tiny_models import real_data_stats

LN2 = math.log(2)


def sig_loss(m: float) -> float:
    return math.log1p(math.exp(-m))


def healthy_record(step: int, n: int = 60) -> dict:
    """A textbook run: chosen up, rejected down, accuracy 0.55 -> 0.8, chosen log-prob flat, KL slow."""
    x = (step - 1) / (n - 1)  # 0 at step 1
    wig = 0.02 * math.sin(step * 1.7) if step > 1 else 0.0  # batch-to-batch noise (step 1: policy == reference)
    rc, rr = 0.4 * x + wig, -0.8 * x - wig
    margin = rc - rr
    return {
        "step": step, "epoch": x, "pairs_seen": 8 * step,
        "loss": sig_loss(margin) if step > 1 else LN2,
        "grad_norm": 6.0 - 3.0 * x + 0.5 * math.sin(step), "learning_rate": 5e-7,
        "rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": margin,
        "rewards/accuracies": 0.0 if step == 1 else 0.55 + 0.25 * x + wig,
        "logps/chosen": -120.0 + 3 * x + 3 * math.sin(step), "logps/rejected": -130.0 - 10 * x,
        "logps_per_token/chosen": -1.2 + 0.03 * x + 0.02 * math.sin(step),
        "logps_per_token/rejected": -1.3 - 0.1 * x,
        "kl_proxy": 3.0 * math.sqrt(x), "tokens/chosen": 100.0, "tokens/rejected": 100.0,
        "len_diff_margin_corr": 0.1 + 0.2 * math.sin(step * 0.9), "nonfinite_steps": 0,
    }


def healthy_stream(n: int = 60) -> list[dict]:
    return [healthy_record(s, n) for s in range(1, n + 1)]


@pytest.fixture(scope="module")
def healthy_stats(tmp_path_factory):
    """Balanced lengths: chosen longer in 52% of 50 pairs, the same mean length (data.prepare_dataset's output)."""
    path = tmp_path_factory.mktemp("stats") / "pairs.jsonl"
    stats = real_data_stats(path, [8] * 26 + [6] * 24, [6] * 26 + [8] * 24)
    assert stats["chosen_longer_frac"] == pytest.approx(0.52)
    return stats


def run(stream, *, beta=0.1, lr=5e-7, loss_types=("sigmoid",), stats=None, evals=()) -> list[Finding]:
    doc = Doctor(beta=beta, learning_rate=lr, loss_types=list(loss_types))
    if stats is not None:
        doc.check_data(stats)
    evals = {e["step"]: e for e in evals}
    for rec in stream:
        doc.observe(rec)
        if rec["step"] in evals:
            doc.observe_eval(evals[rec["step"]])
    doc.finish()
    return doc.findings


def checks(findings) -> set[str]:
    return {f.check for f in findings}


HEALTHY_EVALS = [{"step": s, "eval/loss": 0.6, "eval/rewards/accuracies": a, "eval/rewards/margins": m}
                 for s, a, m in ((20, 0.62, 0.2), (40, 0.7, 0.5), (60, 0.74, 0.8))]


def test_healthy_run_triggers_nothing(healthy_stats):
    assert run(healthy_stream(), stats=healthy_stats, evals=HEALTHY_EVALS) == []


def test_healthy_short_run_triggers_nothing():
    assert run(healthy_stream(8)) == []
    assert run(healthy_stream(3)) == []


def test_healthy_other_losses_trigger_nothing():
    for lt in ("ipo", "hinge", "sigmoid_norm"):
        s = healthy_stream()
        s[0]["loss"] = initial_loss(lt, LossHParams(beta=0.1))
        for r in s[1:]:
            r["loss"] = initial_loss(lt, LossHParams(beta=0.1)) * (1 - 0.3 * r["epoch"])
        assert run(s, loss_types=[lt]) == [], lt
    assert run(healthy_stream(), loss_types=["sigmoid", "sft"]) == []


def test_chosen_collapse():
    s = healthy_stream()
    for r in s:
        x = r["epoch"]
        r["logps/chosen"] = -120.0 - 40 * x
        r["logps_per_token/chosen"] = -1.2 - 0.4 * x
        r["rewards/chosen"] = -0.5 * x
        r["rewards/rejected"] = -2.0 * x
        r["rewards/margins"] = 1.5 * x
    found = [f for f in run(s) if f.check == "chosen_collapse"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert "raise beta" in found[0].fix and "sft" in found[0].fix


def test_sign_bug_inverted_loss():
    s = healthy_stream()
    for r in s[1:]:
        x = r["epoch"]
        r["rewards/margins"] = -1.2 * x - 0.01
        r["rewards/chosen"], r["rewards/rejected"] = -0.8 * x - 0.01, 0.4 * x
        r["rewards/accuracies"] = 0.45 - 0.3 * x
        r["loss"] = sig_loss(-r["rewards/margins"])  # the negated loss decreases as margins go negative
    found = [f for f in run(s) if f.check == "sign_bug"]
    assert len(found) == 1 and found[0].severity == "error" and found[0].step == 11
    assert "chosen/rejected" in found[0].fix and "loss sign" in found[0].fix


def test_sign_bug_accuracy_stuck():
    s = healthy_stream()
    for r in s[1:]:
        r["rewards/accuracies"] = 0.48 + 0.02 * math.sin(r["step"])
    found = [f for f in run(s) if f.check == "sign_bug"]
    assert len(found) == 1 and "stuck" in found[0].message


def test_inverted_eval_data():
    evals = [{"step": 40, "eval/loss": 0.9, "eval/rewards/accuracies": 0.3, "eval/rewards/margins": -0.4}]
    found = run(healthy_stream(), evals=evals)
    assert checks(found) == {"inverted_data"} and found[0].step == 40
    # an eval before any training (policy == reference: accuracy 0, margin 0) is not inverted data
    assert run(healthy_stream(), evals=[{"step": 1, "eval/rewards/accuracies": 0.0,
                                         "eval/rewards/margins": 0.0}]) == []


def test_reference_mismatch_loss_margin_kl():
    s = healthy_stream()
    s[0].update({"loss": 2.3, "rewards/margins": -1.7, "kl_proxy": 35.0})
    found = [f for f in run(s) if f.check == "reference_mismatch"]
    assert len(found) == 1 and found[0].step == 1 and found[0].severity == "error"
    assert "0.6931" in found[0].message and "--ref-model" in found[0].fix


def test_reference_mismatch_checks_every_reference_loss():
    """The step-1 value comes from each loss's own LossSpec, so no loss is silently left unchecked (exo_pair was,
    when the doctor kept its own table). exo_pair at x = 0 with eps = 1e-3: -ln2 - (ln(0.999) + ln(0.001))/2."""
    assert initial_loss("exo_pair", LossHParams(beta=0.1)) == pytest.approx(-math.log(2) - 0.5 * (math.log(0.999) + math.log(1e-3)))
    for lt, spec in LOSSES.items():
        if spec.reference_free:
            assert initial_loss(lt, LossHParams(beta=0.1)) is None
            continue
        s = healthy_stream()
        s[0]["loss"] = 1.5 * initial_loss(lt, LossHParams(beta=0.1)) + 0.5  # well off what policy == reference gives
        found = [f for f in run(s, loss_types=(lt,)) if f.check == "reference_mismatch"]
        assert found and f"{initial_loss(lt, LossHParams(beta=0.1)):.4f}" in found[0].message, lt


def test_reference_mismatch_ipo_expected_loss():
    s = healthy_stream()
    s[0]["loss"] = 1.0  # ipo at step 0 with beta 0.1 must be (1 / 0.2)^2 = 25
    for r in s[1:]:
        r["loss"] = 25 * (1 - 0.3 * r["epoch"])
    assert checks(run(s, loss_types=["ipo"])) == {"reference_mismatch"}
    assert initial_loss("sppo_hard", LossHParams(beta=0.5)) == pytest.approx(2.0)
    assert initial_loss("simpo", LossHParams(beta=0.1)) is None


def test_reference_mismatch_grad_spike():
    s = healthy_stream()
    s[0]["grad_norm"] = 400.0
    found = [f for f in run(s) if f.check == "reference_mismatch"]
    assert len(found) == 1 and "grad_norm" in found[0].message


def test_length_bias_from_data_stats(tmp_path):
    stats = real_data_stats(tmp_path / "pairs.jsonl", [12] * 39 + [6] * 11, [6] * 39 + [12] * 11)
    assert stats["chosen_longer_frac"] == pytest.approx(0.78)
    found = run(healthy_stream(), stats=stats)
    assert checks(found) == {"length_bias"} and found[0].step == 0
    assert "78%" in found[0].message and "sigmoid_norm" in found[0].fix


def test_length_bias_live_fires_once_and_rearms():
    s = healthy_stream()
    for r in s[10:20] + s[40:50]:
        r["len_diff_margin_corr"] = 0.8
    found = [f for f in run(s) if f.check == "length_bias"]
    # the last 5 records' mean first reaches 0.4 at step 12 (steps 8-10 healthy, 0.26 + 0.29 + 0.18, + 2 x 0.8)
    # and again at step 44 (step 40 healthy + 4 x 0.8); the first episode cleared once its window left steps 11-20
    assert [f.step for f in found] == [12, 44]  # fired, cleared, recurred
    assert all("LONGER WINS" in f.message and "chosen reply is much longer" in f.fix for f in found)


def test_kl_runaway():
    s = healthy_stream()
    for r in s:
        r["kl_proxy"] = 0.2 * math.exp(r["step"] / 9)
    found = [f for f in run(s) if f.check == "kl_runaway"]
    assert len(found) == 1 and "raise beta" in found[0].fix


def test_beta_lr_confusion_info():
    found = run(healthy_stream(), beta=0.01, lr=5e-5)
    assert checks(found) == {"beta_lr_confusion"} and found[0].severity == "info"
    assert "{0.05, 0.1, 0.3}" in found[0].fix


def test_nonfinite():
    s = healthy_stream()
    s[30]["loss"] = float("nan")
    s[31]["grad_norm"] = float("inf")
    s[45]["nonfinite_steps"] = 2
    found = [f for f in run(s) if f.check == "nonfinite"]
    assert [f.step for f in found] == [31, 46] and found[0].severity == "error"


def test_not_learning():
    s = healthy_stream()
    for r in s:
        r.update({"loss": LN2 + 0.001 * math.sin(r["step"]), "rewards/margins": 0.0, "rewards/chosen": 0.0,
                  "rewards/rejected": 0.0, "rewards/accuracies": 0.5 if r["step"] > 1 else 0.0,
                  "kl_proxy": 0.01})
    found = run(s, lr=1e-9)
    assert checks(found) == {"not_learning"}
    assert len(found) == 1 and found[0].step == 31 and "learning rate too low" in found[0].fix


def test_finish_not_learning_short_run():
    s = healthy_stream(15)
    for r in s:
        r.update({"loss": LN2, "rewards/accuracies": 0.0, "rewards/margins": 0.0})
    found = run(s)
    assert checks(found) == {"not_learning"}


def test_observe_returns_only_new_findings():
    doc = Doctor(beta=0.1, learning_rate=5e-7, loss_types=["sigmoid"])
    s = healthy_stream()
    s[5]["loss"] = float("nan")
    new = [doc.observe(r) for r in s]
    assert [len(x) for x in new].count(1) == 1 and new[5][0].check == "nonfinite"
    assert doc.findings == new[5] and new[5][0].to_dict()["check"] == "nonfinite"
    assert DoctorThresholds().length_chosen_longer_frac == 0.65


def _write_run(tmp_path, stream, stats, evals=(), cfg="beta: 0.1\nlearning_rate: 5.0e-7\nloss_type: [sigmoid]\n"):
    lines = []
    ev = {e["step"]: e for e in evals}
    for r in stream:
        lines.append(json.dumps(r))
        if r["step"] in ev:
            lines.append(json.dumps(ev[r["step"]]))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 6")  # truncated last line
    (tmp_path / "config.yaml").write_text(cfg)
    (tmp_path / "data_stats.json").write_text(json.dumps(stats))


def test_diagnose_run_and_cli(tmp_path, capsys, healthy_stats):
    _write_run(tmp_path, healthy_stream(), healthy_stats, HEALTHY_EVALS)
    assert diagnose_run(tmp_path) == []
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["doctor", str(tmp_path)])
    assert args.func(args) == 0
    assert (tmp_path / "doctor.jsonl").read_text() == ""

    bad = healthy_stream()
    bad[0].update({"loss": 1.9, "kl_proxy": 40.0, "rewards/chosen": -4.1, "rewards/rejected": -3.9,
                   "rewards/margins": -0.2})  # another model: both replies' log-ratios far from 0, the same way
    _write_run(tmp_path, bad, healthy_stats, cfg="beta: 0.1\nlearning_rate: 5.0e-7\nloss_type: sigmoid\n")
    args = parser.parse_args(["doctor", str(tmp_path), "--plain"])
    assert args.func(args) == 1
    rows = [json.loads(x) for x in (tmp_path / "doctor.jsonl").read_text().splitlines()]
    assert rows[0]["check"] == "reference_mismatch" and set(rows[0]) == {"check", "severity", "step", "message",
                                                                         "fix"}
    assert "reference_mismatch" in capsys.readouterr().out
    assert parser.parse_args(["doctor", str(tmp_path / "nope")]).func(
        parser.parse_args(["doctor", str(tmp_path / "nope")])) == 2


def test_healthy_run_with_lr_warmup_triggers_nothing(healthy_stats):
    """Warmup makes the first records look stuck and the KL grow superlinearly: still healthy."""
    n, warm = 100, 30
    prog = [min(t, warm) ** 2 / (2 * warm) + max(0, t - warm) for t in range(1, n + 1)]
    s = healthy_stream(n)
    for r, p in zip(s, prog):
        x = p / prog[-1]
        r.update({"learning_rate": 5e-7 * min(1.0, r["step"] / warm), "rewards/margins": 1.2 * x,
                  "rewards/chosen": 0.4 * x, "rewards/rejected": -0.8 * x, "kl_proxy": 30 * x})
        if r["step"] > 1:
            r["loss"] = sig_loss(1.2 * x)
            r["rewards/accuracies"] = 0.56 + 0.3 * math.sqrt(x)
    assert run(s, stats=healthy_stats) == []
    for r in s:  # an exponential KL is a runaway only once the LR has stopped rising
        r["kl_proxy"] = 0.2 * math.exp(r["step"] / 9)
    assert checks(run(s)) == {"kl_runaway"}
    for r in s:
        r["learning_rate"] = 5e-9 * r["step"]
    assert run(s) == []


def test_one_sided_swap_is_a_sign_bug_not_a_reference_mismatch():
    """At step 1 (policy == reference) a swap of chosen/rejected in the policy's OR the reference's log-probs gives
    r_w = beta*(pi_l - ref_w) = -r_l for every pair: opposite rewards, a margin, a loss off ln 2."""
    s = healthy_stream()
    s[0].update({"rewards/chosen": 0.3, "rewards/rejected": -0.3, "rewards/margins": 0.6, "loss": sig_loss(0.6)})
    found = run(s)
    assert [f.check for f in found] == ["sign_bug"] and found[0].step == 1
    assert "ONE side" in found[0].message and "BOTH sides" in found[0].fix
    s[0].update({"rewards/chosen": -0.1, "rewards/rejected": -0.7})  # another reference: both moved, by other amounts
    assert [f.check for f in run(s)] == ["reference_mismatch"]
