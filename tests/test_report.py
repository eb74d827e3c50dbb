"""`tilt report`: a self-contained HTML page from a synthetic run directory, robust to missing files."""

from __future__ import annotations

import argparse
import json
import math
import random

import torch

from tiltlm.commands.report import add_cli, build_report
from tiltlm.training.evaluation import score_row
from tiltlm.types import LossOutput, PairLogps, PreferenceExample

from tiny_models import real_data_stats

PLOT_NAMES = ("rewards", "accuracy", "logps", "kl", "margins")


def make_run_dir(path, n: int = 80, seed: int = 0) -> None:
    """A noisy but healthy-looking run with evals, plus a length-biased data_stats (one doctor finding)."""
    rng = random.Random(seed)
    lines = []
    for step in range(1, n + 1):
        x = (step - 1) / (n - 1)
        nz = lambda s: rng.gauss(0, s)  # noqa: E731
        rc, rr = 0.35 * x + nz(0.04), -0.9 * x + nz(0.04)
        m = rc - rr if step > 1 else 0.0
        lines.append({
            "step": step, "epoch": x, "pairs_seen": 8 * step, "learning_rate": 5e-7 * min(1.0, step / 8),
            "loss": math.log1p(math.exp(-m)) if step > 1 else math.log(2), "grad_norm": 8 - 4 * x + nz(0.6),
            "rewards/chosen": rc if step > 1 else 0.0, "rewards/rejected": rr if step > 1 else 0.0,
            "rewards/margins": m, "rewards/accuracies": 0.0 if step == 1 else min(1, 0.55 + 0.27 * x + nz(0.05)),
            "logps/chosen": -140 + 4 * x + nz(6), "logps/rejected": -150 - 15 * x + nz(6),
            "logps_per_token/chosen": -1.25 + 0.03 * x + nz(0.03), "logps_per_token/rejected": -1.3 - 0.12 * x + nz(0.03),
            "kl_proxy": 3.5 * math.sqrt(x) + abs(nz(0.1)), "tokens/chosen": 112.0, "tokens/rejected": 115.0,
            "len_diff_margin_corr": nz(0.15), "nonfinite_steps": 0,
        })
        if step % 20 == 0:
            lines.append({"step": step, "eval/loss": math.log1p(math.exp(-0.8 * m)), "eval/rewards/chosen": 0.8 * rc,
                          "eval/rewards/rejected": 0.8 * rr, "eval/rewards/margins": 0.8 * m,
                          "eval/rewards/accuracies": 0.55 + 0.2 * x, "eval/kl_proxy": 3.2 * math.sqrt(x),
                          "eval/logps/chosen": -138 + 3 * x, "eval/logps_per_token/chosen": -1.24 + 0.02 * x})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (path / "config.yaml").write_text(
        "model: HuggingFaceTB/SmolLM2-135M-Instruct\ndata: data/hh_pairs.jsonl\nbeta: 0.1\nloss_type:\n- sigmoid\n"
        "learning_rate: 5.0e-07\nper_device_train_batch_size: 8\nmax_length: 1024\nprefix_sharing: true\n")
    # data_stats.json as training writes it: chosen longer than rejected in 71% of 100 pairs (length bias)
    stats = real_data_stats(path / "pairs.src.jsonl", [12] * 71 + [6] * 29, [8] * 71 + [9] * 29)
    (path / "pairs.src.jsonl").unlink()
    (path / "data_stats.json").write_text(json.dumps(stats))
    pairs = []  # pair_scores.jsonl rows made by the training run's own writer (score_row)
    for i in range(40):
        margin = -5.0 if i == 7 else rng.gauss(0.6, 0.9)
        ex = PreferenceExample(i, f"data/hh_pairs.jsonl:{i + 1}", f"Human: question {i}?\n\nAssistant:",
                               f"A careful answer number {i}." + (" <script>alert('x')</script>" if i == 7 else ""),
                               f"A careless answer {i}.")
        t = lambda x: torch.tensor([float(x)])  # noqa: E731
        policy, ref = PairLogps(t(-50.0), t(-60.0), t(12), t(9)), PairLogps(t(-49.0), t(-59.0), t(12), t(9))
        out = LossOutput(t(math.log1p(math.exp(-margin))), t(margin / 2), t(-margin / 2))
        pairs.append(score_row(i, ex, policy, ref, out, 0))
    (path / "pair_scores.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def test_full_report(tmp_path):
    make_run_dir(tmp_path)
    out = build_report(tmp_path)
    assert out == tmp_path / "report" / "report.html"
    page = out.read_text()
    for name in PLOT_NAMES:
        assert f'alt="{name}" src="data:image/png;base64,' in page
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
    assert page.count("data:image/png;base64,") == 7  # + loss/grad_norm and learning rate
    assert "<h2>Doctor</h2>" in page and "length_bias" in page and "sigmoid_norm" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "<script>" not in page
    assert "pair #7" in page and "-5.0000" in page and page.index("pair #7") < page.index("pair #0")
    assert "SmolLM2-135M-Instruct" in page and "chosen_longer_frac" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_only_metrics(tmp_path):
    make_run_dir(tmp_path, n=12)
    for name in ("config.yaml", "data_stats.json", "pair_scores.jsonl"):
        (tmp_path / name).unlink()
    page = build_report(tmp_path, tmp_path / "x" / "r.html").read_text()
    assert page.count("not available") == 5  # config (header + table), data stats, pairs (length plot + hardest)
    for name in PLOT_NAMES:
        assert f'alt="{name}"' in page
    assert "No problems found" in page


def test_empty_run_dir_and_cli(tmp_path, capsys):
    page = build_report(tmp_path).read_text()
    assert "metrics.jsonl not available" in page and "<img" not in page
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["report", str(tmp_path), "--output", str(tmp_path / "o.html")])
    assert args.func(args) == 0 and (tmp_path / "o.html").is_file()
    args = parser.parse_args(["report", str(tmp_path / "missing")])
    assert args.func(args) == 2
