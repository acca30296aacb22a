"""Check every cell of a sweep before the first one starts.

Hydra's basic sweeper composes each cell only as it launches it, and our own
checks (``check_config``) run inside the job: a bad value in the last cell of a
grid would fail hours into the sweep. ``check_sweep`` expands the same command
line into its cells the way the basic sweeper does, composes each one and runs
``check_config`` on it, so a bad grid fails in seconds with one line naming the
cell and the key. It runs in the launching process, so it guards every launcher
(local, Slurm, Ray) alike.

One rule for the options a cell does not take (``strategy.n`` for the ``cot`` cells of
``strategy=cot,best_of_n ++strategy.n=1,4,16``): an option that the sweep's command line sets
and a cell's strategy (verifier, dataset, backend) does not take is dropped from that cell
(``drop_untaken``), and of the cells that are then alike only the first runs (``first_alike``);
each later one points at it. The check here and each cell at run time (``ttc.run``) apply
the same two functions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ttc.build import check_config
from ttc.registry import UNKNOWN_OPTION, ConfigError


def sweep_cells(overrides: list[str]) -> list[list[str]]:
    """The cells of ``python -m ttc.run -m <overrides>``, in launch order."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [cell for batch in BasicSweeper.split_arguments(parsed, None) for cell in batch]


def launched_cells(sweep_dir: Path) -> list[list[str]]:
    """The cells of the sweep running in ``sweep_dir``: Hydra's basic sweeper writes the sweep's
    overrides to its ``multirun.yaml`` before the first cell starts. Empty without one (another sweeper)."""
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task)
        return sweep_cells([str(o) for o in overrides])  # type: ignore[union-attr]
    except (OSError, HydraException, OmegaConfBaseException):
        return []


def option_key(override: str) -> str:
    """``++strategy.n=4`` -> ``strategy.n``."""
    return override.lstrip("+~").split("=", 1)[0]


def drop_untaken(cfg: DictConfig, cell: list[str]) -> dict[str, str]:
    """Drop from ``cfg`` (in place) the options that the overrides ``cell`` set and its strategy
    (verifier, dataset, backend) does not take, and return them: key -> why. ``cfg`` is checked
    on to the end: any other problem, an option not taken from elsewhere included, is raised."""
    settable = {option_key(o) for o in cell}
    dropped: dict[str, str] = {}
    while True:
        try:
            check_config(cfg)
            return dropped
        except ConfigError as exc:
            key = str(exc).split(":")[0]
            if UNKNOWN_OPTION not in str(exc) or key not in settable or key in dropped:
                raise
            dropped[key] = str(exc)
            section, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, section)
            with open_dict(node):
                node.pop(leaf)


def first_alike(cells: list[list[str]], cell: list[str], dropped: dict[str, str]) -> list[str]:
    """The first of the sweep's ``cells`` that differs from ``cell`` only in the ``dropped`` options:
    the one that runs what ``cell`` would (``cell`` itself when the sweep is not known)."""

    def rest(overrides: list[str]) -> list[str]:
        return [o for o in overrides if option_key(o) not in dropped]

    return next((c for c in cells if rest(c) == rest(cell)), cell)


def check_sweep(
    overrides: list[str], config_dir: str, config_name: str = "config", *, multirun: bool = True
) -> str | None:
    """One line describing the first bad cell, or None when every cell can run.

    A cell runs without the options it does not take (``drop_untaken``), checked on; an
    option that no cell takes is a typo and fails here. ``multirun=False`` checks a single
    run's command line: its one cell goes unnamed, and any option it does not take fails.
    """
    # hydra.* settings (sweep dir, launcher) do not change what a cell computes.
    job = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        cells = sweep_cells(job)
    except HydraException as exc:
        return f"sweep: {first_line(exc)}"
    not_taken: Counter[str] = Counter()  # option key -> cells that do not take it
    first_message: dict[str, str] = {}
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            for cell in cells:
                where = f" [cell: {' '.join(cell) or '(defaults)'}]" if multirun else ""
                try:
                    dropped = drop_untaken(compose(config_name=config_name, overrides=cell), cell)
                except ConfigError as exc:
                    return f"{exc}{where}"
                except (HydraException, OmegaConfBaseException) as exc:
                    hint = ""
                    if "Could not override" in str(exc):
                        hint = (" (for a key only some cells' strategies take, write ++key=...)" if multirun
                                else " (no such key in the config)")
                    return f"{first_line(exc)}{hint}{where}"
                not_taken.update(dropped.keys())
                for key, why in dropped.items():
                    first_message.setdefault(key, why)
    finally:
        GlobalHydra.instance().clear()
    for key, count in not_taken.items():
        if count == len(cells):
            return f"{first_message[key]}{' [every cell]' if multirun else ''}"
    return None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
