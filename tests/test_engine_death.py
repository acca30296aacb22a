"""An engine whose process dies mid-batch fails the batch within seconds, instead of leaving the run
waiting forever for outputs that never come (vLLM's sync client does); the run stops in one line,
keeping every finished query for a rerun. The real engine killed mid-run: tests/test_resume.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fakes import ScriptedBackend
from ttc.backends import batching
from ttc.backends.batching import EngineDied, MicroBatcher
from ttc.backends.vllm import VLLMBackend, exit_words
from ttc.types import GenRequest, GenResult


class DyingEngine(ScriptedBackend):
    """The scripted engine, with a real process for its engine: once ``batches`` batches have run,
    the process is killed while the next one runs, and that batch never returns (as vLLM's)."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        self.stuck = threading.Event()
        self._batcher: MicroBatcher[GenRequest, GenResult] = MicroBatcher(self._run, check_engine=self.check_engine)

    def _run(self, requests: Sequence[GenRequest], batch_id: int) -> list[GenResult]:
        if len(self.calls) >= self.batches:
            self.process.kill()
            self.stuck.wait()  # until the test ends: the thread is a daemon, nobody waits for it
        return super()._run(requests, batch_id)

    def check_engine(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise EngineDied(f"the engine of scripted died: its process (pid {self.process.pid}) {exit_words(code)}")

    def release(self) -> None:
        self.stuck.set()
        self.process.kill()
        self.process.wait()


@pytest.fixture
def dying() -> Iterator[list[DyingEngine]]:
    """Dying engines made by a test; released (their stuck batch let go, their process gone) after it."""
    engines: list[DyingEngine] = []
    yield engines
    for engine in engines:
        engine.release()


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "ENGINE_CHECK_S", 0.05)


async def test_a_batch_whose_engine_dies_fails_instead_of_waiting_forever(dying: list[DyingEngine]) -> None:
    engine = DyingEngine(batches=0)
    dying.append(engine)
    t0 = time.monotonic()
    with pytest.raises(EngineDied, match=r"the engine of scripted died: its process \(pid \d+\) killed by SIGKILL"):
        await asyncio.wait_for(engine.generate([GenRequest(prompt="Q:1+2=?\n", max_tokens=8)]), 30)
    assert time.monotonic() - t0 < 5
    # A later batch fails at once, all its requests together (no rerun one by one)
    requests = [GenRequest(prompt=f"Q:{i}+2=?\n", max_tokens=8) for i in range(3)]
    outs = await asyncio.gather(*(engine.generate([r]) for r in requests), return_exceptions=True)
    assert all(isinstance(o, EngineDied) for o in outs)


async def test_a_batch_longer_than_the_check_is_not_taken_for_a_dead_engine() -> None:
    checks: list[float] = []

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        time.sleep(0.5)  # ten checks
        return list(jobs)

    b: MicroBatcher[int, int] = MicroBatcher(run, check_engine=lambda: checks.append(time.monotonic()))
    assert await b.submit([1, 2]) == [1, 2]
    assert len(checks) >= 3


async def _grade_exact(problem: Any, answer: Any) -> bool:
    return bool(answer.answer == problem.answer)


def test_a_run_whose_engine_dies_stops_keeping_what_finished_and_a_rerun_completes(
    tmp_path: Path, dying: list[DyingEngine]
) -> None:
    from strategies import BestOfN
    from ttc.datasets import arith_problems
    from ttc.runner import read_records, run_queries

    problems = arith_problems(limit=40, steps=2, seed=3)
    results = tmp_path / "results.jsonl"
    engine = DyingEngine(batches=3)
    dying.append(engine)

    def run(backend: Any) -> list[dict[str, Any]]:
        return asyncio.run(run_queries(problems, BestOfN(n=2), backend, _grade_exact, results_path=results,
                                       concurrency=2, progress=False))

    t0 = time.monotonic()
    with pytest.raises(EngineDied):
        run(engine)
    assert time.monotonic() - t0 < 10  # the queries not started are not tried one by one
    kept = read_records(results)
    assert 0 < len(kept) < len(problems)
    assert all(r["error"] is None for r in kept)  # a query the engine's death cut short is not recorded
    run(ScriptedBackend())
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert sorted(ids) == sorted(p.id for p in problems)  # none lost, none twice
    again = {r["id"]: r for r in read_records(results)}
    assert all(again[r["id"]]["completion"] == r["completion"] for r in kept)


def test_the_cli_says_which_engine_died_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], dying: list[DyingEngine]
) -> None:
    from strategies import BestOfN
    from ttc import run as run_module
    from ttc.build import Built
    from ttc.datasets import arith_problems

    def dying_build(spec: Any) -> Built:
        engine = DyingEngine(batches=2)
        dying.append(engine)
        return Built(problems=arith_problems(**spec.dataset_args), strategy=BestOfN(**spec.strategy_args),
                     backend=engine, grade=_grade_exact, format_prompt=lambda p: p.prompt)

    monkeypatch.setattr(run_module, "build", dying_build)
    monkeypatch.setattr(sys, "argv", ["ttc.run", "strategy=best_of_n", "strategy.n=2", "dataset.limit=20",
                                      "dataset.steps=2", "concurrency=2", "progress=false",
                                      f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"])
    with pytest.raises(SystemExit) as exit_:
        run_module.main()
    assert exit_.value.code == run_module.ENGINE_DIED_EXIT != 0
    err = capsys.readouterr().err.strip().splitlines()
    kept = len((tmp_path / "results.jsonl").read_text().splitlines())
    assert len(err) == 1, err
    assert err[0].startswith("engine died: the engine of scripted died: its process (pid "), err
    assert f"killed by SIGKILL; {kept} finished queries kept in {tmp_path / 'results.jsonl'}; " in err[0], err
    assert err[0].endswith("rerun the same command to resume") and kept > 0
    assert not (tmp_path / "summary.json").exists()


def _vllm(processes: list[Any], engine_dead: bool = False, generate: Any = None) -> VLLMBackend:
    """A VLLMBackend over a stand-in for vLLM's client: its engine's process handles and flag."""
    backend = VLLMBackend.__new__(VLLMBackend)
    resources = SimpleNamespace(engine_dead=engine_dead, engine_manager=SimpleNamespace(processes=processes))
    backend.llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=SimpleNamespace(resources=resources)),
                                  generate=generate)
    backend.model, backend._closed, backend.num_devices = "models/prm", False, 1
    return backend


def test_vllm_says_which_engine_died_and_how() -> None:
    up = SimpleNamespace(name="EngineCore", pid=41, exitcode=None)
    assert _vllm([up]).engine_death() is None
    _vllm([up]).check_engine()
    killed = SimpleNamespace(name="EngineCore", pid=41, exitcode=-9)
    with pytest.raises(EngineDied, match=r"^the vLLM engine of models/prm died: its EngineCore process \(pid 41\) "
                                         r"killed by SIGKILL$"):
        _vllm([killed], engine_dead=True).check_engine()
    assert "exited with code 1" in (_vllm([SimpleNamespace(name="EngineCore", pid=41, exitcode=1)]).engine_death()
                                    or "")
    # Its worker died: the engine core reports itself dead before it exits
    assert "it reported a fatal error" in (_vllm([up], engine_dead=True).engine_death() or "")
    # Closed by us: said so, not reported as a death
    closed = _vllm([killed], engine_dead=True)
    closed._closed = True
    assert "was closed" in (closed.engine_death() or "")


def test_vllm_turns_its_engine_dead_error_into_one_that_names_the_engine() -> None:
    pytest.importorskip("vllm")

    def dead(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("EngineCore encountered an issue. See stack trace (above) for the root cause.")

    backend = _vllm([SimpleNamespace(name="EngineCore", pid=41, exitcode=-9)], engine_dead=True, generate=dead)
    with pytest.raises(EngineDied, match="models/prm died"):
        backend._run([([1, 2], None)], 1)
    healthy = _vllm([SimpleNamespace(name="EngineCore", pid=41, exitcode=None)], generate=dead)
    with pytest.raises(RuntimeError, match="EngineCore encountered"):  # not the engine's death: as it was
        healthy._run([([1, 2], None)], 1)
