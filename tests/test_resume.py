"""A sweep killed with SIGKILL and rerun with the same command loses no record and duplicates none;
Ctrl-C stops a run in one line, keeping what finished and leaving no process behind; so does an
engine whose process dies mid-run. Each run killed here leaves no shared memory behind either."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from tests.servers import group, sigkill_group
from ttc.runner import drop_torn_tail, read_records

ROOT = Path(__file__).resolve().parent.parent


def test_torn_tail_is_cut_and_ignored(tmp_path: Path) -> None:
    f = tmp_path / "results.jsonl"
    f.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n{"id": "c", "x"')
    assert [r["id"] for r in read_records(f)] == ["a", "b"]
    drop_torn_tail(f)
    assert f.read_text() == '{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n'
    f.write_text(f.read_text() + '{"id": "a", "x": 9}\n')
    assert [r["x"] for r in read_records(f)] == [1, 2]  # a duplicate never counts twice
    f.write_text('{"id": "a", "error": "boom"}\n{"id": "a", "error": null, "x": 3}\n')
    assert read_records(f) == [{"id": "a", "error": None, "x": 3}]  # a rerun's success replaces an error
    f.write_text('[]\n{"x": 1}\n{"id": "a", "x": 4}\n')
    assert read_records(f) == [{"id": "a", "x": 4}]  # lines that are no record of ours are skipped


def test_every_query_is_written_though_its_metadata_is_not_json(tmp_path: Path) -> None:
    import asyncio
    import datetime

    from strategies import BestOfN
    from tests.fakes import ScriptedBackend
    from ttc.datasets import arith_problems
    from ttc.runner import run_queries

    async def grade(problem, answer) -> bool:
        return answer.answer == problem.answer

    problems = arith_problems(limit=4, steps=2, seed=1)
    problems[2].meta["added"] = datetime.date(2026, 11, 30)  # what a hub dataset's column may hold
    f = tmp_path / "results.jsonl"
    records = asyncio.run(run_queries(problems, BestOfN(n=2), ScriptedBackend(), grade, results_path=f,
                                      progress=False))
    assert len(records) == 4
    assert {r["id"]: r["meta"].get("added") for r in read_records(f)}[problems[2].id] == "2026-11-30"


@pytest.mark.engine
def test_sigkill_mid_sweep_then_rerun(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "ttc.run", "-m", "strategy=best_of_n", "strategy.n=2,4", "dataset.limit=16",
        "concurrency=2", "progress=false", f"hydra.sweep.dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = None
    deadline = time.time() + 300
    while time.time() < deadline:
        found = list(tmp_path.rglob("results.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 4:
            first = found[0]
            break
        time.sleep(0.2)
    sigkill_group(proc.pid)
    proc.wait()
    assert first is not None, "the sweep wrote no records in time"
    before = [json.loads(x) for x in first.read_text().splitlines() if x.strip().endswith("}")]
    assert not (first.parent / "summary.json").exists()

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(p.parent for p in tmp_path.rglob("summary.json"))
    assert len(runs) == 2
    for run in runs:
        lines = (run / "results.jsonl").read_text().splitlines()
        ids = [json.loads(x)["id"] for x in lines]
        assert len(ids) == 16 and len(set(ids)) == 16  # none lost, none duplicated
        assert json.loads((run / "summary.json").read_text())["n_queries"] == 16
    after = {r["id"]: r for r in read_records(first)}
    for rec in before:  # records written before the kill are kept as they were
        assert after[rec["id"]]["completion"] == rec["completion"]


def test_an_engine_call_that_never_returns_does_not_hold_up_the_exit() -> None:
    """What Ctrl-C met when an engine died mid-batch: its call never returns, and asyncio.run
    (then the interpreter's exit) waited forever for an executor thread still in it."""
    import asyncio

    from ttc.backends.batching import MicroBatcher, wait_for_engine_calls

    stuck = threading.Event()

    def run(jobs: Sequence[int], batch_id: int) -> list[int]:
        stuck.wait()
        return list(jobs)

    async def interrupted() -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # as a cancelled run's queries are
            await asyncio.wait_for(MicroBatcher(run).submit([1]), 0.2)

    loop_thread = threading.Thread(target=asyncio.run, args=(interrupted(),), daemon=True)
    try:
        loop_thread.start()
        loop_thread.join(10)
        assert not loop_thread.is_alive(), "asyncio.run waits for the engine call"
        assert not wait_for_engine_calls(0.1)  # the wait for it is bounded
    finally:
        stuck.set()
    assert wait_for_engine_calls(10)


def _group_alive(pgid: int) -> list[str]:
    alive = []
    for p in group(pgid):
        with contextlib.suppress(psutil.Error):
            alive.append(f"{p.pid} {p.name()}")
    return alive


@contextlib.contextmanager
def _ctrl_c_not_ignored() -> Iterator[None]:
    """Processes started in it take SIGINT as a terminal's foreground job does, though this one
    ignores it. The suite, started as a background job of a script (``cmd &`` without job control),
    inherits SIGINT ignored and hands that down to every process it starts: the mid-run Ctrl-C test
    then sent a signal its run ignored, and failed after 120 s with the whole run still working."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # exec resets a handled signal to its default
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _why_stuck(proc: subprocess.Popen[bytes], stderr: Path) -> str:
    """What a run that does not stop is doing: each of its processes' Python stacks (py-spy, where
    it is installed), its main process's threads as faulthandler writes them on SIGUSR1 (ttc/run.py),
    and the tail of its stderr."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    dumps = []
    with contextlib.suppress(psutil.Error):
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            if spy is None:
                break
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                out = subprocess.run([spy, "dump", "--pid", str(p.pid)], capture_output=True, text=True, timeout=30)
                dumps.append(f"py-spy dump --pid {p.pid} ({p.name()}):\n{out.stdout}{out.stderr}")
    before = stderr.read_text()
    proc.send_signal(signal.SIGUSR1)
    time.sleep(2)
    threads = stderr.read_text()[len(before):]
    return "\n".join([*dumps, "stderr:", before[-3000:], "threads on SIGUSR1:", threads])


def _stop_mid_run(
    tmp_path: Path,
    args: list[str],
    ready: Callable[[subprocess.Popen[bytes]], bool],
    stop: Callable[[subprocess.Popen[bytes]], None],
    what: str,
    wait_s: float = 120,
) -> tuple[int, str]:
    """Run ``python -m ttc.run *args`` into ``tmp_path``, ``stop(proc)`` it once ``ready(proc)`` (``what``
    says how, for the failure's words), and return its exit code and stderr once it and every
    process it started are gone. In its own session, so that whatever happens its whole group is
    killed (``sigkill_group``: leaving no shared memory). A run still going ``wait_s`` seconds after
    the stop fails the test with every stack of it (``_why_stuck``)."""
    cmd = [sys.executable, "-m", "ttc.run", *args, "progress=false", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err, _ctrl_c_not_ignored():  # a file, not a pipe that nobody drains meanwhile
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ready(proc):
            assert proc.poll() is None, f"exited ({proc.returncode}) before {what}"
            assert time.time() < deadline, f"not ready for {what} in 300 s"
            time.sleep(0.1)
        stop(proc)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {wait_s:.0f} s after {what}: {_group_alive(proc.pid)}\n"
                        f"{_why_stuck(proc, stderr)}")
        exited = time.time()
        while _group_alive(proc.pid) and time.time() < exited + 5:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "processes of the run outlived it"
        return proc.returncode, stderr.read_text()
    finally:
        sigkill_group(proc.pid)
        proc.wait()


def _ctrl_c(tmp_path: Path, args: list[str], ready: Callable[[subprocess.Popen[bytes]], bool]) -> tuple[int, str]:
    """``_stop_mid_run`` with SIGINT, sent to the run's main process alone (not its engine's)."""
    return _stop_mid_run(tmp_path, args, ready, lambda proc: proc.send_signal(signal.SIGINT), "SIGINT")


def _recorded(results: Path, n: int) -> Callable[[subprocess.Popen[bytes]], bool]:
    """Ready once the run has recorded ``n`` queries."""
    return lambda proc: results.exists() and len(results.read_text().splitlines()) >= n


def _engine_core(proc: subprocess.Popen[bytes]) -> psutil.Process | None:
    """The run's vLLM engine core process (the policy's: the default job runs no other engine)."""
    with contextlib.suppress(psutil.Error):
        return next((c for c in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in c.name()), None)
    return None


def test_a_run_that_inherited_sigint_ignored_ignores_it_while_its_engines_start_too() -> None:
    """As it does mid-run (Python and asyncio leave an ignored SIGINT ignored): once it stopped such a
    run while its engine started, and nowhere else."""
    from ttc.run import _ctrl_c_held

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _ctrl_c_held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.engine
def test_ctrl_c_mid_run_says_so_in_one_line_and_keeps_what_finished(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    limit = 20000  # a query takes ~0.1 s: hours of work, so the signal always lands mid-run
    code, err = _ctrl_c(tmp_path, ["strategy=best_of_n", "strategy.n=2", f"dataset.limit={limit}", "concurrency=1"],
                        _recorded(results, 3))
    assert code == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    kept = read_records(results)
    assert f"interrupted: {len(kept)} queries recorded in {results}; rerun the same command to resume" in err
    assert 3 <= len(kept) < limit and all(r["error"] is None for r in kept)
    assert not (tmp_path / "summary.json").exists()
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]  # every line whole
    assert len(ids) == len(kept) == len(set(ids))


@pytest.mark.engine
def test_ctrl_c_while_the_engine_starts_stops_the_run(tmp_path: Path) -> None:
    """vLLM swallows a KeyboardInterrupt raised while it waits for its engine to start; the run
    once went on regardless, or waited ten minutes for the engine that the interrupt cut off."""
    code, err = _ctrl_c(tmp_path, ["dataset.limit=20000"], lambda proc: _engine_core(proc) is not None)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "interrupt: stopping once the engines have started" in err  # it landed while the engine started
    assert f"interrupted: 0 queries recorded in {tmp_path / 'results.jsonl'}" in err
    assert not (tmp_path / "results.jsonl").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.engine
@pytest.mark.slow
def test_an_engine_killed_mid_run_stops_the_run_in_one_line_and_a_rerun_resumes(tmp_path: Path) -> None:
    """vLLM's offline client waits forever for the outputs of an engine core that died mid-batch
    (OOM-killed, say): the run notices the engine's death, says which in one line and stops."""
    from ttc.reference import POLICY_PATH
    from ttc.run import ENGINE_DIED_EXIT

    results = tmp_path / "results.jsonl"
    args = ["concurrency=1"]  # the default job, a query at a time: the engine dies mid-run
    killed: list[int] = []

    def kill_engine_core(proc: subprocess.Popen[bytes]) -> None:
        core = _engine_core(proc)
        assert core is not None, "no EngineCore among the run's processes"
        killed.append(core.pid)
        core.kill()

    code, err = _stop_mid_run(tmp_path, args, _recorded(results, 3), kill_engine_core, "its EngineCore was killed",
                              wait_s=60)
    assert code == ENGINE_DIED_EXIT, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    kept = read_records(results)
    said = [line for line in err.splitlines() if line.startswith("engine died:")]
    assert said == [f"engine died: the vLLM engine of {POLICY_PATH} died: its EngineCore process (pid {killed[0]}) "
                    f"killed by SIGKILL; {len(kept)} finished queries kept in {results}; "
                    "rerun the same command to resume"], err[-2000:]
    assert 3 <= len(kept) < 100 and all(r["error"] is None for r in kept)
    assert not (tmp_path / "summary.json").exists()

    cmd = [sys.executable, "-m", "ttc.run", *args, "progress=false", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 100  # none lost, none twice
    after = {r["id"]: r for r in read_records(results)}
    assert all(after[r["id"]]["completion"] == r["completion"] for r in kept)
