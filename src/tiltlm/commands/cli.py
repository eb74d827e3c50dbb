"""`tilt`: the command line. `tilt train` flags are generated from TrainConfig, so the two never drift apart.

User mistakes (bad flags, bad data, missing files) end with one clear `error:` line and exit code 2 -- never a
traceback. Set TILTLM_DEBUG=1 to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Optional, get_args, get_origin, get_type_hints

from .. import demo
from ..config import ALIASES, TrainConfig, load_config
from ..core.logps import score_pairs
from ..data import prepare_dataset
from ..errors import ConfigError, DataError, TrainingError, first_line
from ..model.loading import fingerprint, load_model, load_tokenizer
from ..model.reference import CachedReference
from ..parallel import comm
from ..training.api import train
from ..training.setup import data_options
from . import data, doctor, evaluate, explain, iterate, landscape, report
from .data import TRAIN_OPTIONS as DATA_LAYOUT_OPTIONS

# modules that register their own subcommands with add_cli(subparsers)
SUBCOMMAND_MODULES = (data, explain, landscape, doctor, report, demo, evaluate, iterate)


def _flag_names(name: str) -> list[str]:
    names = {f"--{name.replace('_', '-')}", f"--{name}"}
    names |= {f"--{a}" for a, target in ALIASES.items() if target == name}
    names |= {f"--{a.replace('_', '-')}" for a, target in ALIASES.items() if target == name}
    return sorted(names, key=lambda s: (len(s), s))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Values stay strings here; config.coerce() types and checks them."""
    parser.add_argument("--config", help="YAML file of options (flags given here override it)")
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        typ = hints[f.name]
        if get_origin(typ) is not None and type(None) in get_args(typ):
            typ = next(a for a in get_args(typ) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"(default: {default})"
        if typ is bool:  # --flag, --no-flag, or TRL-style --flag True/False
            parser.add_argument(*_flag_names(f.name), dest=f.name, nargs="?", const="true", default=None,
                                metavar="BOOL", help=help_text)
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_const",
                                const="false", help=argparse.SUPPRESS)
        elif get_origin(typ) in (list, dict):  # several values (dict: key=value items)
            parser.add_argument(*_flag_names(f.name), dest=f.name, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(*_flag_names(f.name), dest=f.name, default=None, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            if isinstance(value, list) and len(value) == 1:
                value = value[0]  # "--loss-type sigmoid,sft" and "--loss-type sigmoid sft" both work
            overrides[f.name] = value
    return load_config(args.config, overrides)


def launch(argv: list[str], nproc: int) -> int:
    """`tilt train --nproc N ...`: re-run this command under torchrun with N processes on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tiltlm.cli", *argv]
    return subprocess.call(cmd)


def strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if (args.nproc or 1) > 1 and "WORLD_SIZE" not in os.environ:  # --nproc N: re-run under torchrun
        return launch(strip_nproc(getattr(args, "argv", None) or sys.argv[1:]), args.nproc)
    try:
        metrics = train(cfg, command=shlex.join(["tilt", *(getattr(args, "argv", None) or sys.argv[1:])])).metrics
    except RuntimeError as e:
        if not comm.is_collective_failure(e):
            raise
        raise TrainingError(f"rank {comm.world().rank}: another process of this run died or stopped answering "
                            f"({first_line(e)}); the run stops here: relaunch the same command with --resume auto"
                            ) from None
    if not comm.world().is_main or metrics.get("already_finished"):
        return 0
    keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
            "kl_proxy", "eval/loss", "eval/rewards/accuracies", "eval/rewards/margins")
    print("final: " + "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), float)))
    return 130 if metrics.get("interrupted") else 0


def run_precompute_ref(args: argparse.Namespace) -> int:
    """Write the reference log-probs of every pair of a dataset to a readable table (Parquet or JSONL)."""
    cfg = load_config(args.config, {k: v for k, v in vars(args).items()
                                    if k in {f.name for f in dataclasses.fields(TrainConfig)} and v is not None})
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                               chat_template=cfg.chat_template, chat_template_kwargs=cfg.chat_template_kwargs)
    _, pairs, stats = prepare_dataset(cfg.data, tokenizer, max_length=cfg.max_length, skip_invalid=cfg.skip_invalid,
                                      split=cfg.dataset_train_split, **data_options(cfg))
    model = load_model(cfg.model, dtype=cfg.dtype, device=comm.resolve_device(cfg.device),
                       trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    logps = score_pairs(model, pairs, batch_size=cfg.per_device_eval_batch_size, pad_token_id=tokenizer.pad_token_id,
                        chunk_size=cfg.logps_chunk_size)
    table = CachedReference([p.index for p in pairs], logps)
    fp = fingerprint(cfg.model, cfg.revision)
    path = table.save(args.output, metadata={"model": cfg.model, "model_fingerprint": fp,
                                             "data": cfg.data, "max_length": cfg.max_length})
    print(f"wrote reference log-probs of {len(pairs)} pairs ({stats.get('truncated', 0)} truncated) to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilt", description="Exact, fast, debuggable DPO for Hugging Face LMs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("train", help="train a causal LM on preference pairs (DPO and family)")
    add_train_arguments(p)
    p.add_argument("--nproc", type=int, default=None,
                   help="processes on this node (one per GPU): runs this command under torchrun; see docs/distributed.md")
    p.set_defaults(func=run_train)
    p = sub.add_parser("precompute-ref", help="write reference log-probs of a dataset to a Parquet/JSONL table")
    p.add_argument("--config")
    for name in ("model", "data", "max_length", "max_prompt_length", "dtype", "device", "per_device_eval_batch_size",
                 "prompt_delimiter", "skip_invalid", "trust_remote_code", *DATA_LAYOUT_OPTIONS):
        p.add_argument(*_flag_names(name), dest=name, default=None,
                       nargs="+" if name == "chat_template_kwargs" else None)
    p.add_argument("--output", required=True, help="output file (.parquet or .jsonl)")
    p.set_defaults(func=run_precompute_ref)
    for module in SUBCOMMAND_MODULES:
        module.add_cli(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for `tilt train --nproc N` re-launch
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, TrainingError, OSError) as e:  # OSError: a file that cannot be read or written
        if os.environ.get("TILTLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
