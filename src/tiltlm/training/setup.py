"""Everything a run needs before its first step: the run folder, the pairs, the policy, the reference.

Read top to bottom, `setup` is the recipe: folder -> tokenizer and pairs -> policy -> the scoring path (the start-up
check decides, once, how every model of the run turns pairs into log-probs: model/scoring.py) -> LoRA, gradient
checkpointing -> config.yaml as it will actually run -> reference (cached, live, or adapter-off) -> the policy
handed to the parallel strategy. The loop (loop.py) gets a `Setup` and never learns how any of it
was made.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig, memory_budget
from ..core.batching import ModelBatch
from ..core.losses import needs_reference
from ..data import Columns, available_splits, prepare_dataset
from ..data.memory import InMemoryRows
from ..errors import ConfigError
from ..model import lora
from ..model.checkpointing import checkpoint_within_budget, largest_micro_batch
from ..model.compile import compile_model
from ..model.in_memory import adopt, frozen_copy, state_fingerprint
from ..model.loading import (checkpoint_dtype, fingerprint, load_model, load_tokenizer, with_chat_template,
                             with_pad_token)
from ..model.reference import LiveReference, cached_reference
from ..model.path_verdict import choose_path_cached
from ..model.scoring import ScoringPath, longest_first
from ..parallel import comm
from ..parallel.strategy import Replicated
from ..trl_options import notes as trl_notes
from ..rundir import DATA_STATS, REFERENCE, SKIPPED, SKIPPED_EVAL, RunDir
from ..types import PairLogps
from .precision import Precision, half_precision_warning

Reference = Callable[[ModelBatch], PairLogps]


@dataclass
class Inputs:
    """What a Python caller hands over instead of paths (`tiltlm.train(model=..., train_dataset=...)`), and where
    each metrics record goes besides the run folder. Empty for the command line."""
    model: Optional[torch.nn.Module] = None  # trained in place; cfg.model is then only its name
    tokenizer: object = None
    train_data: Optional[InMemoryRows] = None
    eval_data: Optional[InMemoryRows] = None
    callbacks: Sequence[Callable[[dict], None]] = ()  # each gets every metrics.jsonl record (rank 0)
    command: Optional[str] = None  # how the run was launched, for the model card


@dataclass
class Setup:
    cfg: TrainConfig
    run: RunDir
    strategy: Replicated  # or its subclass Sharded: how the processes hold the model
    device: torch.device
    precision: Precision  # weights' dtype and the autocast dtype every forward (policy, reference, eval) runs in
    path: ScoringPath  # how every model of the run scores pairs (layout, LM head, precision): chosen once
    tokenizer: object
    model: torch.nn.Module  # the policy as optimizers and state dicts see it (peft-wrapped under LoRA)
    policy: Callable[[ModelBatch], torch.Tensor]  # batch -> per-token log-probs (the sharded root under FSDP)
    train_pairs: list
    eval_pairs: list
    examples: dict  # index -> PreferenceExample (for reports)
    reference: Optional[Reference]  # None for reference-free losses
    eval_reference: Optional[Reference]
    inputs: Inputs = field(default_factory=Inputs)


def setup(cfg: TrainConfig, strategy: Replicated, run: RunDir, log: Callable = print,
          inputs: Optional[Inputs] = None) -> Setup:
    inputs = inputs or Inputs()
    for line in trl_notes(cfg.trl_only):  # TRL options and defaults that run differently here: one line each
        log(f"note: {line}")
    device = comm.device(cfg.device)  # cuda:LOCAL_RANK under torchrun on GPUs
    torch.manual_seed(cfg.seed)
    if inputs.tokenizer is not None:
        tokenizer = with_chat_template(with_pad_token(inputs.tokenizer, "tokenizer="), cfg.chat_template,
                                       cfg.chat_template_kwargs, "tokenizer=")
    else:
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                                   chat_template=cfg.chat_template, chat_template_kwargs=cfg.chat_template_kwargs)
    train_pairs, eval_pairs, examples = load_pairs(cfg, tokenizer, run, log, inputs)

    if cfg.attn_implementation == "flex_attention" and device.type != "cuda":
        raise ConfigError("--attn-implementation flex_attention needs CUDA (FlexAttention has no CPU backward in "
                          "torch 2.13); on CPU use auto or sdpa")
    if inputs.model is not None:
        model = adopt(inputs.model, device)
    else:
        if cfg.dtype == "auto":  # TRL's dtype auto: the checkpoint's own dtype
            cfg.dtype = checkpoint_dtype(cfg.model, cfg.revision)
            log(f"dtype auto: {cfg.dtype} (the checkpoint's config.json)")
        model = load_model(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code,
                           attn_implementation=cfg.attn_implementation, revision=cfg.revision)
    # an in-memory model's cache key hashes its weights: before LoRA injects its layers into them
    cached = cfg.precompute_ref_log_probs and needs_reference(cfg.loss_type) and cfg.ref_model in (None, cfg.model)
    in_memory_fp = state_fingerprint(model) if inputs.model is not None and cached else None
    check_model_fits_pairs(model, [*train_pairs, *eval_pairs], cfg, log)
    precision = Precision.of(cfg.dtype, cfg.mixed_precision, device)
    model_fp = fingerprint(cfg.model, cfg.revision) if inputs.model is None else None
    path = choose_path_cached(model, train_pairs, requested_path(cfg, precision), model_fingerprint=model_fp,
                              pad_token_id=tokenizer.pad_token_id, log=log, cache_dir=cfg.ref_cache_dir)
    record_path(cfg, path)
    if cfg.uses_lora:
        model = lora.apply(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules, modules_to_save=cfg.lora_modules_to_save,
                           use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                           disable_dropout=cfg.trl_only.get("disable_dropout", True), adapter=cfg.lora_adapter,
                           reference_adapter=cfg.sync_ref_model, log=log)
    enable_gradient_checkpointing(model, cfg, path, train_pairs, tokenizer.pad_token_id, device, log)
    cfg.torch_compile = compile_policy(cfg, model, path, train_pairs, tokenizer.pad_token_id, log)
    run.write_config(cfg.to_dict())  # after the start-up decisions: the folder says what actually runs

    if (slow := half_precision_warning(precision)) is not None:
        log(f"warning: {slow}")
    reference = eval_reference = None
    if needs_reference(cfg.loss_type):
        reference, eval_reference, path = build_reference(cfg, strategy, model, path, train_pairs, eval_pairs,
                                                          tokenizer, device, run, log,
                                                          in_memory=inputs.model is not None,
                                                          in_memory_fp=in_memory_fp)
    policy = strategy.wrap(model, path.token_logps)  # after the (unsharded, distributed) reference pass
    log(f"{strategy.describe()}; {precision.describe()}; log-probs: {path.layout}")
    return Setup(cfg, run, strategy, device, precision, path, tokenizer, model, policy, train_pairs, eval_pairs,
                 examples, reference, eval_reference, inputs)


def record_path(cfg: TrainConfig, path: ScoringPath) -> None:
    """The fast paths the check kept, written back into the options (config.yaml then says what runs)."""
    cfg.prefix_sharing, cfg.packing, cfg.chunked_logps = path.prefix_sharing, path.packing, path.chunked


def requested_path(cfg: TrainConfig, precision: Precision) -> ScoringPath:
    """The scoring path the options ask for (before the start-up check)."""
    packing = cfg.packing if cfg.packing is not None else default_packing(precision.device_type)
    return ScoringPath(prefix_sharing=cfg.prefix_sharing, packing=packing, chunked=cfg.chunked_logps,
                       chunk_size=cfg.logps_chunk_size, max_tokens_per_batch=cfg.max_tokens_per_batch,
                       precision=precision)


def default_packing(device_type: str) -> bool:
    """--packing unset: on on CPU, where packed rows measured 25% faster per step and 13% lighter than padded ones
    (docs/benchmarks.md, "fp32 levers"); off on CUDA, whose packed rows run FlexAttention, until a GPU measures it."""
    return device_type == "cpu"


def open_run_dir(cfg: TrainConfig, inputs: Optional[Inputs] = None) -> RunDir:
    """Rank 0 validates, locks and creates the folder while the others wait; they get a read-only view of it.
    Use it as a context manager: the lock is held until the run returns or fails."""
    inputs = inputs or Inputs()
    if not (cfg.model or inputs.model is not None) or not (cfg.data or inputs.train_data is not None) \
            or not cfg.output_dir:
        raise ConfigError("--model, --data and --output-dir are required (in Python: model=, train_dataset=, "
                          "output_dir=)")
    world = comm.world()
    if world.is_main:
        try:
            local = [x for x in (cfg.data, cfg.eval_data, cfg.model) if x and Path(x).expanduser().exists()]
            return RunDir.create(cfg.output_dir, inputs=local,
                                 resume=bool(cfg.resume), overwrite=cfg.overwrite_output_dir)
        finally:
            comm.barrier()
    comm.barrier()
    out = Path(cfg.output_dir).expanduser().resolve()
    if not out.is_dir():
        raise ConfigError(f"rank 0 could not prepare {cfg.output_dir}")
    return RunDir(out, writable=False)


def load_pairs(cfg: TrainConfig, tokenizer, run: RunDir, log: Callable, inputs: Optional[Inputs] = None
               ) -> tuple[list, list, dict]:
    """Training and eval pairs (eval from --eval-data / eval_dataset=, else a seeded --eval-split share of the
    training data, else the --dataset-test-split split of --data when it has one), all validated and tokenised
    before any training; data_stats.json written. Returns (train, eval, examples by index)."""
    kw = dict(data_options(cfg), max_length=cfg.max_length, skip_invalid=cfg.skip_invalid, log=log)
    skipped = lambda name: str(run.file(name)) if run.writable else None  # noqa: E731
    inputs = inputs or Inputs()
    data = inputs.train_data if inputs.train_data is not None else cfg.data  # in memory, or a path / hub name
    examples, pairs, stats = prepare_dataset(data, tokenizer, split=cfg.dataset_train_split,
                                             skipped_path=skipped(SKIPPED), **kw)
    if isinstance(data, InMemoryRows):
        stats["source"] = data.describe()
    eval_examples, eval_pairs = [], []
    eval_data = inputs.eval_data if inputs.eval_data is not None else eval_source(cfg, log)
    evaluates = cfg.evaluates or (cfg.eval_strategy is None and inputs.eval_data is not None)  # eval_dataset=
    if not evaluates and (eval_data is not None or cfg.eval_split > 0):
        log(f"note: --eval-strategy {cfg.eval_strategy}: the eval pairs are not evaluated")
        eval_data = None
    if eval_data is not None:
        eval_examples, eval_pairs, eval_stats = prepare_dataset(eval_data, tokenizer,
                                                                split=cfg.dataset_test_split or "test",
                                                                skipped_path=skipped(SKIPPED_EVAL), **kw)
        stats["eval"] = {k: eval_stats[k] for k in ("rows", "valid", "skipped", "truncated") if k in eval_stats}
        # eval pairs get their own index range so they never collide with training pairs in caches
        offset = max((p.index for p in pairs), default=-1) + 1
        for p in eval_pairs:
            p.index += offset
        eval_examples = [type(e)(**{**e.__dict__, "index": e.index + offset}) for e in eval_examples]
    elif cfg.eval_split > 0 and evaluates:
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(pairs), generator=g).tolist()
        held = set(perm[:max(1, int(len(pairs) * cfg.eval_split))])
        eval_pairs = [p for k, p in enumerate(pairs) if k in held]
        pairs = [p for k, p in enumerate(pairs) if k not in held]
    if not pairs:
        raise ConfigError(f"no training pairs left in {data}")
    run.write_json(DATA_STATS, stats)
    log(f"data: {len(pairs)} training pairs, {len(eval_pairs)} eval pairs; {stats.get('skipped', 0)} skipped, "
        f"{stats.get('truncated', 0)} truncated to max_length={cfg.max_length}")
    by_index = {e.index: e for e in [*examples, *eval_examples]}
    return pairs, eval_pairs, by_index


def data_options(cfg: TrainConfig) -> dict:
    """The options of `prepare_dataset` / `check_file` that come from the config (besides the split)."""
    return dict(max_prompt_length=cfg.max_prompt_length, prompt_delimiter=cfg.prompt_delimiter,
                columns=Columns(cfg.prompt_column, cfg.chosen_column, cfg.rejected_column, cfg.system_column),
                drop_duplicates=cfg.drop_duplicates, chat_kwargs=cfg.chat_template_kwargs)


def eval_source(cfg: TrainConfig, log: Callable) -> Optional[str]:
    """--eval-data; or, with neither it nor --eval-split and under --eval-strategy steps/epoch, --data itself when
    it has a --dataset-test-split split (a DatasetDict, a folder of split files, a hub dataset), as TRL's scripts
    do."""
    if cfg.eval_data or cfg.eval_split > 0 or not cfg.data or cfg.eval_strategy in (None, "no"):
        return cfg.eval_data
    test = cfg.dataset_test_split
    if not test or test == cfg.dataset_train_split or test not in (available_splits(cfg.data) or []):
        return None
    log(f"eval: the {test!r} split of {cfg.data} (--dataset-test-split; --dataset-test-split none turns this off)")
    return cfg.data


def check_model_fits_pairs(model: torch.nn.Module, pairs: list, cfg: TrainConfig, log: Callable) -> None:
    """The tokenizer's ids must exist in the model's embedding, and every sequence must fit its positions: both
    are user mistakes (a tokenizer from another model, a too long --max-length) that would otherwise surface as an
    index error deep inside the forward pass."""
    rows = model.get_input_embeddings().num_embeddings
    top = max((max(p.prompt_ids + p.chosen_ids + p.rejected_ids) for p in pairs), default=-1)
    if top >= rows:
        raise ConfigError(f"the tokenizer of {cfg.model or 'the model'} produces token id {top}, but the model's "
                          f"embedding has {rows} rows: the tokenizer does not belong to this model")
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max((max(p.chosen_len, p.rejected_len) for p in pairs), default=0)
    if isinstance(context, int) and longest > context:
        raise ConfigError(f"a pair is {longest} tokens long, but the model has {context} positions "
                          f"(max_position_embeddings): use --max-length {context} or less")
    if isinstance(context, int) and cfg.max_length > context:
        log(f"note: --max-length {cfg.max_length} is longer than the model's {context} positions; every pair fits")


def enable_gradient_checkpointing(model: torch.nn.Module, cfg: TrainConfig, path: ScoringPath, pairs: list,
                                  pad_token_id: int, device: torch.device, log: Callable) -> None:
    """Recompute blocks in backward (exact: the same forward, run again): every one, or under
    --activation-memory-budget the fewest leading ones whose activations at the largest micro-batch fit it."""
    budget = memory_budget(cfg.activation_memory_budget)
    if not cfg.gradient_checkpointing:
        if budget is not None:
            log("note: --activation-memory-budget is for gradient checkpointing, which is off: no layer is "
                "checkpointed")
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        log(f"note: {type(model).__name__} does not support gradient checkpointing; training without it")
        return
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if budget is not None:
        # the longest pairs one process may get in one step: the largest micro-batch any step can build
        longest = longest_first(pairs, path.prefix_sharing)[:cfg.per_device_train_batch_size
                                                             * cfg.gradient_accumulation_steps]
        batch = largest_micro_batch(path.micro_batches(longest, batch_size=cfg.per_device_train_batch_size,
                                                       pad_token_id=pad_token_id))
        live_copy = needs_reference(cfg.loss_type) and not cfg.precompute_ref_log_probs and not (
            cfg.uses_lora and cfg.ref_model in (None, cfg.model))  # a second model, loaded after this
        reserved = sum(p.numel() * p.element_size() for p in model.parameters()) if live_copy else 0
        checkpoint_within_budget(model, batch.to(device), functools.partial(path.token_logps, model), budget, log,
                                 reserved=reserved)


def compile_policy(cfg: TrainConfig, model: torch.nn.Module, path: ScoringPath, pairs: list, pad_token_id: int,
                   log: Callable) -> bool:
    """--torch-compile: whether the policy runs compiled (after the eager start-up check, LoRA and checkpointing;
    before the reference pass, which then runs compiled too)."""
    if not cfg.torch_compile:
        return False
    if cfg.dist == "fsdp" and comm.world().enabled:
        log("info: torch_compile off: not combined with --dist fsdp yet (FSDP2 swaps each block's parameters "
            "around its forward); training eager")
        return False
    return compile_model(model, path, pairs, backend=cfg.torch_compile_backend, mode=cfg.torch_compile_mode,
                         pad_token_id=pad_token_id, log=log)


def build_reference(cfg: TrainConfig, strategy: Replicated, policy_model, path: ScoringPath, train_pairs,
                    eval_pairs, tokenizer, device, run: RunDir, log: Callable, *, in_memory: bool = False,
                    in_memory_fp: Optional[str] = None) -> tuple[Reference, Optional[Reference], ScoringPath]:
    """(training reference, eval reference, the scoring path): cached log-probs, or a live model -- the policy with
    its adapter off under LoRA, else a frozen copy of --ref-model / --model (or of the in-memory policy before
    training), held (and sharded) like the policy. Either way it is scored through the run's one scoring path, so
    at step 0 policy = reference holds in bf16 too. A separate --ref-model is checked as the policy was: what is not
    exact for it is turned off for the whole run (the path returned). `in_memory_fp`: the cache key part of an
    in-memory policy."""
    same_model = cfg.ref_model is None or cfg.ref_model == cfg.model
    revision = cfg.revision if same_model else None  # --revision is --model's; another hub repo: its default
    ref_model = None
    if not same_model:
        ref_model = load_model(cfg.ref_model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code,
                               attn_implementation=cfg.attn_implementation)
        checked = choose_path_cached(ref_model, train_pairs, path, model_fingerprint=fingerprint(cfg.ref_model),
                                     pad_token_id=tokenizer.pad_token_id, log=log, cache_dir=cfg.ref_cache_dir)
        if checked != path:
            path = checked
            record_path(cfg, path)
            run.write_config(cfg.to_dict())
    if cfg.precompute_ref_log_probs:
        # at step 0 the policy IS the reference (a fresh LoRA adapter is zero; a continued one equals its frozen
        # copy): it scores the pairs before training, and no second model ever exists
        ref_model = ref_model or policy_model
        fp = lora.fingerprint(in_memory_fp or fingerprint(cfg.ref_model or cfg.model, revision), cfg.lora_adapter)
        score = functools.partial(_score_with_progress, path, ref_model, cfg, tokenizer.pad_token_id)
        reference, cache, _ = cached_reference(score, fp, path.tag, train_pairs, cache_dir=cfg.ref_cache_dir,
                                               log=log)
        eval_reference = cached_reference(score, fp, path.tag, eval_pairs, cache_dir=cfg.ref_cache_dir,
                                          log=log)[0] if eval_pairs else None
        run.write_json(REFERENCE, {"cache": str(cache), "model_fingerprint": fp, "scoring_path": path.tag})
        return reference, eval_reference, path
    if cfg.uses_lora and same_model:  # the policy itself, switched to its reference weights for the call
        live = LiveReference(policy_model, functools.partial(path.token_logps, policy_model),
                             switch=lora.reference_weights)
    else:
        ref_model = ref_model or (frozen_copy(policy_model) if in_memory else load_model(
            cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation, revision=revision))
        live = LiveReference(ref_model, strategy.wrap(ref_model, path.token_logps))
    return live, live, path


def _score_with_progress(path: ScoringPath, model, cfg: TrainConfig, pad_token_id: int, pairs) -> PairLogps:
    show = cfg.progress and comm.world().is_main
    with tqdm(total=len(pairs), desc="reference log-probs", unit="pair", disable=not show, leave=False) as bar:
        return path.score(model, pairs, batch_size=cfg.reference_batch_size,
                          pad_token_id=pad_token_id, progress=bar.update)
