"""The demo task, its sampling / KL pieces, and a shortened `tilt demo` end to end (< 2 min on 2 CPU cores)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tiltlm.demo import task as T
from tiltlm.demo.evaluate import best_of_n, evaluate_policy, preference_accuracy
from tiltlm.demo.sample import Sample, build_pairs, sample, sequence_logps
from tiltlm.demo.tiny_model import make_tiny_model


def test_reward_is_the_lexicon_count():
    assert T.reward(" great and fun . i hated it .") == 1.0
    assert T.reward(" boring , dull scenes .") == -2.0
    assert T.reward(" long and quiet .") == 0.0
    assert T.reward("") == 0.0


def test_task_is_seeded_and_mixed():
    assert T.make_reviews(20, 3) == T.make_reviews(20, 3)
    assert T.make_reviews(20, 3) != T.make_reviews(20, 4)
    rewards = [T.reward(r) for r in T.make_reviews(2000, 0)]
    mean = sum(rewards) / len(rewards)
    assert abs(mean) < 0.2  # the SFT corpus is neutral on average ...
    assert min(rewards) <= -2 and max(rewards) >= 2  # ... but varied
    prompts = T.make_prompts(40, 1)
    assert len(prompts) == 40 and all(p in {o for o, _ in T.OPENERS} for p in prompts)


def test_tokenizer_roundtrip_and_specials(tmp_path):
    from transformers import AutoTokenizer

    tok = T.build_tokenizer()
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = T.make_reviews(1, 0)[0]
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    # word level: prompt ids are a prefix of prompt+completion ids (exact boundaries for DPO)
    p = "the movie was"
    assert tok(p + " great .").input_ids[: len(tok(p).input_ids)] == tok(p).input_ids


@pytest.fixture(scope="module")
def tiny():
    tok = T.build_tokenizer()
    return tok, make_tiny_model(tok, seed=0)


def test_sampling_is_seeded_and_logps_are_exact(tiny):
    tok, model = tiny
    prompts = T.make_prompts(6, 0)
    a = sample(model, tok, prompts, n=3, max_new_tokens=8, seed=5, reward_fn=T.reward)
    b = sample(model, tok, prompts, n=3, max_new_tokens=8, seed=5, reward_fn=T.reward)
    assert [[s.completion for s in g] for g in a] == [[s.completion for s in g] for g in b]
    assert all(len(g) == 3 for g in a) and len(a) == 6
    flat = [s for g in a for s in g]
    assert all(len(s.completion_ids) <= 8 for s in flat)
    # sequence_logps equals a hand-rolled single-sequence computation
    s = flat[0]
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    want = lp[len(s.prompt_ids) - 1:].sum()
    got = sequence_logps(model, flat)
    assert torch.allclose(got[0], want, atol=1e-4)
    assert torch.allclose(sequence_logps(model, flat, batch_size=2), got, atol=1e-4)  # padding-invariant


def test_kl_of_policy_with_itself_is_zero(tiny):
    tok, model = tiny
    m = evaluate_policy(model, model, tok, T.make_prompts(4, 0), reward_fn=T.reward, n=2, max_new_tokens=6)
    assert m["kl"] == 0.0 and m["n_samples"] == 8
    import copy

    other = copy.deepcopy(model)
    m2 = evaluate_policy(model, other, tok, T.make_prompts(4, 0), reward_fn=T.reward, n=2, max_new_tokens=6)
    assert abs(m2["kl"]) < 1e-4  # a separate but identical reference: the same numbers


def test_pairs_best_of_n_and_accuracy(tiny):
    tok, model = tiny
    mk = lambda c, r: Sample("the movie was", c, [], [], reward=r)  # noqa: E731
    groups = [[mk(" great .", 1.0), mk(" dull .", -1.0), mk(" long .", 0.0), mk(" fun .", 1.0)]]
    rows = build_pairs(groups)
    assert len(rows) == 5  # 6 combinations minus one reward tie
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in rows)
    bon = best_of_n(groups, [1, 2, 4, 8])
    assert [b["n"] for b in bon] == [1, 2, 4] and bon[0]["kl"] == 0.0
    assert bon[-1]["reward"] == 1.0 and bon[-1]["kl"] == pytest.approx(math.log(4) - 0.75)
    acc = preference_accuracy(model, model, tok, rows)
    assert acc["accuracy"] == 0.5 and acc["margin"] == 0.0


def test_quick_demo_end_to_end(tmp_path, capsys):
    """`tilt demo --quick`: DPO must raise the ground-truth reward over the SFT model and rank held-out pairs."""
    from tiltlm.commands.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out), "--seed", "0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["before"], m["after"]
    assert after["reward"] > before["reward"] + 0.5, (before["reward"], after["reward"])
    assert after["accuracy"] > 0.5 and before["accuracy"] == 0.5
    assert math.isfinite(after["kl"]) and after["kl"] > -0.5
    assert len(m["examples"]) == 3
    for f in ("report.png", "report.html", "pairs_train.jsonl", "pairs_heldout.jsonl", "sft/config.json",
              "dpo/metrics.jsonl"):
        assert (out / f).exists(), f
    printed = capsys.readouterr().out
    assert "reward" in printed and "KL" in printed and "accuracy" in printed


@pytest.mark.slow
def test_full_demo(tmp_path):
    from tiltlm.demo.pipeline import run_demo

    m = run_demo(tmp_path / "demo", seed=0, log=lambda *_: None)
    assert m["after"]["reward"] > m["before"]["reward"] + 1.0
    assert m["after"]["accuracy"] > 0.7
