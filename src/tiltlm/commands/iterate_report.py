"""`tilt report RUN_DIR` of a `tilt iterate` run: the per-round curves, a table of the rounds, the doctor's findings
and each round's own `tilt report` page (one self-contained HTML file, PNGs inlined)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Callable

from ..iterate.loop import ITERATE, round_dir
from ..iterate.report import plot_rounds, round_points
from ..rundir import DOCTOR, METRICS, RunDir

COLUMNS = ("round", "samples/score_mean", "heldout/score_mean", "heldout/win_rate", "heldout/kl_to_initial",
           "pairs/count", "pairs/tied_frac", "pairs/score_gap_mean", "pairs/similarity_mean", "train/loss",
           "train/rewards/accuracies")
STYLE = ("body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#0f172a}table{border-collapse:collapse;"
         "font-size:13px}td,th{padding:4px 8px;border-bottom:1px solid #e2e8f0;text-align:right}img{max-width:100%}"
         ".f{border-left:4px solid #d97706;padding:6px 10px;margin:6px 0;background:#fffbeb}")


def is_iterate_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ITERATE).is_file()


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v if v is not None else ""))


def build_iterate_report(run_dir: str | Path, output=None, round_report: Callable = None) -> Path:
    """RUN_DIR/report/report.html; `round_report(folder)` writes a round's training report (tilt report's)."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir, writable=False)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_rounds(run_dir, out_dir / "rounds.png")
    points = round_points(run.read_records(METRICS) or [])
    rows = "".join("<tr>" + "".join(f"<td>{_cell(p.get(c))}</td>" for c in COLUMNS) + "</tr>" for p in points)
    table = f"<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in COLUMNS)}</tr>{rows}</table>"
    findings = "".join(f'<div class="f">round {f.get("round")} · <b>{html.escape(str(f.get("check")))}</b>: '
                       f'{html.escape(str(f.get("message")))}<br>fix: {html.escape(str(f.get("fix")))}</div>'
                       for f in run.read_records(DOCTOR) or []) or "<p>no findings</p>"
    links = []
    for p in points:
        train = round_dir(run_dir, p["round"]) / "train"
        if p.get("kind") == "round" and train.is_dir() and round_report is not None:
            page = round_report(train)
            links.append(f'<li><a href="{html.escape(os.path.relpath(page, out_dir))}">round {p["round"]}</a></li>')
    img = (f'<img alt="rounds" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
           if png else "<p>no rounds finished yet</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tiltlm iterate · {html.escape(run_dir.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>Iterative DPO run</h1><p>{html.escape(str(run_dir))}</p>"
            f"<h2>Per-round curves</h2>{img}<h2>Rounds</h2>{table}<h2>Doctor</h2>{findings}"
            f"<h2>Each round's training run</h2><ul>{''.join(links)}</ul></body></html>\n")
    output = Path(output) if output else out_dir / "report.html"
    output.write_text(page, encoding="utf-8")
    return output
