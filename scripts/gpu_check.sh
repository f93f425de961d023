#!/usr/bin/env bash
# The GPU check of Engine v2, on a machine with an NVIDIA GPU (driver for CUDA 12) and PyPI:
# builds two environments beside the repo (the check's own with onnxruntime-gpu instead of the
# CPU onnxruntime, and the one Triton's python backend runs model.py in), then runs
# `python -m bench.gpu_check`. Results: results/gpu-check.{md,json}. Takes ~5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
VENV=${GPU_VENV:-.venv-gpu}
MODEL_VENV=${GPU_MODEL_VENV:-.venv-triton-gpu}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r requirements/dev.txt
  "$VENV/bin/pip" uninstall -q -y onnxruntime
  "$VENV/bin/pip" install -q "$ORT_GPU"
  "$VENV/bin/pip" install -q --no-deps nvidia-pytriton==0.7.0
fi
if [ ! -x "$MODEL_VENV/bin/python" ]; then
  python3 -m venv "$MODEL_VENV"
  "$MODEL_VENV/bin/pip" install -q 'numpy>=1.26,<2' "$ORT_GPU"
fi
exec "$VENV/bin/python" -m bench.gpu_check --model-python "$MODEL_VENV" "$@"
