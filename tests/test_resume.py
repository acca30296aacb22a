"""A sweep killed with SIGKILL and rerun with the same command loses no record and duplicates none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    os.killpg(proc.pid, signal.SIGKILL)
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
