"""`from tiltlm import DPOConfig, DPOTrainer`: TRL 1.16's Python entry point, as a thin face over `tiltlm.train`.

    trainer = DPOTrainer(model="Qwen/Qwen2-0.5B-Instruct", args=DPOConfig(output_dir="runs/dpo", beta=0.1),
                         train_dataset=ds, processing_class=tokenizer, peft_config=LoraConfig(r=16))
    trainer.train(); trainer.state.log_history; trainer.save_model(); trainer.push_to_hub()

DPOConfig takes every TRL/transformers option name (trl_options.py says what each means here) and holds the
validated TrainConfig. callbacks may be transformers `TrainerCallback`s (their `on_log` gets every metrics record,
TRL's names: `eval/loss` -> `eval_loss`) or plain callables of a record.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch
from huggingface_hub import HfApi
from transformers import TrainerControl
from transformers.trainer_utils import TrainOutput

from ..config import TrainConfig, load_config
from ..errors import ConfigError
from ..hub import offline
from ..model.in_memory import state_fingerprint
from .api import TrainResult, train

PEFT_FIELDS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
               "target_modules": "lora_target_modules", "modules_to_save": "lora_modules_to_save",
               "use_rslora": "use_rslora", "use_dora": "use_dora"}


class DPOConfig:
    """TRL's DPOConfig: any of its (and TrainingArguments') options as keywords; attributes read the TrainConfig
    (`args.beta`, `args.output_dir`) or, for TRL-only options, the value given."""

    def __init__(self, output_dir: Optional[str] = None, **options: Any):
        if output_dir is not None:
            options["output_dir"] = output_dir
        self.given = dict(options)
        self.config: TrainConfig = load_config(None, options)

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")
        if config is None:
            raise AttributeError(name)
        if hasattr(config, name):
            return getattr(config, name)
        if name in config.trl_only:
            return config.trl_only[name]
        if name in self.__dict__.get("given", {}):
            return self.given[name]
        raise AttributeError(f"DPOConfig has no option {name!r}")

    def to_dict(self) -> dict:
        return self.config.to_dict()


class TrainerState:
    """The part of transformers' TrainerState a TRL script reads."""

    def __init__(self):
        self.log_history: list[dict] = []
        self.global_step = 0
        self.epoch = 0.0
        self.is_world_process_zero = True


def trl_record(record: dict) -> dict:
    """A metrics.jsonl record under TRL's log_history names (`eval/loss` -> `eval_loss`)."""
    return {(f"eval_{k[5:]}" if k.startswith("eval/") else k): v for k, v in record.items()}


class DPOTrainer:
    """TRL's DPOTrainer signature; `train()` runs `tiltlm.train` (one trainer, not two)."""

    def __init__(self, model: Any, ref_model: Any = None, args: Optional[DPOConfig] = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None,
                 callbacks: Optional[list] = None, optimizers=(None, None), peft_config=None, **unsupported):
        if unsupported:
            raise ConfigError(f"DPOTrainer: {', '.join(sorted(unsupported))}: not supported by tiltlm")
        for name, value in (("data_collator", data_collator), ("compute_metrics", compute_metrics)):
            if value is not None:
                raise ConfigError(f"DPOTrainer {name}=: tiltlm builds its own batches and metrics; drop it")
        if any(o is not None for o in optimizers):
            raise ConfigError("DPOTrainer optimizers=: tiltlm's optimizer is AdamW with fp32 master weights; set "
                              "learning_rate / lr_scheduler_type in DPOConfig instead")
        self.args = args if args is not None else DPOConfig()
        self.options: dict[str, Any] = {}
        self.model, self.processing_class = model, processing_class
        if isinstance(model, (str, os.PathLike)):
            self.options["model"] = os.fspath(model)
        elif processing_class is None:  # TRL loads the tokenizer of the model's own name
            self.processing_class = getattr(getattr(model, "config", None), "_name_or_path", None)
        self._set_reference(ref_model)
        if peft_config is not None:
            self._set_peft(peft_config)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.callbacks = list(callbacks or [])
        self.state = TrainerState()
        self.result: Optional[TrainResult] = None
        self.accelerator = SimpleNamespace(print=print, is_main_process=True)  # what TRL's scripts call

    def _set_reference(self, ref_model: Any) -> None:
        if ref_model is None:
            return
        if isinstance(ref_model, (str, os.PathLike)):
            self.options["ref_model"] = os.fspath(ref_model)
        elif isinstance(self.model, torch.nn.Module) and state_fingerprint(ref_model) == \
                state_fingerprint(self.model):
            pass  # a copy of the starting policy: what tiltlm's reference is anyway
        else:
            raise ConfigError("DPOTrainer ref_model=: an in-memory reference other than the model's own starting "
                              "weights is not supported; pass it as a path or hub name")

    def _set_peft(self, peft_config: Any) -> None:
        if type(peft_config).__name__ != "LoraConfig":
            raise ConfigError(f"DPOTrainer peft_config={type(peft_config).__name__}: tiltlm trains LoRA adapters "
                              "only (peft.LoraConfig)")
        if str(getattr(peft_config, "task_type", "CAUSAL_LM") or "CAUSAL_LM").split(".")[-1] != "CAUSAL_LM":
            raise ConfigError("DPOTrainer peft_config: task_type must be CAUSAL_LM")
        self.options["use_peft"] = True
        for attr, name in PEFT_FIELDS.items():
            value = getattr(peft_config, attr, None)
            if value is not None:
                self.options[name] = sorted(value) if isinstance(value, set) else value

    def _on_record(self, record: dict) -> None:
        logs = trl_record(record)
        self.state.log_history.append(logs)
        self.state.global_step = int(record.get("step", self.state.global_step))
        self.state.epoch = float(record.get("epoch", self.state.epoch) or 0.0)
        for cb in self.callbacks:
            if hasattr(cb, "on_log"):  # a transformers TrainerCallback
                cb.on_log(self.args, self.state, TrainerControl(), logs=logs)
            else:
                cb(record)

    def train(self, resume_from_checkpoint: Any = None) -> Any:
        """Train (tiltlm.train); returns transformers' TrainOutput(global_step, training_loss, metrics)."""
        options = dict(self.options)
        if resume_from_checkpoint:
            options["resume"] = "auto" if resume_from_checkpoint is True else os.fspath(resume_from_checkpoint)
        config = self.args.config
        if self.eval_dataset is not None and config.eval_strategy == "no" and "eval_strategy" not in self.args.given:
            options["eval_strategy"] = None  # TRL's default: no eval during training; evaluated once at the end
        model = options.pop("model", None) or self.model  # a name or path, or a loaded model
        self.result = train(config, model=model, tokenizer=self.processing_class,
                            train_dataset=self.train_dataset, eval_dataset=self.eval_dataset,
                            callbacks=[self._on_record], **options)
        if self.result.model is not None:
            self.model = self.result.model
        metrics = self.result.metrics
        return TrainOutput(int(metrics.get("step", 0)), float(metrics.get("loss", float("nan"))),
                           trl_record(metrics))

    def evaluate(self, eval_dataset=None, **_ignored) -> dict:
        """The held-out metrics of the trained model (TRL's `eval_*` names): tiltlm evaluates at the end of
        train()."""
        if eval_dataset is not None and eval_dataset is not self.eval_dataset:
            raise ConfigError("DPOTrainer.evaluate(eval_dataset=): pass the eval set to DPOTrainer(eval_dataset=) "
                              "instead (tiltlm evaluates it at the end of train()), or run `tilt eval`")
        if self.result is None or not any(k.startswith("eval/") for k in self.result.metrics):
            raise ConfigError("DPOTrainer.evaluate(): tiltlm evaluates inside train(): call train() first, with "
                              "eval_dataset= given")
        return {k: v for k, v in trl_record(self.result.metrics).items() if k.startswith("eval_")}

    def save_model(self, output_dir: Optional[str] = None) -> None:
        """train() already wrote the model, tokenizer and card into args.output_dir; another folder gets a copy."""
        target = Path(output_dir or self.args.output_dir).expanduser().resolve()
        if self.result is not None and target == Path(self.result.output_dir).expanduser().resolve():
            return
        if not isinstance(self.model, torch.nn.Module):
            raise ConfigError("DPOTrainer.save_model(): nothing trained yet: call train() first")
        self.model.save_pretrained(str(target))
        tokenizer = self.result.tokenizer if self.result is not None else None
        if tokenizer is not None:
            tokenizer.save_pretrained(str(target))

    @property
    def hub_model_id(self) -> str:
        return self.args.trl_only.get("hub_model_id") or Path(self.args.output_dir).name

    def push_to_hub(self, commit_message: str = "End of training", **_card_fields) -> str:
        """Upload the run folder (model, tokenizer, README.md model card) to the Hub as `hub_model_id`."""
        if offline():
            raise ConfigError("push_to_hub: offline mode is on (HF_HUB_OFFLINE=1): unset it, or upload later with "
                              f"`hf upload {self.hub_model_id} {self.args.output_dir}`")
        api = HfApi()
        api.create_repo(self.hub_model_id, private=self.args.trl_only.get("hub_private_repo"), exist_ok=True)
        info = api.upload_folder(repo_id=self.hub_model_id, folder_path=str(self.args.output_dir),
                                 commit_message=commit_message, ignore_patterns=["checkpoints/*", ".lock"])
        return str(info)

    def end(self) -> None:
        """transformers >= 5.18's Trainer.end(): tiltlm closes its trackers at the end of train() already."""
