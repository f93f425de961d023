"""Export a trained checkpoint to a Triton model repository (ONNX with KV cache)."""

from export.exporter import ExportError, ExportResult, export
from export.triton_config import ServingConfig

__all__ = ["ExportError", "ExportResult", "ServingConfig", "export"]
