"""``python -m ttc.run`` end to end: config errors, a real run on vLLM, resume, a sweep."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ttc.run", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _hub_reachable() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["strategy=best_of_n", "strategy.select=loudest"], "strategy.select"),
        (["+strategy.beams=3"], "strategy.beams"),
        # an option the strategy does not take is dropped only from the cells of a sweep that takes it elsewhere
        (["strategy=cot", "++strategy.nn=3"], "strategy.nn: not a known option"),
        (["strategy=cot", "++strategy.n=3"], "strategy.n: not a known option"),
        (["dataset.steps=four"], "dataset.steps"),
        (["dataset.steps=0"], "dataset.steps"),  # the generator's own bounds, before any engine starts
        (["dataset.max_operand=1"], "dataset.max_operand"),
        (["dataset.limit=0"], "dataset.limit"),  # not an empty run that reports accuracy 0
        (["dataset=synth_code", "dataset.max_const=1"], "dataset.max_const"),
        (["backend.gpu_memory_utilization=lots"], "backend.gpu_memory_utilization"),
        (["strategy=best_of_n", "strategy.select=verifier", "verifier=none"], "verifier"),
        # a remote policy's servers do not serve the PRM
        (["backend=http", "strategy=beam_search", "verifier=prm"], "verifier.engine.endpoints"),
        (["verifier=math", "+verifier.engine.endpoints=[http://127.0.0.1:9]"], "verifier.engine"),
        (["verifier=prm", "+verifier.engine.gpu_memory_utilization=lots"], "verifier.engine.gpu_memory_utilization"),
        (["cohorts=0"], "cohorts"),
        (["backend=sglang", "backend.cpu_cores=0|1"], "backend.cpu_cores"),  # one set: it binds processes
        (["backend=hf", "backend.max_num_seqs=0"], "backend.max_num_seqs"),
        (["backend=hf", "backend.prefix_cache_gib=-1"], "backend.prefix_cache_gib"),
        # before any engine starts: vLLM would refuse it in a traceback
        (["model.max_model_len=4096"], "max_model_len=4096 exceeds the model's 1024 positions"),
        (["backend=hf", "model.max_model_len=4096"], "max_model_len=4096 exceeds the model's 1024 positions"),
        (["strategy=mcts", "strategy.simulations=0"], "strategy.simulations"),
        (["strategy=cot", "strategy.top_p=1.5"], "strategy.top_p"),
        # a rule between two arguments, found before any engine starts
        (["strategy=beam_search", "strategy.n=16", "strategy.width=5"], "multiple of width"),
        (["dataset=gsm8k", "dataset.path=/nonexistent/gsm8k.jsonl"], "dataset.path"),
        (["dataset=mbpp", "dataset.split=dev"], "dataset.split"),
        (["model.path=/nonexistent/model"], "model.path"),
        (["model.dtype=nn"], "model.dtype"),
        (["model.dtype=double"], "model.dtype: float64 runs on backend=hf"),
        (["backend.dtype=bf17"], "backend.dtype"),
        (["model.step_delimiter="], "model.step_delimiter"),
        # Hydra's own errors, in one line too
        (["strategy=best_of_nn"], "strategy/best_of_nn"),
        (["strategy.beams=3"], "strategy.beams"),
        # a setting nothing reads would change nothing, silently
        (["+concurency=8"], "concurency"),
        (["+cost.usd_per_hour=3"], "cost.usd_per_hour"),
        (["cost.usd_per_gpu_hour=cheap"], "cost.usd_per_gpu_hour"),
        (["cost.usd_per_gpu_hour=-2.9"], "cost.usd_per_gpu_hour"),
        (["progress=maybe"], "progress"),
        # a server that is not there, named by the section its address came from
        (["backend=http", "backend.endpoints=[http://127.0.0.1:9]"], "config error: backend.endpoints: no server"),
    ],
)
def test_bad_config_fails_fast_with_one_line(tmp_path: Path, args: list[str], key: str) -> None:
    p = run(*args, f"hydra.run.dir={tmp_path}", timeout=120)
    assert p.returncode != 0
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and key in err[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_a_dataset_file_without_its_fields_is_named_before_any_engine_starts(tmp_path: Path) -> None:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1+1?"}\n')
    p = run("dataset=gsm8k", f"dataset.path={data}", f"hydra.run.dir={tmp_path}", timeout=120)
    assert p.returncode == 2
    assert f"config error: dataset gsm8k: row 0 of {data} has no answer field" in p.stderr
    assert "Traceback" not in p.stderr and "vLLM" not in p.stderr


def test_unknown_group_option_is_named_without_a_traceback(tmp_path: Path) -> None:
    p = run("dataset=nope", f"hydra.run.dir={tmp_path}", timeout=120)
    assert p.returncode != 0
    assert "dataset/nope" in p.stderr and "Traceback" not in p.stderr


def test_a_model_that_cannot_be_fetched_is_named_without_a_traceback(tmp_path: Path) -> None:
    # No such repository on the hub, or no hub at all (as here): transformers says which.
    p = run("model.path=ttc-tests/no-such-model", f"hydra.run.dir={tmp_path}", timeout=300)
    assert p.returncode == 2
    assert "config error: model: cannot load ttc-tests/no-such-model" in p.stderr and "Traceback" not in p.stderr
    # transformers' message runs over several lines: only its first is ours to print
    (line,) = [x for x in p.stderr.splitlines() if "config error" in x]
    assert p.stderr.rstrip().endswith(line)
    if not _hub_reachable():  # as here: said at once, not after half a minute of logged retries
        assert p.stderr.strip() == line and "the hub (huggingface.co) cannot be reached" in line, p.stderr


def test_a_bad_value_creates_no_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = run("strategy=best_of_n", "strategy.n=lots", f"hydra.run.dir={out}", timeout=120)
    assert p.returncode == 2 and "strategy.n" in p.stderr
    assert not out.exists()  # refused before Hydra made it: no empty run left for the report to list


@pytest.mark.parametrize("where", ["file/run", "/proc/ttc-run"])
def test_an_output_directory_that_cannot_be_made_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    target = where if where.startswith("/") else str(tmp_path / where)
    for args in ([f"hydra.run.dir={target}"], ["-m", "dataset.limit=1,2", f"hydra.sweep.dir={target}"]):
        p = run(*args, timeout=120)
        err = [line for line in p.stderr.strip().splitlines() if line.strip()]
        assert p.returncode == 2 and len(err) == 1 and "hydra." in err[0], p.stderr
        assert "Traceback" not in p.stderr


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_dir

    from ttc.run import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


@pytest.fixture
def scripted_build(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``ttc.run.execute`` on the scripted engine instead of vLLM; returns the problem counts built."""
    from strategies import BestOfN
    from tests.fakes import ScriptedBackend
    from ttc import run as run_module
    from ttc.build import Built
    from ttc.datasets import arith_problems

    built: list[int] = []

    def fake_build(spec: Any) -> Built:
        async def grade(problem: Any, answer: Any) -> bool:
            return answer.answer == problem.answer

        problems = arith_problems(**spec.dataset_args)
        built.append(len(problems))
        return Built(problems=problems, strategy=BestOfN(**spec.strategy_args), backend=ScriptedBackend(),
                     grade=grade, format_prompt=lambda p: p.prompt)

    monkeypatch.setattr(run_module, "build", fake_build)
    return built


def test_a_run_directory_holding_another_configuration_is_refused(tmp_path: Path, scripted_build: list[int]) -> None:
    from ttc.registry import ConfigError
    from ttc.run import execute

    first = execute(_compose("strategy=best_of_n", "strategy.n=2", "dataset.limit=3", "dataset.steps=2"), tmp_path)
    kept = (tmp_path / "results.jsonl").read_text()
    # Not "complete already" with the other run's summary, and no records of two configurations mixed
    with pytest.raises(ConfigError, match=r"strategy\.n=2 \(asked: 4\)"):
        execute(_compose("strategy=best_of_n", "strategy.n=4", "dataset.limit=3", "dataset.steps=2"), tmp_path)
    assert (tmp_path / "results.jsonl").read_text() == kept
    assert json.loads((tmp_path / "summary.json").read_text()) == first
    # How it is driven may change: that is the same run, complete
    again = execute(_compose("strategy=best_of_n", "strategy.n=2", "dataset.limit=3", "dataset.steps=2",
                             "concurrency=1"), tmp_path)
    assert again == first and scripted_build == [3]
    (tmp_path / "config.yaml").write_text("strategy: [best_of_n\n")  # not something ttc.run wrote
    with pytest.raises(ConfigError, match=r"config\.yaml is unreadable"):
        execute(_compose("strategy=best_of_n", "strategy.n=2", "dataset.limit=3", "dataset.steps=2"), tmp_path)
    assert (tmp_path / "results.jsonl").read_text() == kept


def test_a_larger_limit_extends_a_complete_run(tmp_path: Path, scripted_build: list[int]) -> None:
    from ttc.run import execute

    execute(_compose("strategy=best_of_n", "strategy.n=2", "dataset.limit=2", "dataset.steps=2"), tmp_path)
    more = execute(_compose("strategy=best_of_n", "strategy.n=2", "dataset.limit=5", "dataset.steps=2"), tmp_path)
    assert more["n_queries"] == 5 and scripted_build == [2, 5]
    ids = [json.loads(x)["id"] for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(ids) == 5 == len(set(ids))  # the first two were kept, not solved again


def test_a_torn_summary_is_recomputed_not_a_traceback(tmp_path: Path, scripted_build: list[int]) -> None:
    from ttc.run import execute

    cfg = _compose("strategy=best_of_n", "strategy.n=2", "dataset.limit=3", "dataset.steps=2")
    first = execute(cfg, tmp_path)
    (tmp_path / "summary.json").write_text('{"n_queries": 3, "err')  # killed mid-write by an older version
    again = execute(cfg, tmp_path)
    assert again["n_queries"] == 3 and again["accuracy"] == first["accuracy"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3  # nothing solved twice


def test_ctrl_c_says_where_the_records_are_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ttc import run as run_module

    def interrupted(cfg: Any, out_dir: Path) -> dict[str, Any]:
        (out_dir / "results.jsonl").write_text('{"id": "a", "error": null}\n{"id": "b", "error": null}\n')
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "execute", interrupted)
    monkeypatch.setattr(sys, "argv", ["ttc.run", f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"])
    with pytest.raises(SystemExit) as exit_:
        run_module.main()
    assert exit_.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted: 2 queries recorded" in err[0] and "resume" in err[0], err


@pytest.mark.engine
def test_default_job_runs_and_resumes(tmp_path: Path) -> None:
    p = run("dataset.limit=6", "strategy=best_of_n", "strategy.n=4", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("accuracy", "n_queries", "errors", "prompt_tokens", "generated_tokens", "cached_tokens",
                "kv_peak_bytes", "kv_peak_bytes_unshared", "gpu_seconds", "usd", "ideal_cached_tokens"):
        assert key in summary
    assert summary["n_queries"] == 6 and summary["errors"] == 0
    assert summary["generated_tokens"] > 0 and summary["gpu_seconds"] > 0
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(len(r["trace"]["candidates"]) == 4 for r in records)
    assert (tmp_path / "config.yaml").exists()
    again = run("dataset.limit=6", "strategy=best_of_n", "strategy.n=4", f"hydra.run.dir={tmp_path}")
    assert "complete already" in again.stdout
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 6
    # A query that failed (an engine gone, a sandbox broken) is retried by the next run, alone.
    records[2].update(error="EngineUnavailable: gone", correct=False)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "errors": 1}))
    retried = run("dataset.limit=6", "strategy=best_of_n", "strategy.n=4", f"hydra.run.dir={tmp_path}")
    assert retried.returncode == 0 and "retrying the 1 errored queries" in retried.stdout, retried.stderr[-3000:]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 7
    assert json.loads((tmp_path / "summary.json").read_text())["errors"] == 0


def test_a_strategy_that_takes_no_axis_of_a_sweep_runs_once_without_it(
    tmp_path: Path, scripted_build: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`strategy=cot,best_of_n ++strategy.n=1,2`: cot takes no n, so its first cell runs it without n, its
    other cell points at that one, and the report counts cot once."""
    from ttc import run as run_module
    from ttc.report.cli import main as report_main
    from ttc.report.data import load

    monkeypatch.setattr(sys, "argv", ["ttc.run", "-m", "strategy=cot,best_of_n", "++strategy.n=1,2", "dataset.limit=2",
                                      "dataset.steps=2", "progress=false", f"hydra.sweep.dir={tmp_path}"])
    run_module.cli()  # as `python -m ttc.run`: the sweep's check, then its cells in this process
    out = capsys.readouterr().out
    assert scripted_build == [2, 2, 2]  # cot once, best_of_n(n=1) and best_of_n(n=2)
    assert out.count("cot takes no strategy.n: run once, without it") == 1, out
    assert out.count("cot takes no strategy.n: run once, in cell [strategy=cot ++strategy.n=1 ") == 1, out
    runs = {p.parent for p in tmp_path.rglob("summary.json")}
    sizes = sorted(str(yaml.safe_load((r / "config.yaml").read_text())["strategy"].get("n")) for r in runs)
    assert sizes == ["1", "2", "None"]  # the cot run's config holds no n
    (same,) = tmp_path.rglob("same_as.json")
    assert "strategy=cot" in same.parent.name and "strategy.n=2" in same.parent.name
    marker = json.loads(same.read_text())
    assert marker["same_as"][:2] == ["strategy=cot", "++strategy.n=1"] and marker["without"] == ["strategy.n"]
    assert not list(tmp_path.rglob("skipped.json"))

    inputs = load([tmp_path])
    assert sorted(c.label for c in inputs.configurations) == ["best_of_n(n=1)", "best_of_n(n=2)", "cot"]
    assert inputs.same_as == [same.parent.resolve()] and inputs.skipped == []
    assert report_main([str(tmp_path), "--out", str(tmp_path / "report"), "--resamples", "20"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "3 complete run(s) in 3 configuration(s)" in md and "1 sweep cell(s) run by another" in md

    run_module.cli()  # the same command again: every configuration is complete, none runs twice
    assert scripted_build == [2, 2, 2]
    assert "complete already" in capsys.readouterr().out
    assert len(list(tmp_path.rglob("same_as.json"))) == 1


@pytest.mark.engine
def test_code_task_end_to_end_with_the_sandboxed_verifier(tmp_path: Path) -> None:
    """`dataset=synth_code strategy=best_of_n verifier=code`: candidates filtered by the
    visible examples in the sandbox, graded on the hidden ones."""
    from hydra import compose, initialize_config_dir

    from ttc.run import CONFIG_DIR, execute

    overrides = ["dataset=synth_code", "dataset.max_const=9", "dataset.limit=6", "strategy=best_of_n", "strategy.n=4",
                 "strategy.select=verifier", "verifier=code", "progress=false"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = execute(cfg, tmp_path)
    assert summary["n_queries"] == 6 and summary["errors"] == 0
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    for r in records:
        scores = [c["score"] for c in r["trace"]["candidates"]]
        assert len(scores) == 4 and set(scores) <= {0.0, 1.0}  # pass / fail on the visible tests
    assert summary["accuracy"] >= 0.5


def test_failed_queries_are_explained_after_the_summary(
    tmp_path: Path, scripted_build: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from strategies import BestOfN
    from ttc import run as run_module

    async def too_long(self: BestOfN, ctx: Any) -> Any:
        raise RuntimeError("prompt of 300 tokens + 160 new exceeds max_model_len=256")

    monkeypatch.setattr(BestOfN, "solve", too_long)
    args = ["strategy=best_of_n", "strategy.n=2", "dataset.limit=2", "dataset.steps=2", "progress=false"]
    monkeypatch.setattr(sys, "argv", ["ttc.run", *args, f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"])
    run_module.main()
    out, err = capsys.readouterr()
    assert json.loads(out[: out.index("run directory")])["errors"] == 2
    (line,) = err.strip().splitlines()
    assert "2 of 2 queries failed" in line and "exceeds max_model_len=256" in line and "rerun" in line


@pytest.mark.skipif(_hub_reachable(), reason="checks the machine without a hub")
def test_a_sweep_with_an_unreachable_hub_model_fails_before_its_first_cell(tmp_path: Path) -> None:
    p = run("-m", "model=reference,qwen2_5_math_1_5b", "dataset.limit=1", f"hydra.sweep.dir={tmp_path}", timeout=120)
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "Qwen/Qwen2.5-Math-1.5B-Instruct" in err[0] and "cannot be reached" in err[0]
    assert list(tmp_path.iterdir()) == []  # the reference cell did not run first


def test_a_sweep_cell_past_the_models_positions_fails_before_the_first_cell(tmp_path: Path) -> None:
    p = run("-m", "model.max_model_len=256,4096", "dataset.limit=1", f"hydra.sweep.dir={tmp_path}", timeout=120)
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "max_model_len=4096 exceeds the model's 1024 positions" in err[0] and "model.max_model_len=4096" in err[0]
    assert list(tmp_path.iterdir()) == []  # the 256 cell did not run first
