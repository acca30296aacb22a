"""Engines on CPU cores: which cores a ``cpu_cores`` setting names, and starting an engine on them.

On a CPU machine a policy and its PRM compute at once only on cores of their own (two
cohorts, ``batching.py``); each engine's own default takes all of them, or, in vLLM's case,
the same ones for every engine of a process.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Annotated

from pydantic import AfterValidator


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_core_ids(cores: str | int) -> list[int]:
    """The core ids of a ``cpu_cores`` setting (vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` syntax:
    ``"0-3"``, ``"0,2"``; ``|`` between the workers of a tensor-parallel engine), checked
    against the cores this process may use, so that a typo fails here and not in a worker."""
    cores = str(cores)  # a command line's cpu_cores=1 arrives as a number
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*(\|\d+(-\d+)?(,\d+(-\d+)?)*)*", cores):
        raise ValueError("cpu_cores: expected core ids like '0-3' or '0,2'")
    ids: list[int] = []
    for part in re.split(r"[,|]", cores):
        lo, _, hi = part.partition("-")
        ids += range(int(lo), int(hi or lo) + 1)
    allowed = sorted(os.sched_getaffinity(0))
    if not ids or not set(ids) <= set(allowed):
        raise ValueError(f"cpu_cores: this process may use cores {allowed} only")
    return ids


def _check_cores(cores: str | int) -> str:
    cpu_core_ids(cores)
    return str(cores)


def check_core_set(cores: str | int) -> str:
    if "|" in str(cores):
        raise ValueError("cpu_cores: one set of cores for all the engine's processes, like '0-3' ('|' is vLLM's)")
    return _check_cores(cores)


# Checked with the rest of the config, before any engine starts. ``CpuCoreSet``: for
# engines bound as a whole (``started_on``), with no per-worker groups.
CpuCores = Annotated[str | int, AfterValidator(_check_cores)]
CpuCoreSet = Annotated[str | int, AfterValidator(check_core_set)]


@contextlib.contextmanager
def started_on(cores: str | int | None) -> Iterator[None]:
    """Run the calling thread on ``cores`` while an engine starts its processes, then give it
    back the cores it had.

    A process inherits the CPU affinity of the thread that starts it, and OpenMP (so
    PyTorch) sizes its thread pool from that affinity: an engine whose processes start
    here computes on ``cores`` with one thread per core. Other threads of this process,
    and processes started later, keep theirs.
    """
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpu_core_ids(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
