"""`tilt frontier`: reward vs KL(pi || pi_ref) for a sweep of beta x loss type on the demo task.

The miniature of Fig. 2 (left) of Rafailov et al. (2023): each DPO run is one point (sampled KL to the SFT
reference, mean ground-truth reward of fresh samples). Baselines: the SFT model itself (KL = 0) and best-of-N
sampling from it (KL = log N - (N-1)/N, the standard analytic value).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from .evaluate import best_of_n
from .pipeline import FULL, QUICK, evaluate_run, load_policy, prepare_task, train_dpo

BON = [1, 2, 4, 8, 16]
_MARKERS = {"sigmoid": "o", "ipo": "s", "hinge": "^", "simpo": "D", "robust": "v"}


def run_frontier(out_dir: str | Path = "runs/frontier", *, betas=(0.05, 0.1, 0.5), loss_types=("sigmoid",),
                 seed: int = 0, quick: bool = False, learning_rate: Optional[float] = None,
                 steps: Optional[int] = None, plot_copy: Optional[str] = None, log: Callable = print) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    sizes = QUICK if quick else FULL
    task = prepare_task(out, sizes, seed, log=log, bon_samples=max(BON))
    sft_point = {"reward": task.before["reward"], "kl": 0.0}
    bon = best_of_n(task.before["groups"], BON)
    runs = []
    for loss in loss_types:
        for beta in betas:
            name = f"{loss}_beta{beta:g}"
            t = time.perf_counter()
            train_metrics = train_dpo(task, out / "runs" / name, beta=beta, loss_type=loss,
                                      learning_rate=learning_rate, steps=steps, log=log)
            m = evaluate_run(task, load_policy(out / "runs" / name))
            row = {"run": name, "loss_type": loss, "beta": beta, "reward": m["reward"], "reward_se": m["reward_se"],
                   "kl": m["kl"], "kl_se": m["kl_se"], "accuracy": m["accuracy"],
                   "train_loss": train_metrics.get("loss"), "seconds": time.perf_counter() - t}
            runs.append(row)
            log(f"  {name:<20} reward {row['reward']:+.3f}  KL {row['kl']:7.3f}  held-out acc {row['accuracy']:.3f}"
                f"  ({row['seconds']:.0f}s)")
            # the weights are not needed after evaluation; keep metrics/logs, drop the model files
            for f in (out / "runs" / name).glob("*.safetensors"):
                f.unlink()
    result = {"sft": sft_point, "best_of_n": bon, "runs": runs, "seed": seed, "quick": quick,
              "seconds": time.perf_counter() - t0}
    (out / "frontier.json").write_text(json.dumps(result, indent=2) + "\n")
    png = plot_frontier(result, out / "frontier.png")
    if plot_copy:
        Path(plot_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, plot_copy)
    log(f"frontier: {len(runs)} runs in {result['seconds']:.0f}s -> {png}")
    return result


def frontier_axes(result: dict, figsize=(6.4, 4.4)):
    """A figure with the baselines every frontier plot shows: best-of-N from the SFT model and the SFT model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    bon = result["best_of_n"]
    ax.plot([b["kl"] for b in bon], [b["reward"] for b in bon], "--", color="tab:gray", marker=".",
            label="best-of-N from SFT")
    for b in bon:
        ax.annotate(f"N={b['n']}", (b["kl"], b["reward"]), fontsize=7, color="tab:gray",
                    textcoords="offset points", xytext=(3, -9))
    ax.scatter([0.0], [result["sft"]["reward"]], marker="*", s=160, color="black", label="SFT (reference)", zorder=4)
    return fig, ax


def points(ax, rows: list[dict], *, marker: str, color, label: str) -> None:
    """One method's runs: (KL, reward) with ±2 s.e. of the KL, each labelled with its β."""
    ax.errorbar([r["kl"] for r in rows], [r["reward"] for r in rows], xerr=[2 * r["kl_se"] for r in rows],
                fmt=marker, color=color, label=label, zorder=3, capsize=2)
    for r in rows:
        ax.annotate(f"β={r['beta']:g}", (r["kl"], r["reward"]), fontsize=7, color=color,
                    textcoords="offset points", xytext=(4, 3))


def save_frontier(fig, ax, path: str | Path, *, title: str, xlabel: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean reward (#positive − #negative words)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_frontier(result: dict, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = frontier_axes(result)
    losses = list(dict.fromkeys(r["loss_type"] for r in result["runs"]))
    cmap = plt.get_cmap("tab10")
    for i, loss in enumerate(losses):
        rows = sorted((r for r in result["runs"] if r["loss_type"] == loss), key=lambda r: r["kl"])
        points(ax, rows, marker=_MARKERS.get(loss, "o"), color=cmap(i), label=f"DPO {loss}")
    return save_frontier(fig, ax, path, title="reward vs KL on the synthetic sentiment task",
                         xlabel="KL(π ‖ π_ref), nats per sequence (sampled; log scale above 1)")
