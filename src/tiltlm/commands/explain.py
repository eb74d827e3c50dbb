"""`tilt explain`: the seed's hand walkthrough of one DPO update, for any four log-probs and any loss type.

    tilt explain --logp-chosen -3.5 --logp-rejected -6.0 --ref-chosen -4.0 --ref-rejected -5.0 --beta 0.5
    tilt explain RUN_DIR --pair 3          # a pair of the user's own data in a finished run

With no numbers and no RUN_DIR it explains the seed's worked example (policy -3.5/-6.0, ref -4.0/-5.0, beta 0.5).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import load_config
from ..core.losses import LOSSES, LossHParams, compute_loss, parse_loss_types
from ..data import prepare_dataset
from ..errors import ConfigError
from ..model.loading import load_model, load_tokenizer
from ..model.precision import Precision
from ..rundir import CONFIG, PAIR_SCORES, RunDir
from ..training.setup import data_options, requested_path
from ..types import PairLogps, as_text
from .report_length import length_table

SEED_EXAMPLE = dict(logp_chosen=-3.5, logp_rejected=-6.0, ref_chosen=-4.0, ref_rejected=-5.0, beta=0.5)

_HP_KEYS = tuple(f.name for f in fields(LossHParams) if f.name != "beta")  # every hyper-parameter but beta


def _hp_values(hp: LossHParams) -> dict:
    return {k: getattr(hp, k) for k in _HP_KEYS}


def _f(x: float) -> str:
    return f"{x:+.3f}"


def explain_numbers(logp_chosen: float, logp_rejected: float, ref_chosen: Optional[float],
                    ref_rejected: Optional[float], beta: float, loss_type: Any = "sigmoid", **hp: Any) -> dict:
    """All the numbers of the walkthrough for one pair, as a plain dict (JSON-serialisable floats).

    `loss_type` is a name from LOSSES, a comma-separated string or a list (summed with `loss_weights`).
    Optional keyword args: any LossHParams field but beta (label_smoothing, simpo_gamma, ...), chosen_tokens, rejected_tokens
    (token counts default to 1, i.e. the log-probs are treated as per-token values), loss_weights.
    Keys: inputs, loss_types, loss_weights, hparams, logratio_chosen/rejected (None without a reference),
    reward_chosen/rejected (the rewards of the first preference loss), margin, pref_prob = sigma(margin), loss,
    components {name: loss}, grad_chosen/grad_rejected = dL/dlogpi(y_w), dL/dlogpi(y_l) (autograd),
    dloss_dmargin and grad_scale = |dL/dm| (margin-only losses, else None), meaning.
    """
    types = parse_loss_types(loss_type)
    weights = hp.pop("loss_weights", None)
    nc = float(hp.pop("chosen_tokens", 1.0) or 1.0)
    nr = float(hp.pop("rejected_tokens", 1.0) or 1.0)
    unknown = set(hp) - set(_HP_KEYS)
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s): {', '.join(sorted(unknown))}")
    hparams = LossHParams.from_options(hp, beta=beta)
    have_ref = ref_chosen is not None and ref_rejected is not None
    if not have_ref and any(not LOSSES[t].reference_free for t in types):
        raise ValueError(f"loss type {','.join(types)} needs --ref-chosen and --ref-rejected")

    d64 = torch.float64
    pc = torch.tensor([float(logp_chosen)], dtype=d64, requires_grad=True)
    pr = torch.tensor([float(logp_rejected)], dtype=d64, requires_grad=True)
    ntc, ntr = torch.tensor([nc], dtype=d64), torch.tensor([nr], dtype=d64)
    policy = PairLogps(pc, pr, ntc, ntr)
    ref = PairLogps(torch.tensor([float(ref_chosen)], dtype=d64), torch.tensor([float(ref_rejected)], dtype=d64),
                    ntc, ntr) if have_ref else None
    out = compute_loss(types, weights, policy, ref, hparams)
    out.losses.sum().backward()
    components = {k.split("/", 1)[1]: v.item() for k, v in out.extras.items() if k.startswith("loss/")}
    if not components:
        components = {types[0]: out.losses.item()}

    rc, rr = out.chosen_rewards.item(), out.rejected_rewards.item()
    margin = rc - rr
    grad_c = pc.grad.item() if pc.grad is not None else 0.0  # sft does not depend on logpi(y_l)
    grad_r = pr.grad.item() if pr.grad is not None else 0.0
    dldm = grad_c / hparams.beta if len(types) == 1 and LOSSES[types[0]].margin_only else None
    return {
        "inputs": {"logp_chosen": float(logp_chosen), "logp_rejected": float(logp_rejected),
                   "ref_chosen": None if not have_ref else float(ref_chosen),
                   "ref_rejected": None if not have_ref else float(ref_rejected),
                   "chosen_tokens": nc, "rejected_tokens": nr},
        "loss_types": types, "loss_weights": list(weights) if weights else [1.0] * len(types),
        "beta": hparams.beta, "hparams": _hp_values(hparams),
        "logratio_chosen": float(logp_chosen) - float(ref_chosen) if have_ref else None,
        "logratio_rejected": float(logp_rejected) - float(ref_rejected) if have_ref else None,
        "reward_chosen": rc, "reward_rejected": rr, "margin": margin,
        "pref_prob": 1.0 / (1.0 + math.exp(-margin)),
        "loss": out.losses.item(), "components": components,
        "grad_chosen": grad_c, "grad_rejected": grad_r,
        "dloss_dmargin": dldm, "grad_scale": None if dldm is None else abs(dldm),
        "meaning": " | ".join(LOSSES[t].meaning for t in types),
    }


def _reward_formula(t: str, side: str) -> str:
    n = "n_w" if side == "w" else "n_l"
    return {"logratio": f"beta * logratio_{side}", "logratio per token": f"beta * logratio_{side} / {n}",
            "logpi per token": f"beta * log pi(y_{side}|x) / {n}"}[LOSSES[t].reward]


def _loss_formula(t: str, eps: float) -> str:
    spec = LOSSES[t]
    return spec.smoothed_formula if eps and spec.smoothed_formula else spec.formula


def format_explanation(d: dict) -> str:
    """Render an explain_numbers() dict (optionally with index/source/prompt/chosen_text/rejected_text/step
    header keys, as added for a pair of a run) as the seed's step-by-step walkthrough."""
    x, types = d["inputs"], d["loss_types"]
    name = ",".join(types)
    beta, eps = d["beta"], d["hparams"].get("label_smoothing", 0.0)
    lines = [f"tilt explain - loss_type={name}  beta={beta:g}" + (f"  label_smoothing={eps:g}" if eps else "")]
    for key in ("index", "source", "step"):
        if d.get(key) is not None:
            lines.append(f"  {key}: {d[key]}")
    for key in ("prompt", "chosen_text", "rejected_text"):
        if d.get(key):
            text = str(d[key]).replace("\n", " ")
            lines.append(f"  {key}: {text[:200]}{'...' if len(text) > 200 else ''}")
    ref_w, ref_l = x.get("ref_chosen"), x.get("ref_rejected")
    tok = f"   ({x['chosen_tokens']:g} / {x['rejected_tokens']:g} tokens)" if (
        x.get("chosen_tokens", 1) != 1 or x.get("rejected_tokens", 1) != 1) else ""
    lines.append(f"  log pi(y_w|x) = {x['logp_chosen']:.3f}   log pi(y_l|x) = {x['logp_rejected']:.3f}{tok}")
    if ref_w is not None:
        lines.append(f"  log ref(y_w|x) = {ref_w:.3f}   log ref(y_l|x) = {ref_l:.3f}")
    step = 1
    if d.get("logratio_chosen") is not None:
        lines.append(f"{step}. log-ratios        logratio_w = {x['logp_chosen']:.3f} - ({ref_w:.3f}) = "
                     f"{_f(d['logratio_chosen'])}")
        lines.append(f"                     logratio_l = {x['logp_rejected']:.3f} - ({ref_l:.3f}) = "
                     f"{_f(d['logratio_rejected'])}")
        step += 1
    pref = next((t for t in types if t != "sft"), types[0])
    if LOSSES[pref].reward == "logratio" and d.get("logratio_chosen") is not None:
        lines.append(f"{step}. implicit rewards  r_w = beta * logratio_w = {beta:g} * ({_f(d['logratio_chosen'])})"
                     f" = {_f(d['reward_chosen'])}")
        lines.append(f"                     r_l = beta * logratio_l = {beta:g} * ({_f(d['logratio_rejected'])})"
                     f" = {_f(d['reward_rejected'])}")
    else:
        lines.append(f"{step}. implicit rewards  r_w = {_reward_formula(pref, 'w')} = {_f(d['reward_chosen'])}")
        lines.append(f"                     r_l = {_reward_formula(pref, 'l')} = {_f(d['reward_rejected'])}")
    step += 1
    lines.append(f"{step}. reward margin     m = r_w - r_l = {_f(d['reward_chosen'])} - ({_f(d['reward_rejected'])})"
                 f" = {_f(d['margin'])}")
    step += 1
    note = "the policy's implied P(y_w > y_l)" if LOSSES[pref].preference_model else (
        f"Bradley-Terry reading of the margin; {pref} does not optimise it directly")
    lines.append(f"{step}. preference prob.  sigma(m) = {d['pref_prob']:.4f}   ({note})")
    step += 1
    if len(types) == 1:
        lines.append(f"{step}. loss              L = {_loss_formula(types[0], eps)} = {d['loss']:.5f}")
    else:
        parts = " + ".join(f"{w:g} * {t} ({d['components'][t]:.4f})" for t, w in zip(types, d["loss_weights"]))
        lines.append(f"{step}. loss              L = {parts} = {d['loss']:.5f}")
    step += 1
    gc, gr = d["grad_chosen"], d["grad_rejected"]
    if types == ["sigmoid"] and not eps:
        s = d["grad_scale"]
        lines.append(f"{step}. gradient scale    sigma(-m) = {s:.4f} = |dL/dm|   (dL/dm = -sigma(-m) = {-s:.4f};"
                     f" {100 * s:.0f}% of the maximum signal still flows)")
        step += 1
        lines.append(f"{step}. per-parameter     grad L = -beta*sigma(-m) * (grad log pi(y_w) - grad log pi(y_l)),"
                     f"  beta*sigma(-m) = {beta:g} * {s:.4f} = {beta * s:.4f}")
    elif d.get("dloss_dmargin") is not None:
        lines.append(f"{step}. gradient scale    dL/dm = {d['dloss_dmargin']:+.4f}   |dL/dm| = {d['grad_scale']:.4f}")
        step += 1
        lines.append(f"{step}. per-parameter     grad L = dL/dm * beta * (grad log pi(y_w) - grad log pi(y_l)),"
                     f"  beta*|dL/dm| = {beta * d['grad_scale']:.4f}")
    else:
        lines.append(f"{step}. gradient          grad L = ({gc:+.4f}) * grad log pi(y_w) + ({gr:+.4f}) * grad log pi(y_l)")
    lines.append(f"   autograd          dL/dlog pi(y_w) = {gc:+.4f}   dL/dlog pi(y_l) = {gr:+.4f}")
    lines.append(f"meaning: {d['meaning']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- a pair of a run
def _stored_scores(run_dir: Path, index: int):
    for row in RunDir(run_dir, writable=False).read_records(PAIR_SCORES) or []:
        if row.get("index") == index and row.get("ref_chosen") is not None:
            return row
    return None


def _score_now(run_dir: Path, cfg, index: int) -> dict:
    tokenizer = load_tokenizer(str(run_dir))
    examples, pairs, _ = prepare_dataset(cfg.data, tokenizer, max_length=cfg.max_length, skip_invalid=True,
                                         split=cfg.dataset_train_split, log=lambda _: None, **data_options(cfg))
    found = [(e, p) for e, p in zip(examples, pairs) if p.index == index]
    if not found:
        raise ConfigError(f"pair {index} is not a valid pair of {cfg.data} ({len(pairs)} valid pairs)")
    ex, pair = found[0]
    # the run's own scoring path, as its start-up check left it (config.yaml records what ran)
    path = requested_path(cfg, Precision.of(cfg.dtype, cfg.mixed_precision, torch.device("cpu")))
    policy = path.score(load_model(str(run_dir), dtype=cfg.dtype), [pair], pad_token_id=tokenizer.pad_token_id)
    revision = cfg.revision if cfg.ref_model in (None, cfg.model) else None
    ref = path.score(load_model(cfg.ref_model or cfg.model, dtype=cfg.dtype, revision=revision), [pair],
                     pad_token_id=tokenizer.pad_token_id)
    return dict(index=index, source=ex.source, prompt=as_text(ex.prompt), chosen=as_text(ex.chosen),
                rejected=as_text(ex.rejected), policy_chosen=float(policy.chosen[0]),
                policy_rejected=float(policy.rejected[0]), ref_chosen=float(ref.chosen[0]),
                ref_rejected=float(ref.rejected[0]), chosen_tokens=int(policy.chosen_tokens[0]),
                rejected_tokens=int(policy.rejected_tokens[0]))


def explain_run_pair(run_dir, pair_index: int) -> dict:
    """The walkthrough of pair `pair_index` (0-based row of the training data, as in pair_scores.jsonl and
    skipped.jsonl) of a run: from pair_scores.jsonl when the run scored it at the end, otherwise tokenised exactly
    as in training and scored now with the trained policy (RUN_DIR) and the reference (the run's starting model)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a tiltlm run directory (no {CONFIG})")
    raw = RunDir(run_dir, writable=False).read_config()
    cfg = load_config(None, {k: v for k, v in raw.items() if v is not None})
    row = _stored_scores(run_dir, pair_index) or _score_now(run_dir, cfg, pair_index)
    d = explain_numbers(row["policy_chosen"], row["policy_rejected"], row["ref_chosen"], row["ref_rejected"],
                        cfg.beta, loss_type=cfg.loss_type, **_hp_values(LossHParams.from_options(cfg)),
                        chosen_tokens=row["chosen_tokens"], rejected_tokens=row["rejected_tokens"],
                        loss_weights=cfg.loss_weights)
    d.update(index=pair_index, source=row.get("source", ""), prompt=row.get("prompt", ""),
             chosen_text=row.get("chosen", ""), rejected_text=row.get("rejected", ""))
    return d


def run_explain(args: argparse.Namespace) -> int:
    """Entry point of `tilt explain`: print the walkthrough; 0 on success, 2 on a usage error."""
    try:
        if getattr(args, "run_dir", None):
            d = explain_run_pair(args.run_dir, args.pair)
            d["length_table"] = length_table(RunDir(Path(args.run_dir), writable=False).read_records(PAIR_SCORES)
                                             or [], d["beta"])
        else:
            nums = [args.logp_chosen, args.logp_rejected, args.ref_chosen, args.ref_rejected]
            if all(v is None for v in nums):
                vals = dict(SEED_EXAMPLE)
                if args.beta is not None:
                    vals["beta"] = args.beta
            else:
                if args.logp_chosen is None or args.logp_rejected is None:
                    raise ValueError("give --logp-chosen and --logp-rejected (or a RUN_DIR)")
                vals = dict(logp_chosen=args.logp_chosen, logp_rejected=args.logp_rejected,
                            ref_chosen=args.ref_chosen, ref_rejected=args.ref_rejected,
                            beta=0.1 if args.beta is None else args.beta)
            hp = {k: getattr(args, k) for k in _HP_KEYS + ("chosen_tokens", "rejected_tokens", "loss_weights")
                  if getattr(args, k, None) is not None}
            d = explain_numbers(loss_type=args.loss_type, **vals, **hp)
    except (ValueError, FileNotFoundError, IndexError, KeyError) as e:
        print(f"tilt explain: error: {e}", file=sys.stderr)
        return 2
    print(format_explanation(d))
    if d.get("length_table"):
        print(d["length_table"])
    return 0


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register the `explain` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser("explain", help="walk through one DPO update by hand (any numbers or a run's pair)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                   help="a run directory: explain pair --pair of its pair_scores.jsonl")
    p.add_argument("--pair", type=int, default=0, help="pair index within RUN_DIR (default 0)")
    for opt, hlp in (("logp-chosen", "log pi(y_w|x), summed over completion tokens"),
                     ("logp-rejected", "log pi(y_l|x)"), ("ref-chosen", "log ref(y_w|x)"),
                     ("ref-rejected", "log ref(y_l|x)")):
        p.add_argument(f"--{opt}", f"--{opt.replace('-', '_')}", dest=opt.replace("-", "_"), type=float, help=hlp)
    p.add_argument("--beta", type=float, default=None, help="KL temperature (default 0.1; 0.5 for the seed example)")
    p.add_argument("--loss-type", "--loss_type", dest="loss_type", default="sigmoid",
                   help=f"one of {', '.join(LOSSES)} (comma-separate to mix)")
    p.add_argument("--loss-weights", "--loss_weights", dest="loss_weights", type=_floats, default=None)
    p.add_argument("--label-smoothing", "--label_smoothing", dest="label_smoothing", type=float, default=None)
    p.add_argument("--simpo-gamma", "--simpo_gamma", dest="simpo_gamma", type=float, default=None)
    p.add_argument("--discopop-tau", "--discopop_tau", dest="discopop_tau", type=float, default=None)
    p.add_argument("--bco-delta", "--bco_delta", dest="bco_delta", type=float, default=None)
    p.add_argument("--chosen-tokens", "--chosen_tokens", dest="chosen_tokens", type=float, default=None)
    p.add_argument("--rejected-tokens", "--rejected_tokens", dest="rejected_tokens", type=float, default=None)
    p.set_defaults(func=run_explain)
    return p
