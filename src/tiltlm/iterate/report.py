"""The per-round curves of an iterate run, from its metrics.jsonl: held-out score and the round's sample score,
win rate against round 0's samples, KL to the initial model, and the pairs each round kept."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..rundir import METRICS, read_jsonl


def round_points(records: list[dict]) -> list[dict]:
    """The round summaries and the final record, in round order: x = rounds of DPO the measured policy has had."""
    return sorted((r for r in records if r.get("kind") in ("round", "final")), key=lambda r: r["round"])


def plot_rounds(run_dir: str | Path, path: Optional[str | Path] = None) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    points = round_points(read_jsonl(run_dir / METRICS)) if (run_dir / METRICS).is_file() else []
    if not points:
        return None
    x = [p["round"] for p in points]
    held = [p for p in points if "heldout/score_mean" in p]
    rounds = [p for p in points if p.get("kind") == "round"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.6))
    ax = axes[0][0]
    if held:
        ax.errorbar([p["round"] for p in held], [p["heldout/score_mean"] for p in held],
                    yerr=[2 * p.get("heldout/score_se", 0.0) for p in held], marker="o", capsize=3,
                    label="held-out prompts (fresh samples)")
    ax.plot([p["round"] for p in rounds], [p["samples/score_mean"] for p in rounds], "s--", color="tab:gray",
            label="the round's own samples")
    ax.set_title("mean score of the policy's samples")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    if held:
        ax.plot([p["round"] for p in held], [p["heldout/win_rate"] for p in held], "o-", color="tab:green")
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set_title("win rate against round 0's samples (held-out)")
    ax = axes[1][0]
    if held:
        ax.plot([p["round"] for p in held], [p["heldout/kl_to_initial"] for p in held], "o-", color="tab:purple")
    ax.set_title("KL(π ‖ initial model), nats per sequence")
    ax = axes[1][1]
    ax.bar([p["round"] for p in rounds], [p["pairs/count"] for p in rounds], color="tab:blue", alpha=0.6,
           label="pairs kept")
    ax.set_title("pairs per round (bars) and tied share (line)")
    twin = ax.twinx()
    twin.plot([p["round"] for p in rounds], [p["pairs/tied_frac"] + p["pairs/identical_frac"] for p in rounds],
              "o-", color="tab:red")
    twin.set_ylim(0, 1)
    for a in axes.flat:
        a.set_xticks(x)
        a.set_xlabel("round (the policy after this many rounds)")
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path) if path else run_dir / "report.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
