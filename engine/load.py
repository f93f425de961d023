"""An engine as the served model opens it: its session (on CUDA one that may capture the decode
graphs as CUDA graphs) and the engine over it, whose KV slots are sized once the session holds the
weights (engine/memory.py)."""

from __future__ import annotations

import logging

from contract import triton_io as io
from engine.core import KVEngine
from engine.runner import make_session

log = logging.getLogger("engine.core")


def open_engine(
    onnx_path: str,
    provider: str = "cpu",
    threads: int = 0,
    device_id: int = 0,
    decode_graphs: str = "auto",
    slots: int | None = None,
    slot_length: int | None = None,
    idle_seconds: float = io.DEFAULT_IDLE_SECONDS,
    prompt_batching: str = "auto",
) -> KVEngine:
    """A session and its engine (`slots` None: sized once the session holds the weights); on CUDA
    the decode graphs are captured as CUDA graphs (where the provider refuses a session that may
    capture them, ordinary calls serve, with an error logged)."""
    session = None
    if provider == "cuda" and decode_graphs != "off":
        try:
            session = make_session(onnx_path, provider, threads, device_id, cuda_graphs=True)
        except Exception as exc:
            log.error("no CUDA graphs for this graph (%s): decode steps run as ordinary calls", exc)
            decode_graphs = "off"
    session = session or make_session(onnx_path, provider, threads, device_id)
    return KVEngine(
        session, slots, slot_length, idle_seconds, device_id, decode_graphs, prompt_batching=prompt_batching
    )
