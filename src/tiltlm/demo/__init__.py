"""`tilt demo` and `tilt frontier` (`--iterate K`: iterative vs offline DPO): DPO on a synthetic controlled-sentiment task, from nothing, on a CPU.

The miniature of the controlled-sentiment experiment of Rafailov et al. (2023), Fig. 2: see docs/demo.md.
"""

from __future__ import annotations

import argparse

import torch
from transformers.utils import logging as hf_logging

from .frontier import run_frontier
from .iterative import run_iterative_frontier
from .pipeline import run_demo
from .report import summary_text

__all__ = ["add_cli", "run_demo_cli", "run_frontier_cli"]


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
    # the demo prints its own progress; hide the per-file load/save bars
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="SFT a tiny model on a synthetic sentiment task, train DPO, show the "
                                           "reward increase (a few minutes on CPU, nothing downloaded)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the shortened version used by the tests (< 2 min)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--loss-type", default="sigmoid")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="DPO optimizer steps")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tiny model is overhead-bound; 0 = torch default)")
    p.set_defaults(func=run_demo_cli)

    f = subparsers.add_parser("frontier", help="sweep beta and loss types on the demo task; plot reward vs KL")
    f.add_argument("--output-dir", default="runs/frontier")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--quick", action="store_true")
    f.add_argument("--betas", default="0.05,0.1,0.5", help="comma-separated")
    f.add_argument("--loss-types", default="sigmoid,ipo,hinge", help="comma-separated")
    f.add_argument("--learning-rate", type=float, default=None)
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--plot", default=None, help="also copy the PNG here (e.g. docs/frontier.png)")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--iterate", type=int, default=0, metavar="K",
                   help="instead: iterative DPO (K rounds of tilt iterate) vs one round of offline DPO on the same "
                        "prompts, for each --betas (docs/demo.md)")
    f.add_argument("--prompts-per-round", type=int, default=None, help="with --iterate (default: the demo's 256)")
    f.add_argument("--epochs", type=float, default=2.0, help="with --iterate: epochs over each round's pairs")
    f.set_defaults(func=run_frontier_cli)


def run_demo_cli(args: argparse.Namespace) -> int:
    _threads(args.threads)

    result = run_demo(args.output_dir, seed=args.seed, quick=args.quick, beta=args.beta, loss_type=args.loss_type,
                      learning_rate=args.learning_rate, steps=args.steps)
    print(summary_text(result, args.output_dir))
    return 0


def run_frontier_cli(args: argparse.Namespace) -> int:
    _threads(args.threads)

    betas = [float(x) for x in args.betas.split(",") if x.strip()]
    if args.iterate:
        out = args.output_dir if args.output_dir != "runs/frontier" else "runs/frontier-iterate"
        run_iterative_frontier(out, rounds=args.iterate, betas=betas, seed=args.seed, quick=args.quick,
                               prompts_per_round=args.prompts_per_round, epochs=args.epochs,
                               learning_rate=args.learning_rate, plot_copy=args.plot)
        return 0
    losses = [x.strip() for x in args.loss_types.split(",") if x.strip()]
    run_frontier(args.output_dir, betas=betas, loss_types=losses, seed=args.seed, quick=args.quick,
                 learning_rate=args.learning_rate, steps=args.steps, plot_copy=args.plot)
    return 0
