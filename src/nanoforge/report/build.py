"""Write <run_dir>/report/ (report.md + PNGs) atomically: everything goes into a temporary folder next to it,
which then replaces the old report in one rename, so a reader never sees a half-written report."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nanoforge.report.collect import collect
from nanoforge.report.markdown import render
from nanoforge.report.plots import stage_plots


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    record = collect(run_dir)
    final = run_dir / "report"
    tmp = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=run_dir))
    try:
        plots = {stage.name: stage_plots(stage, tmp) for stage in record.stages}
        (tmp / "report.md").write_text(render(record, plots), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the report is for everyone who can read the run
        old = None
        if final.exists():
            old = run_dir / f".report.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "report.md"
