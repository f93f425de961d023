# Triton plus what our python-backend model (model_repository/rudialogpt/1/model.py) imports.
# 25.10: CUDA 13.0.2, Ubuntu 24.04, Python 3.12. onnxruntime-gpu 1.31.1 is built with CUDA 13.0
# (libcudart.so.13, libcublas.so.13, cuDNN 9 for CUDA 13), so its CUDA provider needs a Triton
# release built on CUDA 13: 25.08 or later (25.01, CUDA 12.8, listed the provider but could not
# load it). Host: NVIDIA driver 575 or later (CUDA 13.0's) and the NVIDIA Container Toolkit.
# onnxruntime-gpu 1.31 (a recent onnxruntime: the serving graph's GroupQueryAttention with a
# shared in-place KV buffer) is published for Python 3.11/3.12 only. It lacks GQA's
# `query_seqlens` input, so CUDA exports are built without ragged chunks
# (`python -m export --device cuda --fp16`, see docs/serving.md).
FROM nvcr.io/nvidia/tritonserver:25.10-py3

# numpy<2: Triton's python-backend stub exchanges tensors through numpy 1.x's C API (seen with
# the 2.51 stub: with numpy 2 every output arrives empty; see requirements/triton.txt; Triton's
# own build still installs "numpy<2" for the python backend). Not requirements/triton.txt itself:
# it names the CPU `onnxruntime`, which must not sit beside onnxruntime-gpu.
RUN python3 -m pip install --no-cache-dir --break-system-packages onnxruntime-gpu==1.31.1 numpy==1.26.4

# Fails the build, one line per missing library naming the fix, unless every library the CUDA
# provider loads resolves here (its NEEDED entries, and cuDNN, cuFFT, NVRTC it opens at run time).
# No GPU needed: the loader is asked (ldd), nothing is loaded; the driver's libcuda.so.1 is
# skipped, the NVIDIA Container Toolkit mounts it when the container starts.
# (`get_available_providers()` cannot tell: it lists the providers compiled in.)
WORKDIR /opt/rudialogpt
COPY docker/cuda_libraries.py ./
RUN python3 cuda_libraries.py

# The liveness probe and the supervisor (standard library only). Triton keeps its health
# endpoints at 200 when the model's stub process is dead; the supervisor notices (a real
# inference, a zombie stub) and exits, so the container is restarted.
COPY contract/ contract/
COPY serve/__init__.py serve/health.py serve/supervisor.py serve/

# The model is mounted at /models at run time (docker-compose.yml), not baked in. Poll mode: a new
# version folder export publishes there is loaded without a restart (docker-compose.yml says why
# poll and not explicit: no load API that takes model files over the network).
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=15s --start-period=120s --retries=3 CMD ["python3", "-m", "serve.health", "--timeout", "10"]
ENTRYPOINT ["python3", "-m", "serve.supervisor", "--"]
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=poll", "--repository-poll-secs=5"]
