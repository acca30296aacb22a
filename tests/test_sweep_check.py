"""A bad sweep fails before any of its runs starts, with one line naming the key and the cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_run_cli import run
from ttc.registry import ConfigError
from ttc.run import CONFIG_DIR
from ttc.sweep import check_sweep, drop_untaken, first_alike, sweep_cells


def test_cells_expand_like_the_basic_sweeper() -> None:
    cells = sweep_cells(["strategy=cot,best_of_n", "dataset.steps=4,6", "seed=1"])
    assert len(cells) == 4
    assert ["strategy=best_of_n", "dataset.steps=6", "seed=1"] in cells


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # the bad value is in the last cell: a per-cell check would find it only after the others ran
        (["strategy=best_of_n", "strategy.n=1,4,lots"], ["strategy.n", "strategy.n=lots"]),
        (["strategy=best_of_n", "strategy.select=majority,verifier", "verifier=none"], ["verifier", "select=verifier"]),
        (["strategy=cot", "dataset=arith,nope"], ["dataset/nope"]),
        # an option no cell takes is a typo, not an axis to drop
        (["strategy=cot,best_of_n", "++strategy.nn=1,4"], ["strategy.nn", "every cell"]),
        (["strategy=cot,best_of_n", "++strategy.nn=3"], ["strategy.nn", "every cell"]),
        # a key only best_of_n has, without ++: Hydra would fail the cot cells mid-sweep
        (["strategy=cot,best_of_n", "strategy.n=1,4"], ["strategy.n", "++"]),
    ],
)
def test_bad_cells_are_named(args: list[str], needles: list[str]) -> None:
    error = check_sweep(args, CONFIG_DIR)
    assert error is not None and all(n in error for n in needles), error


@pytest.mark.parametrize(
    "args",
    [
        ["strategy=cot,best_of_n", "++strategy.n=1,4"],  # cot runs once, without n
        ["strategy=best_of_n", "strategy.n=1,4,16", "strategy.select=majority,weighted", "verifier=prm"],
        ["strategy=mcts", "strategy.simulations=4,16", "dataset.steps=4,6", "hydra.sweep.dir=/tmp/x"],
    ],
)
def test_good_sweeps_pass(args: list[str]) -> None:
    assert check_sweep(args, CONFIG_DIR) is None


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["strategy=best_of_n", "strategy.n=1,4,lots"], "strategy.n"),
        (["strategy=cot,best_of_n", "++strategy.nn=1,4"], "strategy.nn: not a known option"),  # a typo
    ],
)
def test_cli_refuses_the_whole_sweep_before_the_first_run(tmp_path: Path, args: list[str], key: str) -> None:
    p = run("-m", *args, f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert p.returncode == 2
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and key in err[0] and "Traceback" not in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []  # no cell ran, not even the good ones


def _cells_and_their_runs(args: list[str]) -> list[tuple[list[str], dict[str, str], list[str]]]:
    """Per cell of a sweep: its overrides, the options it drops and the cell that runs it."""
    from hydra import compose, initialize_config_dir

    cells = sweep_cells(args)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        plans = []
        for cell in cells:
            dropped = drop_untaken(compose("config", cell), cell)
            plans.append((cell, dropped, first_alike(cells, cell, dropped)))
    return plans


def test_each_configuration_runs_in_the_first_of_its_cells() -> None:
    plans = _cells_and_their_runs(["strategy=cot,beam_search", "++strategy.n=4,16", "++strategy.width=2,4"])
    cot = [p for p in plans if p[0][0] == "strategy=cot"]
    assert len(cot) == 4 and all(sorted(dropped) == ["strategy.n", "strategy.width"] for _, dropped, _ in cot)
    assert all(first == cot[0][0] for _, _, first in cot)  # the first cot cell runs cot, once
    beams = [p for p in plans if p[0][0] == "strategy=beam_search"]
    assert len(beams) == 4 and all(not dropped and first == cell for cell, dropped, first in beams)


def test_only_options_the_cell_sets_are_dropped() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", ["strategy=cot", "++strategy.n=2"])
        # strategy.n from anywhere but the cell's own overrides (a config file) stays an error
        with pytest.raises(ConfigError, match=r"strategy\.n: not a known option"):
            drop_untaken(cfg, ["strategy=cot"])
        assert drop_untaken(cfg, ["strategy=cot", "++strategy.n=2"]).keys() == {"strategy.n"}
        assert "n" not in cfg.strategy


def test_the_prm_of_a_remote_run_gets_its_own_endpoints_also_under_verifier_auto() -> None:
    from hydra import compose, initialize_config_dir

    from ttc.build import check_config

    remote = ["backend=http", "backend.endpoints=[http://gpu-a:8000]", "verifier.engine.endpoints=[http://gpu-b:8001]"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        spec = check_config(compose("config", [*remote, "strategy=beam_search"]))
        assert (spec.verifier_name, spec.verifier_engine) == ("prm", {"endpoints": ["http://gpu-b:8001"]})
        assert spec.backend_args["endpoints"] == ["http://gpu-a:8000"]
        assert check_config(compose("config", [*remote, "strategy=cot"])).verifier_name is None
