"""The Python API (tiltlm.train) with in-memory models and datasets, callbacks, TrainResult and the model card."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tiltlm
from tiltlm import ConfigError, DataError, TrainConfig, TrainResult
from tiltlm.model.in_memory import state_fingerprint

QUIET = lambda *a, **k: None  # noqa: E731
COMMON = dict(learning_rate=1e-3, per_device_train_batch_size=4, max_steps=4, progress=False, seed=0)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def file_run(tiny_assets, tmp_path_factory):
    """The reference: the same training from paths, through the command line (a thin caller of tiltlm.train)."""
    from tiltlm.commands.cli import main as tilt

    out = tmp_path_factory.mktemp("api") / "files"
    args = ["train", "--model", str(tiny_assets / "model"), "--data", str(tiny_assets / "train.jsonl"),
            "--eval-data", str(tiny_assets / "eval6.jsonl"), "--output-dir", str(out),
            "--ref-cache-dir", str(out.parent / "cache")]
    for key, value in COMMON.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert tilt(args) == 0
    return out, args


def loaded(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_assets / "model"),
            AutoTokenizer.from_pretrained(tiny_assets / "model"))


def test_in_memory_model_and_datasets_train_exactly_like_files(tiny_assets, tmp_path, file_run):
    import datasets

    model, tokenizer = loaded(tiny_assets)
    start_fp = state_fingerprint(model)
    seen = []
    result = tiltlm.train(model=model, tokenizer=tokenizer,
                          train_dataset=datasets.Dataset.from_list(rows(tiny_assets / "train.jsonl")),
                          eval_dataset=rows(tiny_assets / "eval6.jsonl"),  # a list of dicts
                          output_dir=str(tmp_path / "mem"), ref_cache_dir=str(tmp_path / "cache"),
                          callbacks=seen.append, log=QUIET, **COMMON)
    assert isinstance(result, TrainResult) and result.output_dir == tmp_path / "mem"
    mem, files = records(tmp_path / "mem"), records(file_run[0])
    assert seen == mem  # the callback got every record, train and eval, as written to metrics.jsonl
    assert [r["step"] for r in mem] == [1, 2, 3, 4, 4] and "eval/loss" in mem[-1]
    for a, b in zip(mem, files):
        assert a.keys() == b.keys()
        for key in a:
            if key != "step_seconds":
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert result.metrics == {**mem[-2], **mem[-1]}  # the last train record with the last eval merged in
    assert result.model is model  # trained in place, and handed back
    saved = load_file(str(tmp_path / "mem" / "model.safetensors"))
    torch.testing.assert_close(model.state_dict()["model.norm.weight"], saved["model.norm.weight"])
    torch.testing.assert_close(saved["model.norm.weight"],
                               load_file(str(file_run[0] / "model.safetensors"))["model.norm.weight"])
    # the reference cache was keyed by the in-memory weights as they were before training
    assert json.loads((tmp_path / "mem" / "reference.json").read_text())["model_fingerprint"] == start_fp
    stats = json.loads((tmp_path / "mem" / "data_stats.json").read_text())
    assert stats["source"] == "in-memory datasets.Dataset (16 rows)" and stats["eval"]["valid"] == 6


def test_in_memory_model_with_a_live_frozen_reference(tiny_assets, tmp_path, file_run):
    model, tokenizer = loaded(tiny_assets)
    result = tiltlm.train(model=model, tokenizer=tokenizer, train_dataset=rows(tiny_assets / "train.jsonl"),
                          output_dir=str(tmp_path / "live"), precompute_ref_log_probs=False, log=QUIET,
                          **{**COMMON, "max_steps": 2})
    live = [r for r in records(tmp_path / "live") if "loss" in r]
    files = [r for r in records(file_run[0]) if "loss" in r]
    assert live[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # the frozen copy equals the policy at step 1
    for a, b in zip(live, files[:2]):
        for key in ("loss", "rewards/margins", "kl_proxy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert result.model is model


def test_in_memory_fingerprint_follows_the_weights(tiny_assets):
    a, _ = loaded(tiny_assets)
    b, _ = loaded(tiny_assets)
    assert state_fingerprint(a) == state_fingerprint(b)
    with torch.no_grad():
        b.model.norm.weight[0] += 1e-3
    assert state_fingerprint(a) != state_fingerprint(b)
    assert state_fingerprint(a.to(torch.bfloat16)) != state_fingerprint(b.to(torch.float32))


def test_dataframe_rows_are_validated_like_file_rows(tiny_assets, tmp_path):
    import pandas as pd

    model, tokenizer = loaded(tiny_assets)
    good = rows(tiny_assets / "train.jsonl")[:8]
    frame = pd.DataFrame(good + [{"prompt": "", "chosen": " a", "rejected": " b"},
                                 {"prompt": "Q?", "chosen": " a"}])  # row 9: rejected is NaN in the frame
    opts = dict(model=model, tokenizer=tokenizer, train_dataset=frame, ref_cache_dir=str(tmp_path / "cache"),
                log=QUIET, **{**COMMON, "max_steps": 1})
    with pytest.raises(DataError) as err:
        tiltlm.train(output_dir=str(tmp_path / "stop"), **opts)
    assert "train_dataset[8] [prompt]" in str(err.value) and "empty_prompt" in str(err.value)
    assert "train_dataset[9] [rejected]" in str(err.value) and "missing_field" in str(err.value)
    result = tiltlm.train(output_dir=str(tmp_path / "skip"), skip_invalid=True, **opts)
    skipped = [json.loads(line) for line in (tmp_path / "skip" / "skipped.jsonl").read_text().splitlines()]
    assert sorted((s["source"], s["kind"]) for s in skipped) == [("train_dataset[8]", "empty_prompt"),
                                                                 ("train_dataset[9]", "missing_field")]
    assert result.metrics["pairs_seen"] == 4
    stats = json.loads((tmp_path / "skip" / "data_stats.json").read_text())
    assert stats["source"] == "in-memory pandas.DataFrame (10 rows)" and stats["valid"] == 8


def test_config_forms_and_user_mistakes(tiny_assets, tmp_path):
    yaml_file = tmp_path / "dpo.yaml"
    yaml_file.write_text(f"model_name_or_path: {tiny_assets / 'model'}\nbeta: 0.3\n")
    from tiltlm.training.api import resolve_config

    cfg = resolve_config(str(yaml_file), {"learning-rate": "2e-6", "loss_type": "sigmoid,sft"})
    assert (cfg.model, cfg.beta, cfg.learning_rate, cfg.loss_type) == (str(tiny_assets / "model"), 0.3, 2e-6,
                                                                         ["sigmoid", "sft"])
    base = TrainConfig(beta=0.2)
    assert resolve_config(base, {"torch_dtype": "bfloat16"}).dtype == "bfloat16" and base.dtype == "float32"
    assert resolve_config(base, {}) is not base  # set-up may turn fast paths off in its copy, never in the caller's
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        tiltlm.train(base, learning_rat=1e-3)
    with pytest.raises(ConfigError, match="option 'max_steps' expects int"):
        tiltlm.train(base, max_steps="many")
    model, _ = loaded(tiny_assets)
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        tiltlm.train(model=model, train_dataset=[{"prompt": "a", "chosen": " b", "rejected": " c"}],
                     output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="the model is float32 but dtype=bfloat16"):
        tiltlm.train(model=model, tokenizer=str(tiny_assets / "model"), dtype="bfloat16",
                     train_dataset=[{"prompt": "a", "chosen": " b", "rejected": " c"}], output_dir=str(tmp_path / "o"))
    with pytest.raises(DataError, match="expected a datasets.Dataset, a pandas DataFrame or a list of dicts"):
        tiltlm.train(model=str(tiny_assets / "model"), train_dataset={"prompt": "a"}, output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    assert tiltlm.__version__ and tiltlm.__version__[0].isdigit()


def test_the_run_folder_carries_a_model_card(tiny_assets, file_run):
    from huggingface_hub import ModelCard

    out, args = file_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"tiltlm", "dpo", "sigmoid"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is no Hub id: named in the text only
    recs = records(out)
    train_rec, eval_rec = recs[-2], recs[-1]
    assert f"| loss | {train_rec['loss']:.4f} | {eval_rec['eval/loss']:.4f} |" in card.text
    assert f"| rewards/accuracies | {train_rec['rewards/accuracies']:.4f} | " \
           f"{eval_rec['eval/rewards/accuracies']:.4f} |" in card.text
    assert f"from **{tiny_assets / 'model'}** on **{tiny_assets / 'train.jsonl'}**" in card.text
    assert f"tiltlm](https://pypi.org/project/tiltlm/) {tiltlm.__version__}" in card.text
    assert "| data | " + str(tiny_assets / "train.jsonl") + ": 16 pairs used of 16 (0 skipped" in card.text
    assert f"| eval data | {tiny_assets / 'eval6.jsonl'} |" in card.text
    assert "| steps | 4 (16 pairs seen) |" in card.text
    assert "tilt " + " ".join(args) in card.text  # the exact command
    assert "beta: 0.1\nloss_type:\n- sigmoid\n" in card.text  # the exact config (config.yaml)
    assert "AutoModelForCausalLM.from_pretrained(PATH)" in card.text


def test_model_card_names_hub_models_and_adapters():
    from huggingface_hub import ModelCard

    from tiltlm.training.model_card import model_card

    text = model_card(config={"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "beta": 0.1,
                              "output_dir": "runs/rpo"},
                      records=[{"step": 1, "loss": 0.7}, {"step": 1, "eval/loss": 0.69}],
                      data_stats={}, base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                      data="in-memory list.list (3 rows)", eval_label=None, adapter=True,
                      findings=[{"check": "length_bias", "severity": "warning", "step": 0, "message": "m.",
                                 "fix": "f"}], command=None)
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert "lora" in card.data.tags and card.data.model_name == "rpo"
    assert "`1·sigmoid + 0.5·sft`" in card.text and "| loss | 0.7000 | 0.6900 |" in card.text
    assert "- **length_bias** (warning, step 0): m. Fix: f" in card.text
    assert "AutoPeftModelForCausalLM" in card.text
