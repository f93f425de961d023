"""The served model's I/O contract: shared by the exporter, the Triton model and the client.

One Triton *sequence* is one generation. The client sends the prompt's token ids with START,
then each sampled token alone; the server keeps the conversation's KV cache keyed by the
sequence's correlation id and answers with the logits of the last position. END frees the cache;
an END step may carry no tokens at all (then it only frees, and its logits are empty).
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "rudialogpt"

# Triton tensors (config.pbtxt, model.py, bot client).
INPUT_IDS = "INPUT_IDS"  # INT64, shape [1, n]: the step's new token ids (n >= 1; 0 only with END)
INPUT_IDS_DTYPE = "INT64"
LOGITS = "LOGITS"  # FP32, shape [1, vocab_size]: next-token logits after the step
LOGITS_DTYPE = "FP32"

# Sequence flags as the python backend reports them with request.flags().
FLAG_START = 1
FLAG_END = 2

# The liveness probe's correlation id (serve/health.py): one token with START|END. Above every id
# a client draws (randbits(63)), so a probe never touches a real generation's cache.
PROBE_SEQUENCE_ID = 2**63

# config.pbtxt `parameters` the model reads (string values).
PARAM_ONNX_FILE = "onnx_file"  # file name of the ONNX model in the version folder
PARAM_EXECUTION_PROVIDER = "execution_provider"  # "cpu" or "cuda"
PARAM_INTRA_OP_THREADS = "intra_op_threads"  # onnxruntime threads; "0" lets ORT choose
PARAM_VOCAB_SIZE = "vocab_size"  # the model's vocabulary (ids must be below it)
PARAM_MAX_POSITIONS = "max_positions"  # longest context a sequence may reach
PARAM_IDLE_SECONDS = "cache_idle_seconds"  # a cache unused this long is freed
PARAM_KV_SLOTS = "kv_slots"  # KV-cache slots: most sequences cached at once
PARAM_SLOT_LENGTH = "slot_length"  # positions one slot holds: the longest context a sequence may reach
PARAM_NUM_LAYERS = "num_layers"  # transformer layers (past_key_values.N)
PARAM_NUM_HEADS = "num_heads"
PARAM_HEAD_DIM = "head_dim"
META_RAGGED_CHUNKS = "ragged_chunks"  # serving graph metadata: "1" if rows may carry chunks of any length

# Serving defaults, one definition each: export writes them into config.pbtxt (ServingConfig in
# export/triton_config.py), model.py reads what config.pbtxt says, and the engine (serve/engine.py)
# uses them when it is built directly (tests, bench).
ONNX_FILE = "model.onnx"  # the served graph in the model's version folder
DEFAULT_KV_SLOTS = 8  # KV-cache slots: sequences generating at once (each holds one from START to END)
DEFAULT_IDLE_SECONDS = 60  # a sequence idle this long is freed (Triton's sequence slot and its KV slot)

# ONNX inputs and outputs. The serving graph (export/serving_graph.py) and optimum's export of
# GPT-2 with task "text-generation-with-past" (the reference) share the first four names.
ONNX_INPUT_IDS = "input_ids"  # int64 [rows, chunk]
ONNX_ATTENTION_MASK = "attention_mask"  # optimum's graph only
ONNX_POSITION_IDS = "position_ids"  # int64 [rows, chunk]
ONNX_LOGITS = "logits"  # serving graph: fp32 [rows, vocab] of each row's last real token
ONNX_SEQLENS_K = "seqlens_k"  # int32 [rows]: tokens of context after the step, minus one
ONNX_TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar: the slot length (an upper bound)
ONNX_QUERY_SEQLENS = "query_seqlens"  # int32 [rows]: real tokens in the row's chunk (0: idle row)


def serving_past(layer: int, kind: str) -> str:
    """Serving graph: one layer's KV buffer as input (`kind` "key" or "value"), bound in place."""
    return f"past_{kind}.{layer}"


def serving_present(layer: int, kind: str) -> str:
    """Serving graph: the same buffer as output (bound to the same memory as the input)."""
    return f"present_{kind}.{layer}"


def onnx_past(layer: int, kind: str) -> str:
    """optimum's graph: input name of one layer's past keys or values ("key" or "value")."""
    return f"past_key_values.{layer}.{kind}"


def onnx_present(layer: int, kind: str) -> str:
    """optimum's graph: output name of one layer's keys or values, past and new concatenated."""
    return f"present.{layer}.{kind}"


# Where export puts the tokenizer for the bot: model_repository/<name>/tokenizer/.
TOKENIZER_DIR = "tokenizer"
