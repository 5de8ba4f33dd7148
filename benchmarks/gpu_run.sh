#!/usr/bin/env bash
# The one prepared GPU session: sanity checks, then the training-step comparison within a time budget.
# Usage on the lent machine: OUT=<dir> BUDGET_S=300 bash benchmarks/gpu_run.sh
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, torchaudio; print(torch.__version__, transformers.__version__, torchaudio.__version__)"
python3 benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"
python3 benchmarks/train_throughput.py --budget-s "${BUDGET_S:-300}" --steps "${STEPS:-10}" \
  --clips ${CLIPS:-16 64} --systems ${SYSTEMS:-ptasr ptasr-compile transformers-sdpa torchaudio torchaudio-compile} \
  --out "$OUT/train_throughput.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/train_throughput.log"
