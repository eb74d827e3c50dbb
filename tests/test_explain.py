"""`tilt explain` and `tilt landscape`: the seed's walkthrough numbers appear in the output; the CLI parses."""

import argparse

import pytest

from tiltlm.commands import landscape
from tiltlm.commands.explain import add_cli, explain_numbers, format_explanation, run_explain
from tiltlm.core.losses import LOSSES

SEED = ["--logp-chosen", "-3.5", "--logp-rejected", "-6.0", "--ref-chosen", "-4.0", "--ref-rejected", "-5.0",
        "--beta", "0.5"]


def parser():
    p = argparse.ArgumentParser(prog="tilt")
    sub = p.add_subparsers(dest="command", required=True)
    add_cli(sub)
    landscape.add_cli(sub)
    return p


def test_explain_numbers_seed():
    d = explain_numbers(-3.5, -6.0, -4.0, -5.0, 0.5)
    assert d["logratio_chosen"] == pytest.approx(0.5) and d["logratio_rejected"] == pytest.approx(-1.0)
    assert d["reward_chosen"] == pytest.approx(0.25) and d["reward_rejected"] == pytest.approx(-0.5)
    assert d["margin"] == pytest.approx(0.75)
    assert d["pref_prob"] == pytest.approx(0.6792, abs=1e-4)
    assert d["loss"] == pytest.approx(0.3868, abs=1e-4)
    assert d["grad_scale"] == pytest.approx(0.3208, abs=1e-4)
    assert d["grad_chosen"] == pytest.approx(-0.5 * 0.3208, abs=1e-4)  # -beta*sigma(-m)
    assert d["grad_rejected"] == pytest.approx(+0.5 * 0.3208, abs=1e-4)


def test_format_contains_walkthrough_numbers():
    text = format_explanation(explain_numbers(-3.5, -6.0, -4.0, -5.0, 0.5))
    for s in ("+0.500", "-1.000", "+0.250", "-0.500", "+0.750", "0.6792", "0.3868", "0.3208", "0.1604"):
        assert s in text, s


def test_run_explain_via_argparse_negative_numbers(capsys):
    args = parser().parse_args(["explain", *SEED])
    assert args.logp_chosen == -3.5 and args.ref_rejected == -5.0 and args.run_dir is None
    assert args.func is run_explain
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for s in ("+0.500", "-1.000", "+0.250", "-0.500", "+0.750", "0.6792", "0.3868", "0.3208"):
        assert s in out, s


def test_underscore_spellings_and_defaults(capsys):
    args = parser().parse_args(["explain", "--logp_chosen", "-3.5", "--logp_rejected=-6", "--ref_chosen", "-4",
                                "--ref_rejected", "-5", "--beta", "0.5", "--loss_type", "sigmoid",
                                "--label_smoothing", "0.1"])
    assert args.label_smoothing == 0.1 and args.logp_rejected == -6.0
    assert run_explain(args) == 0
    # cDPO at eps = 0.1: 0.9 * 0.386871 + 0.1 * 1.136871 = 0.461871
    assert "0.46187" in capsys.readouterr().out
    # no numbers at all: the seed example
    assert run_explain(parser().parse_args(["explain"])) == 0
    assert "0.3868" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_explains(name, capsys):
    args = parser().parse_args(["explain", *SEED, "--loss-type", name, "--chosen-tokens", "7",
                                "--rejected-tokens", "3"])
    assert run_explain(args) == 0
    out = capsys.readouterr().out
    assert f"loss_type={name}" in out and "dL/dlog pi(y_w)" in out and "meaning:" in out


def test_ipo_gradient_by_hand():
    # one token each: h_n = 0.5 - (-1.0) = 1.5; L = (1.5 - 5)^2 = 12.25; dL/dlogpi_w = 2 * (1.5 - 5) = -7
    d = explain_numbers(-3.5, -6.0, -4.0, -5.0, 0.1, loss_type="ipo")
    assert d["loss"] == pytest.approx(12.25) and d["grad_chosen"] == pytest.approx(-7.0)
    assert d["grad_rejected"] == pytest.approx(7.0)


def test_mixed_losses():
    # sigmoid 0.386871 + 0.5 * sft(3.5 / 1 token) = 0.386871 + 1.75
    d = explain_numbers(-3.5, -6.0, -4.0, -5.0, 0.5, loss_type="sigmoid,sft", loss_weights=[1.0, 0.5])
    assert d["loss"] == pytest.approx(2.136871, abs=1e-5)
    assert d["components"] == pytest.approx({"sigmoid": 0.386871, "sft": 3.5}, abs=1e-5)
    assert "0.5 * sft" in format_explanation(d)


def test_errors(capsys):
    assert run_explain(parser().parse_args(["explain", *SEED, "--loss-type", "sigmod"])) == 2
    assert "unknown loss_type" in capsys.readouterr().err
    assert run_explain(parser().parse_args(["explain", "--logp-chosen", "-3.5", "--logp-rejected", "-6"])) == 2
    assert "ref" in capsys.readouterr().err
    # reference-free losses need no reference
    assert run_explain(parser().parse_args(["explain", "--logp-chosen", "-3.5", "--logp-rejected", "-6",
                                            "--loss-type", "simpo"])) == 0


def test_run_dir_explains_a_pair_of_a_real_run(tiny_assets, tmp_path, capsys):
    import re

    from tiltlm import train
    from tiltlm.config import load_config
    from tiltlm.rundir import read_jsonl

    out = tmp_path / "run"
    train(load_config(None, dict(model=str(tiny_assets / "model"), data=str(tiny_assets / "train.jsonl"),
                                 output_dir=str(out), max_steps=1, progress=False, doctor=False,
                                 ref_cache_dir=str(tmp_path / "cache"))), log=lambda *a, **k: None)
    row = next(r for r in read_jsonl(out / "pair_scores.jsonl") if r["index"] == 3)
    assert run_explain(parser().parse_args(["explain", str(out), "--pair", "3"])) == 0
    printed = capsys.readouterr().out
    assert row["source"] in printed
    loss = float(re.search(r"loss +L = .* = ([0-9.]+)", printed).group(1))
    assert loss == pytest.approx(row["loss"], abs=1e-5)  # the walkthrough reproduces the run's own number


def test_landscape_writes_png(tmp_path, capsys):
    out = tmp_path / "sub" / "landscape.png"
    args = parser().parse_args(["landscape", "--loss-type", "sigmoid,ipo,hinge", "--beta", "0.1",
                                "--output", str(out), "--points", "61"])
    assert args.func(args) == 0
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_landscape_data_matches_sigmoid_by_hand():
    # m = 0: loss ln 2, sigma(0) = 0.5, |dL/dm| = sigma(0) = 0.5; all losses finite over the whole range
    d = landscape.landscape_data(list(LOSSES), landscape.LossHParams(beta=0.1), -2.0, 2.0, 5)
    assert d["m"][2] == 0.0
    assert d["sigmoid"]["loss"][2] == pytest.approx(0.693147, abs=1e-6)
    assert d["sigmoid"]["pref_prob"][2] == pytest.approx(0.5)
    assert d["sigmoid"]["grad"][2] == pytest.approx(0.5)
    assert d["hinge"]["grad"][4] == 0.0  # m = 2 >= 1
    with pytest.raises(ValueError):
        landscape.landscape_data(["nope"], landscape.LossHParams())
    # every loss carries the facts explain/landscape/the doctor print (one LossSpec each, no side table)
    assert all(spec.meaning and spec.formula and spec.citation for spec in LOSSES.values())
