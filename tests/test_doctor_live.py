"""The doctor during real (tiny) training runs: each failure mode the seeds name is caught, a healthy run is quiet."""

import json
from pathlib import Path

import pytest

from tiltlm import train
from tiltlm.config import load_config

QUIET = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


def findings(run_dir: Path) -> dict[str, dict]:
    f = run_dir / "doctor.jsonl"
    rows = [json.loads(l) for l in f.read_text().splitlines()] if f.is_file() else []
    return {r["check"]: r for r in rows}


def run(assets, tmp_path, **overrides) -> Path:
    opts = dict(model=str(assets / "model"), data=str(assets / "train.jsonl"), output_dir=str(tmp_path / "run"),
                learning_rate=2e-3, per_device_train_batch_size=4, max_steps=12, progress=False,
                ref_cache_dir=str(tmp_path / "cache"), seed=0)
    opts.update(overrides)
    train(load_config(None, opts), log=QUIET)
    return tmp_path / "run"


def test_healthy_run_gets_no_findings(assets, tmp_path):
    out = run(assets, tmp_path, eval_data=str(assets / "train.jsonl"), eval_steps=4)
    assert findings(out) == {}


def test_inverted_loss_sign_is_caught_early(assets, tmp_path, monkeypatch):
    import tiltlm.training.step as T
    from tiltlm.types import LossOutput

    real = T.compute_loss

    def negated(*a, **k):  # the classic sign bug: minimise log-sigmoid instead of its negative
        out = real(*a, **k)
        return LossOutput(-out.losses, out.chosen_rewards, out.rejected_rewards)

    monkeypatch.setattr(T, "compute_loss", negated)
    found = findings(run(assets, tmp_path))
    assert "sign_bug" in found, found
    assert found["sign_bug"]["step"] <= 12
    assert "chosen/rejected" in found["sign_bug"]["fix"] or "sign" in found["sign_bug"]["fix"]


def test_swapped_training_columns_are_caught_by_eval(assets, tmp_path):
    out = run(assets, tmp_path, data=str(assets / "swapped.jsonl"), eval_data=str(assets / "train.jsonl"),
              eval_steps=2, max_steps=12)
    found = findings(out)
    assert "inverted_data" in found, found


def test_reference_mismatch_is_caught_at_step_one(assets, tmp_path):
    # the reference is a different checkpoint (the base model after some DPO), the policy starts from the base
    other = run(assets, tmp_path / "pre", learning_rate=5e-3, max_steps=6, doctor=False)
    found = findings(run(assets, tmp_path, ref_model=str(other), max_steps=3))
    assert "reference_mismatch" in found, found
    assert found["reference_mismatch"]["step"] == 1


def test_chosen_and_rejected_swapped_on_one_side_only(assets, tmp_path, monkeypatch):
    """The seeds' one-sided sign bug: the reference's chosen and rejected log-probs exchanged inside the loss (the
    policy's are right). At step 1 every pair's two log-ratios are exact opposites: a sign_bug naming the swap, not a
    generic reference mismatch."""
    import tiltlm.training.step as T
    from tiltlm.types import PairLogps

    real = T.compute_loss

    def swapped_reference(types, weights, policy, ref, hp):
        ref = PairLogps(ref.rejected, ref.chosen, ref.chosen_tokens, ref.rejected_tokens) if ref is not None else None
        return real(types, weights, policy, ref, hp)

    monkeypatch.setattr(T, "compute_loss", swapped_reference)
    found = findings(run(assets, tmp_path, max_steps=2))
    assert "sign_bug" in found and "reference_mismatch" not in found, found
    assert found["sign_bug"]["step"] == 1 and "ONE side" in found["sign_bug"]["message"]
    assert "BOTH sides" in found["sign_bug"]["fix"]


def test_exo_pair_with_label_smoothing_has_no_false_reference_mismatch(assets, tmp_path):
    """The live doctor gets every loss hyper-parameter: exo_pair's step-1 loss with label_smoothing 0.1 is
    -ln2 - (ln 0.9 + ln 0.1)/2 = 0.5108 (not the 2.7612 of eps = 1e-3), and the run is its own reference."""
    out = run(assets, tmp_path, loss_type="exo_pair", label_smoothing=0.1, max_steps=2)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(0.510826, abs=1e-4)
    assert "reference_mismatch" not in findings(out)
