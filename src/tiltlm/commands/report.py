"""`tilt report RUN_DIR`: one self-contained HTML dashboard of a DPO run (PNG plots inlined, no JS, no network).

Shows the five plots every DPO dashboard has (rewards, accuracy, absolute chosen log-prob, KL proxy, margins),
loss/grad-norm and LR, the doctor's findings, the margin against the length difference (report_length.py), the config, the data statistics and the hardest pairs.
Every input file is optional: what is missing is reported as "not available".
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any, Optional

from ..doctor.checks import Finding
from ..doctor.replay import diagnose_run
from ..rundir import DATA_STATS, METRICS, PAIR_SCORES, RunDir, is_eval_record
from ..types import as_text
from .iterate_report import build_iterate_report, is_iterate_run
from .report_length import length_section

CHOSEN, REJECTED, NEUTRAL, KL, GRAD, EVAL = "#16a34a", "#dc2626", "#2563eb", "#7c3aed", "#ea580c", "#0f172a"
SEV_COLOR = {"error": ("#fef2f2", "#dc2626"), "warning": ("#fffbeb", "#d97706"), "info": ("#eff6ff", "#2563eb")}

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;margin:0;background:#f1f5f9;
color:#0f172a;line-height:1.45}
.wrap{max-width:1240px;margin:0 auto;padding:28px 28px 60px}
header{background:linear-gradient(135deg,#0f172a,#1e3a5f);color:#f8fafc;padding:26px 28px;border-radius:14px}
header h1{margin:0 0 4px;font-size:26px;font-weight:650;letter-spacing:-.01em}
header .sub{color:#cbd5e1;font-size:13.5px;word-break:break-all}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin-top:18px}
.kpi{background:rgba(255,255,255,.09);border-radius:10px;padding:10px 16px;min-width:120px}
.kpi .v{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}.kpi .l{font-size:12px;color:#cbd5e1}
.kpi .e{font-size:11.5px;color:#94a3b8}
h2{font-size:19px;margin:34px 0 12px;padding-bottom:6px;border-bottom:2px solid #e2e8f0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.card{background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(15,23,42,.08);padding:14px 16px}
.card img{width:100%;height:auto;display:block}.card h3{margin:0 0 2px;font-size:15px}
.hint{font-size:12.5px;color:#64748b;margin:0 0 6px}
.finding{border-left:5px solid;border-radius:10px;padding:12px 16px;margin:10px 0;box-shadow:0 1px 2px rgba(0,0,0,.05)}
.finding .t{font-weight:650}.finding .badge{display:inline-block;font-size:11px;font-weight:700;color:#fff;
border-radius:5px;padding:1px 7px;margin-right:8px;text-transform:uppercase;letter-spacing:.04em}
.finding .fix{margin-top:6px;font-size:14px}.finding .step{color:#64748b;font-size:12.5px;margin-left:6px}
.ok{background:#f0fdf4;border-left:5px solid #16a34a;border-radius:10px;padding:12px 16px}
.na{color:#64748b;font-style:italic;background:#fff;border-radius:10px;padding:10px 14px}
table{border-collapse:collapse;width:100%;font-size:13.5px;background:#fff}
td,th{padding:6px 10px;border-bottom:1px solid #e2e8f0;text-align:left;vertical-align:top}
th{background:#f8fafc;font-weight:600;color:#334155}
td.num{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start}
.pair{background:#fff;border-radius:12px;padding:12px 16px;margin:10px 0;box-shadow:0 1px 3px rgba(15,23,42,.08)}
.pair .head{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13.5px;align-items:baseline}
.pair .head b{font-size:14.5px}.neg{color:#dc2626;font-weight:650}.pos{color:#16a34a;font-weight:650}
details{margin-top:6px}summary{cursor:pointer;font-size:13px;color:#334155;font-weight:600}
pre{white-space:pre-wrap;word-wrap:break-word;font-size:12.5px;background:#f8fafc;border-radius:8px;padding:8px 10px;
margin:4px 0 8px;max-height:320px;overflow:auto;border-left:4px solid #cbd5e1}
pre.c{border-left-color:#16a34a}pre.r{border-left-color:#dc2626}
.nums{font-size:12.5px;color:#475569;margin-top:4px}
.lbl{font-size:12.5px;font-weight:600;margin-top:6px}
footer{margin-top:40px;color:#94a3b8;font-size:12px;text-align:center}
"""


# ---------------------------------------------------------------------- data
def _f(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _xy(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        y = _f(r.get(key))
        if y is not None:
            xs.append(_f(r.get("step")) if _f(r.get("step")) is not None else i + 1)
            ys.append(y)
    return xs, ys


def _fmt(v: Any, digits: int = 4) -> str:
    x = _f(v)
    if x is None:
        return html.escape(str(v))
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.3g}"
    return f"{x:.{digits}g}" if not float(x).is_integer() else str(int(x))


# ---------------------------------------------------------------------- plots
def _plots(train: list[dict], evals: list[dict], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9.5, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.color": "#e2e8f0", "grid.linewidth": 0.8,
                         "axes.edgecolor": "#94a3b8", "axes.titleweight": "bold", "legend.frameon": False})
    made: dict[str, Path] = {}

    def line(ax, key, color, label, recs=train, ls="-", smooth=True):
        xs, ys = _xy(recs, key)
        if not xs:
            return False
        if smooth and len(xs) > 30:  # raw points faint, centred moving average bold (no lag)
            ax.plot(xs, ys, color=color, alpha=0.25, lw=1, ls=ls)
            w = max(2, len(ys) // 25)
            avg = [sum(ys[max(0, i - w):i + w + 1]) / len(ys[max(0, i - w):i + w + 1]) for i in range(len(ys))]
            ax.plot(xs, avg, color=color, lw=2, ls=ls, label=label)
        else:
            ax.plot(xs, ys, color=color, lw=2, ls=ls, label=label, marker="o" if len(xs) < 12 else None, ms=3)
        return True

    def eval_pts(ax, key, color, label):
        xs, ys = _xy(evals, "eval/" + key)
        if xs:
            ax.plot(xs, ys, ls="none", marker="D", ms=6, mfc="white", mec=color, mew=2, label=label, zorder=5)

    def save(name, fig, ax_list):
        for ax in ax_list:
            ax.set_xlabel("step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8.5, loc="best")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[name] = path

    def fig1():
        return plt.subplots(figsize=(6.2, 3.3))

    fig, ax = fig1()
    if line(ax, "rewards/chosen", CHOSEN, "chosen (should rise)") | line(ax, "rewards/rejected", REJECTED,
                                                                          "rejected (should fall)"):
        eval_pts(ax, "rewards/chosen", CHOSEN, "eval chosen")
        eval_pts(ax, "rewards/rejected", REJECTED, "eval rejected")
        ax.axhline(0, color="#94a3b8", lw=1)
        ax.set_ylabel("implicit reward  β·log(π/π_ref)")
        save("rewards", fig, [ax])
    else:
        plt.close(fig)

    fig, ax = fig1()
    if line(ax, "rewards/accuracies", NEUTRAL, "train"):
        ax.axhspan(0.75, 0.85, color=CHOSEN, alpha=0.10, label="healthy 0.75–0.85")
        ax.axhline(0.5, color=REJECTED, ls="--", lw=1.2, label="chance 0.5")
        eval_pts(ax, "rewards/accuracies", EVAL, "eval")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("preference accuracy")
        save("accuracy", fig, [ax])
    else:
        plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.4, 3.3))
    ok1 = line(a1, "logps/chosen", CHOSEN, "chosen") | line(a1, "logps/rejected", REJECTED, "rejected")
    ok2 = line(a2, "logps_per_token/chosen", CHOSEN, "chosen") | line(a2, "logps_per_token/rejected", REJECTED,
                                                                      "rejected")
    if ok1 or ok2:
        eval_pts(a1, "logps/chosen", CHOSEN, "eval chosen")
        eval_pts(a2, "logps_per_token/chosen", CHOSEN, "eval chosen")
        a1.set_title("sum over completion tokens", fontsize=9.5)
        a2.set_title("per token", fontsize=9.5)
        a1.set_ylabel("policy log-prob (nats)")
        save("logps", fig, [a1, a2])
    else:
        plt.close(fig)

    fig, ax = fig1()
    if line(ax, "kl_proxy", KL, "train"):
        eval_pts(ax, "kl_proxy", EVAL, "eval")
        ax.set_ylabel("KL proxy (nats)")
        ax.set_ylim(bottom=0)
        save("kl", fig, [ax])
    else:
        plt.close(fig)

    fig, ax = fig1()
    if line(ax, "rewards/margins", NEUTRAL, "train"):
        eval_pts(ax, "rewards/margins", EVAL, "eval")
        ax.axhline(0, color="#94a3b8", lw=1)
        ax.set_ylabel("reward margin  r(chosen) − r(rejected)")
        save("margins", fig, [ax])
    else:
        plt.close(fig)

    fig, ax = fig1()
    if line(ax, "loss", EVAL, "train loss"):
        eval_pts(ax, "loss", NEUTRAL, "eval loss")
        ax.set_ylabel("loss")
        xs, ys = _xy(train, "grad_norm")
        if xs:
            ax2 = ax.twinx()
            ax2.plot(xs, ys, color=GRAD, lw=1, alpha=0.7, label="grad_norm (right)")
            ax2.set_ylabel("grad norm (before clip)", color=GRAD)
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=8.5, loc="upper right")
        save("loss", fig, [ax])
    else:
        plt.close(fig)

    fig, ax = fig1()
    if line(ax, "learning_rate", "#0891b2", "learning rate", smooth=False):
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        save("learning_rate", fig, [ax])
    else:
        plt.close(fig)
    return made


PLOTS = [  # (name, title, what healthy looks like)
    ("rewards", "Implicit rewards", "chosen should rise, rejected should fall; only their difference matters"),
    ("accuracy", "Preference accuracy", "share of pairs with r(chosen) > r(rejected): ~0.55 at the start, "
                                        "climbing toward 0.75–0.85"),
    ("logps", "Absolute log-probs", "the chosen log-prob should NOT collapse (a falling green line = failure mode 1)"),
    ("kl", "KL proxy to the reference", "should grow slowly; runaway growth means β is too small"),
    ("margins", "Reward margin", "the implicit-reward signal: should widen steadily"),
    ("loss", "Loss and gradient norm", "loss starts at ln 2 ≈ 0.693 for sigmoid DPO and falls"),
    ("learning_rate", "Learning rate", "the schedule"),
]


# ---------------------------------------------------------------------- html pieces
def _img(path: Path) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{path.stem}" src="data:image/png;base64,{b64}">'


def _na(what: str) -> str:
    return f'<p class="na">{html.escape(what)} not available.</p>'


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("key", "value")) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td>" + (f"<td class='num'>{_fmt(v)}</td></tr>" if _f(v) is not None
                   else f"<td>{html.escape(str(v))}</td></tr>") for k, v in rows)
    return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{body}</table>"


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out: list[tuple[str, Any]] = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, list) and all(not isinstance(x, (dict, list)) for x in d):
        return [(prefix, ", ".join(map(str, d)))]
    return [(prefix, json.dumps(d) if isinstance(d, list) else d)]


def _findings_html(findings: Optional[list[Finding]], note: str = "") -> str:
    if findings is None:
        return _na("Doctor findings (no metrics.jsonl)")
    if not findings:
        return '<div class="ok"><b>No problems found.</b> None of the doctor\'s checks fired on this run.</div>'
    order = {"error": 0, "warning": 1, "info": 2}
    parts = []
    for f in sorted(findings, key=lambda f: (order.get(f.severity, 3), f.step)):
        bg, fg = SEV_COLOR.get(f.severity, SEV_COLOR["info"])
        parts.append(
            f'<div class="finding" style="background:{bg};border-color:{fg}"><div class="t">'
            f'<span class="badge" style="background:{fg}">{html.escape(f.severity)}</span>{html.escape(f.check)}'
            f'<span class="step">step {f.step}</span></div><div>{html.escape(f.message)}</div>'
            f'<div class="fix"><b>Fix:</b> {html.escape(f.fix)}</div></div>')
    return note + "".join(parts)


def _pairs_html(pairs: Optional[list[dict]], n: int = 10) -> str:
    if pairs is None:
        return _na("pair_scores.jsonl")
    scored = [p for p in pairs if _f(p.get("margin")) is not None]
    if not scored:
        return _na("Pair margins")
    hardest = sorted(scored, key=lambda p: _f(p["margin"]))[:n]
    out = [f"<p class='hint'>The {len(hardest)} of {len(scored)} scored pairs with the most negative reward margin: "
           f"the policy prefers the rejected response most confidently here. Mislabelled pairs show up first.</p>"]
    for i, p in enumerate(hardest):
        m = _f(p["margin"])
        nums = ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in p.items()
                         if k not in ("margin", "index", "loss") and _f(v) is not None)
        src = html.escape(str(p.get("source", "")))
        out.append(
            f'<div class="pair"><div class="head"><b>pair #{html.escape(str(p.get("index", "?")))}</b>'
            f'<span>margin <span class="{"neg" if m < 0 else "pos"}">{m:+.4f}</span></span>'
            + (f'<span>loss {_fmt(p.get("loss"))}</span>' if _f(p.get("loss")) is not None else "")
            + f'<span style="color:#64748b">{src}</span></div><div class="nums">{nums}</div>'
            f'<details{" open" if i == 0 else ""}><summary>prompt / chosen / rejected</summary>'
            f'<div class="lbl">prompt</div><pre>{html.escape(as_text(p.get("prompt")))}</pre>'
            f'<div class="lbl" style="color:{CHOSEN}">chosen</div><pre class="c">{html.escape(as_text(p.get("chosen")))}</pre>'
            f'<div class="lbl" style="color:{REJECTED}">rejected</div><pre class="r">{html.escape(as_text(p.get("rejected")))}</pre>'
            f'</details></div>')
    return "".join(out)


def _kpis(train: list[dict], evals: list[dict], findings: Optional[list[Finding]]) -> str:
    def last(recs, key):
        for r in reversed(recs):
            if _f(r.get(key)) is not None:
                return _f(r.get(key))
        return None

    items = []
    for label, key, fmt in (("final accuracy", "rewards/accuracies", "{:.1%}"), ("final margin", "rewards/margins",
                            "{:+.3f}"), ("final loss", "loss", "{:.4f}"), ("KL proxy", "kl_proxy", "{:.2f}")):
        v, e = last(train, key), last(evals, "eval/" + key)
        if v is None and e is None:
            continue
        ev = f'<div class="e">eval {fmt.format(e)}</div>' if e is not None else ""
        items.append(f'<div class="kpi"><div class="v">{fmt.format(v) if v is not None else "–"}</div>'
                     f'<div class="l">{label}</div>{ev}</div>')
    st = last(train, "step")
    if st is not None:
        ps = last(train, "pairs_seen")
        items.append(f'<div class="kpi"><div class="v">{int(st)}</div><div class="l">steps</div>'
                     + (f'<div class="e">{int(ps)} pairs seen</div>' if ps is not None else "") + "</div>")
    if findings is not None:
        bad = sum(f.severity in ("warning", "error") for f in findings)
        items.append(f'<div class="kpi"><div class="v" style="color:{"#fca5a5" if bad else "#86efac"}">'
                     f'{bad if bad else "✓"}</div><div class="l">{"doctor warnings / errors" if bad else "doctor: healthy"}'
                     f'</div></div>')
    return f'<div class="kpis">{"".join(items)}</div>' if items else ""


# ---------------------------------------------------------------------- build
def build_report(run_dir, output=None) -> Path:
    """Write RUN_DIR/report/*.png and the HTML page (default RUN_DIR/report/report.html); return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if is_iterate_run(run_dir):  # a tilt iterate folder: its rounds' curves, and each round's own page
        return build_iterate_report(run_dir, output, round_report=build_report)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    output = Path(output) if output else out_dir / "report.html"
    run = RunDir(run_dir, writable=False)
    has_metrics = run.file(METRICS).is_file()
    records = run.read_records(METRICS) or []
    evals = [r for r in records if is_eval_record(r)]
    train = [r for r in records if not is_eval_record(r)]
    cfg = run.read_config()
    stats = run.read_json(DATA_STATS)
    pairs = run.read_records(PAIR_SCORES)
    findings: Optional[list[Finding]] = None
    if has_metrics:
        try:
            findings = diagnose_run(run_dir)
        except Exception as e:  # the report must render even if the doctor trips on odd data
            findings = [Finding("doctor", "info", 0, f"the doctor could not run: {e}", "")]
    made = _plots(train, evals, out_dir) if records else {}

    model = cfg.get("model") or "(config.yaml not available)"
    lt = cfg.get("loss_type")
    lt = ",".join(map(str, lt)) if isinstance(lt, list) else lt
    sub = " · ".join(html.escape(str(x)) for x in (f"model {model}", f"loss {lt}" if lt else None,
                                                    f"β = {cfg['beta']}" if "beta" in cfg else None,
                                                    f"lr = {cfg['learning_rate']}" if "learning_rate" in cfg else None)
                     if x)
    cards = []
    for name, title, hint in PLOTS:
        body = _img(made[name]) if name in made else _na(f"{title} (no such metric logged)")
        wide = ' style="grid-column:1 / -1"' if name == "logps" else ""
        cards.append(f'<div class="card"{wide}><h3>{html.escape(title)}</h3><p class="hint">{html.escape(hint)}</p>'
                     f'{body}</div>')
    plots_html = f'<div class="grid">{"".join(cards)}</div>' if records else _na("metrics.jsonl")
    cfg_html = _table(_flatten(cfg), ("option", "value")) if cfg else _na("config.yaml")
    stats_html = _table(_flatten(stats), ("statistic", "value")) if stats else _na("data_stats.json")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>tiltlm report · {html.escape(run_dir.name)}</title><style>{CSS}</style></head>
<body><div class="wrap">
<header><h1>DPO run report</h1><div class="sub">{html.escape(str(run_dir.resolve()))}</div>
<div class="sub">{sub}</div>{_kpis(train, evals, findings)}</header>
<h2>Doctor</h2>{_findings_html(findings)}
<h2>Dashboard</h2>{plots_html}
<h2>Length bias: margin vs length difference</h2>{length_section(pairs, _f(cfg.get("beta")) or 0.1, out_dir)}
<h2>Hardest pairs</h2>{_pairs_html(pairs)}
<h2>Run</h2><div class="two"><div><h3>Configuration</h3>{cfg_html}</div><div><h3>Dataset statistics</h3>{stats_html}</div></div>
<footer>generated by tiltlm · {now} · self-contained: plots also in {html.escape(str(out_dir))}</footer>
</div></body></html>
"""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return output


def _cmd_report(args) -> int:
    try:
        path = build_report(args.run_dir, args.output)
    except FileNotFoundError as e:
        print(f"tilt report: {e}")
        return 2
    print(f"report written to {path}")
    return 0


def add_cli(subparsers) -> None:
    """`tilt report RUN_DIR [--output FILE.html]`."""
    p = subparsers.add_parser("report", help="HTML dashboard of a run (plots, doctor findings, hardest pairs)",
                              description="Write a self-contained HTML report of RUN_DIR (PNGs in RUN_DIR/report/).")
    p.add_argument("run_dir", help="a tilt train (or tilt iterate) --output-dir")
    p.add_argument("--output", "-o", default=None, help="HTML file (default RUN_DIR/report/report.html)")
    p.set_defaults(func=_cmd_report)
