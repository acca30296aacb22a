"""Accuracy-against-compute plots: a line per strategy, bootstrap error bars, the Pareto frontier starred."""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from ttc.report.metrics import Axis, Measured
from ttc.report.stats import Point, pareto_front

MARKERS = "osD^vP<>Xh"
ANNOTATE_AT_MOST = 24  # beyond this many points the knob labels overlap into noise


def human_bytes(value: float, _pos: object = None) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plain_number(value: float, _pos: object = None) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def family_colors(families: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per strategy, the same in every plot (families in leaderboard order)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {f: palette[i % len(palette)] for i, f in enumerate(families)}


def plot(measured: Sequence[Measured], axis: Axis, families: Sequence[str], subtitle: str) -> bytes:
    """One PNG: accuracy against ``axis`` on a log scale."""
    # The Agg canvas directly, not pyplot: no global backend switch, no figure registry to leak
    fig = Figure(figsize=(9.0, 5.4), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = [m for m in measured if axis.value(m) > 0]
    hidden = len(measured) - len(shown)
    colors = family_colors(families)
    if not shown:
        ax.text(0.5, 0.5, f"no configuration has a {axis.title} figure above 0", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        ax.set_axis_off()
    else:
        for i, family in enumerate(families):
            mine = sorted((m for m in shown if m.family == family), key=axis.value)
            if not mine:
                continue
            xs = [axis.value(m) for m in mine]
            ys = [m.accuracy for m in mine]
            err = [[max(0.0, m.accuracy - m.ci[0]) for m in mine], [max(0.0, m.ci[1] - m.accuracy) for m in mine]]
            ax.errorbar(xs, ys, yerr=err, color=colors[family], marker=MARKERS[i % len(MARKERS)], markersize=6,
                        linewidth=1.8, capsize=3, elinewidth=1, alpha=0.9, label=family, zorder=3)
            if len(shown) <= ANNOTATE_AT_MOST:
                for m, x, y in zip(mine, xs, ys, strict=True):
                    if m.config.params:
                        ax.annotate(m.config.params, (x, y), textcoords="offset points", xytext=(6, -11),
                                    fontsize=7, color=colors[family], alpha=0.9)
        points = [Point(m.family, axis.value(m), m.accuracy) for m in shown]
        front = sorted(pareto_front(points), key=lambda i: (points[i].cost, -points[i].accuracy))
        fx = [points[i].cost for i in front]
        fy = [points[i].accuracy for i in front]
        ax.plot(fx, fy, linestyle="--", color="black", linewidth=1.2, zorder=4)
        ax.scatter(fx, fy, marker="*", s=240, facecolors="none", edgecolors="black", linewidths=1.1, zorder=5)
        ax.set_xscale("log")
        # 1-2-5 ticks (powers of two for bytes) read better than bare powers of ten over a decade or two
        if axis.bytes:
            ax.xaxis.set_major_locator(LogLocator(base=2.0))
            ax.xaxis.set_major_formatter(FuncFormatter(human_bytes))
        else:
            ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        lo = min(m.ci[0] for m in shown)
        hi = max(m.ci[1] for m in shown)
        pad = max(0.02, 0.08 * (hi - lo))
        ax.set_ylim(max(-0.01, lo - pad), min(1.01, hi + pad))
        ax.margins(x=0.08)
        ax.grid(True, which="major", color="0.85", linewidth=0.8)
        ax.grid(True, which="minor", axis="x", color="0.93", linewidth=0.5)
        ax.set_axisbelow(True)
        ax.set_xlabel(axis.label)
        ax.set_ylabel("accuracy (95% bootstrap CI)")
        frontier_key = Line2D([], [], color="black", linestyle="--", linewidth=1.2, marker="*", markersize=13,
                              markerfacecolor="none", label="Pareto frontier")
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=[*handles, frontier_key], loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  fontsize=9, title="strategy", title_fontsize=9, alignment="left")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle(f"Accuracy vs {axis.title}", fontsize=13, fontweight="bold")
    note = subtitle + (f" · {hidden} configuration(s) at 0 not shown on the log axis" if hidden else "")
    ax.set_title(note, fontsize=9, color="0.35")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()
