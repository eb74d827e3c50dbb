"""LoRA (peft) DPO: the reference is the adapter-off model (no second copy), only adapter weights train, the chunked
path applies the adapter, saving writes the adapter (+ merged model); continuing an adapter; TR-DPO syncing."""

import copy
import functools
import json

import pytest
import torch

from tiltlm import train
from tiltlm.config import load_config
from tiltlm.core.batching import collate
from tiltlm.core.logps import completion_logps, token_logps
from tiltlm.data import prepare_dataset
from tiltlm.errors import ConfigError
from tiltlm.model import lora
from tiltlm.model.loading import load_tokenizer
from tiltlm.model.reference import CachedReference, LiveReference
from tiltlm.parallel import strategy
from tiltlm.training.setup import open_run_dir, setup

from tiny_models import random_pairs, tiny_model

QUIET = lambda *a, **k: None  # noqa: E731
LN2 = 0.693147


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


def param_bytes(model) -> dict:
    """Parameter bytes of a (peft) model: trainable vs frozen."""
    tr = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    fr = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return {"trainable_bytes": tr, "frozen_bytes": fr}


def opts(assets, out, **kw):
    o = dict(model=str(assets / "model"), data=str(assets / "train12.jsonl"), output_dir=str(out), use_peft=True,
             lora_r=4, lora_alpha=8, learning_rate=1e-2, per_device_train_batch_size=4, max_steps=3, progress=False, seed=0,
             ref_cache_dir=str(out) + "-cache", doctor=False)
    o.update(kw)
    if o.get("lora_r") == 0:  # no new adapter: a full fine-tune, or (with lora_adapter) a continued one
        del o["lora_r"], o["lora_alpha"]
        o["use_peft"] = False
    return o


def run(assets, out, **kw):
    final = train(load_config(None, opts(assets, out, **kw)), log=QUIET)
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return final, [r for r in recs if "loss" in r]


def test_adapter_off_reference_equals_base_model_and_chunked_path_applies_lora():
    base = tiny_model("llama")
    policy = lora.apply(copy.deepcopy(base), r=4, alpha=8, dropout=0.0, target_modules=["all-linear"], log=QUIET)
    batch = collate(random_pairs(6), prefix_sharing=True, pad_token_id=0)
    want = completion_logps(base, batch)
    # a fresh adapter (B = 0) is exactly the base model
    torch.testing.assert_close(completion_logps(policy, batch).chosen, want.chosen, atol=0, rtol=0)
    with torch.no_grad():  # "train" the adapter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ref = LiveReference(policy, functools.partial(token_logps, policy), switch=lora.reference_weights)(batch)
    torch.testing.assert_close(ref.chosen, want.chosen, atol=0, rtol=0)  # adapter off == base, bit for bit
    torch.testing.assert_close(ref.rejected, want.rejected, atol=0, rtol=0)
    chunked = completion_logps(policy, batch, chunked=True)
    plain = completion_logps(policy, batch, chunked=False)
    assert (chunked.chosen - want.chosen).abs().max() > 1e-3  # the adapter changes log-probs on the chunked path
    torch.testing.assert_close(chunked.chosen, plain.chosen, atol=1e-5, rtol=1e-5)  # ... exactly like forward()


def test_lora_training_memory_gradients_and_saving(assets, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, opts(assets, out, precompute_ref_log_probs=False))
    with open_run_dir(cfg) as folder:
        s = setup(cfg, strategy.choose(cfg.dist), folder, log=QUIET)
    assert isinstance(s.reference, LiveReference) and s.reference.shares_policy  # adapter off: no second model
    assert s.reference.model is s.model
    trainable = [n for n, p in s.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    mem = param_bytes(s.model)
    assert mem["trainable_bytes"] < 0.05 * mem["frozen_bytes"]  # optimizer state is ~2x the trainable bytes only

    final, recs = run(assets, out.with_name("lora"), merge_lora=True)
    assert recs[0]["loss"] == pytest.approx(LN2, abs=1e-5)  # policy == adapter-off reference at step 0
    assert recs[-1]["loss"] < recs[0]["loss"]
    d = out.with_name("lora")
    assert (d / "adapter_model.safetensors").is_file() and (d / "adapter_config.json").is_file()
    assert not (d / "model.safetensors").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(d / "merged")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets / "model"), str(d))
    base = AutoModelForCausalLM.from_pretrained(assets / "model")
    _, pairs, _ = prepare_dataset(str(assets / "train12.jsonl"), load_tokenizer(str(assets / "model")), max_length=1024)
    batch = collate(pairs[:4], prefix_sharing=True, pad_token_id=0)
    with torch.no_grad():
        m, a, b = (completion_logps(x.eval(), batch) for x in (merged, adapted, base))
    torch.testing.assert_close(m.chosen, a.chosen, atol=1e-4, rtol=1e-5)  # merged == base + adapter
    assert (a.chosen - b.chosen).abs().max() > 1e-3  # and training did change the model


def test_live_adapter_off_reference_trains_like_the_precomputed_one(assets, tmp_path):
    _, cached = run(assets, tmp_path / "cached")
    _, live = run(assets, tmp_path / "live", precompute_ref_log_probs=False)
    for x, y in zip(cached, live):
        for key in ("loss", "rewards/margins", "kl_proxy", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-5), key


@pytest.mark.parametrize("precompute", [True, False])
def test_continuing_an_adapter_uses_its_frozen_copy_as_reference(assets, tmp_path, precompute):
    first = tmp_path / "first"
    run(assets, first, max_steps=2)
    _, recs = run(assets, tmp_path / "second", lora_r=0, lora_adapter=str(first), max_steps=2,
                  precompute_ref_log_probs=precompute)
    # reference = the adapter we start from, not the base model: the first loss is ln 2 again
    assert recs[0]["loss"] == pytest.approx(LN2, abs=1e-5)
    assert recs[0]["kl_proxy"] == pytest.approx(0.0, abs=1e-5)
    assert recs[1]["loss"] < LN2


@pytest.mark.parametrize("lora_r", [0, 4])
def test_tr_dpo_hard_sync_resets_the_reference_to_the_policy(assets, tmp_path, lora_r):
    _, recs = run(assets, tmp_path / "sync", lora_r=lora_r, precompute_ref_log_probs=False, sync_ref_model=True,
                  ref_model_mixup_alpha=1.0, ref_model_sync_steps=1, learning_rate=1e-3)
    # alpha = 1, every step: before each step the reference IS the policy, so every step starts at ln 2
    assert all(r["loss"] == pytest.approx(LN2, abs=1e-5) for r in recs)
    _, plain = run(assets, tmp_path / "nosync", lora_r=lora_r, precompute_ref_log_probs=False, learning_rate=1e-3)
    assert plain[-1]["loss"] < LN2 - 1e-4


def test_config_errors_are_clear():
    # TR-DPO's moving reference cannot be cached: the cache (on by default) is turned off, with a note
    tr_dpo = load_config(None, dict(sync_ref_model=True))
    assert tr_dpo.precompute_ref_log_probs is False and "replaced:precompute_ref_log_probs" in tr_dpo.trl_only
    with pytest.raises(ConfigError, match="drop --precompute-ref-log-probs"):
        load_config(None, dict(sync_ref_model=True, precompute_ref_log_probs=True))
    with pytest.raises(ConfigError, match="--lora_r without --use_peft"):
        load_config(None, dict(lora_r=8))
    with pytest.raises(ConfigError, match="merge-lora"):
        load_config(None, dict(merge_lora=True))
    with pytest.raises(ConfigError, match="dist must be"):
        load_config(None, dict(dist="zero3"))
    assert load_config(None, {"use_peft": True, "lora-target-modules": "q_proj,v_proj"}).lora_target_modules == \
        ["q_proj", "v_proj"]
    assert isinstance(CachedReference, type)
