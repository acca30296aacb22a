"""Shared fixtures: one real vLLM engine per test session for the policy, one for the PRM."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def policy_engine() -> Iterator[object]:
    pytest.importorskip("vllm")
    from ttc.backends.vllm import VLLMBackend
    from ttc.reference import POLICY_PATH

    backend = VLLMBackend(str(POLICY_PATH), seed=0, dtype="float32", max_model_len=256)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def prm_engine() -> Iterator[object]:
    pytest.importorskip("vllm")
    from ttc.backends.vllm import VLLMBackend
    from ttc.reference import PRM_PATH

    backend = VLLMBackend(str(PRM_PATH), seed=0, dtype="float32", max_model_len=256)
    yield backend
    backend.close()
