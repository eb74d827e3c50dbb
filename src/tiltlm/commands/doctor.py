"""`tilt doctor RUN_DIR`: replay a run's files through the DPO doctor (doctor/replay.py) and print the findings.

Prints a rich table (or `--plain` text), writes RUN_DIR/doctor.jsonl, and exits 1 when anything is a warning or an
error -- usable as a CI gate on a training run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..doctor.replay import diagnose_run
from ..iterate.diagnose import diagnose_iterate_run
from ..rundir import DOCTOR, RunDir
from .iterate_report import is_iterate_run

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _diagnose(run_dir: Path) -> list:
    """The findings of a run folder, written to its doctor.jsonl; an iterate run's carry their round."""
    if not is_iterate_run(run_dir):
        findings = diagnose_run(run_dir)
        RunDir(run_dir).write_records(DOCTOR, (f.to_dict() for f in findings))
        return findings
    tagged = diagnose_iterate_run(run_dir)
    if not tagged and not (run_dir / "round-000").is_dir():
        raise FileNotFoundError(f"{run_dir} is an iterate run with no round yet")
    RunDir(run_dir).write_records(DOCTOR, ({"round": k, **f.to_dict()} for k, f in tagged))
    return [dataclasses.replace(f, message=f"round {k}: {f.message}") for k, f in tagged]


def _cmd_doctor(args) -> int:
    run_dir = Path(args.run_dir)
    try:
        findings = _diagnose(run_dir)
    except FileNotFoundError as e:
        print(f"tilt doctor: {e}")
        return 2
    if not findings:
        print(f"tilt doctor: {run_dir}: no problems found")
    elif not args.plain:
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
    print(f"findings written to {run_dir / DOCTOR}")
    return 1 if any(f.severity in ("warning", "error") for f in findings) else 0


def add_cli(subparsers) -> None:
    """`tilt doctor RUN_DIR`: exit 0 when there is no warning/error, 1 otherwise, 2 when RUN_DIR has no metrics."""
    p = subparsers.add_parser("doctor", help="diagnose a DPO run from its metrics (failure-mode checks)",
                              description="Replay RUN_DIR/metrics.jsonl through the DPO doctor, print the findings, "
                                          "write RUN_DIR/doctor.jsonl. Exit 1 if any warning or error.")
    p.add_argument("run_dir", help="a tilt train (or tilt iterate) --output-dir")
    p.add_argument("--plain", action="store_true", help="plain text instead of a table")
    p.set_defaults(func=_cmd_doctor)
