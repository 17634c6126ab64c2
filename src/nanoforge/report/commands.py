"""`nanoforge report --run-dir DIR`: report/report.md with plots, from what the run directory holds."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write <run_dir>/report/report.md with plots",
        description="Write <run_dir>/report/report.md: provenance, hardware, cost, a summary of the evaluations, "
                    "one section per stage (config, metrics, PNG plots of loss and validation bpb).")
    p.add_argument("--run-dir", required=True, help="the run directory")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from nanoforge.errors import UserError
    from nanoforge.report.build import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    print(f"wrote {write_report(run_dir)}")
    return 0
