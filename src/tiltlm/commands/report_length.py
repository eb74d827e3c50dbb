"""Margin against length difference, for the report page (a scatter plot of the scored pairs) and `tilt explain
RUN_DIR` (a table): the picture behind the doctor's `length_bias` check (doctor/length.py).

The pairs are RUN_DIR/pair_scores.jsonl: the held-out pairs under the final policy (or the first training pairs
when the run had no eval set). x = chosen minus rejected completion tokens, y = the reward margin.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional, Sequence

from ..doctor.length import direction, length_bins, pair_length_effect

HINT = ("each dot is one scored pair; a rising cloud means the LONGER reply wins, a falling one the SHORTER reply "
        "wins (failure mode 4, length bias): the margin is learning length, not the preference")


def length_plot(pairs: Sequence[dict], beta: float, path: Path) -> Optional[Path]:
    """Write the scatter plot (with its least-squares line) to `path`; None when there are too few usable pairs."""
    eff = pair_length_effect(pairs, beta)
    if eff is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in pairs if all(isinstance(r.get(k), (int, float)) for k in ("margin", "chosen_tokens",
                                                                                  "rejected_tokens"))]
    x = np.array([r["chosen_tokens"] - r["rejected_tokens"] for r in rows], dtype=float)
    y = np.array([r["margin"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    ax.axhline(0, color="#94a3b8", lw=0.8)
    ax.axvline(0, color="#94a3b8", lw=0.8)
    ax.scatter(x[y > 0], y[y > 0], s=12, color="#16a34a", alpha=0.6, label="chosen ranked higher")
    ax.scatter(x[y <= 0], y[y <= 0], s=12, color="#dc2626", alpha=0.6, label="rejected ranked higher")
    slope, icept = np.polyfit(x, y, 1)
    xs = np.array([x.min(), x.max()])
    ax.plot(xs, slope * xs + icept, color="#0f172a", lw=1.6, label=f"fit: r = {eff.corr:+.2f} ({direction(eff.corr)})")
    ax.set_xlabel("length difference: chosen - rejected tokens")
    ax.set_ylabel("reward margin")
    ax.set_title(f"margin vs length difference, {eff.pairs} pairs")
    ax.legend(fontsize=8, loc="best", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def length_summary(pairs: Sequence[dict], beta: float) -> str:
    """One paragraph: the correlation, its direction and what a length-normalised loss / balanced pairs would change."""
    eff = pair_length_effect(pairs, beta)
    if eff is None:
        return "margin vs length: fewer than 4 scored pairs with a length spread"
    change = eff.what_it_would_change()
    return (f"margin vs length difference over {eff.pairs} scored pairs: r = {eff.corr:+.2f} ({direction(eff.corr)}; "
            f"mean tokens chosen {eff.mean_chosen:.0f}, rejected {eff.mean_rejected:.0f})"
            + (f"; {change}" if change else ""))


def length_table(pairs: Sequence[dict], beta: float, bins: int = 5) -> str:
    """The text `tilt explain RUN_DIR` prints: the summary, then the pairs in length-difference bins."""
    rows = length_bins(pairs, bins)
    if not rows:
        return ""
    lines = ["", "Margin against length difference (pair_scores.jsonl; length bias = failure mode 4)",
             "  " + length_summary(pairs, beta),
             f"  {'chosen - rejected tokens':>26}  {'pairs':>5}  {'mean margin':>11}  {'accuracy':>8}"]
    for b in rows:
        lines.append(f"  {b['from']:>+12.0f} .. {b['to']:>+10.0f}  {b['pairs']:>5}  {b['mean_margin']:>+11.4f}  "
                     f"{b['accuracy']:>8.2f}")
    return "\n".join(lines)


def length_section(pairs: Optional[Sequence[dict]], beta: float, out_dir: Path) -> str:
    """The report page's card: the plot and the summary, or a "not available" note."""
    if not pairs:
        return '<div class="na">pair_scores.jsonl: not available</div>'
    png = length_plot(pairs, beta, out_dir / "length.png")
    if png is None:
        return f'<div class="na">{html.escape(length_summary(pairs, beta))}</div>'
    img = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<div class="card"><h3>Margin vs length difference</h3><p class="hint">{html.escape(HINT)}</p>'
            f'<img alt="length" src="data:image/png;base64,{img}">'
            f'<p class="hint">{html.escape(length_summary(pairs, beta))}</p></div>')
