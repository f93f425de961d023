"""config.pbtxt for the served model: explicit tensors, the sequence batcher, ORT settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import text_format

from contract import triton_io as io

if TYPE_CHECKING:  # tritonclient's gRPC package loads grpc: imported where a config is built
    from tritonclient.grpc.model_config_pb2 import ModelConfig


@dataclass
class ServingConfig:
    """How Triton batches and holds sequences; written into config.pbtxt."""

    name: str = io.DEFAULT_MODEL_NAME  # model name in the repository and in client requests
    vocab_size: int = 50261  # LOGITS width; token ids must be below it
    max_positions: int = 2048  # the model's positions (from the checkpoint)
    execution_provider: str = "cpu"  # "cpu" here, "cuda" on a GPU host
    intra_op_threads: int = 0  # onnxruntime threads per instance; 0 lets ORT choose
    max_batch_size: int = 8  # most requests Triton hands one execute()
    # KV-cache slots = sequences generating at once (others queue); +1 for the probe
    kv_slots: int = io.DEFAULT_KV_SLOTS
    slot_length: int = 0  # positions per slot = longest context a sequence may reach; 0: max_positions
    kv_dtype_bytes: int = 4  # bytes per cached value: 4 (fp32), 2 (fp16); set by export
    layers: int = 0  # model shape, for the memory estimate; set by export
    hidden: int = 0
    max_queue_delay_us: int = 2000  # how long a step may wait for the rest of its round (lone ones: all)
    idle_seconds: int = io.DEFAULT_IDLE_SECONDS  # a sequence idle this long is freed (slot and cache)
    onnx_file: str = io.ONNX_FILE  # the model's file in the version folder

    @property
    def context(self) -> int:
        """The longest context a sequence may reach: the slot length, at most the model's positions."""
        return min(self.slot_length or self.max_positions, self.max_positions)

    @property
    def kv_bytes(self) -> int:
        """Memory the model instance allocates for its KV slots."""
        return (self.kv_slots + 1) * self.context * self.layers * 2 * self.hidden * self.kv_dtype_bytes


def model_config(cfg: ServingConfig) -> ModelConfig:
    """Triton's ModelConfig protobuf for `cfg`: what config.pbtxt holds."""
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=cfg.name, backend="python", max_batch_size=cfg.max_batch_size)
    # The step's new token ids: the prompt with START, then one token; a prompt and single tokens
    # share one execute() (ragged batch).
    config.input.add(
        name=io.INPUT_IDS,
        data_type=pb.DataType.Value(f"TYPE_{io.INPUT_IDS_DTYPE}"),
        dims=[-1],
        allow_ragged_batch=True,
    )
    # Next-token logits of the last position.
    config.output.add(
        name=io.LOGITS, data_type=pb.DataType.Value(f"TYPE_{io.LOGITS_DTYPE}"), dims=[cfg.vocab_size]
    )
    # One generation = one sequence (correlation id); its KV cache lives in the model instance.
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = cfg.idle_seconds * 1_000_000
    batching.oldest.max_candidate_sequences = cfg.kv_slots + 1  # one per KV slot, one for the probe
    batching.oldest.preferred_batch_size.append(cfg.max_batch_size)
    batching.oldest.max_queue_delay_microseconds = cfg.max_queue_delay_us
    # KIND_CPU also on a GPU host: the python backend places nothing itself; the model's
    # onnxruntime session (execution_provider) puts the graph and the KV slots on the GPU.
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    params = {
        io.PARAM_ONNX_FILE: cfg.onnx_file,
        io.PARAM_EXECUTION_PROVIDER: cfg.execution_provider,
        io.PARAM_INTRA_OP_THREADS: cfg.intra_op_threads,
        io.PARAM_VOCAB_SIZE: cfg.vocab_size,
        io.PARAM_MAX_POSITIONS: cfg.context,
        io.PARAM_IDLE_SECONDS: cfg.idle_seconds,
        io.PARAM_KV_SLOTS: cfg.kv_slots,
        io.PARAM_SLOT_LENGTH: cfg.context,
    }
    for key, value in params.items():
        config.parameters[key].string_value = str(value)
    return config


def render(cfg: ServingConfig) -> str:
    """The config.pbtxt text for `cfg`: model_config(cfg) in protobuf text format, after a comment."""
    header = (
        "# Written by `python -m export` (export/triton_config.py); the same file serves on the CPU\n"
        "# here and on a GPU host. One generation = one Triton sequence; its KV cache stays in the\n"
        "# model instance (python backend: model.py + engine.py), one candidate sequence per KV slot\n"
        "# plus one for the liveness probe. KIND_CPU also on a GPU host: the model's onnxruntime\n"
        "# session (the execution_provider parameter) puts the graph and the KV slots on the GPU.\n"
        f"# KV slots: {cfg.kv_slots} x {cfg.context} positions = {cfg.kv_bytes / 1e6:.1f} MB.\n"
    )
    return header + text_format.MessageToString(model_config(cfg))


def validate(text: str) -> ModelConfig:
    """Parse config text into Triton's ModelConfig protobuf; raises ValueError naming the problem."""
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from exc
    return config
