#!/usr/bin/env bash
# The one prepared GPU session: sanity checks (with where each host sync is), both positional convs on their own,
# the Lightning fit loop (fit_throughput.py, with the bare step of ptasr in the same process) at 16 and 64 clips,
# then the training-step comparison (train_throughput.py): ptasr packed and padded, with the direct and the FFT
# positional conv, against the peers. Each section has its own time share and a hard limit (checks 60 s,
# positional convs 40 s, fit 170 s, steps 210 s; the GPU tests only with GPU_TESTS=1, 120 s), so that by default
# the script ends within 8 minutes of wall time (not yet timed on a GPU): a session has 15 minutes of device
# time, the machine's start-up included. JSON is written as results come; $OUT gets at most 8 files (8 come
# back), the last being profiles.txt: torch.profiler tables of the top operators of two steps per profiled
# system (ptasr-compile, ptasr-compile-fft) and batch size. After the run: the faster positional conv at 64
# clips becomes the GPU default (configs' model.config_overrides.positional_conv), see benchmarks/README.md.
# Only $OUT comes back from a lent machine: commit its JSON and profiles.txt under benchmarks/results/ with the
# card's name (e.g. train_throughput_h200.json, profiles_h200.txt).
#
# Usage on the lent machine, from the repository root, carrying the wheels folder .whl (below): the device tool's
# run with command "bash benchmarks/gpu_run.sh", carry [".whl"] and timeout_s 540 (it sets OUT); elsewhere
#   OUT=<dir> bash benchmarks/gpu_run.sh
# Rehearsal on a machine without a GPU (small models, short runs; PYTHON picks the interpreter):
#   DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/out FIT_S=150 BUDGET_S=60 POS_ROUNDS=1 POS_ARGS="--first 1" \
#     bash benchmarks/gpu_run.sh
#
# Knobs (environment):
#   FIT=1|0           the fit-loop section (default 1); FIT=0 runs what the script ran before it existed
#   GPU_TESTS=1|0     tests/test_train_gpu.py into gpu_check.log (default 0: it does not fit the 8 minutes)
#   FIT_S             the fit section's share in seconds (default 150; stopped at FIT_S + 20)
#   FIT_CLIPS         clips per step, one fit run each while the share lasts (default "16 64"; CPU "4")
#   FIT_ARGS          more fit_throughput.py arguments, e.g. "--compile" or "--steps 30"
#   BUDGET_S          train_throughput.py's budget (default 180 with the fit section, 300 without; stopped
#                     at BUDGET_S + 30)
#   STEPS, CLIPS, SYSTEMS   train_throughput.py's, as before
#   WHEELS            folder of wheels to install first (default .whl)
#
# The machine's python3 has torch, lightning, transformers, torchaudio, tensorboard, PyYAML and safetensors, but
# not soundfile (+ cffi, pycparser), jiwer (+ rapidfuzz) or jsonargparse[signatures] (+ docstring_parser,
# typeshed_client), which the data module, the callbacks and the CLI need. Fetch them once, here, into the
# git-ignored .whl, and name .whl in the run's carry (without them the fit section is skipped, with a message):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 jiwer==4.0.0 \
#     rapidfuzz==3.14.6 jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
FIT=${FIT:-1}
WHEELS=${WHEELS:-.whl}

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
fi
"$PYTHON" -c "import torch, transformers, torchaudio; print(torch.__version__, transformers.__version__, torchaudio.__version__)"
if [ "$DEVICE" = cuda ]; then
  timeout -k 10 60 "$PYTHON" benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"
  if [ "${GPU_TESTS:-0}" = 1 ]; then
    # the CUDA-only tests (skipped everywhere else), into the same log: $OUT brings back 8 files at most
    timeout -k 10 ${GPU_TESTS_S:-120} "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_train_gpu.py 2>&1 \
      | grep -v -E -e "[0-9](it/s|s/it)" | tail -60 | tee -a "$OUT/gpu_check.log"
  fi
fi
# both positional convs alone, forward + backward (bf16 on a GPU); into the checks' log (8 files come back)
timeout -k 10 40 "$PYTHON" benchmarks/positional_conv.py --device "$DEVICE" --rounds "${POS_ROUNDS:-5}" ${POS_ARGS:-} \
  --out "$OUT/positional_conv.json" 2>&1 | tee -a "$OUT/gpu_check.log"

if [ "$FIT" = 1 ]; then
  if "$PYTHON" -c "import soundfile, jiwer, jsonargparse, docstring_parser, typeshed_client" 2>"$OUT/fit_throughput.log"; then
    FIT_S=${FIT_S:-150}
    fit_end=$((SECONDS + FIT_S))
    for clips in ${FIT_CLIPS:-$([ "$DEVICE" = cuda ] && echo 16 64 || echo 4)}; do
      left=$((fit_end - SECONDS))
      if [ "$left" -lt 45 ]; then echo "fit_throughput: skip $clips clips per step, ${left} s left" | tee -a "$OUT/fit_throughput.log"; break; fi
      timeout -k 10 $((left + 20)) "$PYTHON" benchmarks/fit_throughput.py --device "$DEVICE" --clips-per-step "$clips" \
        --compare-step --budget-s "$left" --out "$OUT/fit_throughput_${clips}.json" ${FIT_ARGS:-} 2>&1 \
        | tr '\r' '\n' | grep -v -E -e "[0-9](it/s|s/it)" -e "^ *$" | tee -a "$OUT/fit_throughput.log"  # no progress-bar redraws
    done
  else
    echo "fit_throughput: skipped, soundfile/jiwer/jsonargparse missing: carry the wheels folder $WHEELS (see the top of this script)" \
      | tee -a "$OUT/fit_throughput.log"
  fi
fi

BUDGET_S=${BUDGET_S:-$([ "$FIT" = 1 ] && echo 180 || echo 300)}
if [ "$DEVICE" = cuda ]; then
  SYSTEMS=${SYSTEMS:-ptasr ptasr-padded ptasr-fft ptasr-compile ptasr-compile-fft transformers-sdpa torchaudio-compile}
else
  SYSTEMS=${SYSTEMS:-ptasr ptasr-padded ptasr-fft transformers-eager}
fi
timeout -k 10 $((BUDGET_S + 30)) "$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" --budget-s "$BUDGET_S" \
  --steps "${STEPS:-$([ "$DEVICE" = cuda ] && echo 10 || echo 4)}" --clips ${CLIPS:-$([ "$DEVICE" = cuda ] && echo 16 64 || echo 4)} \
  --systems $SYSTEMS --out "$OUT/train_throughput.json" --profile "$OUT/profiles.txt" \
  --profile-systems ${PROFILE_SYSTEMS:-$([ "$DEVICE" = cuda ] && echo ptasr-compile ptasr-compile-fft || echo ptasr ptasr-fft)} 2>&1 | grep -v "Loading weights" | tee "$OUT/train_throughput.log"
