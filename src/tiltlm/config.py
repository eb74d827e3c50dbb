"""One typed config for a training run. Its fields ARE the CLI flags of `tilt train` (litgpt style).

Precedence: dataclass defaults < YAML file (--config) < command-line flags.
Both spellings are accepted (`--learning-rate` and `--learning_rate`), plus TRL's names listed in ALIASES.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from .core.losses import LossHParams, check_modifiers, parse_loss_types
from .errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # --report-to (training/trackers/, one module each)

@dataclass
class TrainConfig:
    # --- what to train, on what, where to write
    model: Optional[str] = None  # local HF model folder or a .gguf file
    data: Optional[str] = None  # JSONL / JSON / Parquet / CSV file, or a saved HF `datasets` folder
    output_dir: Optional[str] = None
    eval_data: Optional[str] = None  # held-out pairs; evaluated every eval_steps and at the end
    eval_split: float = 0.0  # if > 0 and no eval_data: hold out this fraction of `data` (seeded)
    ref_model: Optional[str] = None  # default: a frozen copy of `model` (the only correct choice for DPO)
    trust_remote_code: bool = False
    dtype: str = "float32"  # how weights are stored: float32 | bfloat16 | float16 (low precision: fp32 master copy)
    bf16: bool = False  # TRL's meaning: fp32 master weights, forward/backward under bf16 autocast (CPU and CUDA)
    fp16: bool = False  # the same under fp16 autocast, with dynamic loss scaling
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    # --- the preference loss
    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # one or several (summed with loss_weights)
    loss_weights: Optional[list[float]] = None
    label_smoothing: float = 0.0  # cDPO / robust / exo_pair epsilon
    simpo_gamma: float = 0.5  # SimPO target reward margin gamma: loss = -logsigmoid(beta * delta - gamma)
    discopop_tau: float = 0.05
    # TRL's modifiers of every loss (core/losses.py): f-DPO's divergence, WPO's pair weights, LD-DPO's tail weight
    f_divergence_type: str = "reverse_kl"  # reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha_divergence_coef: float = 0.5  # alpha of alpha_divergence
    use_weighting: bool = False  # WPO: weight each pair by the policy's length-normalised pair probability
    ld_alpha: Optional[float] = None  # LD-DPO: weight of the longer completion's tokens past the shorter's, in [0, 1]

    # --- optimisation
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    seed: int = 42

    # --- tokenisation
    max_length: int = 1024  # prompt + completion tokens per sequence; longer pairs are truncated (keep the start)
    max_prompt_length: Optional[int] = None
    prompt_delimiter: Optional[str] = None  # implicit-prompt split marker; default: auto ("\n\nAssistant:")
    skip_invalid: bool = False  # train on the valid rows and write the rest to OUTPUT_DIR/skipped.jsonl

    # --- data layouts and the hub (issue 12)
    revision: Optional[str] = None  # hub revision (branch, tag, commit) of a hub-name --model / --ref-model
    dataset_train_split: str = "train"  # the split of --data (saved DatasetDict, folder of split files, hub dataset)
    dataset_test_split: Optional[str] = "test"  # the split of --eval-data; without --eval-data, of --data ("none": off)
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    system_column: Optional[str] = None  # its text becomes the conversation's system message
    drop_duplicates: bool = False  # repeated pairs are kept (as TRL does) and counted; this drops the repeats
    chat_template: Optional[str] = None  # a Jinja file that replaces the tokenizer's chat template
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # key=value ... passed to apply_chat_template

    # --- speed (each exact; switches exist so the benchmark can attribute each gain)
    precompute_ref_log_probs: bool = True  # cache reference log-probs once; the reference model is then freed
    ref_cache_dir: Optional[str] = None  # default: ~/.cache/tiltlm/ref
    prefix_sharing: bool = True  # prompt || chosen || rejected in one row, prompt computed once
    packing: bool = False  # several pairs per row, no padding (batch = token budget)
    max_tokens_per_batch: int = 4096  # token budget of one packed micro-batch
    chunked_logps: bool = True  # log-probs from hidden states in chunks, full logits never materialised
    logps_chunk_size: int = 1024  # tokens per LM-head chunk
    gradient_checkpointing: bool = True  # recompute each block in backward: -36% peak memory, +16% time (SmolLM2)

    # --- attention kernel (issue 14; docs/design.md "Attention kernels")
    # auto: on CUDA FlexAttention for prefix-shared/packed rows (masked blocks skipped) and SDPA's causal kernel for
    # plain rows; on CPU SDPA with a dense mask. Or force sdpa | eager | flex_attention (CUDA only: no CPU backward).
    attn_implementation: str = "auto"

    # --- logging, eval, checkpoints
    logging_steps: int = 1
    eval_steps: int = 0  # 0 = evaluate at the end only
    save_steps: int = 0  # 0 = no intermediate checkpoints
    save_total_limit: int = 2
    resume: Optional[str] = None  # auto | PATH to a checkpoint
    overwrite_output_dir: bool = False
    doctor: bool = True  # live failure-mode checks (see README "The DPO doctor")
    max_nonfinite_steps: int = 3  # stop after this many consecutive non-finite steps
    progress: bool = True

    # --- distributed (launched with torchrun / `tilt train --nproc N`) and LoRA; see docs/distributed.md
    dist: str = "ddp"  # ddp | fsdp: how the ranks hold the model when WORLD_SIZE > 1
    ddp_timeout: int = 1800  # seconds a collective may wait for another rank before the run stops (TRL's name)
    lora_r: int = 0  # > 0: train a LoRA adapter of this rank (peft); the reference is the adapter-off model
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    lora_adapter: Optional[str] = None  # continue training this peft adapter; its frozen copy is the reference
    merge_lora: bool = False  # also write the merged full model to OUTPUT_DIR/merged
    sync_ref_model: bool = False  # TR-DPO: mix the policy into the (live) reference every ref_model_sync_steps
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512

    # --- trackers and the Python API (issue 12)
    report_to: list[str] = field(default_factory=lambda: ["none"])  # none, or any of TRACKERS (several at once)

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        try:
            self.loss_type = parse_loss_types(self.loss_type)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(
                f"loss_weights has {len(self.loss_weights)} values but loss_type has {len(self.loss_type)}"
            )
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        self._validate_loss_modifiers()
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "max_length", "logging_steps", "logps_chunk_size", "max_tokens_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_scheduler_type not in ("linear", "cosine", "constant"):
            raise ConfigError(f"lr_scheduler_type must be linear, cosine or constant, got {self.lr_scheduler_type!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        self._validate_precision()
        if self.attn_implementation not in ("auto", "sdpa", "eager", "flex_attention"):
            raise ConfigError(f"attn_implementation must be auto, sdpa, eager or flex_attention, got "
                              f"{self.attn_implementation!r}")
        self.report_to = self._trackers()
        self._validate_dist_and_lora()
        return self

    def _validate_loss_modifiers(self) -> None:
        try:
            check_modifiers(self.loss_type, LossHParams.from_options(self))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.use_weighting and self.dist == "fsdp":
            raise ConfigError("use_weighting (WPO) is not supported with --dist fsdp: its extra no-grad forward runs "
                              "outside the sharded root; use --dist ddp")

    def _validate_precision(self) -> None:
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 are exclusive: pick one autocast dtype")
        if (self.bf16 and self.dtype == "float16") or (self.fp16 and self.dtype == "bfloat16"):
            raise ConfigError(f"--{'bf16' if self.bf16 else 'fp16'} with --dtype {self.dtype} mixes two half "
                              "precisions: keep --dtype float32 (the usual choice) or use the matching one")
        if self.dist == "fsdp" and self.dtype != "float32":
            raise ConfigError(f"--dist fsdp with --dtype {self.dtype}: FSDP2 keeps the sharded weights as the fp32 "
                              "master copy; use --dtype float32 --bf16 (bf16 compute, fp32 gradient reduction)")

    @property
    def mixed_precision(self) -> Optional[str]:
        """The autocast dtype's name under --bf16 / --fp16, else None."""
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else None

    def _trackers(self) -> list[str]:
        """report_to as a list of tracker names, "none" dropped (a str from Python counts as one name)."""
        given = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        names = [str(n).strip().lower() for n in given]
        for n in names:
            if n not in ("none", *TRACKERS):
                raise ConfigError(f"report_to: unknown tracker {n!r}{_suggest(n, TRACKERS)}; choose none or "
                                  f"any of {', '.join(TRACKERS)}")
        return list(dict.fromkeys(n for n in names if n != "none")) or ["none"]

    @property
    def uses_lora(self) -> bool:
        """Whether a LoRA adapter is trained (a new one, or a continued one)."""
        return self.lora_r > 0 or bool(self.lora_adapter)

    def _validate_dist_and_lora(self) -> None:
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be >= 0 (0 = LoRA off), got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.merge_lora and not self.uses_lora:
            raise ConfigError("--merge-lora needs --lora-r > 0 or --lora-adapter")
        if self.lora_adapter and not (Path(self.lora_adapter).expanduser() / "adapter_config.json").is_file():
            raise ConfigError(f"--lora-adapter {self.lora_adapter}: no adapter_config.json there (a peft adapter "
                              "folder)")
        if self.ddp_timeout < 1:
            raise ConfigError(f"ddp_timeout must be >= 1 second, got {self.ddp_timeout}")
        if self.dist not in ("ddp", "fsdp"):
            raise ConfigError(f"dist must be ddp or fsdp, got {self.dist!r}")
        if self.dist == "fsdp" and (self.uses_lora or self.sync_ref_model):
            raise ConfigError("--dist fsdp with LoRA or --sync-ref-model is not supported yet; use --dist ddp "
                              "(a LoRA policy is small: every rank can hold it)")
        if self.sync_ref_model:
            if self.precompute_ref_log_probs:
                raise ConfigError("--sync-ref-model updates the reference during training, so it cannot be "
                                  "precomputed: add --no-precompute-ref-log-probs")
            if not 0.0 < self.ref_model_mixup_alpha <= 1.0:
                raise ConfigError(f"ref_model_mixup_alpha must be in (0, 1], got {self.ref_model_mixup_alpha}")
            if self.ref_model_sync_steps < 1:
                raise ConfigError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# TRL / HF spellings accepted as synonyms, so a TRL command line or YAML works unchanged.
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
}


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def canonical_key(key: str) -> str:
    """Map a user-given key (dashes or underscores, TRL alias) to a TrainConfig field name, or raise."""
    k = key.strip().lstrip("-").replace("-", "_")
    k = ALIASES.get(k, k)
    names = {f.name for f in fields(TrainConfig)}
    if k not in names:
        raise ConfigError(f"unknown option {key!r}{_suggest(k, names | set(ALIASES))}")
    return k


def _field_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type with a clear error."""
    typ = _field_types()[name]
    if get_origin(typ) is not None and type(None) in get_args(typ):  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in get_args(typ) if a is not type(None))
    try:
        if get_origin(typ) is dict:
            return _mapping(value)
        if get_origin(typ) is list:
            (inner,) = get_args(typ)
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
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


def _mapping(value: Any) -> dict:
    """A YAML mapping, or `key=value` items (a list, or one string): values are read as YAML scalars, so
    `enable_thinking=false` gives False and `n=3` gives 3."""
    if isinstance(value, dict):
        return dict(value)
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


def load_config(config_file: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Build a validated TrainConfig from an optional YAML file and a dict of overrides (CLI flags)."""
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {config_file}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config_file}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_file}: expected a mapping of option: value")
        for k, v in raw.items():
            try:
                name = canonical_key(str(k))
            except ConfigError as e:
                raise ConfigError(f"{config_file}: {e}") from None
            values[name] = coerce(name, v)
    for k, v in (overrides or {}).items():
        name = canonical_key(k)
        values[name] = coerce(name, v)
    return TrainConfig(**values).validate()
