"""``python -m ttc.report``: leaderboard reports over the run directories ``python -m ttc.run`` writes.

    python -m ttc.report multirun/2025-01-01/12-00-00
    python -m ttc.report sweep_a sweep_b --out report --title "Arithmetic, 4 steps" --dataset arith

Writes ``report.md``, a self-contained ``report.html`` and the plots as PNG files.
See docs/report.md for what each table means and how configurations are ranked.
"""

from ttc.report.build import write_report
from ttc.report.data import ReportError

__all__ = ["ReportError", "write_report"]
