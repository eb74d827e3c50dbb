"""The start-up check's verdict is reused only for the same model, pairs, request and code (model/path_verdict.py):
a reused verdict turns the same paths off, logs the same lines, pins the same modules -- and skips the check."""

import json
import math

import pytest
import torch

import tiltlm.model.scoring as scoring
from tiltlm import train
from tiltlm.config import load_config
from tiltlm.model.path_verdict import choose_path_cached
from tiltlm.model.scoring import ScoringPath

from test_scoring import NoisyActivation
from tiny_models import random_pairs, tiny_model, tiny_model_dir

FAST = ScoringPath(prefix_sharing=True, packing=True, chunked=True)


def noisy_llama():
    model = tiny_model("llama")
    model.model.layers[1].mlp.act_fn = NoisyActivation()
    return model


def counting_check(monkeypatch):
    """Counts how often the check's ground truth (one forward per sequence) is computed."""
    calls = []
    truth = scoring.one_at_a_time
    monkeypatch.setattr(scoring, "one_at_a_time", lambda *a, **k: (calls.append(1), truth(*a, **k))[1])
    return calls


def test_a_second_identical_check_reuses_the_verdict_and_pins_the_same_module(tmp_path, monkeypatch):
    calls = counting_check(monkeypatch)
    pairs = random_pairs(4, seed=3)
    first_lines, second_lines = [], []
    first = choose_path_cached(noisy_llama(), pairs, FAST, model_fingerprint="m1", log=first_lines.append,
                               cache_dir=str(tmp_path))
    model = noisy_llama()  # a fresh process's model: nothing pinned yet
    second = choose_path_cached(model, pairs, FAST, model_fingerprint="m1", log=second_lines.append,
                                cache_dir=str(tmp_path))
    assert len(calls) == 1  # the second run did not check
    assert second == first
    assert second_lines[:-1] == first_lines and "earlier identical check" in second_lines[-1]
    assert any("model.layers.1.mlp.act_fn (NoisyActivation)" in line for line in first_lines)
    ids = torch.randint(3, 90, (1, 10))
    model.train()
    train_mode = model(input_ids=ids).logits
    model.eval()
    torch.testing.assert_close(train_mode, model(input_ids=ids).logits, atol=0, rtol=0)  # re-pinned


def test_a_fallback_is_reused_with_its_note(tmp_path, monkeypatch):
    import tiltlm.core.logps as logps

    monkeypatch.setattr(logps, "logit_transform", lambda config: (lambda x: 1.001 * x))
    pairs = random_pairs(6, seed=2)
    first = choose_path_cached(tiny_model("llama"), pairs, FAST, model_fingerprint="m2", log=lambda _: None,
                               cache_dir=str(tmp_path))
    calls = counting_check(monkeypatch)
    second = choose_path_cached(tiny_model("llama"), pairs, FAST, model_fingerprint="m2", log=lambda _: None,
                                cache_dir=str(tmp_path))
    assert not calls
    assert (second.prefix_sharing, second.packing, second.chunked) == (True, True, False)
    assert second.notes == first.notes and second.notes[0].startswith("the chunked LM head off: differs")


@pytest.mark.parametrize("change", ["pairs", "model", "request", "corrupt"])
def test_anything_that_could_change_the_verdict_checks_again(tmp_path, monkeypatch, change):
    pairs = random_pairs(4, seed=3)
    choose_path_cached(tiny_model("llama"), pairs, FAST, model_fingerprint="m3", log=lambda _: None,
                       cache_dir=str(tmp_path))
    calls = counting_check(monkeypatch)
    fp, request = "m3", FAST
    if change == "pairs":
        pairs = random_pairs(4, seed=4)
    elif change == "model":
        fp = "m3-other-weights"
    elif change == "request":
        request = ScoringPath(prefix_sharing=True, packing=False, chunked=True)
    else:
        for f in tmp_path.glob("path-*.json"):
            f.write_text("{not json")
    path = choose_path_cached(tiny_model("llama"), pairs, request, model_fingerprint=fp, log=lambda _: None,
                              cache_dir=str(tmp_path))
    assert len(calls) == 1
    assert (path.prefix_sharing, path.packing, path.chunked) == (True, request.packing, True)
    if change == "corrupt":  # rewritten with the fresh verdict
        records = [json.loads(f.read_text()) for f in tmp_path.glob("path-*.json")]
        assert records and records[0]["flags"] == {"prefix_sharing": True, "packing": True, "chunked": True}


def test_an_in_memory_model_is_always_checked(tmp_path, monkeypatch):
    calls = counting_check(monkeypatch)
    for _ in range(2):
        choose_path_cached(tiny_model("llama"), random_pairs(4), FAST, model_fingerprint=None, log=lambda _: None,
                           cache_dir=str(tmp_path))
    assert len(calls) == 2 and not list(tmp_path.glob("path-*.json"))


def test_a_second_tilt_train_skips_the_check_and_still_starts_at_ln2(tmp_path, tiny_assets, smollm2_tokenizer,
                                                                     monkeypatch):
    model_dir = tiny_model_dir(tmp_path / "model", smollm2_tokenizer)
    opts = dict(model=str(model_dir), data=str(tiny_assets / "train.jsonl"), max_steps=1, learning_rate=0.0,
                progress=False, ref_cache_dir=str(tmp_path / "cache"), seed=0)
    calls = counting_check(monkeypatch)
    for name in ("first", "second"):
        messages = []
        train(load_config(None, {**opts, "output_dir": str(tmp_path / name)}), log=messages.append)
        record = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
        assert record["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert len(calls) == 1
    assert any("earlier identical check" in m for m in messages)
    assert list((tmp_path / "cache").glob("path-*.json"))
