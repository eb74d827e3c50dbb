"""One typed config for a training run. Its fields ARE the CLI flags of `tilt train` (litgpt style).

Precedence: dataclass defaults < YAML file (--config) < command-line flags.
Both spellings are accepted (`--learning-rate` and `--learning_rate`), plus TRL's names (trl_options.py: aliases,
options accepted with a note, refused ones; every TRL 1.16 DPO option is one of them).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_type_hints

import yaml

from .core.losses import LossHParams, check_modifiers, parse_loss_types
from .errors import ConfigError
from .trl_options import (ALIASES, ATTN_KERNELS, SCHEDULERS, STRATEGIES, accelerate_values, adopt_trl_values,
                          all_names, apply_env, apply_trl_only, coerce_value, foreign_kind, normalise, suggest)

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # --report-to (training/trackers/, one module each)

@dataclass
class TrainConfig:
    # Each field's trailing comment is its `tilt train --help` text; `# --- name` starts a help group
    # (commands/train_flags.py); a comment line indented under a field continues its text.
    # --- what/where
    model: Optional[str] = None  # the model to train: a local HF folder, a .gguf file or a hub name org/name
    data: Optional[str] = None  # the training pairs: a JSONL/JSON/Parquet/CSV file, a `datasets` folder or hub dataset
    output_dir: str = "trainer_output"  # the run folder: model, metrics.jsonl, checkpoints, report (TRL's default)
    eval_data: Optional[str] = None  # held-out pairs (a file, folder or hub dataset); evaluated as --eval-strategy says
    eval_split: float = 0.0  # if > 0 and no eval_data: hold out this seeded fraction of `data`
    ref_model: Optional[str] = None  # the reference model; default: `model` itself (the only correct choice for DPO)
    trust_remote_code: bool = False  # allow models and tokenizers that ship their own Python code
    dtype: str = "float32"  # how weights are stored: float32 | bfloat16 | float16 | auto (the checkpoint's); low
        # precision keeps an fp32 master copy
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)  # from_pretrained keywords (TRL): dtype,
        # attn_implementation, revision, trust_remote_code set those options; others are reported unused
    bf16: bool = False  # TRL's meaning: fp32 master weights, forward/backward under bf16 autocast (TRL's default is on)
    fp16: bool = False  # the same under fp16 autocast, with dynamic loss scaling
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    # --- loss
    beta: float = 0.1  # how far the policy may move from the reference: larger beta, smaller moves
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # one or several loss names (summed with
        # loss_weights); the README's Losses table lists them
    loss_weights: Optional[list[float]] = None  # one weight per loss_type (default: 1 each)
    label_smoothing: float = 0.0  # cDPO / robust / exo_pair epsilon: the assumed chance a label is flipped
    simpo_gamma: float = 0.5  # SimPO target reward margin gamma: loss = -logsigmoid(beta * delta - gamma)
    discopop_tau: float = 0.05  # DiscoPOP's temperature
    # TRL's modifiers of every loss (core/losses.py): f-DPO's divergence, WPO's pair weights, LD-DPO's tail weight
    f_divergence_type: str = "reverse_kl"  # reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha_divergence_coef: float = 0.5  # alpha of alpha_divergence
    use_weighting: bool = False  # WPO: weight each pair by the policy's length-normalised pair probability
    ld_alpha: Optional[float] = None  # LD-DPO: weight of the longer completion's tokens past the shorter's, in [0, 1]

    # --- optimisation
    learning_rate: float = 1e-6  # AdamW's peak learning rate
    lr_scheduler_type: str = "linear"  # any schedule of transformers.get_scheduler: linear | cosine | constant |
        # constant_with_warmup | cosine_with_restarts | polynomial | inverse_sqrt | cosine_with_min_lr |
        # cosine_warmup_with_min_lr | warmup_stable_decay
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)  # the schedule's own keywords, e.g. num_cycles=2
        # or min_lr_rate=0.1
    warmup_ratio: float = 0.0  # linear warm-up over this fraction of the steps
    warmup_steps: float = 0  # linear warm-up over this many steps (< 1: a fraction of the run, as TRL)
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    adam_epsilon: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (grad_norm is logged before clipping)
    per_device_train_batch_size: int = 8  # pairs per process per micro-batch (TRL's default)
    per_device_eval_batch_size: int = 8  # pairs per process per eval and reference-pass batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    num_train_epochs: float = 3.0  # passes over the data (TRL's default; DPO recipes usually pass 1)
    max_steps: int = -1  # > 0: train this many optimizer steps (overrides num_train_epochs)
    seed: int = 42  # the seed of the data order, the eval split and the model's initialisation

    # --- tokenisation
    max_length: Optional[int] = 1024  # prompt + completion tokens per sequence; longer pairs are truncated (null: none)
    truncation_mode: str = "keep_start"  # keep_start (TRL's, the only non-deprecated one) | keep_end: keep the prompt's
        # end (--max-prompt-length, default max_length // 2)
    max_prompt_length: Optional[int] = None  # a too-long pair's prompt keeps its last this many tokens first
    prompt_delimiter: Optional[str] = None  # implicit-prompt split marker; default: auto ("\n\nAssistant:")
    skip_invalid: bool = False  # train on the valid rows and write the rest to OUTPUT_DIR/skipped.jsonl

    # --- data layouts and the hub
    revision: Optional[str] = None  # hub revision (branch, tag, commit) of a hub-name --model / --ref-model
    dataset_config: Optional[str] = None  # the dataset's configuration (load_dataset's `name`): its subfolder of --data
    dataset_train_split: str = "train"  # the split of --data (saved DatasetDict, folder of split files, hub dataset)
    dataset_test_split: Optional[str] = "test"  # the eval split (of --eval-data, or of --data under --eval-strategy);
        # none: off
    datasets: list[dict] = field(default_factory=list)  # a mixture (TRL's DatasetMixtureConfig): entries of path, name,
        # data_dir, data_files, split, columns, fraction
    prompt_column: str = "prompt"  # the column holding the prompt
    chosen_column: str = "chosen"  # the column holding the preferred completion
    rejected_column: str = "rejected"  # the column holding the dispreferred completion
    system_column: Optional[str] = None  # its text becomes the conversation's system message
    drop_duplicates: bool = False  # repeated pairs are kept (as TRL does) and counted; this drops the repeats
    chat_template: Optional[str] = None  # a Jinja file that replaces the tokenizer's chat template
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # key=value ... passed to apply_chat_template

    # --- speed and memory
    precompute_ref_log_probs: bool = True  # cache reference log-probs once; the reference model is then freed (exact;
        # TRL's default is off)
    precompute_ref_batch_size: Optional[int] = None  # pairs per batch of the reference pass (no grad: larger
        # batches fit); default --per-device-eval-batch-size (TRL's option)
    ref_cache_dir: Optional[str] = None  # where the reference cache and the start-up check's verdicts live
        # (default: ~/.cache/tiltlm/ref and ~/.cache/tiltlm/paths)
    prefix_sharing: bool = True  # prompt || chosen || rejected in one row, the prompt computed once (exact)
    packing: Optional[bool] = None  # several pairs per row, no padding (batch = token budget; exact); unset: on on
        # CPU (measured faster and lighter there), off on CUDA until measured (TRL's padding_free: off)
    max_tokens_per_batch: int = 4096  # token budget of one packed micro-batch
    chunked_logps: bool = True  # log-probs from hidden states in chunks, full logits never built (exact)
    logps_chunk_size: int = 1024  # tokens per LM-head chunk
    gradient_checkpointing: bool = True  # recompute each block in backward: -36% peak memory, +16% time (SmolLM2)
    activation_memory_budget: Optional[str] = None  # with gradient checkpointing: checkpoint only as many leading
        # layers as needed so that what the layers keep for backward (measured at the longest micro-batch) fits:
        # a size (2GB, 1500MB, 8GiB), a fraction of the no-checkpointing activations (0.5, torch's meaning of the
        # name) or auto (free device memory after gradients and AdamW state); unset: every layer
    # auto: on CUDA FlexAttention for prefix-shared/packed rows (masked blocks skipped) and SDPA's causal kernel for
    # plain rows; on CPU SDPA with a dense mask. Or force sdpa | eager | flex_attention (CUDA only: no CPU backward).
    attn_implementation: str = "auto"  # auto | sdpa | eager | flex_attention (flash_attention_2/3 run as auto: see
        # docs)
    torch_compile: bool = False  # torch.compile each decoder block (one graph shared by all blocks, dynamic lengths):
        # fused elementwise ops, checked exact at start-up; pays when the run is much longer than its compile time
    torch_compile_backend: str = "inductor"  # torch.compile backend (giving it turns --torch-compile on, as in TRL)
    torch_compile_mode: Optional[str] = None  # torch.compile mode: default | reduce-overhead | max-autotune (giving it
        # turns --torch-compile on, as in TRL)

    # --- run
    logging_steps: float = 1  # log every N steps (< 1: a fraction of the run); TRL's default is 10, tiltlm's doctor
        # reads every step
    eval_strategy: Optional[str] = None  # no | steps | epoch (TRL's); unset: no, except that --eval-data / --eval-split
        # evaluate at the end
    eval_steps: Optional[float] = None  # with --eval-strategy steps: every N steps (< 1: a fraction; default
        # logging_steps)
    save_strategy: str = "steps"  # no | steps | epoch: when checkpoints are written
    save_steps: float = 500  # with --save-strategy steps: a checkpoint every N steps (< 1: a fraction; 0: none)
    save_total_limit: Optional[int] = 2  # checkpoints kept (the newest); null keeps all (TRL's default)
    resume: Optional[str] = None  # auto | PATH to a checkpoint
    overwrite_output_dir: bool = False  # start over in a folder that holds another run
    doctor: bool = True  # live failure-mode checks (see README "The DPO doctor")
    max_nonfinite_steps: int = 3  # stop after this many consecutive non-finite steps
    progress: bool = True  # the progress bar
    report_to: list[str] = field(default_factory=lambda: ["none"])  # none | all | tensorboard | wandb | mlflow |
        # trackio (several at once)

    # --- scale-out
    nproc: Optional[int] = None  # processes on this node (one per GPU): re-runs the command under torchrun
        # (TRL/accelerate: --num_processes)
    accelerate_config: Optional[str] = None  # an accelerate config file or TRL profile (multi_gpu, fsdp1, fsdp2, ...):
        # its num_processes, FSDP and mixed precision
    dist: str = "ddp"  # ddp | fsdp: how the ranks hold the model when WORLD_SIZE > 1
    ddp_timeout: int = 1800  # seconds a collective may wait for another rank before the run stops
    use_peft: bool = False  # train a LoRA adapter (peft) instead of the full model; the reference is the adapter-off
        # model
    lora_r: int = 16  # LoRA rank (with --use-peft)
    lora_alpha: float = 32.0  # LoRA alpha (with --use-peft)
    lora_dropout: float = 0.05  # LoRA dropout (with --use-peft; as in TRL, --disable-dropout (on) turns it off)
    lora_target_modules: Optional[list[str]] = None  # modules that get an adapter (default: peft's choice for the
        # architecture; all-linear: every linear layer)
    lora_modules_to_save: Optional[list[str]] = None  # modules trained in full next to the adapter (peft's
        # modules_to_save)
    use_rslora: bool = False  # rank-stabilised LoRA scaling alpha / sqrt(r)
    use_dora: bool = False  # weight-decomposed LoRA (DoRA)
    lora_adapter: Optional[str] = None  # continue training this peft adapter; its frozen copy is the reference
    merge_lora: bool = False  # also write the merged full model to OUTPUT_DIR/merged
    sync_ref_model: bool = False  # TR-DPO: mix the policy into the (live) reference every ref_model_sync_steps
    ref_model_mixup_alpha: float = 0.6  # TR-DPO alpha: reference = alpha * policy + (1 - alpha) * reference
    ref_model_sync_steps: int = 512  # TR-DPO tau: steps between reference updates

    # TRL options given that tiltlm runs differently, as given; start-up prints one line each (trl_options.py)
    trl_only: dict[str, Any] = field(default_factory=dict, metadata={"flag": False})

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
        adopt_trl_values(self)  # TRL values tiltlm runs as something else (each noted in trl_only)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "max_length", "logps_chunk_size", "max_tokens_per_batch", "precompute_ref_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("logging_steps", "eval_steps", "save_steps", "warmup_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"{name} must be >= 0 (< 1: a fraction of the run), got {getattr(self, name)}")
        if self.logging_steps == 0:
            raise ConfigError("logging_steps must be > 0 (< 1: a fraction of the run)")
        choose("lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        choose("dtype", self.dtype, ("float32", "bfloat16", "float16", "auto"))
        choose("attn_implementation", self.attn_implementation, ATTN_KERNELS)
        choose("eval_strategy", self.eval_strategy, (None, *STRATEGIES))
        choose("save_strategy", self.save_strategy, STRATEGIES)
        choose("truncation_mode", self.truncation_mode, ("keep_start", "keep_end"))
        choose("torch_compile_mode", self.torch_compile_mode, COMPILE_MODES)
        self._validate_precision()
        memory_budget(self.activation_memory_budget)
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
        if self.dist == "fsdp" and self.dtype not in ("float32", "auto"):
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
                raise ConfigError(f"report_to: unknown tracker {n!r}{suggest(n, TRACKERS)}; choose none, all or "
                                  f"any of {', '.join(TRACKERS)}")
        return list(dict.fromkeys(n for n in names if n != "none")) or ["none"]

    @property
    def uses_lora(self) -> bool:
        """Whether a LoRA adapter is trained (a new one with --use-peft, or a continued one)."""
        return self.use_peft or bool(self.lora_adapter)

    @property
    def evaluates(self) -> bool:
        """Whether held-out pairs are evaluated: under --eval-strategy steps/epoch (TRL), or, with no strategy
        given, when --eval-data / --eval-split name them (at the end, and every --eval-steps if given)."""
        if self.eval_strategy is not None:
            return self.eval_strategy != "no"
        return bool(self.eval_data) or self.eval_split > 0

    def every(self, what: str, total_steps: int, steps_per_epoch: int) -> int:
        """Steps between two logs / evals / saves (0: never), with TRL's meanings: a value < 1 is a fraction of
        the run (rounded up), `epoch` strategies mean once per epoch, eval_steps defaults to logging_steps."""
        if what == "logging":
            return ratio_steps(self.logging_steps, total_steps)
        strategy = self.eval_strategy if what == "eval" else self.save_strategy
        if strategy == "epoch":
            return steps_per_epoch
        if strategy == "no" or (what == "eval" and strategy is None and self.eval_steps is None):
            return 0  # never, or (eval data given, no strategy) at the end only; `evaluates` says whether at all
        value = self.save_steps if what == "save" else self.eval_steps
        return ratio_steps(self.logging_steps if value is None else value, total_steps)

    def _validate_dist_and_lora(self) -> None:
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.merge_lora and not self.uses_lora:
            raise ConfigError("--merge-lora needs --use-peft or --lora-adapter")
        if self.lora_adapter and not (Path(self.lora_adapter).expanduser() / "adapter_config.json").is_file():
            raise ConfigError(f"--lora-adapter {self.lora_adapter}: no adapter_config.json there (a peft adapter "
                              "folder)")
        if self.ddp_timeout < 1:
            raise ConfigError(f"ddp_timeout must be >= 1 second, got {self.ddp_timeout}")
        choose("dist", self.dist, ("ddp", "fsdp"))
        if self.dist == "fsdp" and (self.uses_lora or self.sync_ref_model):
            raise ConfigError("--dist fsdp with LoRA or --sync-ref-model is not supported yet; use --dist ddp "
                              "(a LoRA policy is small: every rank can hold it)")
        if self.sync_ref_model:
            if not 0.0 < self.ref_model_mixup_alpha <= 1.0:
                raise ConfigError(f"ref_model_mixup_alpha must be in (0, 1], got {self.ref_model_mixup_alpha}")
            if self.ref_model_sync_steps < 1:
                raise ConfigError(f"ref_model_sync_steps must be >= 1, got {self.ref_model_sync_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def reference_batch_size(self) -> int:
        """Pairs per batch of the reference pass: --precompute-ref-batch-size, else the eval batch size (TRL's)."""
        return self.precompute_ref_batch_size or self.per_device_eval_batch_size


@dataclass(frozen=True)
class MemoryBudget:
    """--activation-memory-budget read: exactly one of `bytes` / `fraction` is set, or neither (auto)."""
    text: str
    bytes: Optional[int] = None
    fraction: Optional[float] = None


UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}


def memory_budget(value: Any) -> Optional[MemoryBudget]:
    """'2GB' / '1500MB' / '8GiB' (bytes), '0.5' (a fraction in [0, 1] of the activations kept without
    checkpointing, as torch._functorch's activation_memory_budget), 'auto'; None for None."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() == "auto":
        return MemoryBudget(text="auto")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", text.lower())
    if match and match.group(2) in UNITS:
        return MemoryBudget(text=text, bytes=int(float(match.group(1)) * UNITS[match.group(2)]))
    if match and not match.group(2) and float(match.group(1)) <= 1:
        return MemoryBudget(text=text, fraction=float(match.group(1)))
    raise ConfigError(f"activation_memory_budget must be a size (2GB, 1500MB, 8GiB), a fraction in [0, 1] of the "
                      f"activations without checkpointing (0.5) or auto, got {value!r}")


def choose(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        shown = " | ".join(str(c) for c in choices if c is not None)
        raise ConfigError(f"{name} must be one of {shown}, got {value!r}{suggest(str(value), map(str, choices))}")


def ratio_steps(value: float, total_steps: int) -> int:
    """HF Trainer's reading of a `*_steps` value: < 1 is that fraction of the run (rounded up), else a count."""
    if not value:
        return 0
    return max(1, math.ceil(value * total_steps)) if value < 1 else int(value)


def canonical_key(key: str) -> str:
    """Map a user-given key (dashes or underscores, TRL alias) to a TrainConfig field name, or raise.
    A TRL-only option (trl_options.py) maps to the `trl_only` field."""
    k = key.strip().lstrip("-").replace("-", "_")
    k = ALIASES.get(k, k)
    names = {f.name for f in fields(TrainConfig) if f.metadata.get("flag", True)}
    if k in names:
        return k
    if foreign_kind(k) is not None:
        return "trl_only"
    raise ConfigError(f"unknown option {key!r}{suggest(k, names | all_names())}")


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type with a clear error."""
    return coerce_value(name, get_type_hints(TrainConfig)[name], value)


def load_config(config_file: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Build a validated TrainConfig from an optional YAML file and a dict of overrides (CLI flags)."""
    raw: dict[str, Any] = {}
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
        apply_env(raw.pop("env", None), config_file)
    values: dict[str, Any] = {}
    given: set[str] = set()
    for source, items in ((config_file, raw), (None, overrides or {})):
        for k, v in items.items():
            if k == "trl_only":  # a saved config.yaml read back (tilt explain, resume checks)
                values.setdefault("trl_only", {}).update(v or {})
                continue
            try:
                name = canonical_key(str(k))
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}" if source else str(e)) from None
            if name == "trl_only":
                values.setdefault("trl_only", {})[normalise(str(k))] = v
            else:
                values[name] = coerce(name, v)
                given.add(name)
    values["trl_only"] = apply_trl_only(values.get("trl_only", {}), values)
    for name, value in accelerate_values(values.get("accelerate_config"), dict(os.environ)).items():
        values.setdefault(name, value)  # an option given explicitly wins over the accelerate config
    check_given(given, values)
    return TrainConfig(**values).validate()


def check_given(given: set[str], values: dict[str, Any]) -> None:
    """Combinations only the set of options given can tell apart from the defaults."""
    if not {"bf16", "fp16"} & given and not (values.get("bf16") or values.get("fp16")):
        values["trl_only"]["replaced:bf16"] = ("bf16 is off (TRL 1.16 turns it on by default): fp32 compute, "
                                               "which is exact and, on CPUs without bf16 instructions, ~70x faster; "
                                               "--bf16 for TRL's default")
    if {"torch_compile_backend", "torch_compile_mode"} & given and "torch_compile" not in given:
        values["torch_compile"] = True  # transformers' TrainingArguments: a backend or mode implies torch_compile
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    lora = sorted(n for n in given if n.startswith("lora_") and n != "lora_adapter" and values[n] != defaults[n])
    if lora and not values.get("use_peft") and not values.get("lora_adapter"):
        raise ConfigError(f"--{lora[0]} without --use_peft: TRL ignores the LoRA options then and trains the full "
                          "model; add --use_peft to train an adapter (or drop the --lora-* options)")
    if values.get("sync_ref_model") and values.get("precompute_ref_log_probs") and \
            "precompute_ref_log_probs" in given:
        raise ConfigError("--sync-ref-model updates the reference during training, so its log-probs cannot be "
                          "precomputed: drop --precompute-ref-log-probs")
