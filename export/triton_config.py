"""config.pbtxt for the served model: explicit tensors, the sequence batcher, ORT settings."""
from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format

from contract import triton_io as io


@dataclass
class ServingConfig:
    """How Triton batches and holds sequences; written into config.pbtxt."""

    name: str = io.DEFAULT_MODEL_NAME  # model name in the repository and in client requests
    vocab_size: int = 50261  # LOGITS width; token ids must be below it
    max_positions: int = 2048  # longest context one sequence may reach
    execution_provider: str = "cpu"  # "cpu" here, "cuda" on a GPU host
    intra_op_threads: int = 0  # onnxruntime threads per instance; 0 lets ORT choose
    max_batch_size: int = 8  # most sequences batched into one ORT call
    max_candidate_sequences: int = 64  # sequences Triton keeps active at once (others wait)
    max_queue_delay_us: int = 2000  # how long a step may wait for the rest of its round (lone steps pay it all)
    idle_seconds: int = 60  # a sequence idle this long is freed (Triton's slot and our cache)
    onnx_file: str = "model.onnx"  # the model's file in the version folder


def render(cfg: ServingConfig) -> str:
    """The config.pbtxt text for `cfg`."""
    params = {
        io.PARAM_ONNX_FILE: cfg.onnx_file,
        io.PARAM_EXECUTION_PROVIDER: cfg.execution_provider,
        io.PARAM_INTRA_OP_THREADS: cfg.intra_op_threads,
        io.PARAM_VOCAB_SIZE: cfg.vocab_size,
        io.PARAM_MAX_POSITIONS: cfg.max_positions,
        io.PARAM_IDLE_SECONDS: cfg.idle_seconds,
        io.PARAM_MAX_SEQUENCES: cfg.max_candidate_sequences,
    }
    param_text = "\n".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items())
    return f"""# Written by `python -m export`; the same file serves on the CPU here and on a GPU host.
name: "{cfg.name}"
backend: "python"
max_batch_size: {cfg.max_batch_size}

input [
  {{
    name: "{io.INPUT_IDS}"  # the step's new token ids: the prompt with START, then one token
    data_type: TYPE_{io.INPUT_IDS_DTYPE}
    dims: [ -1 ]
    allow_ragged_batch: true  # a prompt and single tokens share one execute()
  }}
]
output [
  {{
    name: "{io.LOGITS}"  # next-token logits of the last position
    data_type: TYPE_{io.LOGITS_DTYPE}
    dims: [ {cfg.vocab_size} ]
  }}
]

# One generation = one sequence (correlation id); its KV cache lives in the model instance.
sequence_batching {{
  max_sequence_idle_microseconds: {cfg.idle_seconds * 1_000_000}
  oldest {{
    max_candidate_sequences: {cfg.max_candidate_sequences}
    preferred_batch_size: [ {cfg.max_batch_size} ]
    max_queue_delay_microseconds: {cfg.max_queue_delay_us}
  }}
}}

instance_group [ {{ count: 1, kind: KIND_CPU }} ]

{param_text}
"""


def validate(text: str):
    """Parse config text into Triton's ModelConfig protobuf; raises ValueError naming the problem."""
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from exc
    return config
