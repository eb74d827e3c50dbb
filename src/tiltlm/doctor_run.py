"""`tilt doctor RUN_DIR`: replay a finished (or running) run's files through the DPO doctor (diagnostics.py).

Reads metrics.jsonl, data_stats.json and config.yaml, prints the findings (a rich table, or `--plain`), writes
RUN_DIR/doctor.jsonl, and exits 1 when anything is a warning or an error -- usable as a CI gate on a training run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .diagnostics import Doctor, DoctorThresholds, Finding, _num, _ok


def read_jsonl(path) -> list[dict]:
    """Records of a JSONL file; unparsable lines (e.g. a truncated last line) are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def load_run_config(run_dir) -> dict:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def diagnose_run(run_dir, thresholds: Optional[DoctorThresholds] = None) -> list[Finding]:
    """Replay a run directory (metrics.jsonl, data_stats.json, config.yaml) through a fresh Doctor."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found (is {run_dir} a tiltlm run directory?)")
    records = read_jsonl(metrics)
    cfg = load_run_config(run_dir)
    lt = cfg.get("loss_type", ["sigmoid"])
    lt = [s.strip() for s in lt.split(",")] if isinstance(lt, str) else [str(s) for s in (lt or ["sigmoid"])]
    lr = _num(cfg, "learning_rate")
    if lr is None:
        lrs = [x for x in (_num(r, "learning_rate") for r in records) if _ok(x)]
        lr = max(lrs) if lrs else None
    beta = _num(cfg, "beta")
    doc = Doctor(beta=beta if _ok(beta) and beta > 0 else 0.1, learning_rate=lr, loss_types=lt,
                 thresholds=thresholds)
    stats_path = run_dir / "data_stats.json"
    if stats_path.is_file():
        try:
            doc.check_data(json.loads(stats_path.read_text()))
        except (json.JSONDecodeError, AttributeError):
            pass
    for rec in records:
        doc.observe(rec)
    doc.finish()
    return doc.findings


def write_findings(path, findings: list[Finding]) -> None:
    Path(path).write_text("".join(json.dumps(f.to_dict()) + "\n" for f in findings))


SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _cmd_doctor(args) -> int:
    run_dir = Path(args.run_dir)
    try:
        findings = diagnose_run(run_dir)
    except FileNotFoundError as e:
        print(f"tilt doctor: {e}")
        return 2
    write_findings(run_dir / "doctor.jsonl", findings)
    if not findings:
        print(f"tilt doctor: {run_dir}: no problems found")
    elif not args.plain:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"DPO doctor: {run_dir}", show_lines=True)
        for col in ("step", "severity", "check", "what we saw", "fix"):
            table.add_column(col, overflow="fold", no_wrap=col in ("step", "severity", "check"),
                             ratio=None if col in ("step", "severity", "check") else 1)
        for f in findings:
            table.add_row(str(f.step), f"[{SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/]", f.check,
                          f.message, f.fix)
        Console().print(table)
    else:
        for f in findings:
            print(f"[{f.severity}] step {f.step} {f.check}: {f.message}\n    fix: {f.fix}")
    print(f"findings written to {run_dir / 'doctor.jsonl'}")
    return 1 if any(f.severity in ("warning", "error") for f in findings) else 0


def add_cli(subparsers) -> None:
    """`tilt doctor RUN_DIR`: exit 0 when there is no warning/error, 1 otherwise, 2 when RUN_DIR has no metrics."""
    p = subparsers.add_parser("doctor", help="diagnose a DPO run from its metrics (failure-mode checks)",
                              description="Replay RUN_DIR/metrics.jsonl through the DPO doctor, print the findings, "
                                          "write RUN_DIR/doctor.jsonl. Exit 1 if any warning or error.")
    p.add_argument("run_dir", help="a tilt train --output-dir")
    p.add_argument("--plain", action="store_true", help="plain text instead of a table")
    p.set_defaults(func=_cmd_doctor)
