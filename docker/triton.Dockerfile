# Triton 2.51 (the same server version as the local binary from nvidia-pytriton) plus what our
# python-backend model (model_repository/rudialogpt/1/model.py) imports. The image's python is 3.10.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# onnxruntime-gpu 1.20 is built for CUDA 12 + cuDNN 9, which this image ships (CUDA 12.6, cuDNN 9.5).
# numpy<2: the 2.51 python-backend stub exchanges tensors through numpy 1.x's C API; with numpy 2
# every output arrives empty (see requirements/triton.txt). Not requirements/triton.txt itself:
# it names the CPU `onnxruntime`, which must not sit beside onnxruntime-gpu.
RUN python3 -m pip install --no-cache-dir onnxruntime-gpu==1.20.2 numpy==1.26.4 \
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
