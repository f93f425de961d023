# Triton plus what our python-backend model (model_repository/rudialogpt/1/model.py) imports.
# 25.01 (server 2.54) rather than the 2.51 of the local binary: its Python is 3.12, and the
# serving graph's GroupQueryAttention with a shared in-place KV buffer needs a recent onnxruntime;
# onnxruntime-gpu 1.31 is published for Python 3.11/3.12 only (for 3.10, 24.10's Python, 1.23 is
# the newest). It lacks GQA's `query_seqlens` input, so CUDA exports are built without ragged
# chunks (`python -m export --device cuda --fp16`, see README "Engine").
FROM nvcr.io/nvidia/tritonserver:25.01-py3

# onnxruntime-gpu 1.31 is built for CUDA 12 + cuDNN 9, which this image ships.
# numpy<2: Triton's python-backend stub exchanges tensors through numpy 1.x's C API (seen with
# the 2.51 stub: with numpy 2 every output arrives empty; see requirements/triton.txt). Not
# requirements/triton.txt itself: it names the CPU `onnxruntime`, which must not sit beside
# onnxruntime-gpu.
RUN python3 -m pip install --no-cache-dir --break-system-packages onnxruntime-gpu==1.31.1 numpy==1.26.4 \
 && python3 -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"

# The liveness probe and the supervisor (standard library only). Triton keeps its health
# endpoints at 200 when the model's stub process is dead; the supervisor notices (a real
# inference, a zombie stub) and exits, so the container is restarted.
WORKDIR /opt/rudialogpt
COPY contract/ contract/
COPY serve/__init__.py serve/health.py serve/supervisor.py serve/

# The model is mounted at /models at run time (docker-compose.yml), not baked in.
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=15s --start-period=120s --retries=3 CMD ["python3", "-m", "serve.health", "--timeout", "10"]
ENTRYPOINT ["python3", "-m", "serve.supervisor", "--"]
CMD ["tritonserver", "--model-repository=/models"]
