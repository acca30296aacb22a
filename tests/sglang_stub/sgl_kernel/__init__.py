"""A no-op stand-in for SGLang's ``sgl_kernel``: for tests and CI on machines without a GPU only.

The PyPI ``sgl_kernel`` is CUDA-only and fails to load without ``libcuda``; it holds no
CPU kernels either. With this module ahead on ``PYTHONPATH`` (and
``SGLANG_USE_CPU_ENGINE=1``), SGLang finds no registered ``sgl_kernel`` ops, so every
layer takes its own PyTorch ``forward_native`` path. The names SGLang imports at start-up
resolve to functions that raise if ever called: a missing kernel fails loudly, never
silently. Never put this directory on the path of a real GPU install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

__version__ = "0.0.0+ttc-cpu-stub"


def _missing(name: str) -> Callable[..., NoReturn]:
    def call(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(f"sgl_kernel.{name}: no CPU kernel in the ttc test stand-in")

    call.__name__ = name
    return call


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)
