"""Export a trained checkpoint to a Triton model repository (ONNX with KV cache)."""

from export.exporter import ExportError, ExportResult, export
from export.triton_config import ServingConfig
from export.versions import VersionError, rollback

__all__ = ["ExportError", "ExportResult", "ServingConfig", "VersionError", "export", "rollback"]
