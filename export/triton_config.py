"""config.pbtxt of the served model: explicit tensors, dynamic batcher, version policy, ORT settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import text_format

from contract import triton_io as io

if TYPE_CHECKING:  # tritonclient's gRPC package loads grpc: imported where a config is built
    from tritonclient.grpc.model_config_pb2 import ModelConfig


@dataclass
class ServingConfig:
    """How Triton batches requests and the model holds sequences; written into config.pbtxt."""

    name: str = io.DEFAULT_MODEL_NAME  # model name in the repository and in client requests
    max_positions: int = 2048  # the model's positions (from the checkpoint)
    execution_provider: str = "cpu"  # "cpu" here, "cuda" on a GPU host
    intra_op_threads: int = 0  # onnxruntime threads per instance; 0 lets ORT choose
    max_batch_size: int = 8  # most round requests (bot processes) Triton hands one execute()
    # KV-cache slots = sequences generating at once (others wait); None: "auto", sized by the
    # engine at load from the device's free memory on CUDA, io.DEFAULT_KV_SLOTS on the CPU.
    kv_slots: int | None = None
    slot_length: int = 0  # positions per slot = longest context a sequence may reach; 0: max_positions
    kv_dtype_bytes: int = 4  # bytes per cached value: 4 (fp32), 2 (fp16); set by export
    layers: int = 0  # model shape, for the memory estimate; set by export
    hidden: int = 0
    idle_seconds: int = io.DEFAULT_IDLE_SECONDS  # a sequence idle this long is freed (its KV slot)
    decode_graphs: str = (
        "auto"  # decode steps on fixed bindings: "auto" (with CUDA, as CUDA graphs), "on", "off"
    )
    # The first chunks of several prompts in one call, in a graph without ragged chunks: "auto"
    # (with the CPU provider; CUDA's is unverified), "on", "off" (engine/plan.py's `together`).
    prompt_batching: str = "auto"
    onnx_file: str = io.ONNX_FILE  # the model's file in the version folder

    @property
    def context(self) -> int:
        """The longest context a sequence may reach: the slot length, at most the model's positions."""
        return min(self.slot_length or self.max_positions, self.max_positions)

    @property
    def kv_slots_text(self) -> str:
        """kv_slots as config.pbtxt writes it: the count, or "auto"."""
        return io.KV_SLOTS_AUTO if self.kv_slots is None else str(self.kv_slots)

    @property
    def kv_bytes(self) -> int:
        """Memory the model instance allocates for its KV slots (the probe's included); with
        "auto", for the CPU's count (a GPU sizes its own at load)."""
        slots = (self.kv_slots or io.DEFAULT_KV_SLOTS) + io.PROBE_SLOTS
        return slots * self.context * self.layers * 2 * self.hidden * self.kv_dtype_bytes


def model_config(cfg: ServingConfig) -> ModelConfig:
    """Triton's ModelConfig protobuf for `cfg`: what config.pbtxt holds."""
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=cfg.name, backend="python", max_batch_size=cfg.max_batch_size)
    # A round request: one row per sequence, the rows' token ids one after the other. Requests of
    # different sizes share one execute() (ragged batch); the first dimension is Triton's batch.
    for name, dtype in io.REQUEST_INPUTS.items():
        config.input.add(
            name=name, data_type=pb.DataType.Value(f"TYPE_{dtype}"), dims=[-1], allow_ragged_batch=True
        )
    # The answer per row: status, error text, the K candidates (K and the vocabulary are the graph's).
    for name, dtype in io.RESPONSE_OUTPUTS.items():
        rank = 1 if name in (io.STATUS, io.ERRORS) else 2
        kind = "STRING" if dtype == "BYTES" else dtype
        config.output.add(name=name, data_type=pb.DataType.Value(f"TYPE_{kind}"), dims=[-1] * rank)
    # No queue delay: a round is a batch already; a request that arrives while another runs waits
    # for it and then runs with whatever else has queued.
    config.dynamic_batching.max_queue_delay_microseconds = 0
    # KIND_CPU also on a GPU host: the python backend places nothing itself; the model's
    # onnxruntime session (execution_provider) puts the graph and the KV slots on the GPU.
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    # The highest version serves (export/versions.py). Triton, polling, loads a new one beside it
    # and then unloads the old one: two are held only for that moment.
    config.version_policy.latest.num_versions = 1
    params = {
        io.PARAM_ONNX_FILE: cfg.onnx_file,
        io.PARAM_EXECUTION_PROVIDER: cfg.execution_provider,
        io.PARAM_INTRA_OP_THREADS: cfg.intra_op_threads,
        io.PARAM_IDLE_SECONDS: cfg.idle_seconds,
        io.PARAM_KV_SLOTS: cfg.kv_slots_text,
        io.PARAM_SLOT_LENGTH: cfg.context,
        io.PARAM_DECODE_GRAPHS: cfg.decode_graphs,
        io.PARAM_PROMPT_BATCHING: cfg.prompt_batching,
    }
    for key, value in params.items():
        config.parameters[key].string_value = str(value)
    return config


def render(cfg: ServingConfig) -> str:
    """The config.pbtxt text for `cfg`: model_config(cfg) in protobuf text format, after a comment."""
    header = (
        "# Written by `python -m export` (export/triton_config.py); the same file serves on the CPU\n"
        "# here and on a GPU host. A request is one round of a bot process: a row per generation\n"
        "# (contract/triton_io.py); the KV caches stay in the model instance (python backend:\n"
        "# model.py + serve/), one slot per sequence plus one for the liveness probe. KIND_CPU also\n"
        "# on a GPU host: the model's onnxruntime session (the execution_provider parameter) puts\n"
        "# the graph and the KV slots on the GPU. One config for every version folder; the highest\n"
        "# serves (Triton polling the repository loads a new one while the old one serves).\n"
        + (
            f"# KV slots: {cfg.kv_slots} x {cfg.context} positions = {cfg.kv_bytes / 1e6:.1f} MB.\n"
            if cfg.kv_slots is not None
            else f"# KV slots: auto x {cfg.context} positions: sized at load from the GPU's free memory\n"
            f"# (engine/memory.py); {io.DEFAULT_KV_SLOTS} on the CPU = {cfg.kv_bytes / 1e6:.1f} MB.\n"
        )
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
