"""The Python API: `tiltlm.train(...)` for notebooks and scripts; `tilt train` is a thin caller of it.

    result = tiltlm.train(model=model, tokenizer=tokenizer, train_dataset=ds, output_dir="runs/nb",
                          beta=0.1, max_steps=50, callbacks=[plot])
    result.metrics["loss"], result.output_dir, result.model

`config` is a TrainConfig, a YAML file or None; keyword overrides are TrainConfig fields (TRL's names too), checked
like flags. model/tokenizer may be paths or loaded transformers (or peft) objects; the datasets may be paths, a
`datasets.Dataset`, a pandas DataFrame or a list of dicts, which go through the same formats and checks as file
rows (a bad row is named `train_dataset[i] [field]`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ..config import TrainConfig, canonical_key, coerce, load_config
from ..data.memory import InMemoryRows
from ..data.mixture import config_folder, mixture_rows
from ..errors import ConfigError
from ..model.in_memory import dtype_name
from ..model.loading import load_tokenizer
from .loop import run_training
from .setup import Inputs
from .trackers import check_installed

Callback = Callable[[dict], None]


@dataclass
class TrainResult:
    metrics: dict  # the final metrics: the last train record with the last eval (`eval/...`) merged in
    output_dir: Path  # the run folder: metrics.jsonl, the model and its README.md model card, ...
    model: Optional[torch.nn.Module]  # the trained policy in memory (None when a finished run was relaunched)
    tokenizer: Any
    config: TrainConfig  # as it ran (fast paths the start-up check turned off are off here)


def train(config: Union[TrainConfig, str, os.PathLike, None] = None, *, model: Any = None, tokenizer: Any = None,
          train_dataset: Any = None, eval_dataset: Any = None,
          callbacks: Union[Callback, list[Callback], None] = None, log: Callable = print,
          command: Optional[str] = None, **overrides) -> TrainResult:
    """Train; everything is written into output_dir, and the trained model is also returned in memory.

    `callbacks`: callables that get every metrics record (train and eval: the dicts written to metrics.jsonl), on
    rank 0. `command`: how the run was launched, for the model card (the CLI passes its command line)."""
    paths = {"model": model, "data": train_dataset, "eval_data": eval_dataset}
    overrides.update({k: os.fspath(v) for k, v in paths.items() if isinstance(v, (str, os.PathLike))})
    cfg = resolve_config(config, overrides)
    given = Inputs(callbacks=as_callbacks(callbacks), command=command)
    if model is not None and "model" not in overrides:
        given.model = model
        own = dtype_name(model)
        if "dtype" in {canonical_key(k) for k in overrides} and cfg.dtype != own:
            raise ConfigError(f"the model is {own} but dtype={cfg.dtype} was given: convert it first "
                              f"(model.to(torch.{cfg.dtype}))")
        cfg.dtype = own  # it trains in its own dtype; config.yaml and the reference cache key say which
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(os.fspath(tokenizer), trust_remote_code=cfg.trust_remote_code)
    given.tokenizer = tokenizer
    if given.model is not None and tokenizer is None and not cfg.model:
        raise ConfigError("an in-memory model= needs its tokenizer= too")
    if train_dataset is not None and "data" not in overrides:
        given.train_data = InMemoryRows(train_dataset, "train_dataset")
    elif cfg.datasets:  # TRL's dataset mixture (it wins over --data, as in TRL's script)
        if cfg.data:
            log(f"note: both `datasets` and --data are given: the mixture is used and {cfg.data} is not (as TRL)")
        given.train_data = mixture_rows(cfg.datasets)
    elif cfg.data and cfg.dataset_config:
        cfg.data = config_folder(cfg.data, cfg.dataset_config)
    if eval_dataset is not None and "eval_data" not in overrides:
        given.eval_data = InMemoryRows(eval_dataset, "eval_dataset")
    check_installed([n for n in cfg.report_to if n != "none"])  # before minutes of set-up, not after
    trained = run_training(cfg, log, given)
    return TrainResult(trained.metrics, Path(cfg.output_dir), trained.model, trained.tokenizer, cfg)


def resolve_config(config: Union[TrainConfig, str, os.PathLike, None], overrides: dict) -> TrainConfig:
    """A validated copy: the caller's TrainConfig is never changed (set-up may turn fast paths off in it)."""
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config) if config is not None else None, overrides)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, a YAML file or None, got {type(config).__name__}")
    values = {}
    for key, value in overrides.items():
        name = canonical_key(key)
        values[name] = coerce(name, value)
    return dataclasses.replace(config, **values).validate()


def as_callbacks(callbacks: Union[Callback, list[Callback], None]) -> list[Callback]:
    found = [] if callbacks is None else [callbacks] if callable(callbacks) else list(callbacks)
    for c in found:
        if not callable(c):
            raise ConfigError(f"callbacks must be callables that take a metrics record, got {type(c).__name__}")
    return found
