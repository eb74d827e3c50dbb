"""TRL's option names in tiltlm: what each TRL 1.16 / transformers option that is not a TrainConfig field means here.

A TRL command line, YAML file or `DPOConfig(...)` runs unchanged. Every option of TRL 1.16's `DPOConfig` (with the
`transformers.TrainingArguments` it extends), `ModelConfig`, `ScriptArguments` and `DatasetMixtureConfig` is, in
this order of preference:
- a TrainConfig field of the same name (most of them; config.py),
- an alias of one (ALIASES: `model_name_or_path` -> `model`),
- mapped onto one with TRL's meaning (MAPPED: `use_cpu true` -> `device cpu`, `fsdp full_shard` -> `dist fsdp`),
- accepted with one printed line saying what happens instead (NOTED: `dataset_num_proc`, `use_liger_kernel`, ...),
- or refused with one line naming the feature tiltlm does not have (REFUSED: DeepSpeed, bitsandbytes, ...).
Giving such an option its TRL default is silent. tests/test_trl_options.py checks the table is complete against
the installed TRL. Also here: the conversion of a YAML/CLI value to a field's declared type (`coerce_value`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Optional, get_args, get_origin

import yaml

from .errors import ConfigError

# TRL / HF spellings of TrainConfig fields.
ALIASES = {
    "model_name_or_path": "model",
    "dataset_name": "data",
    "dataset_path": "data",
    "train_file": "data",
    "eval_dataset_name": "eval_data",
    "eval_file": "eval_data",
    "ref_model_name_or_path": "ref_model",
    "torch_dtype": "dtype",
    "resume_from_checkpoint": "resume",
    "padding_free": "packing",
    "model_revision": "revision",
    "chat_template_path": "chat_template",
    "num_processes": "nproc",  # accelerate launch / `trl dpo --num_processes`
}


@dataclass(frozen=True)
class Foreign:
    """A TRL/transformers option with no TrainConfig field of its own."""
    kind: str  # "bool" | "value" | "list": how the command line reads it
    default: Any  # TRL's default: giving it is silent
    line: str  # what happens instead (NOTED) or the missing feature (REFUSED)


def _noted(kind: str, default: Any, line: str) -> Foreign:
    return Foreign(kind, default, line)


NOTED: dict[str, Foreign] = {
    "dataset_num_proc": _noted("value", None, "tokenisation runs in one process per rank (one batched fast-"
                               "tokenizer call per 256 pairs); the number of worker processes is not used"),
    "remove_unused_columns": _noted("bool", True, "tiltlm reads only the prompt/chosen/rejected (system, tools) "
                                    "columns and ignores the others either way"),
    "dataset_streaming": _noted("bool", False, "the split is read whole: tiltlm needs every pair's length before "
                                "step 1 (data checks, run length); streaming is not used"),
    "use_liger_kernel": _noted("bool", False, "not needed: tiltlm's chunked LM head (--chunked-logps, on) never "
                               "builds the full logits, which is what Liger's fused loss saves; Liger's kernels "
                               "are not applied"),
    "streaming": _noted("bool", False, "the mixture is read whole: tiltlm needs every pair's length before step 1"),
    "ignore_bias_buffers": _noted("bool", False, "tiltlm's DDP reduces the gradients itself and never broadcasts "
                                  "buffers, so there are none to ignore"),
    "pad_to_multiple_of": _noted("value", "auto", "rows are padded to the longest of their micro-batch (or packed "
                                 "without padding)"),
    "activation_offloading": _noted("bool", False, "activations stay on the device; gradient checkpointing (on by "
                                    "default) is tiltlm's activation-memory saver"),
    "router_aux_loss_coef": _noted("value", None, "no Mixture-of-Experts load-balancing loss is added"),
    "pad_token": _noted("value", None, "deprecated in TRL 1.16; the tokenizer's pad token (or EOS) is used"),
    "logging_strategy": _noted("value", "steps", "tiltlm logs every --logging-steps steps and the last step"),
    "logging_first_step": _noted("bool", False, "step 1 is always logged (the doctor reads it)"),
    "push_to_hub": _noted("bool", False, "nothing is pushed by `tilt train`: the run folder holds the model and its "
                          "card, publish it with `hf upload REPO OUTPUT_DIR` (DPOTrainer.push_to_hub() uploads)"),
    "hub_model_id": _noted("value", None, "used only by DPOTrainer.push_to_hub()"),
    "run_name": _noted("value", None, "trackers name the run after the output folder"),
    "gradient_checkpointing_kwargs": _noted("value", None, "tiltlm's checkpointing is non-reentrant always"),
    "tf32": _noted("value", None, "TF32 matmuls follow torch's defaults"),
    "save_only_model": _noted("bool", False, "checkpoints always hold the optimizer and RNG state too (exact "
                              "resume)"),
    "save_safetensors": _noted("bool", True, "weights are always written as safetensors"),
    "do_train": _noted("bool", False, "`tilt train` always trains"),
    "do_eval": _noted("bool", False, "evaluation follows --eval-strategy"),
    "data_seed": _noted("value", None, "the data order follows --seed"),
    "full_determinism": _noted("bool", False, "a CPU run is already bitwise reproducible (and resumable) from "
                               "--seed"),
    "dataloader_num_workers": _noted("value", 0, "the pairs are tokenised before step 1; no loader workers"),
    "dataloader_pin_memory": _noted("bool", True, "batches are built in the training process"),
    "dataloader_drop_last": _noted("bool", False, "a partial last batch is trained on"),
    "ddp_find_unused_parameters": _noted("value", None, "tiltlm's DDP needs no unused-parameter search"),
    "ddp_backend": _noted("value", None, "NCCL on CUDA, gloo on CPU"),
    "local_rank": _noted("value", -1, "the rank comes from the launcher's LOCAL_RANK"),
    "log_level": _noted("value", "passive", "tiltlm prints to stdout on rank 0"),
    "disable_dropout": _noted("bool", True, "dropout in the base model stays off (the reference and policy "
                              "log-probs must be deterministic); LoRA dropout applies"),
    "include_num_input_tokens_seen": _noted("value", "no", "`tokens/chosen` and `tokens/rejected` are logged"),
    "eval_on_start": _noted("bool", False, "evaluation runs at --eval-steps and at the end"),
    "eval_accumulation_steps": _noted("value", None, "eval metrics are summed per batch"),
    "hub_strategy": _noted("value", "every_save", "used only by DPOTrainer.push_to_hub()"),
    "hub_private_repo": _noted("value", None, "used only by DPOTrainer.push_to_hub()"),
    "hub_token": _noted("value", None, "huggingface_hub reads HF_TOKEN / `hf auth login`"),
    "project": _noted("value", "huggingface", "trackers read WANDB_PROJECT / TRACKIO_PROJECT (default tiltlm)"),
    "max_completion_length": _noted("value", None, "an option of TRL before 1.x: completions are cut to fit "
                                    "--max-length (no completion budget of their own)"),
}

REFUSED: dict[str, Foreign] = {
    "deepspeed": Foreign("value", None, "DeepSpeed is not supported; --dist fsdp (FSDP2) shards parameters, "
                         "gradients and optimizer state like ZeRO-3"),
    "load_in_4bit": Foreign("bool", False, "bitsandbytes-quantised base models (QLoRA) are not supported; use "
                            "--use_peft on a bf16 model (--dtype bfloat16)"),
    "load_in_8bit": Foreign("bool", False, "bitsandbytes-quantised base models are not supported; use --use_peft "
                            "on a bf16 model (--dtype bfloat16)"),
    "bnb_4bit_quant_type": Foreign("value", "nf4", "bitsandbytes quantisation is not supported"),
    "bnb_4bit_quant_storage": Foreign("value", "uint8", "bitsandbytes quantisation is not supported"),
    "use_bnb_nested_quant": Foreign("bool", False, "bitsandbytes quantisation is not supported"),
    "lora_target_parameters": Foreign("list", None, "LoRA on bare parameters (MoE experts) is not supported; use "
                                      "--lora_target_modules"),
    "lora_task_type": Foreign("value", "CAUSAL_LM", "tiltlm trains causal LMs only (CAUSAL_LM)"),
    "optim": Foreign("value", "adamw_torch", "tiltlm's optimizer is torch AdamW (adamw_torch, fp32 master weights "
                     "for bf16 ones); other optimizers are not available"),
    "load_best_model_at_end": Foreign("bool", False, "the saved model is the last step's; every eval is in "
                                      "metrics.jsonl and every kept checkpoint can be loaded"),
    "neftune_noise_alpha": Foreign("value", None, "NEFTune embedding noise is not implemented"),
    "auto_find_batch_size": Foreign("bool", False, "batch-size search is not implemented: set "
                                    "--per-device-train-batch-size (or --packing --max-tokens-per-batch)"),
    "bf16_full_eval": Foreign("bool", False, "evaluation runs in the training precision (--bf16 / --fp16)"),
    "fp16_full_eval": Foreign("bool", False, "evaluation runs in the training precision (--bf16 / --fp16)"),
}
ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused", "adamw_hf")  # torch AdamW under TRL's `optim` names

# transformers Trainer options with no counterpart in tiltlm's loop (giving one prints that it is not used)
NO_EFFECT = (
    "optim_args", "optim_target_modules", "average_tokens_across_devices", "label_smoothing_factor",
    "activation_checkpointing", "activation_checkpointing_kwargs",
    "liger_kernel_config", "use_cache", "torch_empty_cache_steps", "log_on_each_node", "logging_nan_inf_filter",
    "log_level_replica", "logging_dir", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "eval_delay", "prediction_loss_only", "eval_do_concat_batches", "eval_use_gather_object", "include_for_metrics",
    "batch_eval_metrics", "save_on_each_node", "enable_jit_checkpoint", "hub_always_push", "hub_revision",
    "metric_for_best_model", "greater_is_better", "ignore_data_skip", "restore_callback_states_from_checkpoint",
    "accelerator_config", "parallelism_config", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "dataloader_in_order", "label_names", "train_sampling_strategy",
    "length_column_name", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_static_graph", "fsdp_config", "debug",
    "skip_memory_metrics", "do_predict", "fp16_opt_level",
)
for _name in NO_EFFECT:
    NOTED.setdefault(_name, Foreign("value", None, "a transformers Trainer option with no counterpart in tiltlm's "
                                    "loop: not used"))
# given, these set a TrainConfig field with TRL's meaning: name -> (kind, TRL default, field, value -> field value)
MAPPED = {
    "use_cpu": ("bool", False, "device", lambda v: "cpu" if v else "auto"),
    "fsdp": ("value", "", "dist", lambda v: "fsdp" if str(v).strip() not in ("", "none", "None", "false") else "ddp"),
    "disable_tqdm": ("bool", False, "progress", lambda v: not v),
    # DatasetMixtureConfig: hold out this share of the mixture (a seeded split, as datasets' train_test_split)
    "test_split_size": ("value", None, "eval_split", lambda v: float(v or 0.0)),
}
# values TRL accepts that tiltlm runs as something else: (field, value) -> what runs instead
ATTN_KERNELS = ("auto", "sdpa", "eager", "flex_attention")


def foreign_kind(name: str) -> Optional[str]:
    """"bool" / "value" / "list" for a TRL-only option name, None for anything else."""
    if name in NOTED:
        return NOTED[name].kind
    if name in REFUSED:
        return REFUSED[name].kind
    if name in MAPPED:
        return MAPPED[name][0]
    return None


def read_foreign(name: str, value: Any) -> Any:
    """A TRL-only option's value as TRL types it (bool options accept true/false spellings)."""
    kind = foreign_kind(name)
    if kind == "bool":
        return coerce_value(name, bool, value)
    if isinstance(value, str) and kind == "value":
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, (int, float, bool, type(None), dict, list)) else value
    return value


def is_default(name: str, value: Any) -> bool:
    spec = NOTED.get(name) or REFUSED.get(name)
    default = spec.default if spec else MAPPED[name][1]
    if name == "optim":
        return str(value) in ADAMW_NAMES
    return value == default or (default is None and value in ("", [], {}))


def refusal(name: str, value: Any) -> Optional[str]:
    """The one error line for a refused option given a non-default value, else None."""
    if name in REFUSED and not is_default(name, value):
        return f"--{name} {value}: {REFUSED[name].line}"
    return None


def notes(trl_only: dict[str, Any]) -> list[str]:
    """One line per TRL-only option given (with a non-default value): what happens instead in tiltlm."""
    out = []
    for name, value in trl_only.items():
        if name in NOTED and not is_default(name, value):
            out.append(f"{name}={value}: {NOTED[name].line}")
        elif name.startswith("replaced:"):  # a value TRL takes that tiltlm runs as another (see config.validate)
            out.append(str(value))
    return out


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def all_names() -> set[str]:
    return set(ALIASES) | set(NOTED) | set(REFUSED) | set(MAPPED)


# transformers.get_scheduler's schedules (tests/test_trl_options.py checks the list against SchedulerType); its
# reduce_lr_on_plateau steps on an eval metric, which tiltlm's per-step schedule has no place for
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
STRATEGIES = ("no", "steps", "epoch")
NO_TRUNCATION = 2 ** 31 - 1  # max_length: null (TRL: no truncation); a pair longer than the model is refused
FLASH_KERNELS = ("flash_attention_2", "flash_attention_3", "kernels-community/", "paged|", "sdpa_paged",
                 "flex_attention_paged", "eager_paged")
LOADER_KWARGS = {"dtype": "dtype", "torch_dtype": "dtype", "attn_implementation": "attn_implementation",
                 "revision": "revision", "trust_remote_code": "trust_remote_code"}


def normalise(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_")


def apply_trl_only(given: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Type the TRL-only options given, refuse the refused ones, and set the fields the MAPPED ones stand for
    (unless that field was given too). Returns them by name, as TrainConfig.trl_only holds them."""
    out = {}
    for name, raw in given.items():
        value = read_foreign(name, raw)
        if (line := refusal(name, value)) is not None:
            raise ConfigError(line)
        if name in MAPPED:
            _, _, target, convert = MAPPED[name]
            values.setdefault(target, convert(value))
        out[name] = value
    return out


def apply_env(env: Any, source: str) -> None:
    """TRL's YAML `env:` mapping: environment variables set before anything runs."""
    if env is None:
        return
    if not isinstance(env, dict):
        raise ConfigError(f"{source}: env must be a mapping of NAME: value")
    os.environ.update({str(k): str(v) for k, v in env.items()})


def _replaced(cfg, name: str, line: str) -> None:
    cfg.trl_only[f"replaced:{name}"] = line


def adopt_trl_values(cfg) -> None:
    """TRL values a TrainConfig takes that tiltlm runs as something else: set what runs, and note each in
    cfg.trl_only (printed at start-up). Idempotent: validate() may run more than once."""
    for key, value in dict(cfg.model_init_kwargs).items():
        target = LOADER_KWARGS.get(key)
        if target is None:
            _replaced(cfg, f"model_init_kwargs.{key}", f"model_init_kwargs {key}={value!r}: not passed on (tiltlm "
                      "loads the model itself: dtype, attn_implementation, revision and trust_remote_code apply)")
            continue
        setattr(cfg, target, str(value).removeprefix("torch.") if target == "dtype" else value)
    attn = str(cfg.attn_implementation)
    if attn not in ATTN_KERNELS and attn.startswith(FLASH_KERNELS):
        cfg.attn_implementation = "auto"
        _replaced(cfg, "attn_implementation", f"attn_implementation={attn}: tiltlm runs its own exact kernels "
                  "instead: FlexAttention for prefix-shared/packed rows on CUDA, SDPA otherwise (on CPU SDPA with "
                  "a dense mask); flash-attn is not used")
    trackers = [cfg.report_to] if isinstance(cfg.report_to, str) else list(cfg.report_to or [])
    if any(str(t).lower() == "all" for t in trackers):
        found = [t for t in ("tensorboard", "wandb", "mlflow", "trackio") if importlib.util.find_spec(t)]
        cfg.report_to = found or ["none"]
        _replaced(cfg, "report_to", f"report_to=all: the installed trackers: {', '.join(found) or 'none'}")
    if cfg.max_length is None:
        cfg.max_length = NO_TRUNCATION
        _replaced(cfg, "max_length", "max_length=null: no truncation (a pair longer than the model's context is "
                  "refused with its length)")
    if cfg.truncation_mode == "keep_end" and cfg.max_prompt_length is None:
        cfg.max_prompt_length = max(1, cfg.max_length // 2)
        _replaced(cfg, "truncation_mode", f"truncation_mode=keep_end: a too-long pair keeps the last "
                  f"{cfg.max_prompt_length} prompt tokens (--max-prompt-length) and its completions' start; TRL "
                  "cuts each sequence's start, which would give chosen and rejected different prompts")
    if cfg.sync_ref_model and cfg.precompute_ref_log_probs:
        cfg.precompute_ref_log_probs = False
        _replaced(cfg, "precompute_ref_log_probs", "sync_ref_model: the reference moves during training, so its "
                  "log-probs are computed live (the reference cache, on by default, is off for this run)")
    if cfg.eval_strategy is None and cfg.eval_steps is not None and not (cfg.eval_data or cfg.eval_split > 0):
        _replaced(cfg, "eval_steps", "eval_steps without --eval_strategy steps: no evaluation (TRL's meaning); "
                  "add --eval_strategy steps")


# TRL's predefined `--accelerate_config` profiles (trl/accelerate_configs/*.yaml in TRL 1.16):
# name -> (distributed_type, mixed_precision, num_processes)
ACCELERATE_PROFILES = {
    "fsdp1": ("FSDP", "bf16", 8), "fsdp2": ("FSDP", "bf16", 8), "multi_gpu": ("MULTI_GPU", "bf16", 8),
    "single_gpu": ("NO", "bf16", 1), "zero1": ("DEEPSPEED", "bf16", 8), "zero2": ("DEEPSPEED", "bf16", 8),
    "zero3": ("DEEPSPEED", "bf16", 8),
}


def accelerate_values(ref: Optional[str], env: dict) -> dict[str, Any]:
    """What an accelerate config (a TRL profile name or an accelerate YAML file) and `accelerate launch`'s
    environment (ACCELERATE_USE_FSDP, ACCELERATE_MIXED_PRECISION) set: nproc, dist, bf16/fp16 field values."""
    out: dict[str, Any] = {}
    if ref:
        if ref in ACCELERATE_PROFILES:
            kind, precision, nproc = ACCELERATE_PROFILES[ref]
        else:
            try:
                raw = yaml.safe_load(open(os.path.expanduser(ref))) or {}
            except OSError:
                raise ConfigError(f"--accelerate_config {ref}: no such file, nor a TRL profile "
                                  f"({', '.join(ACCELERATE_PROFILES)})") from None
            except yaml.YAMLError as e:
                raise ConfigError(f"--accelerate_config {ref}: not valid YAML: {e}") from None
            kind = str(raw.get("distributed_type", "NO"))
            precision, nproc = str(raw.get("mixed_precision", "no")), int(raw.get("num_processes", 1) or 1)
        if kind == "DEEPSPEED":
            raise ConfigError(f"--accelerate_config {ref}: {REFUSED['deepspeed'].line} (--accelerate_config fsdp2)")
        out["nproc"] = nproc if kind != "NO" else 1
        out["dist"] = "fsdp" if kind == "FSDP" else "ddp"
        if precision in ("bf16", "fp16"):
            out[precision] = True
    if str(env.get("ACCELERATE_USE_FSDP", "")).lower() in ("1", "true"):
        out["dist"] = "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ConfigError(f"accelerate launch with DeepSpeed: {REFUSED['deepspeed'].line}")
    if env.get("ACCELERATE_MIXED_PRECISION") in ("bf16", "fp16"):
        out[env["ACCELERATE_MIXED_PRECISION"]] = True
    return out


# ------------------------------------------------------------------------------------------------------------------
def coerce_value(name: str, typ: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the declared type `typ` with a clear error."""
    if get_origin(typ) is not None and type(None) in get_args(typ):  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in get_args(typ) if a is not type(None))
    try:
        if get_origin(typ) is dict:
            return mapping(value)
        if get_origin(typ) is list:
            (inner,) = get_args(typ)
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            if inner is dict:
                return [mapping(x) for x in items]
            return [inner(x.strip()) if isinstance(x, str) else inner(x) for x in items if str(x).strip() != ""]
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if typ is int and isinstance(value, str):
            return int(float(value)) if "e" in value.lower() else int(value)
        return typ(value)
    except (TypeError, ValueError):
        tname = "key=value items" if get_origin(typ) is dict else getattr(typ, "__name__", str(typ))
        raise ConfigError(f"option {name!r} expects {tname}, got {value!r}") from None


def mapping(value: Any) -> dict:
    """A YAML mapping, a JSON/YAML object string (`'{"num_cycles": 2}'`, as TRL's CLI takes dict options), or
    `key=value` items (a list, or one string): values are read as YAML scalars, so `enable_thinking=false` gives
    False and `n=3` gives 3."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str) and value.strip().startswith("{"):
        parsed = yaml.safe_load(value)
        if isinstance(parsed, dict):
            return parsed
    items = [value] if isinstance(value, str) else list(value)
    out = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(item)
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out
