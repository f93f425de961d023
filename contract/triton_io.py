"""The served model's I/O contract: shared by the exporter, the Triton model and the client.

A generation is a *sequence* (a random id) whose KV cache the server keeps. The client sends
*rounds*: one request carries one row per sequence that steps now, each with the position of its
first new token in the sequence's context (0 starts the sequence), its new token ids and flags.
The server answers each row with a status and the K most likely next tokens with their logits
(and the whole row of logits where a row asks for it). A position below what the server holds
rewinds the sequence to it, so a step sent twice gives the same answer. END frees the cache; an
END row may carry no tokens (then it only frees).
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "rudialogpt"
DEFAULT_HTTP_PORT = 8000  # Triton's HTTP port (its own default; `python -m serve` and the demo use it)
DEFAULT_URL = f"127.0.0.1:{DEFAULT_HTTP_PORT}"  # where the bot, bench and probe look for Triton

# Triton tensors of a round request (config.pbtxt, model.py, bot client). Every tensor has a
# leading batch dimension of 1 (Triton's dynamic batcher may hand model.py several requests).
SEQUENCE_IDS = "SEQUENCE_IDS"  # UINT64 [1, rows]: each row's sequence (a sequence at most once per round)
POSITIONS = "POSITIONS"  # INT64 [1, rows]: where the row's new tokens start in its context (0: start)
COUNTS = "COUNTS"  # INT32 [1, rows]: how many of INPUT_IDS are the row's (0 only with ROW_END)
FLAGS = "FLAGS"  # INT32 [1, rows]: ROW_END | ROW_FULL
INPUT_IDS = "INPUT_IDS"  # INT64 [1, tokens]: the rows' new token ids, one row after the other
REQUEST_INPUTS = {
    SEQUENCE_IDS: "UINT64",
    POSITIONS: "INT64",
    COUNTS: "INT32",
    FLAGS: "INT32",
    INPUT_IDS: "INT64",
}
# The answer.
STATUS = "STATUS"  # INT32 [1, rows]: ROW_OK or the row's error code (below)
ERRORS = "ERRORS"  # BYTES [1, failed rows]: the message of each row not ROW_OK, in row order
CANDIDATE_IDS = "CANDIDATE_IDS"  # INT32 [1, rows, K]: the K most likely next tokens, best first
CANDIDATE_LOGITS = "CANDIDATE_LOGITS"  # FP32 [1, rows, K]: their logits
LOGITS = "LOGITS"  # FP32 [1, full rows, vocab]: the whole row of each ROW_FULL row, in row order
# BYTES [1, 4]: what the answering version says of itself, sent only where asked for (the client's
# probe): its tokenizer's digest (contract/repository.py's tokenizer_digest), that tokenizer's
# folder as the Triton host sees it, its slot length (the longest context) and its KV slots.
SERVED = "SERVED"
RESPONSE_OUTPUTS = {
    STATUS: "INT32",
    ERRORS: "BYTES",
    CANDIDATE_IDS: "INT32",
    CANDIDATE_LOGITS: "FP32",
    LOGITS: "FP32",
    SERVED: "BYTES",
}


def round_shapes(rows: int, tokens: int) -> dict[str, list[int]]:
    """Each input's shape in a round of `rows` rows that carry `tokens` new ids in all."""
    return {name: [1, tokens if name == INPUT_IDS else rows] for name in REQUEST_INPUTS}


# FLAGS bits.
ROW_END = 1  # free the sequence's cache after this row
ROW_FULL = 2  # answer the whole row of logits too (LOGITS)

# STATUS codes: whose move it is. Rows fail alone; a malformed request fails whole (HTTP 400).
ROW_OK = 0
ROW_INVALID = 1  # the row itself is wrong (ids, position past the slot): fix the request
ROW_LOST = 2  # the server holds no cache for the sequence at that position: start it again at 0
ROW_BUSY = 3  # no KV slot free for a new sequence right now: try again later
ROW_FAILED = 4  # onnxruntime failed; the sequence's cache was dropped: start it again at 0

# The liveness probe's sequence id: one token at position 0 with END (PROBE_ROW). Above every id a
# client draws (randbits(63)), so a probe never touches a real generation's cache.
PROBE_SEQUENCE_ID = 2**63
PROBE_ROW = {SEQUENCE_IDS: PROBE_SEQUENCE_ID, POSITIONS: 0, COUNTS: 1, FLAGS: ROW_END, INPUT_IDS: 0}

# The engine keeps one KV slot more than config.pbtxt's kv_slots: the probe's own (see
# engine/slots.py), so a probe never waits for a slot or takes one from a generation.
PROBE_SLOTS = 1

# config.pbtxt `parameters` the model (and the client) read (string values).
PARAM_ONNX_FILE = "onnx_file"  # file name of the ONNX model in the version folder
PARAM_EXECUTION_PROVIDER = "execution_provider"  # "cpu" or "cuda"
PARAM_INTRA_OP_THREADS = "intra_op_threads"  # onnxruntime threads; "0" lets ORT choose
PARAM_IDLE_SECONDS = "cache_idle_seconds"  # a cache unused this long is freed
# KV-cache slots, most sequences cached at once: a count, or "auto" (KV_SLOTS_AUTO): sized at load
# from the device's free memory on CUDA, DEFAULT_KV_SLOTS on the CPU (engine/memory.py). The client
# learns the count the model serves from the model itself (SERVED), not from config.pbtxt.
PARAM_KV_SLOTS = "kv_slots"
PARAM_SLOT_LENGTH = "slot_length"  # positions one slot holds: the longest context a sequence may reach
PARAM_DECODE_GRAPHS = "decode_graphs"  # "auto" (on with CUDA), "on", "off": see engine/graphs.py
# "auto" (on with the CPU provider, off with CUDA), "on", "off": the first chunks of several
# prompts share a call in a graph without ragged chunks (engine/plan.py); absent: "auto".
PARAM_PROMPT_BATCHING = "prompt_batching"

# Serving graph metadata (export/serving_graph.py): the model's shape, read by the engine.
META_NUM_LAYERS = "num_layers"  # transformer layers (past_key.N)
META_NUM_HEADS = "num_heads"
META_HEAD_DIM = "head_dim"
META_VOCAB_SIZE = "vocab_size"
META_MAX_POSITIONS = "max_positions"  # the model's positions: the longest a slot can be
META_RAGGED_CHUNKS = "ragged_chunks"  # "1" if rows may carry chunks of any length
META_CANDIDATES = "candidates"  # K: the candidate tokens the graph answers per row

# Serving defaults, one definition each: export writes them into config.pbtxt (ServingConfig in
# export/triton_config.py), model.py reads what config.pbtxt says, and the engine (engine/core.py)
# uses them when it is built directly (tests, bench).
ONNX_FILE = "model.onnx"  # the served graph in the model's version folder
KV_SLOTS_AUTO = "auto"  # kv_slots sized by the engine at load (export's default)
DEFAULT_KV_SLOTS = 8  # KV-cache slots on the CPU, and where "auto" cannot read the device's memory
DEFAULT_IDLE_SECONDS = 60  # a sequence idle this long is freed (its KV slot)
CANDIDATES = 64  # K: candidate tokens per row (the graph's TopK; at most the vocabulary)

# ONNX inputs and outputs of the serving graph (export/serving_graph.py), which the engine binds.
ONNX_INPUT_IDS = "input_ids"  # int64 [rows, chunk]
ONNX_POSITION_IDS = "position_ids"  # int64 [rows, chunk]
ONNX_LOGITS = "logits"  # serving graph: fp32 [rows, vocab] of each row's last real token
ONNX_SEQLENS_K = "seqlens_k"  # int32 [rows]: tokens of context after the step, minus one
ONNX_TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar: the slot length (an upper bound)
ONNX_QUERY_SEQLENS = "query_seqlens"  # int32 [rows]: real tokens in the row's chunk (0: idle row)
ONNX_TOP_LOGITS = "top_logits"  # serving graph: fp32 [rows, K] the K largest logits, largest first
ONNX_TOP_IDS = "top_ids"  # serving graph: int32 [rows, K] their token ids


def serving_past(layer: int, kind: str) -> str:
    """Serving graph: one layer's KV buffer as input (`kind` "key" or "value"), bound in place."""
    return f"past_{kind}.{layer}"


def serving_present(layer: int, kind: str) -> str:
    """Serving graph: the same buffer as output (bound to the same memory as the input)."""
    return f"present_{kind}.{layer}"


# The model's own gauges on Triton's /metrics are set at most this often (each set is a message
# to the server), and whenever the sequences held change: an idle model shows its last values.
GAUGE_INTERVAL_S = 1.0

# The HTTP header that carries a client's routing key: a load balancer in front of several Triton
# replicas hashes it, so every round of one bot process reaches the replica that holds its caches.
ROUTING_HEADER = "X-Routing-Key"
