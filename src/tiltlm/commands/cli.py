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
from typing import Optional, get_type_hints

from .. import demo
from ..config import TrainConfig, load_config
from ..data import prepare_dataset
from ..errors import ConfigError, DataError, TrainingError, first_line
from ..model.loading import fingerprint, load_model, load_tokenizer
from ..model.precision import Precision
from ..model.reference import CachedReference
from ..model.path_verdict import choose_path_cached
from ..parallel import comm
from ..training.api import train
from ..training.setup import data_options, requested_path
from . import data, doctor, evaluate, explain, iterate, landscape, report
from .data import TRAIN_OPTIONS as DATA_LAYOUT_OPTIONS
from .train_flags import add_train_arguments, flag_names, overrides_from_args

# modules that register their own subcommands with add_cli(subparsers)
SUBCOMMAND_MODULES = (data, explain, landscape, doctor, report, demo, evaluate, iterate)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return load_config(args.config, overrides_from_args(args))


def launch(argv: list[str], nproc: int) -> int:
    """`tilt train --nproc N ...`: re-run this command under torchrun with N processes on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tiltlm.cli", *argv]
    return subprocess.call(cmd)


NPROC_FLAGS = ("--nproc", "--num_processes", "--num-processes")


def strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in NPROC_FLAGS:
            skip = True
            continue
        if a.startswith(tuple(f"{f}=" for f in NPROC_FLAGS)):
            continue
        out.append(a)
    return out


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if (cfg.nproc or 1) > 1 and "WORLD_SIZE" not in os.environ:  # --nproc N: re-run under torchrun
        return launch(strip_nproc(getattr(args, "argv", None) or sys.argv[1:]), cfg.nproc)
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
    device = comm.resolve_device(cfg.device)
    model = load_model(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code,
                       revision=cfg.revision)
    # the same scoring path and start-up check as `tilt train`: the table equals the run's own reference pass
    fp = fingerprint(cfg.model, cfg.revision)
    scoring = choose_path_cached(model, pairs, requested_path(cfg, Precision.of(cfg.dtype, cfg.mixed_precision,
                                                                                device)),
                                 model_fingerprint=fp, pad_token_id=tokenizer.pad_token_id,
                                 cache_dir=cfg.ref_cache_dir)
    logps = scoring.score(model, pairs, batch_size=cfg.reference_batch_size,
                          pad_token_id=tokenizer.pad_token_id)
    table = CachedReference([p.index for p in pairs], logps)
    path = table.save(args.output, metadata={"model": cfg.model, "model_fingerprint": fp, "data": cfg.data,
                                             "max_length": cfg.max_length, "scoring_path": scoring.tag})
    print(f"wrote reference log-probs of {len(pairs)} pairs ({stats.get('truncated', 0)} truncated) to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilt", description="Exact, fast, debuggable DPO for Hugging Face LMs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("train", help="train a causal LM on preference pairs (DPO and family)",
                       usage="tilt train [--config FILE] [OPTION VALUE ...]",
                       description="Train a causal LM on preference pairs. Every option of TRL 1.16's `trl dpo` "
                                   "(DPOConfig, ModelConfig, ScriptArguments, dataset mixtures) is accepted with "
                                   "TRL's meaning, or says in one line what runs instead.")
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("precompute-ref", help="write reference log-probs of a dataset to a Parquet/JSONL table")
    p.add_argument("--config")
    for name in ("model", "data", "max_length", "max_prompt_length", "dtype", "device", "per_device_eval_batch_size",
                 "precompute_ref_batch_size", "prompt_delimiter", "skip_invalid", "trust_remote_code", "bf16", "fp16",
                 "prefix_sharing", "packing", "chunked_logps", "logps_chunk_size", "max_tokens_per_batch",
                 *DATA_LAYOUT_OPTIONS):
        if get_type_hints(TrainConfig)[name] in (bool, Optional[bool]):  # --flag, --no-flag, --flag true/false
            p.add_argument(*flag_names(name), dest=name, nargs="?", const="true", default=None, metavar="BOOL")
            p.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_const", const="false",
                           help=argparse.SUPPRESS)
            continue
        p.add_argument(*flag_names(name), dest=name, default=None,
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
