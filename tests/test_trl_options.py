"""TRL's option names in tiltlm (trl_options.py): complete against the installed TRL 1.16, TRL's defaults and
meanings (LoRA, eval/save strategies, fractional steps, schedules, accelerate configs), the one-line notes and
refusals, `--help`, tool-calling rows and the DPOTrainer face (callbacks, log_history, evaluate, save_model)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest

from tiltlm import DPOConfig, DPOTrainer, trl_options
from tiltlm.commands import cli
from tiltlm.commands.train_flags import field_help
from tiltlm.config import TrainConfig, load_config
from tiltlm.data.tokenize import render_chat
from tiltlm.errors import ConfigError
from tiltlm.types import PreferenceExample

README_GROUPS = ["what/where", "loss", "optimisation", "tokenisation", "data layouts and the hub",
                 "speed and memory", "run", "scale-out"]


def test_every_trl_dpo_option_has_a_meaning_here():
    trl = pytest.importorskip("trl")
    ours = {f.name for f in dataclasses.fields(TrainConfig)} | trl_options.all_names()
    for cls in (trl.DPOConfig, trl.ModelConfig, trl.ScriptArguments, trl.DatasetMixtureConfig):
        missing = {f.name for f in dataclasses.fields(cls)} - ours
        assert not missing, (cls.__name__, sorted(missing))


def test_the_schedules_are_those_of_get_scheduler():
    from transformers import SchedulerType

    # both left out step on an eval metric, not once per step
    assert {s.value for s in SchedulerType} - set(trl_options.SCHEDULERS) == {"reduce_lr_on_plateau", "greedy"}


def test_trl_defaults():
    cfg = load_config(None, {})
    assert (cfg.output_dir, cfg.num_train_epochs, cfg.per_device_train_batch_size, cfg.save_strategy,
            cfg.save_steps, cfg.eval_strategy, cfg.learning_rate, cfg.gradient_checkpointing) == \
        ("trainer_output", 3.0, 8, "steps", 500, None, 1e-6, True)
    assert "replaced:bf16" in cfg.trl_only  # the one default that changes a result is said at start-up


def test_use_peft_builds_trls_lora_adapter():
    trl = pytest.importorskip("trl")
    theirs = trl.get_peft_config(trl.ModelConfig(use_peft=True))
    cfg = load_config(None, {"use_peft": True})
    assert cfg.uses_lora
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) == \
        (theirs.r, theirs.lora_alpha, theirs.lora_dropout, theirs.target_modules) == (16, 32, 0.05, None)
    with pytest.raises(ConfigError, match="--lora_target_modules without --use_peft"):
        load_config(None, {"lora_target_modules": "q_proj"})


@pytest.mark.parametrize("options, every", [
    ({}, (1, 0, 500)),  # TRL: no eval unless eval_strategy; a checkpoint every 500 steps
    ({"eval_strategy": "steps"}, (1, 1, 500)),  # eval_steps unset: logging_steps (HF)
    ({"eval_strategy": "steps", "eval_steps": 0.25, "logging_steps": 0.1, "save_steps": 0.5}, (4, 10, 20)),
    ({"eval_strategy": "epoch", "save_strategy": "epoch"}, (1, 7, 7)),
    ({"save_strategy": "no", "eval_data": "x.jsonl"}, (1, 0, 0)),  # explicit eval data: at the end only
    ({"eval_data": "x.jsonl", "eval_steps": 3}, (1, 3, 500)),
])
def test_intervals_follow_hf_trainer(options, every):
    cfg = load_config(None, options)
    assert tuple(cfg.every(w, total_steps=40, steps_per_epoch=7) for w in ("logging", "eval", "save")) == every


def test_eval_steps_alone_says_it_does_nothing():
    cfg = load_config(None, {"eval_steps": 50})
    assert not cfg.evaluates  # TRL: no evaluation without eval_strategy
    notes = trl_options.notes(cfg.trl_only)
    assert any(n.startswith("eval_steps without --eval_strategy steps: no evaluation") for n in notes)


def test_noted_options_and_replaced_values_say_what_runs_instead():
    cfg = load_config(None, {"dataset_num_proc": "4", "use_liger_kernel": "true", "remove_unused_columns": "false",
                             "attn_implementation": "flash_attention_2", "max_length": "null", "dtype": "auto",
                             "model_init_kwargs": '{"dtype": "torch.bfloat16", "device_map": "auto"}',
                             "use_cpu": "true", "disable_tqdm": "true", "bf16": "false", "test_split_size": "0.1"})
    assert (cfg.attn_implementation, cfg.max_length, cfg.dtype, cfg.device, cfg.progress, cfg.eval_split) == \
        ("auto", trl_options.NO_TRUNCATION, "bfloat16", "cpu", False, 0.1)
    notes = trl_options.notes(cfg.trl_only)
    assert [n.split(":")[0] for n in notes] == [
        "dataset_num_proc=4", "use_liger_kernel=True", "remove_unused_columns=False",
        "model_init_kwargs device_map='auto'", "attn_implementation=flash_attention_2", "max_length=null"]
    assert "never builds the full logits" in notes[1]


@pytest.mark.parametrize("options, line", [
    ({"deepspeed": "ds_config.json"}, "--deepspeed ds_config.json: DeepSpeed is not supported"),
    ({"load_in_4bit": "true"}, "--load_in_4bit True: bitsandbytes-quantised base models (QLoRA) are not supported"),
    ({"optim": "adafactor"}, "--optim adafactor: tiltlm's optimizer is torch AdamW"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "lr_scheduler_type must be one of linear | cosine"),
])
def test_refused_options_are_one_line(options, line):
    with pytest.raises(ConfigError) as e:
        load_config(None, options)
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


def test_silent_at_trls_defaults():
    cfg = load_config(None, {"optim": "adamw_torch", "remove_unused_columns": "true", "dataset_num_proc": None,
                             "bf16": "false"})
    assert trl_options.notes(cfg.trl_only) == []


def test_accelerate_configs_and_launch_environment(tmp_path):
    assert trl_options.accelerate_values("fsdp2", {}) == {"nproc": 8, "dist": "fsdp", "bf16": True}
    assert trl_options.accelerate_values("multi_gpu", {}) == {"nproc": 8, "dist": "ddp", "bf16": True}
    own = tmp_path / "acc.yaml"
    own.write_text("distributed_type: FSDP\nmixed_precision: 'no'\nnum_processes: 2\n")
    assert trl_options.accelerate_values(str(own), {}) == {"nproc": 2, "dist": "fsdp"}
    # `accelerate launch` with an FSDP config: its environment maps to --dist fsdp (ranks come from RANK etc.)
    assert trl_options.accelerate_values(None, {"ACCELERATE_USE_FSDP": "true",
                                                "ACCELERATE_MIXED_PRECISION": "bf16"}) == {"dist": "fsdp",
                                                                                           "bf16": True}
    # an option given explicitly wins over the accelerate config
    assert load_config(None, {"accelerate_config": "fsdp2", "nproc": 2}).nproc == 2


def test_report_to_all_is_the_installed_trackers():
    import importlib.util

    cfg = load_config(None, {"report_to": "all"})
    found = [t for t in ("tensorboard", "wandb", "mlflow", "trackio") if importlib.util.find_spec(t)]
    assert cfg.report_to == (found or ["none"])


def test_yaml_env_mapping_is_applied(tmp_path, monkeypatch):
    monkeypatch.delenv("TILTLM_CORPUS_ENV", raising=False)
    (tmp_path / "c.yaml").write_text("env:\n  TILTLM_CORPUS_ENV: 7\nbeta: 0.2\n")
    assert load_config(str(tmp_path / "c.yaml")).beta == 0.2
    import os

    assert os.environ["TILTLM_CORPUS_ENV"] == "7"
    monkeypatch.delenv("TILTLM_CORPUS_ENV")


def test_help_says_what_each_option_does_in_the_readme_groups(capsys):
    helps = field_help()
    shown = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag", True)]
    assert set(shown) <= set(helps)
    assert [n for n in shown if not helps[n][1]] == []  # every option has its text
    assert list(dict.fromkeys(helps[n][0] for n in shown)) == README_GROUPS
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "scale-out:" in out and "train a LoRA adapter (peft) instead of the full model" in out
    assert "never builds the full logits" in out  # the TRL-only options, each with its line


def test_tools_column_reaches_the_chat_template(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)  # the session's tokenizer keeps its own template (it may come from a GGUF)
    tok.chat_template = ("{% if tools %}TOOLS={{ tools | map(attribute='function.name') | join(',') }};{% endif %}"
                         "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    ex = PreferenceExample(0, "t:1", [{"role": "user", "content": "Weather?"}],
                           [{"role": "assistant", "content": "Sunny."}], [{"role": "assistant", "content": "?"}],
                           conversational=True, tools=tools)
    prompt, chosen, _ = render_chat(ex, tok)
    assert prompt == "TOOLS=get_weather;<user>Weather?"
    assert chosen == "TOOLS=get_weather;<user>Weather?<assistant>Sunny."


def test_dpotrainer_face(tiny_assets, tmp_path):
    """TRL's Python entry point: a TrainerCallback's on_log gets every record (TRL's names), log_history holds
    them, evaluate() gives the end-of-run eval, save_model() copies elsewhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    rows = [json.loads(line) for line in (tiny_assets / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (tiny_assets / "eval6.jsonl").read_text().splitlines()]

    class Seen(TrainerCallback):
        logs: list = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append((state.global_step, dict(logs)))

    model = AutoModelForCausalLM.from_pretrained(str(tiny_assets / "model"))
    tok = AutoTokenizer.from_pretrained(str(tiny_assets / "model"))
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-3, ref_cache_dir=str(tmp_path / "cache"), progress=False, report_to="none")
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, eval_dataset=heldout, processing_class=tok,
                         callbacks=[Seen()])
    out = trainer.train()
    assert out.global_step == 2 and math.isclose(out.training_loss, trainer.state.log_history[1]["loss"])
    assert [s for s, _ in Seen.logs] == [1, 2, 2] and "eval_loss" in Seen.logs[-1][1]
    assert trainer.state.log_history == [logs for _, logs in Seen.logs]
    assert trainer.evaluate()["eval_loss"] == trainer.state.log_history[-1]["eval_loss"]
    trainer.save_model(str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "model.safetensors").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="offline mode is on"):
        import huggingface_hub.constants as hc

        old, hc.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE, True
        try:
            trainer.push_to_hub()
        finally:
            hc.HF_HUB_OFFLINE = old


def test_accelerate_launch_with_fsdp_runs_sharded_ranks(tiny_assets, tmp_path):
    """`accelerate launch --use_fsdp --num_processes 2 -m tiltlm.cli train ...`: accelerate starts the ranks as
    torchrun does (RANK / WORLD_SIZE / LOCAL_RANK) and says FSDP in ACCELERATE_USE_FSDP: --dist fsdp."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("accelerate is not installed")
    out = tmp_path / "run"
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--use_fsdp",
                        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "-m", "tiltlm.cli", "train", "--model", str(tiny_assets / "model"),
                        "--data", str(tiny_assets / "train.jsonl"), "--output_dir", str(out), "--max_steps", "2",
                        "--per_device_train_batch_size", "2", "--no_progress", "--ref_cache_dir",
                        str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "fsdp: policy sharded over 2 ranks" in p.stdout and (out / "model.safetensors").is_file()
