"""`tilt iterate`: iterative on-policy DPO, rounds of sample -> score -> pair -> DPO (tiltlm/iterate/).

    tilt iterate --model ./sft --prompts prompts.jsonl --scorer fn:my_rewards:score --rounds 3 \
        --output-dir runs/iter --beta 0.1 --learning-rate 5e-7 --num-train-epochs 1
    tilt iterate ... --resume auto        # after a crash: finished rounds are skipped, the rest resumes bitwise

Every `tilt train` flag applies to each round's DPO run (`--model` is the initial policy, `--output-dir` the iterate
run folder); the flags below choose how each round samples, scores and pairs.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..config import TrainConfig, load_config
from ..errors import ConfigError
from ..iterate import IterateOptions, run_iterate
from ..iterate.options import PAIRINGS, REFERENCES
from .train_flags import overrides_from_args


def add_cli(subparsers) -> None:
    train = subparsers.choices.get("train")  # every `tilt train` flag, shared (cli.py adds `train` first)
    p = subparsers.add_parser("iterate", parents=[train] if train is not None else [], conflict_handler="resolve",
                              help="iterative on-policy DPO: rounds of sample -> score -> pair -> DPO, replayable",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("iterate")
    g.add_argument("--prompts", required=True, help="prompts: .jsonl ({'prompt': text or messages}), .json, text")
    g.add_argument("--eval-prompts", default=None, help="held-out prompts for the per-round curves "
                                                         "(default: --eval-prompt-split of --prompts)")
    g.add_argument("--eval-prompt-split", type=float, default=0.1)
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--prompts-per-round", type=int, default=0, help="0 = every prompt each round")
    g.add_argument("--num-generations", type=int, default=4, help="completions per prompt per round")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--generation-batch-size", type=int, default=32)
    g.add_argument("--eval-generations", type=int, default=2)
    g.add_argument("--no-chat-template", dest="use_chat_template", action="store_false")
    g.add_argument("--scorer", default=None, help="fn:MODULE:FUNCTION | rm:MODEL (a reward model) | judge "
                                                  "(the policy judges itself) | judge:MODEL")
    g.add_argument("--reward-fn", default=None, help="MODULE:FUNCTION, the same as --scorer fn:MODULE:FUNCTION")
    g.add_argument("--judge-template", default=None, help="a text file with {prompt} and {completion} "
                                                          "(default: tiltlm/iterate/judge_template.txt)")
    g.add_argument("--judge-labels", nargs="+", default=None, help="the judge's score labels (default 1 2 3 4 5)")
    g.add_argument("--pairing", choices=PAIRINGS, default="best_worst")
    g.add_argument("--reward-margin", type=float, default=0.0)
    g.add_argument("--ref", choices=REFERENCES, default="previous",
                   help="round k's reference: round k-1's model (default) or the initial model")
    p.set_defaults(func=run_iterate_cli)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The training options of every round: the `tilt train` flags given (TRL's spellings and TRL-only ones too)."""
    return load_config(getattr(args, "config", None), overrides_from_args(args))


def run_iterate_cli(args: argparse.Namespace) -> int:
    if args.scorer and args.reward_fn:
        raise ConfigError("give one scorer: --scorer or --reward-fn")
    if (getattr(args, "nproc", None) or 1) > 1:
        raise ConfigError("tilt iterate runs in one process (it samples, scores and trains in turn): drop --nproc")
    if getattr(args, "data", None):
        raise ConfigError("tilt iterate samples its own pairs: give --prompts, not --data")
    names = {f.name for f in dataclasses.fields(IterateOptions)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["scorer"] = args.scorer or (f"fn:{args.reward_fn}" if args.reward_fn else None)
    opts = IterateOptions(**values).validate()
    result = run_iterate(_train_config(args), opts)
    final = result.final
    keys = ("heldout/score_mean", "heldout/win_rate", "heldout/kl_to_initial")
    print(f"final policy: {result.model_dir}  " + "  ".join(f"{k}={final[k]:.4f}" for k in keys if k in final))
    return 0
