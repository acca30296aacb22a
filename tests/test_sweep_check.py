"""A bad sweep fails before any of its runs starts, with one line naming the key and the cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_run_cli import run
from ttc.run import CONFIG_DIR
from ttc.sweep import check_sweep, sweep_cells


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
        # an option no cell takes is a typo, not an axis to skip
        (["strategy=cot,best_of_n", "++strategy.nn=1,4"], ["strategy.nn", "every cell"]),
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
        ["strategy=cot,best_of_n", "++strategy.n=1,4"],  # cot cells are skipped at run time
        ["strategy=best_of_n", "strategy.n=1,4,16", "strategy.select=majority,weighted", "verifier=prm"],
        ["strategy=mcts", "strategy.simulations=4,16", "dataset.steps=4,6", "hydra.sweep.dir=/tmp/x"],
    ],
)
def test_good_sweeps_pass(args: list[str]) -> None:
    assert check_sweep(args, CONFIG_DIR) is None


def test_cli_refuses_the_whole_sweep_before_the_first_run(tmp_path: Path) -> None:
    p = run("-m", "strategy=best_of_n", "strategy.n=1,4,lots", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert p.returncode == 2
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and "strategy.n" in err[0] and "Traceback" not in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []  # no cell ran, not even the good ones


def test_the_prm_of_a_remote_run_gets_its_own_endpoints_also_under_verifier_auto() -> None:
    from hydra import compose, initialize_config_dir

    from ttc.build import check_config

    remote = ["backend=http", "backend.endpoints=[http://gpu-a:8000]", "verifier.engine.endpoints=[http://gpu-b:8001]"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        spec = check_config(compose("config", [*remote, "strategy=beam_search"]))
        assert (spec.verifier_name, spec.verifier_engine) == ("prm", {"endpoints": ["http://gpu-b:8001"]})
        assert spec.backend_args["endpoints"] == ["http://gpu-a:8000"]
        assert check_config(compose("config", [*remote, "strategy=cot"])).verifier_name is None
