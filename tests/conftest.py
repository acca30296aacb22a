"""Shared fixtures: one real vLLM engine per test session for the policy, one for the PRM, each
on cores of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _engine(path: Path, cores: str | None) -> Iterator[object]:
    pytest.importorskip("vllm")
    from ttc.backends.vllm import VLLMBackend

    backend = VLLMBackend(str(path), seed=0, dtype="float32", max_model_len=256, cpu_cores=cores)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def policy_engine() -> Iterator[object]:
    from tests.servers import own_cores
    from ttc.reference import POLICY_PATH

    yield from _engine(POLICY_PATH, own_cores(0))


@pytest.fixture(scope="session")
def prm_engine() -> Iterator[object]:
    from tests.servers import own_cores
    from ttc.reference import PRM_PATH

    yield from _engine(PRM_PATH, own_cores(1))
