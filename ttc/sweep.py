"""Check every cell of a sweep before the first one starts.

Hydra's basic sweeper composes each cell only as it launches it, and our own
checks (``check_config``) run inside the job: a bad value in the last cell of a
grid would fail hours into the sweep. ``check_sweep`` expands the same command
line into its cells the way the basic sweeper does, composes each one and runs
``check_config`` on it, so a bad grid fails in seconds with one line naming the
cell and the key. It runs in the launching process, so it guards every launcher
(local, Slurm, Ray) alike.
"""

from __future__ import annotations

from collections import Counter

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ttc.build import check_config
from ttc.registry import UNKNOWN_OPTION, ConfigError


def sweep_cells(overrides: list[str]) -> list[list[str]]:
    """The cells of ``python -m ttc.run -m <overrides>``, in launch order."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [cell for batch in BasicSweeper.split_arguments(parsed, None) for cell in batch]


def check_sweep(
    overrides: list[str], config_dir: str, config_name: str = "config", *, multirun: bool = True
) -> str | None:
    """One line describing the first bad cell, or None when every cell can run.

    A cell whose only problem is an option its strategy does not take is skipped
    at run time (``strategy.n`` for ``cot`` in ``strategy=cot,best_of_n
    strategy.n=1,4``); an option that no cell takes is a typo and fails here.
    ``multirun=False`` checks a single run's command line: its one cell goes unnamed.
    """
    # hydra.* settings (sweep dir, launcher) do not change what a cell computes.
    job = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        cells = sweep_cells(job)
    except HydraException as exc:
        return f"sweep: {first_line(exc)}"
    skipped: Counter[str] = Counter()  # option key -> cells that do not take it
    first_message: dict[str, str] = {}
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            for cell in cells:
                where = f" [cell: {' '.join(cell) or '(defaults)'}]" if multirun else ""
                try:
                    check_config(compose(config_name=config_name, overrides=cell))
                except ConfigError as exc:
                    if UNKNOWN_OPTION not in str(exc):
                        return f"{exc}{where}"
                    key = str(exc).split(":")[0]
                    skipped[key] += 1
                    first_message.setdefault(key, str(exc))
                except (HydraException, OmegaConfBaseException) as exc:
                    hint = ""
                    if "Could not override" in str(exc):
                        hint = (" (for a key only some cells' strategies take, write ++key=...)" if multirun
                                else " (no such key in the config)")
                    return f"{first_line(exc)}{hint}{where}"
    finally:
        GlobalHydra.instance().clear()
    for key, count in skipped.items():
        if count == len(cells):
            return f"{first_message[key]}{' [every cell]' if multirun else ''}"
    return None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
