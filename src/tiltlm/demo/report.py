"""The demo's PNG + HTML report and its console summary."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _train_curve(run: Path) -> tuple[list, list, list]:
    steps, loss, acc = [], [], []
    path = run / "dpo" / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in m and "step" in m:
                steps.append(m["step"])
                loss.append(m["loss"])
                acc.append(m.get("rewards/accuracies", float("nan")))
    return steps, loss, acc


def write_demo_report(out: Path, result: dict, before_groups, after_groups) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, a = result["before"], result["after"]
    rb = [s.reward for g in before_groups for s in g[: result["sizes"]["eval_samples"]]]
    ra = [s.reward for g in after_groups for s in g]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    lo, hi = int(min(rb + ra)) - 1, int(max(rb + ra)) + 1
    bins = [x + 0.5 for x in range(lo, hi + 1)]
    axes[0].hist(rb, bins=bins, alpha=0.6, label=f"SFT (mean {b['reward']:.2f})", color="tab:gray")
    axes[0].hist(ra, bins=bins, alpha=0.6, label=f"DPO (mean {a['reward']:.2f})", color="tab:blue")
    axes[0].set_xlabel("ground-truth reward of a sample (#pos - #neg words)")
    axes[0].set_ylabel("samples")
    axes[0].legend(fontsize=8)
    axes[0].set_title("reward of fresh samples")
    axes[1].scatter([0.0], [b["reward"]], s=80, color="tab:gray", label="SFT (= reference)", zorder=3)
    axes[1].errorbar([a["kl"]], [a["reward"]], xerr=[2 * a["kl_se"]], yerr=[2 * a["reward_se"]], fmt="o",
                     color="tab:blue", label=f"DPO {result['loss_type']} beta={result['beta']}", zorder=3)
    axes[1].annotate("", xy=(a["kl"], a["reward"]), xytext=(0.0, b["reward"]),
                     arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.5))
    axes[1].set_xlabel("KL(pi || pi_ref), nats per sequence (sampled)")
    axes[1].set_ylabel("mean reward")
    axes[1].set_title("reward vs KL (cf. DPO paper Fig. 2)")
    axes[1].legend(fontsize=8, loc="lower right")
    axes[1].grid(alpha=0.3)
    steps, loss, acc = _train_curve(out)
    if steps:
        axes[2].plot(steps, loss, label="train loss", color="tab:red")
        ax2 = axes[2].twinx()
        ax2.plot(steps, acc, label="train accuracy", color="tab:green")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("pair accuracy")
        axes[2].set_xlabel("DPO step")
        axes[2].set_ylabel("loss")
        axes[2].legend(loc="center left", fontsize=8)
        ax2.legend(loc="center right", fontsize=8)
    axes[2].set_title("DPO training")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=80)
    plt.close(fig)

    rows = "".join(
        f"<tr><td>{html.escape(e['prompt'])}</td><td>{html.escape(e['before'])} <b>({e['before_reward']:+.0f})</b></td>"
        f"<td>{html.escape(e['after'])} <b>({e['after_reward']:+.0f})</b></td></tr>" for e in result["examples"])
    t = result["timings"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tiltlm demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>tiltlm demo: DPO on a synthetic controlled-sentiment task</h1>
<p>Reward of a completion = number of positive minus negative lexicon words. The SFT model writes mixed reviews;
DPO is trained on pairs of its own samples labelled by that reward (chosen = higher reward).</p>
<table><tr><th></th><th>SFT (reference)</th><th>DPO</th></tr>
<tr><td>mean reward of fresh samples</td><td>{b['reward']:.3f} &plusmn; {b['reward_se']:.3f}</td>
<td>{a['reward']:.3f} &plusmn; {a['reward_se']:.3f}</td></tr>
<tr><td>KL(&pi;&#8214;&pi;<sub>ref</sub>) per sequence</td><td>0</td><td>{a['kl']:.3f} &plusmn; {a['kl_se']:.3f}</td></tr>
<tr><td>held-out preference accuracy</td><td>{b['accuracy']:.3f}</td><td>{a['accuracy']:.3f}</td></tr>
<tr><td>mean completion tokens</td><td>{b['mean_tokens']:.1f}</td><td>{a['mean_tokens']:.1f}</td></tr></table>
<p>loss {html.escape(result['loss_type'])}, beta {result['beta']}, total time {t.get('total_s', 0):.0f}s
(SFT {t.get('sft_s', 0):.0f}s, pairs {t.get('pairs_s', 0):.0f}s, DPO {t.get('dpo_s', 0):.0f}s,
eval {t.get('eval_s', 0):.0f}s)</p>
<img src="report.png" style="max-width:100%">
<h2>Example completions</h2><p>The first three eval prompts whose SFT sample scored &le; 0 (selected on the SFT side only); the DPO sample is drawn with the same random seed.</p><table><tr><th>prompt</th><th>SFT</th><th>DPO</th></tr>{rows}</table>
</body></html>"""
    (out / "report.html").write_text(page, encoding="utf-8")


def summary_text(result: dict, out_dir: str) -> str:
    b, a, t = result["before"], result["after"], result["timings"]
    lines = [
        f"tilt demo ({'quick' if result['quick'] else 'full'}, {result['loss_type']}, beta={result['beta']}) "
        f"in {t['total_s']:.0f}s",
        f"  reward (#pos - #neg words)  SFT {b['reward']:+.3f}  ->  DPO {a['reward']:+.3f}",
        f"  KL(pi || pi_ref)            SFT  0.000  ->  DPO {a['kl']:.3f} nats/sequence (+/- {a['kl_se']:.3f})",
        f"  held-out pair accuracy      SFT {b['accuracy']:.3f}  ->  DPO {a['accuracy']:.3f} "
        f"({a['pairs']} pairs)",
        "  examples (first 3 eval prompts whose SFT sample scored <= 0; DPO sample drawn with the same seed):",
    ]
    for e in result["examples"]:
        lines.append(f"    {e['prompt']!r}")
        lines.append(f"      SFT ({e['before_reward']:+.0f}):{e['before']}")
        lines.append(f"      DPO ({e['after_reward']:+.0f}):{e['after']}")
    lines.append(f"  report: {out_dir}/report.html  metrics: {out_dir}/metrics.json")
    return "\n".join(lines)
