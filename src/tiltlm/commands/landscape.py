"""`tilt landscape`: the seed's DPO loss visualiser, as a static PNG, for any registered loss types.

    tilt landscape --loss-type sigmoid,ipo,hinge --beta 0.1 --output landscape.png

Three panels share the x-axis m, the implicit reward margin beta*h (reward units): the loss, the preference
probability sigma(r_w - r_l) computed from the rewards the loss reports, and the gradient strength |dL/dm|
(autograd). Each loss is driven through the registry with ref = 0, logpi(y_l) = 0, logpi(y_w) = m/beta and
one token per response, so h = m/beta and the per-token means equal the sums.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..core.losses import LOSSES, LossHParams, parse_loss_types
from ..types import PairLogps


def landscape_data(loss_types: Sequence[str], hp: LossHParams, m_min: float = -6.0, m_max: float = 6.0,
                   points: int = 241) -> dict:
    """Curves for each loss: {"m": [...], name: {"loss": [...], "pref_prob": [...], "grad": [...]}}."""
    m = torch.linspace(m_min, m_max, points, dtype=torch.float64)
    data: dict = {"m": m.tolist()}
    for name in parse_loss_types(loss_types):
        mm = m.clone().requires_grad_(True)
        zero, one = torch.zeros(1, dtype=m.dtype), torch.ones(1, dtype=m.dtype)
        ref = None if LOSSES[name].reference_free else PairLogps(zero, zero, one, one)
        # one pair per point: a landscape is one pair's loss (sft's batch mean and aot's sort couple a batch's pairs)
        outs = [LOSSES[name](PairLogps(mm[i:i + 1] / hp.beta, zero, one, one), ref, hp) for i in range(len(m))]
        losses = torch.cat([o.losses for o in outs])
        margins = torch.cat([o.chosen_rewards - o.rejected_rewards for o in outs])
        (grad,) = torch.autograd.grad(losses.sum(), mm)
        data[name] = {
            "loss": losses.detach().tolist(),
            "pref_prob": torch.sigmoid(margins).tolist(),
            "grad": grad.abs().tolist(),
        }
    return data


def plot_landscape(loss_types: Sequence[str], hp: LossHParams, output: str | Path, m_min: float = -6.0,
                   m_max: float = 6.0, points: int = 241) -> Path:
    """Write the three-panel PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = landscape_data(loss_types, hp, m_min, m_max, points)
    m = data["m"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    titles = ("loss L(m)", "preference probability sigma(r_w - r_l)", "gradient strength |dL/dm|")
    keys = ("loss", "pref_prob", "grad")
    colors = plt.get_cmap("tab20" if len(loss_types) > 10 else "tab10").colors
    for ax, title, key in zip(axes, titles, keys):
        ax.set_prop_cycle(color=colors)
        top = 0.0
        for name in loss_types:
            ys = data[name][key]
            ax.plot(m, ys, label=name, linewidth=1.8)
            top = max(top, max(abs(v) for v in ys if v == v))
        if key != "pref_prob" and top > 20:
            ax.set_yscale("symlog", linthresh=1.0)  # ipo / sppo_hard / sft dwarf the logistic losses
        ax.axvline(0.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(title)
        ax.set_xlabel("reward margin m = beta * h")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"tiltlm loss landscape (beta={hp.beta:g}"
                 + (f", label_smoothing={hp.label_smoothing:g}" if hp.label_smoothing else "") + ")")
    fig.tight_layout()
    out = Path(output)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_landscape(args: argparse.Namespace) -> int:
    """Entry point of `tilt landscape`: write the PNG, print its path; 0 on success, 2 on a usage error."""
    try:
        types = parse_loss_types(args.loss_type)
        if args.beta <= 0:
            raise ValueError(f"--beta must be > 0, got {args.beta}")
        hp = LossHParams.from_options(args)
        path = plot_landscape(types, hp, args.output, args.m_min, args.m_max, args.points)
    except ValueError as e:
        print(f"tilt landscape: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register the `landscape` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser("landscape", help="plot loss, preference probability and gradient vs the margin",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss-type", "--loss_type", dest="loss_type", default="sigmoid,ipo,hinge",
                   help=f"comma-separated, from: {', '.join(LOSSES)}")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--label-smoothing", "--label_smoothing", dest="label_smoothing", type=float, default=0.0)
    p.add_argument("--simpo-gamma", "--simpo_gamma", dest="simpo_gamma", type=float, default=0.5)
    p.add_argument("--discopop-tau", "--discopop_tau", dest="discopop_tau", type=float, default=0.05)
    p.add_argument("--m-min", "--m_min", dest="m_min", type=float, default=-6.0)
    p.add_argument("--m-max", "--m_max", dest="m_max", type=float, default=6.0)
    p.add_argument("--points", type=int, default=241)
    p.add_argument("--output", "-o", default="landscape.png")
    p.set_defaults(func=run_landscape)
    return p
