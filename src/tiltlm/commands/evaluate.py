"""`tilt eval` (held-out preference accuracy, reward margins, per-token log-prob changes) and `tilt generate`.

    tilt eval --model RUN_DIR --data heldout.jsonl [--ref BASE_MODEL] [--beta 0.1] [--output eval.json]
    tilt generate --model RUN_DIR --prompts prompts.jsonl --output samples.jsonl [--n 4] [--reward-fn mod:fn]

Accuracy counts a pair as correct when the chosen completion scores higher than the rejected one; an exact tie
counts one half (so a policy identical to its reference scores exactly 0.5, with every margin exactly 0).
With a reference the score is the DPO implicit reward beta * (log pi - log pi_ref); without one, the policy's
sequence log-prob (reported as `logp_accuracy`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..core.metrics import preference_accuracy
from ..data import prepare_dataset
from ..iterate.sampling import generate, load_reward_fn, read_prompts, render_prompt  # noqa: F401 (re-exported)
from ..model.loading import load_model, load_tokenizer
from ..model.scoring import ScoringPath, choose_path
from ..parallel.comm import resolve_device
from ..rundir import RunDir
from ..types import PairLogps


# ------------------------------------------------------------------------------------------------ eval
def _default_ref(model_path: str) -> Optional[str]:
    """A tiltlm run directory records its base model in config.yaml: use it as the reference by default."""
    data = RunDir(model_path, writable=False).read_config()  # {} when it is not a run folder
    ref = data.get("ref_model") or data.get("model")
    return str(ref) if ref and Path(str(ref).split("::")[0]).exists() else None


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


def _accuracy(margin: torch.Tensor) -> float:
    return _mean(preference_accuracy(margin))


def eval_metrics(policy: PairLogps, ref: Optional[PairLogps] = None, *, beta: float = 0.1) -> tuple[dict, dict]:
    """Metrics from policy (and optional reference) PairLogps. Returns (summary, per-pair tensors)."""
    pc, pr = policy.chosen.double(), policy.rejected.double()
    nc, nr = policy.chosen_tokens.double().clamp(min=1), policy.rejected_tokens.double().clamp(min=1)
    out: dict[str, Any] = {
        "pairs": int(pc.numel()),
        "logp_accuracy": _accuracy(pc - pr),
        "logps/chosen": _mean(pc), "logps/rejected": _mean(pr),
        "logps_per_token/chosen": float(pc.sum() / nc.sum()), "logps_per_token/rejected": float(pr.sum() / nr.sum()),
        "tokens/chosen": _mean(nc), "tokens/rejected": _mean(nr),
    }
    per: dict[str, torch.Tensor] = {"policy_chosen": pc, "policy_rejected": pr}
    if ref is not None:
        rc, rr = ref.chosen.double(), ref.rejected.double()
        dc, dr = pc - rc, pr - rr  # log pi - log pi_ref per sequence
        margin = beta * (dc - dr)
        out.update({
            "accuracy": _accuracy(margin),
            "rewards/chosen": _mean(beta * dc), "rewards/rejected": _mean(beta * dr),
            "rewards/margins": _mean(margin),
            "rewards/margins_std": float(margin.std()) if margin.numel() > 1 else 0.0,
            # per-token log-prob change (policy - reference), token-weighted over all pairs
            "logps_per_token_change/chosen": float(dc.sum() / nc.sum()),
            "logps_per_token_change/rejected": float(dr.sum() / nr.sum()),
            "frac_chosen_logp_up": _mean((dc > 0).float()),
            "frac_rejected_logp_down": _mean((dr < 0).float()),
        })
        per.update({"ref_chosen": rc, "ref_rejected": rr, "margin": margin})
    else:
        out["accuracy"] = out["logp_accuracy"]
    return out, per


def _score(model, pairs, tokenizer, batch_size: int, path: ScoringPath = ScoringPath()):
    """Through the one scoring path, checked on this model (what is not exact for it is turned off: lines on
    stderr). Returns (log-probs, the path) so a reference model is checked with what the policy kept."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    path = choose_path(model, pairs, path, pad_token_id=pad, log=lambda line: print(line, file=sys.stderr))
    return path.score(model, pairs, batch_size=batch_size, pad_token_id=pad), path


def run_eval(args: argparse.Namespace) -> int:
    _quiet_hf()
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    examples, pairs, stats = prepare_dataset(args.data, tokenizer, max_length=args.max_length,
                                             skip_invalid=args.skip_invalid)
    kw = dict(dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code)
    policy = load_model(args.model, **kw)
    ref_path = args.ref if args.ref else (None if args.no_ref else _default_ref(args.model))
    pl, path = _score(policy, pairs, tokenizer, args.batch_size)
    rl = None
    if ref_path:
        same = os.path.realpath(ref_path) == os.path.realpath(args.model)
        rl = pl if same else _score(load_model(ref_path, **kw), pairs, tokenizer, args.batch_size, path)[0]
    summary, per = eval_metrics(pl, rl, beta=args.beta)
    summary.update({"model": args.model, "ref": ref_path, "data": args.data, "beta": args.beta,
                    "truncated": stats.get("truncated", 0), "skipped": stats.get("skipped", 0)})
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    if args.per_pair:
        with open(args.per_pair, "w", encoding="utf-8") as f:
            for k, ex in enumerate(examples):
                row = {"index": ex.index, "source": ex.source, **{n: float(v[k]) for n, v in per.items()}}
                f.write(json.dumps(row) + "\n")
    _print_summary(summary, json_out=args.json)
    return 0


def _print_summary(s: dict, *, json_out: bool = False) -> None:
    if json_out:
        print(json.dumps(s, indent=2))
        return
    print(f"{s['pairs']} pairs from {s['data']}  (model {s['model']}; reference {s['ref'] or 'none'})")
    keys = ["accuracy", "logp_accuracy", "rewards/margins", "rewards/margins_std", "rewards/chosen",
            "rewards/rejected", "logps_per_token_change/chosen", "logps_per_token_change/rejected",
            "frac_chosen_logp_up", "frac_rejected_logp_down", "logps_per_token/chosen", "logps_per_token/rejected",
            "tokens/chosen", "tokens/rejected"]
    for k in keys:
        if k in s and isinstance(s[k], float) and math.isfinite(s[k]):
            print(f"  {k:<34} {s[k]: .4f}")


# -------------------------------------------------------------------------------------------- generate
def generate_samples(model, tokenizer, prompts: list[Any], *, n: int = 1, max_new_tokens: int = 64,
                     temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                     batch_size: int = 8, use_chat_template: bool = True,
                     reward_fn: Optional[Callable[[str, str], float]] = None) -> list[dict]:
    """`tilt generate`'s rows: the sampler of `tilt iterate` (iterate/sampling.py), one row per completion."""
    groups = generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, top_k=top_k, seed=seed, batch_size=batch_size, use_chat_template=use_chat_template)
    rows = []
    for c in (c for g in groups for c in g):
        row = {"index": c.prompt_index, "sample": c.sample, "prompt": c.prompt, "completion": c.completion,
               "tokens": len(c.completion_ids) - int(c.finished)}
        if reward_fn is not None:
            row["reward"] = reward_fn(c.prompt_text, c.completion)
        rows.append(row)
    return rows


def run_generate(args: argparse.Namespace) -> int:
    _quiet_hf()
    reward_fn = load_reward_fn(args.reward_fn) if args.reward_fn else None
    prompts = read_prompts(args.prompts)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, dtype=args.dtype, device=resolve_device(args.device),
                       trust_remote_code=args.trust_remote_code)
    rows = generate_samples(model, tokenizer, prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            batch_size=args.batch_size, use_chat_template=not args.no_chat_template,
                            reward_fn=reward_fn)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output != "-":
        msg = f"wrote {len(rows)} samples ({len(prompts)} prompts x {args.n}) to {args.output}"
        if reward_fn is not None and rows:
            msg += f"; mean reward {sum(r['reward'] for r in rows) / len(rows):.4f}"
        print(msg)
    return 0


# ------------------------------------------------------------------------------------------------- CLI
def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local model folder (e.g. a tilt train output dir)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trust-remote-code", action="store_true")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("eval", help="held-out preference accuracy, reward margins, per-token log-prob changes")
    _common(p)
    p.add_argument("--data", required=True, help="preference pairs (any format tilt train reads)")
    p.add_argument("--ref", default=None, help="reference model (default: the base model of a tilt run dir)")
    p.add_argument("--no-ref", action="store_true", help="ignore the run dir's base model; policy log-probs only")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--skip-invalid", action="store_true")
    p.add_argument("--output", default=None, help="write the summary as JSON here")
    p.add_argument("--per-pair", default=None, help="write per-pair log-probs and margins (JSONL) here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_eval)

    g = subparsers.add_parser("generate", help="sample completions for prompts (chat template when available)")
    _common(g)
    g.add_argument("--prompts", required=True, help=".jsonl with a 'prompt' per line, .json list, or text lines")
    g.add_argument("--output", default="-", help="JSONL output file (default: stdout)")
    g.add_argument("--n", type=int, default=1, help="samples per prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-chat-template", action="store_true")
    g.add_argument("--reward-fn", default=None, help="module:function scoring each completion, e.g. "
                                                     "tiltlm.demo.task:reward")
    g.set_defaults(func=run_generate)
