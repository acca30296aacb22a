#!/usr/bin/env bash
# The committed example sweep: strategy x N x difficulty on the reference tasks,
# vLLM on CPU, then its leaderboard report. Resumable: rerun the same command
# after a kill and finished runs and queries are skipped.
#   bash experiments/sweeps/reference.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-experiments/results/reference_sweep}
COMMON=(dataset=arith dataset.limit=50 "dataset.steps=4,6" "hydra.sweep.dir=$OUT" progress=false)
python -m ttc.run -m strategy=cot "${COMMON[@]}"
python -m ttc.run -m strategy=best_of_n "strategy.n=1,4,16" "strategy.select=majority,weighted" verifier=prm "${COMMON[@]}"
python -m ttc.run -m strategy=beam_search "strategy.n=4,16" strategy.width=4 "${COMMON[@]}"
python -m ttc.run -m strategy=mcts "strategy.simulations=4,16" strategy.branching=4 "${COMMON[@]}"
python -m ttc.report "$OUT" --out "$OUT/report" --title "Reference tasks: strategies x N x difficulty (vLLM, CPU)"
