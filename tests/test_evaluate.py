"""`tilt eval` and `tilt generate` on a tiny word-level Llama built from the demo task (nothing downloaded)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tiltlm.demo import task as T
from tiltlm.demo.tiny_model import make_tiny_model
from tiltlm.commands.evaluate import eval_metrics, load_reward_fn, read_prompts
from tiltlm.types import PairLogps


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = T.build_tokenizer()
    for name, seed in (("a", 0), ("b", 1)):
        model = make_tiny_model(tok, hidden=32, layers=1, seed=seed)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    rng = random.Random(7)
    rows = [{"prompt": p, "chosen": " great and fun .", "rejected": T.make_completion("adj", rng)}
            for p in T.make_prompts(12, 7)]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, data, len(rows)


def _eval(args, capsys) -> dict:
    from tiltlm.commands.cli import main

    assert main(["eval", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_eval_with_itself_as_reference_is_a_coin_flip(models, capsys):
    root, data, n = models
    s = _eval(["--model", str(root / "a"), "--ref", str(root / "a"), "--data", str(data)], capsys)
    assert s["pairs"] == n
    assert s["accuracy"] == 0.5
    assert s["rewards/margins"] == 0.0 and s["rewards/margins_std"] == 0.0
    assert s["rewards/chosen"] == 0.0 and s["logps_per_token_change/chosen"] == 0.0


def test_eval_against_another_reference(models, capsys, tmp_path):
    root, data, n = models
    per = tmp_path / "per_pair.jsonl"
    s = _eval(["--model", str(root / "a"), "--ref", str(root / "b"), "--data", str(data), "--beta", "0.5",
               "--per-pair", str(per), "--output", str(tmp_path / "s.json")], capsys)
    assert 0.0 <= s["accuracy"] <= 1.0 and s["rewards/margins"] != 0.0
    rows = [json.loads(line) for line in per.read_text().splitlines()]
    assert len(rows) == n
    # the summary is the mean of the per-pair margins
    assert abs(sum(r["margin"] for r in rows) / n - s["rewards/margins"]) < 1e-6
    assert json.loads((tmp_path / "s.json").read_text())["pairs"] == n


def test_eval_without_reference_reports_logp_accuracy(models, capsys):
    root, data, _ = models
    s = _eval(["--model", str(root / "a"), "--data", str(data)], capsys)
    assert s["ref"] is None and "rewards/margins" not in s
    assert s["accuracy"] == s["logp_accuracy"]


def test_eval_metrics_by_hand():
    t = lambda *x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    pol = PairLogps(t(-1.0, -4.0, -2.0), t(-3.0, -2.0, -2.0), t(2.0, 2.0, 1.0), t(2.0, 2.0, 1.0))
    ref = PairLogps(t(-2.0, -3.0, -2.0), t(-2.0, -3.0, -2.0), t(2.0, 2.0, 1.0), t(2.0, 2.0, 1.0))
    s, per = eval_metrics(pol, ref, beta=0.5)
    # margins: 0.5*((1)-(-1)) = 1, 0.5*((-1)-(1)) = -1, 0 -> accuracy (1 + 0 + 0.5) / 3
    assert per["margin"].tolist() == [1.0, -1.0, 0.0]
    assert s["accuracy"] == pytest.approx(0.5) and s["rewards/margins"] == 0.0
    assert s["logps_per_token_change/chosen"] == pytest.approx((1 - 1 + 0) / 5)
    assert s["logp_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)


def test_generate_writes_n_samples_with_rewards(models, tmp_path, capsys):
    from tiltlm.commands.cli import main

    root, _, _ = models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the movie was"}\n{"prompt": "overall i"}\n')
    out = tmp_path / "samples.jsonl"
    assert main(["generate", "--model", str(root / "a"), "--prompts", str(prompts), "--n", "3",
                 "--max-new-tokens", "5", "--output", str(out), "--reward-fn", "tiltlm.demo.task:reward"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    assert sorted({r["prompt"] for r in rows}) == ["overall i", "the movie was"]
    assert all(r["tokens"] <= 5 and r["reward"] == T.reward(r["completion"]) for r in rows)
    assert "wrote 6 samples" in capsys.readouterr().out
    # seeded: the same command gives the same samples
    out2 = tmp_path / "samples2.jsonl"
    main(["generate", "--model", str(root / "a"), "--prompts", str(prompts), "--n", "3", "--max-new-tokens", "5",
          "--output", str(out2)])
    assert [json.loads(x)["completion"] for x in out2.read_text().splitlines()] == [r["completion"] for r in rows]


def test_generate_uses_the_chat_template(models):
    from transformers import AutoTokenizer

    from tiltlm.commands.evaluate import render_prompt

    root, _, _ = models
    tok = AutoTokenizer.from_pretrained(root / "a")
    ids, text = render_prompt(tok, "the movie was")
    assert text == "the movie was" and ids[0] == tok.bos_token_id
    tok.chat_template = "{% for m in messages %}the {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} ." \
                        "{% endif %}"
    ids, text = render_prompt(tok, "movie was")
    assert text == "the movie was ." and tok.decode(ids) == "the movie was ."


def test_reward_fn_and_prompt_files(tmp_path):
    f = load_reward_fn("tiltlm.demo.task:reward")
    assert f("prompt", " great .") == 1.0
    (tmp_path / "p.txt").write_text("a\n\nb\n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["a", "b"]
    (tmp_path / "p.json").write_text('[{"prompt": "x"}, "y"]')
    assert read_prompts(str(tmp_path / "p.json")) == ["x", "y"]
    with pytest.raises(ValueError):
        load_reward_fn("no_colon")
