"""Triton python-backend model: ruDialoGPT on onnxruntime, KV caches kept per sequence.

Export copies this file, serve/engine.py (as engine.py) and the contract package into the model's
version folder. Triton's sequence batcher routes each generation's steps here by correlation id;
every error is returned on its own request and the model keeps serving.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from engine import KVEngine, Step, StepError, make_session

from contract import triton_io as io

ENV_PROVIDER = "RUDIALOGPT_EXECUTION_PROVIDER"  # overrides the execution_provider parameter
# StepError.kind -> Triton's error code, which its HTTP front end answers as a status (the client
# tells them apart by it: bot/triton_client.py).
ERROR_CODES = {
    StepError.INVALID: "INVALID_ARG",  # 400
    StepError.LOST: "INVALID_ARG",  # 400, as the sequence batcher's own "must specify the START flag"
    StepError.BUSY: "UNAVAILABLE",  # 503: retried by the client
    StepError.FAILED: "INTERNAL",  # 500
}
GAUGES = {  # the model's own metrics on Triton's /metrics: name -> description
    "rudialogpt_cached_sequences": "Sequences holding a KV slot",
    "rudialogpt_cached_tokens": "Tokens of context held in KV slots",
    "rudialogpt_kv_slots_free": "KV slots free for new sequences",
    "rudialogpt_engine_rows": "Rows bound to onnxruntime calls since load, by kind (active, idle)",
}


class TritonPythonModel:
    """One instance: one ORT session and the caches of the sequences routed to it."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        provider = os.environ.get(ENV_PROVIDER) or params[io.PARAM_EXECUTION_PROVIDER]
        session = make_session(
            str(folder / params[io.PARAM_ONNX_FILE]),
            provider,
            int(params[io.PARAM_INTRA_OP_THREADS]),
            int(args.get("model_instance_device_id", 0) or 0),
        )
        self.engine = KVEngine(
            session,
            int(params[io.PARAM_KV_SLOTS]),
            int(params[io.PARAM_SLOT_LENGTH]),
            float(params[io.PARAM_IDLE_SECONDS]),
            int(args.get("model_instance_device_id", 0) or 0),
        )
        self.logger = pb_utils.Logger
        labels = {"model": args["model_name"], "version": args["model_version"]}
        # The families must outlive their metrics: keep them on the instance.
        self.families = [
            pb_utils.MetricFamily(name=name, kind=pb_utils.MetricFamily.GAUGE, description=text)
            for name, text in GAUGES.items()
        ]
        self.sequences_gauge, self.tokens_gauge, self.free_gauge = (
            f.Metric(labels=labels) for f in self.families[:3]
        )
        self.active_rows_gauge = self.families[3].Metric(labels={**labels, "kind": "active"})
        self.idle_rows_gauge = self.families[3].Metric(labels={**labels, "kind": "idle"})
        self._update_gauges()  # from initialize(): the server is alive, and the values start right
        self.stop = threading.Event()
        self.sweeper = threading.Thread(target=self._sweep, daemon=True)
        self.sweeper.start()
        e = self.engine
        self.logger.log_info(
            f"rudialogpt: {provider} provider, {e.layers} layers, vocab {e.vocab_size}; "
            f"KV: {e.slots} slots x {e.slot_length} positions, {e.kv.nbytes / 1e9:.2f} GB "
            f"{e.kv.dtype.__name__} on {e.device}"
        )

    def _sweep(self) -> None:
        """Free slots of abandoned sequences even when no request comes.

        It never touches a metric: a Metric.set() that starts after the server died blocks
        forever holding the stub's message lock, and the stub then never exits. The gauges are
        updated in execute() only (an idle server shows the values of its last request)."""
        while not self.stop.wait(1.0):
            self.engine.evict_idle()

    def _update_gauges(self) -> None:
        usage = self.engine.usage()
        self.sequences_gauge.set(usage.sequences)
        self.tokens_gauge.set(usage.tokens)
        self.free_gauge.set(usage.free_slots)
        self.active_rows_gauge.set(usage.active_rows)
        self.idle_rows_gauge.set(usage.idle_rows)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request (pb_utils' request/response types are untyped)."""
        steps: list[Step] = []
        errors: dict[int, str] = {}
        for r, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, io.INPUT_IDS)
            ids = tensor.as_numpy() if tensor is not None else np.zeros((0, 0), np.int64)
            flags = request.flags()
            if ids.ndim != 2 or ids.shape[0] != 1:
                errors[r] = f"{io.INPUT_IDS} must have shape [1, n], got {list(ids.shape)}"
                ids = np.zeros((1, 0), np.int64)
            steps.append(
                Step(
                    request.correlation_id(),
                    ids[0].astype(np.int64, copy=False),
                    bool(flags & io.FLAG_START),
                    bool(flags & io.FLAG_END),
                )
            )
        live = [s for r, s in enumerate(steps) if r not in errors]
        try:
            results = iter(self.engine.step(live))
        except Exception as exc:  # an ORT failure: fail these requests, keep serving
            self.logger.log_error(f"rudialogpt: step failed: {exc!r}")
            results = iter([StepError(f"inference failed: {exc}", StepError.FAILED)] * len(live))
        responses: list[Any] = []
        for r in range(len(requests)):
            result = StepError(errors[r]) if r in errors else next(results)
            if isinstance(result, StepError):
                code = getattr(pb_utils.TritonError, ERROR_CODES[result.kind])
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(io.LOGITS, result)]))
        self._update_gauges()
        return responses

    def finalize(self) -> None:
        self.stop.set()
        self.sweeper.join(timeout=2)
