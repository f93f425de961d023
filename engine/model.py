"""Triton python-backend model: ruDialoGPT on onnxruntime, KV caches kept per sequence.

Export copies the `engine` and `contract` packages whole into the model's version folder, whose
model.py imports this module (contract/repository.py's ENTRY_SOURCE). A request is one round of a
bot process (contract/triton_io.py): one row per sequence. Triton's dynamic batcher may hand one
execute() the rounds of several processes; they run as one engine call. A malformed request is
refused alone (HTTP 400); a bad row fails alone, in its STATUS, and the model keeps serving.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from contract import triton_io as io
from contract.repository import TOKENIZER_DIR, tokenizer_digest, tokenizer_problems
from engine.core import Output, Step, StepError
from engine.load import open_engine
from engine.memory import parse_slots

ENV_PROVIDER = "RUDIALOGPT_EXECUTION_PROVIDER"  # overrides the execution_provider parameter
GAUGES = {  # the model's own metrics on Triton's /metrics: name -> description
    "rudialogpt_cached_sequences": "Sequences holding a KV slot",
    "rudialogpt_cached_tokens": "Tokens of context held in KV slots",
    "rudialogpt_kv_slots_free": "KV slots free for new sequences",
    "rudialogpt_engine_rows": "Rows bound to onnxruntime calls since load, by kind (active, idle)",
    "rudialogpt_graph_steps": "Decode steps replayed on a decode graph since load",
    "rudialogpt_execute_seconds": "Time in execute() since load, by part (engine: its step; model: the rest)",
    "rudialogpt_executions": "execute() calls since load",
}


def _rows(request: Any) -> list[Step]:
    """The request's rows; StepError (the whole request is malformed) says what is wrong."""
    arrays = {}
    for name, dtype in io.REQUEST_INPUTS.items():
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise StepError(f"the request lacks the input {name} ({dtype})")
        arrays[name] = tensor.as_numpy()
    rows = arrays[io.SEQUENCE_IDS].shape[-1]
    for name, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != 1 or (name != io.INPUT_IDS and array.shape[1] != rows):
            want = "tokens" if name == io.INPUT_IDS else rows
            raise StepError(f"{name} must have shape [1, {want}], got {list(array.shape)}")
    counts, tokens = arrays[io.COUNTS][0], arrays[io.INPUT_IDS][0].astype(np.int64, copy=False)
    if (counts < 0).any() or int(counts.sum()) != tokens.size:
        raise StepError(f"{io.COUNTS} must be >= 0 and add up to the {tokens.size} ids of {io.INPUT_IDS}")
    steps, at = [], 0
    for sequence_id, position, n, flags in zip(
        arrays[io.SEQUENCE_IDS][0].tolist(),
        arrays[io.POSITIONS][0].tolist(),
        counts.tolist(),
        arrays[io.FLAGS][0].tolist(),
        strict=True,
    ):
        steps.append(
            Step(
                sequence_id,
                tokens[at : at + n],
                position,
                bool(flags & io.ROW_END),
                bool(flags & io.ROW_FULL),
            )
        )
        at += n
    return steps


def _response(out: Output, start: int, n: int, vocab: int, served: np.ndarray | None) -> Any:
    """The rows [start, start + n) of `out` as one request's response (with `served`, what
    io.SERVED answers, where the request asked for it)."""
    rows = slice(start, start + n)
    mine = [k for k, i in enumerate(out.full_rows) if start <= i < start + n]
    full = out.full[mine] if out.full is not None and mine else np.zeros((0, vocab), np.float32)
    tensors = {
        io.STATUS: out.status[rows],
        io.ERRORS: np.array([e.encode() for e in out.errors[rows] if e], dtype=np.object_),
        io.CANDIDATE_IDS: out.top_ids[rows],
        io.CANDIDATE_LOGITS: out.top_logits[rows],
        io.LOGITS: full,
        **({io.SERVED: served} if served is not None else {}),
    }
    return pb_utils.InferenceResponse([pb_utils.Tensor(name, value[None]) for name, value in tensors.items()])


class TritonPythonModel:
    """One instance: one engine (ORT session, KV slots) and the caches of the sequences it serves."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        provider = os.environ.get(ENV_PROVIDER) or params[io.PARAM_EXECUTION_PROVIDER]
        self.engine = open_engine(
            str(folder / params[io.PARAM_ONNX_FILE]),
            provider,
            int(params[io.PARAM_INTRA_OP_THREADS]),
            int(args.get("model_instance_device_id", 0) or 0),
            params[io.PARAM_DECODE_GRAPHS],
            parse_slots(params.get(io.PARAM_KV_SLOTS)),
            int(params[io.PARAM_SLOT_LENGTH]),
            float(params[io.PARAM_IDLE_SECONDS]),
            params.get(io.PARAM_PROMPT_BATCHING, "auto"),
        )
        self.logger = pb_utils.Logger
        name, version = args["model_name"], args["model_version"]
        if problems := tokenizer_problems(folder / TOKENIZER_DIR, self.engine.vocab_size):
            # Triton keeps the version that serves when this one fails to load.
            raise pb_utils.TritonModelException(
                f"{name} version {version} refused: its tokenizer cannot drive this graph "
                f"({'; '.join(problems)}); the previous version keeps serving. Fix: export the "
                "checkpoint with `python -m export` (it checks this before writing a version)"
            )
        tokenizer = folder / TOKENIZER_DIR
        said = (tokenizer_digest(tokenizer), tokenizer, self.engine.slot_length, self.engine.slots)
        self.served = np.array([str(value).encode() for value in said], np.object_)
        warm_s = self.engine.warm_up()
        labels = {"model": name, "version": version}
        # The families must outlive their metrics: keep them on the instance.
        self.families = {
            name: pb_utils.MetricFamily(name=name, kind=pb_utils.MetricFamily.GAUGE, description=text)
            for name, text in GAUGES.items()
        }
        f = self.families
        self.gauges = {
            "sequences": f["rudialogpt_cached_sequences"].Metric(labels=labels),
            "tokens": f["rudialogpt_cached_tokens"].Metric(labels=labels),
            "free_slots": f["rudialogpt_kv_slots_free"].Metric(labels=labels),
            "active_rows": f["rudialogpt_engine_rows"].Metric(labels={**labels, "kind": "active"}),
            "idle_rows": f["rudialogpt_engine_rows"].Metric(labels={**labels, "kind": "idle"}),
            "graph_steps": f["rudialogpt_graph_steps"].Metric(labels=labels),
            "engine_s": f["rudialogpt_execute_seconds"].Metric(labels={**labels, "part": "engine"}),
            "model_s": f["rudialogpt_execute_seconds"].Metric(labels={**labels, "part": "model"}),
            "executions": f["rudialogpt_executions"].Metric(labels=labels),
        }
        self.timing = {"engine_s": 0.0, "model_s": 0.0, "executions": 0}
        self.gauges_at, self.gauges_sequences = 0.0, -1
        self._update_gauges(
            time.monotonic()
        )  # from initialize(): the server is alive, and the values start right
        self.stop = threading.Event()
        self.sweeper = threading.Thread(target=self._sweep, daemon=True)
        self.sweeper.start()
        e = self.engine
        self.logger.log_info(f"{name} version {version}: {e.slots_why}")
        self.logger.log_info(
            f"{name} version {version}: {provider} provider, {e.layers} layers, vocab {e.vocab_size}; "
            f"KV: {e.slots} slots x {e.slot_length} positions, {e.kv.nbytes / 1e9:.2f} GB "
            f"{np.dtype(e.kv.dtype).name} on {e.device}; graphs: {','.join(map(str, e.graphs)) or 'off'}; "
            f"prompt batching: {e.prompt_batching}; "
            f"warmed up in {warm_s:.1f} s"
        )

    def _sweep(self) -> None:
        """Free slots of abandoned sequences even when no request comes.

        It never touches a metric: a Metric.set() that starts after the server died blocks
        forever holding the stub's message lock, and the stub then never exits. The gauges are
        updated in execute() only (an idle server shows the values of its last request)."""
        while not self.stop.wait(1.0):
            self.engine.evict_idle()

    def _update_gauges(self, now: float) -> None:
        """Set the gauges (each set is a message to the server: ~tens of µs), at most every
        io.GAUGE_INTERVAL_S unless the sequences held changed."""
        usage = self.engine.usage()
        if usage.sequences == self.gauges_sequences and now - self.gauges_at < io.GAUGE_INTERVAL_S:
            return
        self.gauges_at, self.gauges_sequences = now, usage.sequences
        values = {**usage.__dict__, **self.timing}
        for key, gauge in self.gauges.items():
            gauge.set(values[key])

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request (pb_utils' request/response types are untyped)."""
        t0 = time.perf_counter()
        responses: list[Any] = [None] * len(requests)
        steps: list[Step] = []
        spans: list[tuple[int, int, int]] = []  # request, first row, rows
        for r, request in enumerate(requests):
            try:
                rows = _rows(request)
            except StepError as exc:
                responses[r] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                )
                continue
            spans.append((r, len(steps), len(rows)))
            steps += rows
        t1 = time.perf_counter()
        try:
            out = self.engine.step(steps)
        except Exception as exc:  # an engine bug: fail these requests, keep serving
            self.logger.log_error(f"rudialogpt: step failed: {exc!r}")
            out = Output.empty(len(steps), self.engine.shape.candidates)
            for i in range(len(steps)):
                out.fail(i, StepError(f"inference failed: {exc}", io.ROW_FAILED))
        t2 = time.perf_counter()
        for r, start, n in spans:
            asked = io.SERVED in requests[r].requested_output_names()
            responses[r] = _response(out, start, n, self.engine.vocab_size, self.served if asked else None)
        self._update_gauges(time.monotonic())
        self.timing["engine_s"] += t2 - t1
        self.timing["model_s"] += time.perf_counter() - t0 - (t2 - t1)
        self.timing["executions"] += 1
        return responses

    def finalize(self) -> None:
        self.stop.set()
        self.sweeper.join(timeout=2)
        # Unloaded (a new version took over): its series leave /metrics with the Metric objects.
        self.gauges.clear()
        self.families.clear()
