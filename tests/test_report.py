"""``python -m ttc.report`` on fabricated run directories: the statistics, the ranking rule, the outputs."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ttc.report.build import rank
from ttc.report.cli import main
from ttc.report.data import Configuration, Inputs, Query, load, read_run
from ttc.report.stats import Point, bootstrap_ci, budget_levels, dominance_layers, matched_compute_scores, pareto_front

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ("accuracy_vs_tokens.png", "accuracy_vs_gpu_seconds.png", "accuracy_vs_usd.png", "accuracy_vs_kv_peak.png")

# ---- fixture generator: run directories as ttc.run writes them, with synthetic records -----------------------

# (strategy config, tokens per query at 4 steps, accuracy at 4 steps): more compute, more accuracy, mostly
GRID: list[tuple[dict[str, Any], float, float]] = [
    ({"name": "cot", "temperature": 1.0, "max_tokens": 160}, 60, 0.35),
    ({"name": "best_of_n", "n": 4, "select": "majority", "temperature": 1.0}, 240, 0.50),
    ({"name": "best_of_n", "n": 16, "select": "majority", "temperature": 1.0}, 960, 0.62),
    ({"name": "beam_search", "n": 4, "width": 2, "max_depth": 12, "select": "best"}, 200, 0.55),
    ({"name": "beam_search", "n": 16, "width": 4, "max_depth": 12, "select": "best"}, 800, 0.72),
    ({"name": "mcts", "simulations": 8, "branching": 4, "max_depth": 12, "select": "best"}, 500, 0.45),
    ({"name": "mcts", "simulations": 32, "branching": 4, "max_depth": 12, "select": "best"}, 2000, 0.66),
]
STEPS = (2, 4, 8)


def record(qid: str, rng: random.Random, accuracy: float, tokens: float, steps: int, verifier: bool) -> dict[str, Any]:
    generated = tokens * rng.uniform(0.8, 1.2)
    prompt = 20 + 3 * steps
    gpu = generated * 2e-4
    vtokens = generated * 1.1 if verifier else 0
    vgpu = vtokens * 5e-5
    ideal = prompt * max(0, round(tokens / 60) - 1)
    correct = rng.random() < accuracy
    return {
        "id": qid, "gold": "7", "answer": "7" if correct else "3", "correct": correct, "error": None,
        "meta": {"difficulty": steps},
        "prompt_tokens": prompt, "generated_tokens": round(generated), "cached_tokens": int(ideal * 0.9),
        "ideal_cached_tokens": ideal, "kv_peak_tokens": round(prompt + generated / 3),
        "kv_peak_bytes": round((prompt + generated / 3) * 4096), "kv_peak_bytes_unshared": round(
            (prompt * max(1, tokens / 60) + generated / 3) * 4096),
        "gpu_seconds": gpu, "usd": gpu * 2.9 / 3600, "verifier_tokens": round(vtokens), "verifier_gpu_seconds": vgpu,
        "verifier_usd": vgpu * 2.9 / 3600, "wall_seconds": gpu * 3, "trace": {"candidates": [], "events": []},
    }


def make_run(
    run_dir: Path, strategy: dict[str, Any], *, tokens: float, accuracy: float, steps: int = 4, queries: int = 30,
    complete: bool = True, dataset: str = "arith", seed: int = 0, torn: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """One run directory: config.yaml, results.jsonl, and summary.json when ``complete``.

    ``settings``: config sections (or top-level values) to merge over the defaults."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "backend": {"name": "vllm", "block_size": None}, "model": {"name": "ttc-reference"},
        "strategy": strategy, "dataset": {"name": dataset, "steps": steps, "limit": queries, "seed": 0},
        "verifier": {"name": "auto"}, "seed": seed, "concurrency": 64, "cost": {"usd_per_gpu_hour": 2.9},
    }
    for key, value in (settings or {}).items():
        config[key] = config.get(key, {}) | value if isinstance(value, dict) else value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rng = random.Random(f"{json.dumps(strategy, sort_keys=True)}/{steps}/{seed}")
    verifier = strategy["name"] in ("beam_search", "mcts")
    records = [record(f"{dataset}-{steps}-{i}", rng, accuracy, tokens, steps, verifier) for i in range(queries)]
    lines = [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if torn:
        text += lines[0][: len(lines[0]) // 2]  # a killed run's half-written record
    (run_dir / "results.jsonl").write_text(text)
    if complete:
        acc = sum(r["correct"] for r in records) / len(records)
        (run_dir / "summary.json").write_text(json.dumps({"n_queries": len(records), "accuracy": acc}))
    return run_dir


def make_sweep(root: Path, queries: int = 30) -> Path:
    """A Hydra-multirun-shaped sweep: strategies x sizes x difficulty, plus the leftovers real sweeps have."""
    for strategy, tokens, accuracy in GRID:
        for steps in STEPS:
            knobs = ",".join(f"strategy.{k}={v}" for k, v in strategy.items() if k != "name")
            name = f"dataset.steps={steps},strategy={strategy['name']}" + (f",{knobs}" if knobs else "")
            # harder chains: fewer right, longer answers
            scale = steps / 4
            run = make_run(root / name, strategy, tokens=tokens * (0.6 + 0.4 * scale),
                           accuracy=max(0.02, min(0.98, accuracy - 0.12 * math.log2(scale))), steps=steps,
                           queries=queries, torn=steps == 8)
            (run / ".hydra").mkdir()
            (run / ".hydra" / "config.yaml").write_text("hydra: {}\n")  # Hydra's own copy: not a run
    make_run(root / "strategy=mcts,strategy.simulations=128", GRID[-1][0] | {"simulations": 128}, tokens=8000,
             accuracy=0.8, queries=7, complete=False)
    (root / "strategy=cot,strategy.n=4").mkdir()
    (root / "strategy=cot,strategy.n=4" / "skipped.json").write_text('{"reason": "strategy.n"}')
    (root / "strategy=cot,strategy.n=16").mkdir()  # a skipped cell that left nothing
    (root / "strategy=cot,++strategy.n=64").mkdir()  # a cell whose configuration another cell ran
    (root / "strategy=cot,++strategy.n=64" / "same_as.json").write_text(
        '{"same_as": ["strategy=cot", "++strategy.n=1"], "without": ["strategy.n"]}')
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def report(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main([str(sweep), "--out", str(out), "--resamples", "300"]) == 0
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttc.report", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


# ---- statistics ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_queries() -> None:
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 1000
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4  # ~1/sqrt(100) as wide: 1/10
    assert bootstrap_ci(small, seed=1) == (lo_s, hi_s)  # seeded: the report is reproducible
    assert 0.15 < hi_s - lo_s < 0.6  # ~ 2 * 1.96 * sqrt(.25 / 20) = 0.44
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_pareto_frontier_on_a_hand_made_example() -> None:
    points = [
        Point("a", 10, 0.50),  # 0 frontier
        Point("a", 20, 0.50),  # 1 dominated by 0: same accuracy, more compute
        Point("b", 20, 0.70),  # 2 frontier
        Point("b", 40, 0.65),  # 3 dominated by 2
        Point("c", 80, 0.90),  # 4 frontier
        Point("c", 10, 0.50),  # 5 ties 0 exactly: neither dominates the other
        Point("c", 90, 0.90),  # 6 dominated by 4
    ]
    assert pareto_front(points) == [0, 2, 4, 5]
    assert dominance_layers(points) == [1, 2, 1, 2, 1, 1, 2]


def test_budget_levels_are_powers_of_two_covering_every_point() -> None:
    assert budget_levels([10, 100, 300]) == [16, 32, 64, 128, 256, 512]
    assert budget_levels([64, 64]) == [64]


def queries(n: int, correct: int, tokens: float) -> list[Query]:
    figures = dict.fromkeys(("prompt_tokens", "cached_tokens", "ideal_cached_tokens", "kv_peak_tokens", "kv_peak_bytes",
                             "kv_peak_bytes_unshared", "gpu_seconds", "usd", "verifier_tokens",
                             "verifier_gpu_seconds", "verifier_usd", "wall_seconds"), 1.0)
    return [Query(str(i), i < correct, None, None, {**figures, "generated_tokens": tokens}) for i in range(n)]


def test_ranking_rule_on_a_hand_made_example() -> None:
    # x is cheap and decent, y accurate at 100 tokens, z the most accurate but only at 300.
    # Budgets 16..512: x = (.5 * 3 + .6 * 3) / 6 = .55, y = .8 * 3 / 6 = .4, z = .9 / 6 = .15
    points = [Point("x", 10, 0.5), Point("x", 100, 0.6), Point("y", 100, 0.8), Point("z", 300, 0.9)]
    scores = matched_compute_scores(points)
    assert scores == pytest.approx({"x": 0.55, "y": 0.4, "z": 0.15})

    configs = [
        Configuration("x(n=1)", "x", "n=1", queries=queries(10, 5, 10)),
        Configuration("x(n=10)", "x", "n=10", queries=queries(10, 6, 100)),
        Configuration("y(n=10)", "y", "n=10", queries=queries(10, 8, 100)),
        Configuration("z(n=30)", "z", "n=30", queries=queries(10, 9, 300)),
    ]
    ranked = rank(Inputs(configs, [], [], "toy", 0), resamples=50)
    assert ranked.families == ["x", "y", "z"]
    # layer 1 (frontier) by accuracy, then x(n=10), dominated by y(n=10)
    assert [m.label for m in ranked.configs] == ["z(n=30)", "y(n=10)", "x(n=1)", "x(n=10)"]
    assert ranked.layers == [1, 1, 1, 2]


# ---- the report ---------------------------------------------------------------------------------------------


def test_report_writes_every_output(report: Path) -> None:
    for name in (*PLOTS, "report.md", "report.html"):
        assert (report / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_the_leaderboard(report: Path) -> None:
    md = (report / "report.md").read_text()
    assert md.startswith("# Test-time compute report: arith")
    for heading in ("## Leaderboard", "## Accuracy at matched compute", "## Accuracy against compute",
                    "## Pareto frontier", "## Cost breakdown", "## By difficulty", "## Runs"):
        assert heading in md
    assert "How strategies are ranked" in md and "How configurations are ranked" in md
    for label in ("`cot`", "`best_of_n(n=16)`", "`beam_search(n=16, width=4)`", "`mcts(sims=32, k=4)`"):
        assert label in md
    assert "| # | Strategy | Matched-compute score |" in md
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \| `", line)]
    assert len(rows) == 4 + len(GRID)  # strategy rows + configuration rows
    for name in PLOTS:
        assert f"]({name})" in md
    # per-difficulty columns, pooled over the dataset.steps runs
    assert re.search(r"\| Configuration \| 2 \| 4 \| 8 \|", md)


def test_incomplete_runs_are_listed_not_counted(report: Path) -> None:
    md = (report / "report.md").read_text()
    assert "1 incomplete run(s) left out" in md
    assert "strategy=mcts,strategy.simulations=128" in md
    assert "sims=128" not in md  # its 7 records are in no table
    assert "1 skipped sweep cell(s)" in md and "1 sweep cell(s) run by another" in md
    assert f"{len(GRID)} torn or unreadable line(s)" in md  # one per steps=8 run


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(PLOTS)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert "<table>" in page and "mcts(sims=32, k=4)" in page


def test_default_out_is_under_the_first_input(tmp_path: Path) -> None:
    make_run(tmp_path / "run", GRID[1][0], tokens=100, accuracy=0.5)
    assert main([str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report" / "report.html").exists()
    # a single run: one configuration, one strategy
    assert "`best_of_n(n=4)`" in (tmp_path / "run" / "report" / "report.md").read_text()


def test_configurations_pool_runs_and_label_what_varies(tmp_path: Path) -> None:
    base = {"name": "best_of_n", "n": 4, "select": "majority"}
    make_run(tmp_path / "a", base, tokens=100, accuracy=0.5, seed=0)
    make_run(tmp_path / "b", base, tokens=100, accuracy=0.5, seed=1)  # a replicate: pooled
    make_run(tmp_path / "c", base | {"select": "verifier"}, tokens=100, accuracy=0.6)
    assert main([str(tmp_path), str(tmp_path / "a"), "--out", str(tmp_path / "out"), "--resamples", "20"]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "`best_of_n(n=4, select=majority)`" in md and "`best_of_n(n=4, select=verifier)`" in md
    # passing a run twice (itself and its parent) does not count it twice: 30 + 30 queries, not 90
    row = next(line for line in md.splitlines() if re.match(r"\| \d \| `best_of_n\(n=4, select=majority\)`", line))
    assert row.rstrip(" |").endswith("| 60"), row


def accuracy(config: Configuration) -> float:
    return sum(q.correct for q in config.queries) / len(config.queries)


def test_a_setting_outside_the_strategy_makes_its_own_configuration(tmp_path: Path) -> None:
    beam = GRID[3][0]
    for aggregate, acc in (("min", 0.3), ("last", 0.9)):
        make_run(tmp_path / aggregate, beam, tokens=200, accuracy=acc,
                 settings={"verifier": {"name": "prm", "aggregate": aggregate}})
    configs = {c.label: c for c in load([tmp_path]).configurations}
    low, high = (f"beam_search(n=4, width=2) [verifier.aggregate={a}]" for a in ("min", "last"))
    assert sorted(configs) == sorted([low, high])
    assert [len(configs[low].queries), len(configs[high].queries)] == [30, 30]  # neither run vanished
    assert accuracy(configs[low]) < 0.5 < accuracy(configs[high])
    assert configs[low].family != configs[high].family  # a line each in the plots
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--resamples", "20"]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"`{low}`" in md and f"`{high}`" in md


def test_labels_show_only_the_settings_that_tell_configurations_apart(tmp_path: Path) -> None:
    cot = GRID[0][0]
    big = {"name": "big", "path": "org/big", "dtype": "bfloat16", "max_model_len": 4096}
    make_run(tmp_path / "small", cot, tokens=60, accuracy=0.3)
    # run mechanics and the sample are pooled: a replicate at another concurrency is the same configuration
    make_run(tmp_path / "again", cot, tokens=60, accuracy=0.3, seed=1,
             settings={"concurrency": 8, "progress": False, "dataset": {"limit": 10}})
    make_run(tmp_path / "big", cot, tokens=60, accuracy=0.6, settings={"model": big})
    make_run(tmp_path / "big-fp8", cot, tokens=60, accuracy=0.6, settings={"model": big | {"dtype": "fp8"}})
    configs = {c.label: c for c in load([tmp_path]).configurations}
    # model.path and model.max_model_len change with the name: the name alone says which model
    assert sorted(configs) == sorted([
        "cot [model=ttc-reference, model.dtype=?]", "cot [model=big, model.dtype=bfloat16]",
        "cot [model=big, model.dtype=fp8]",
    ])
    assert len(configs["cot [model=ttc-reference, model.dtype=?]"].runs) == 2


def test_a_retried_query_counts_its_success_as_the_runner_does(tmp_path: Path) -> None:
    from ttc.runner import read_records

    run = make_run(tmp_path / "r", GRID[0][0], tokens=10, accuracy=0.0, queries=3)
    lines = (run / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    failed = first | {"correct": False, "error": "TimeoutError: engine", "answer": None}
    retried = first | {"correct": True, "answer": "7"}
    again = failed | {"error": "TimeoutError: later"}  # a later error does not displace the success
    (run / "results.jsonl").write_text("\n".join(json.dumps(r) for r in (failed, *map(json.loads, lines[1:]),
                                                                      retried, again)) + "\n")
    queries = {q.id: q for q in read_run(run).queries}
    assert len(queries) == 3
    assert queries[first["id"]].correct and queries[first["id"]].error is None
    expected = {r["id"]: (r["correct"], r["error"]) for r in read_records(run / "results.jsonl")}
    assert {q.id: (q.correct, q.error) for q in queries.values()} == expected


def test_non_finite_figures_are_bad_lines(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", GRID[0][0], tokens=10, accuracy=0.5, queries=5)
    lines = (run / "results.jsonl").read_text().splitlines()
    # json.loads takes all three: NaN, Infinity, and a literal too large for a float
    for i, (key, value) in enumerate((("generated_tokens", "NaN"), ("gpu_seconds", "Infinity"),
                                      ("usd", "1e999"))):
        lines[i] = re.sub(rf'"{key}": [^,]+', f'"{key}": {value}', lines[i])
    lines[3] = re.sub(r'"generated_tokens": \d+', '"generated_tokens": ' + "9" * 400, lines[3])
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    inputs = load([run])
    assert inputs.bad_lines == 4 and len(inputs.configurations[0].queries) == 1
    assert main([str(run), "--out", str(tmp_path / "out"), "--resamples", "20"]) == 0
    assert "4 torn or unreadable line(s)" in (tmp_path / "out" / "report.md").read_text()


# ---- bad input ----------------------------------------------------------------------------------------------


def one_line_error(result: tuple[int, str], *needles: str) -> None:
    code, stderr = result
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's way out
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_bad_input_exits_2_with_one_line_from_the_command_line(tmp_path: Path) -> None:
    p = cli(str(tmp_path / "nope"))
    one_line_error((p.returncode, p.stderr), "no such directory")
    p = cli()
    one_line_error((p.returncode, p.stderr), "required")


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(in_process(capsys, str(tmp_path / "empty")), "no runs")
    (tmp_path / "file.txt").write_text("x")
    one_line_error(in_process(capsys, str(tmp_path / "file.txt")), "not a directory")
    make_run(tmp_path / "partial", GRID[0][0], tokens=10, accuracy=0.5, complete=False)
    one_line_error(in_process(capsys, str(tmp_path / "partial")), "no complete runs", "1 incomplete")
    bad = make_run(tmp_path / "bad" / "r", GRID[0][0], tokens=10, accuracy=0.5)
    (bad / "config.yaml").write_text("strategy: [unclosed\n")
    one_line_error(in_process(capsys, str(tmp_path / "bad")), "config.yaml", "not valid YAML")
    (bad / "config.yaml").write_text("dataset: {name: arith}\n")
    one_line_error(in_process(capsys, str(tmp_path / "bad")), "config.yaml", "no strategy.name")
    (bad / "config.yaml").write_bytes(b"\xff\xfe strategy")
    one_line_error(in_process(capsys, str(tmp_path / "bad")), "config.yaml", "unreadable")
    garbled = make_run(tmp_path / "garbled" / "r", GRID[0][0], tokens=10, accuracy=0.5)
    (garbled / "summary.json").write_text("{")
    one_line_error(in_process(capsys, str(tmp_path / "garbled")), "summary.json", "not valid JSON")
    one_line_error(in_process(capsys, str(tmp_path / "garbled"), "--bogus"), "unrecognized arguments")
    one_line_error(in_process(capsys, str(tmp_path / "partial"), "--resamples", "0"), "--resamples")
    good = make_run(tmp_path / "good", GRID[0][0], tokens=10, accuracy=0.5, queries=5)
    one_line_error(in_process(capsys, str(good), "--seed", "-1", "--resamples", "20"), "--seed")


def test_complete_runs_without_records_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "sweep" / "r", GRID[0][0], tokens=10, accuracy=0.5)
    (run / "results.jsonl").write_text("")
    one_line_error(in_process(capsys, str(tmp_path / "sweep")), "complete runs under", "sweep", "no records")
    p = cli(str(tmp_path / "sweep"))
    one_line_error((p.returncode, p.stderr), "no records")


def test_mixed_datasets_need_a_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "a", GRID[0][0], tokens=10, accuracy=0.5, dataset="arith")
    make_run(tmp_path / "g", GRID[0][0], tokens=10, accuracy=0.5, dataset="gsm8k")
    one_line_error(in_process(capsys, str(tmp_path)), "--dataset", "arith, gsm8k")
    one_line_error(in_process(capsys, str(tmp_path), "--dataset", "math500"), "math500")
    assert main([str(tmp_path), "--dataset", "gsm8k", "--out", str(tmp_path / "out"), "--resamples", "20"]) == 0
    assert "Dataset `gsm8k`" in (tmp_path / "out" / "report.md").read_text()


def test_torn_last_lines_are_ignored(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", GRID[0][0], tokens=10, accuracy=0.5, queries=5, torn=True)
    with (run / "results.jsonl").open("ab") as f:
        f.write("{\"id\": \"x\", \"gold\": \"é".encode()[:-1])  # torn inside a multi-byte character
    assert main([str(run), "--out", str(tmp_path / "out"), "--resamples", "20"]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 5 |" in md and "1 torn or unreadable line(s)" in md


def test_a_short_trial_and_the_full_run_count_each_query_once(tmp_path: Path) -> None:
    # dataset.limit=3 to try a command, then the full run: the first three queries are the same queries
    make_run(tmp_path / "trial", GRID[0][0], tokens=60, accuracy=0.5, queries=3)
    make_run(tmp_path / "full", GRID[0][0], tokens=60, accuracy=0.5, queries=30)
    (config,) = load([tmp_path]).configurations
    assert len(config.runs) == 2 and len(config.queries) == 30
    # another sample of problems (the dataset's seed) is other queries: pooled, not merged
    make_run(tmp_path / "other", GRID[0][0], tokens=60, accuracy=0.5, queries=3,
             settings={"dataset": {"seed": 1}})
    (config,) = load([tmp_path]).configurations
    assert len(config.queries) == 33
