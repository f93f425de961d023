#!/usr/bin/env bash
# The GPU check on a machine with an NVIDIA GPU, with what is installed there (no package
# registry needed): python3 with torch, transformers, onnx, onnxruntime-gpu, tokenizers,
# tritonclient and nvidia-pytriton (its tritonserver), and a venv with numpy<2 and onnxruntime-gpu
# for Triton's python backend ($TRITON_MODEL_PYTHON, default .venv-triton). What is missing is
# named, and nothing is installed. Then:
#   1. python3 docker/cuda_libraries.py: every library onnxruntime's CUDA provider needs resolves;
#   2. python3 -m bench.gpu_check: parity, the engine (decode graphs off and on), the bot's client
#      through the real Triton, transformers; results in results/gpu-check.{md,json}.
# usage: scripts/gpu_check.sh [bench.gpu_check's flags, e.g. --out results]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "warning: nvidia-smi failed"
"$PYTHON" docker/cuda_libraries.py || exit $?
exec "$PYTHON" -m bench.gpu_check "$@"
