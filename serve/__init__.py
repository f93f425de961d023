"""Local serving: the real tritonserver binary from the nvidia-pytriton wheel, on the CPU."""
from serve.server import TritonServer, TritonServerError

__all__ = ["TritonServer", "TritonServerError"]
