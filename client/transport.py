"""Every network call to Triton: the rounds of this process's generations, over HTTP (aiohttp,
with tritonclient's request and response codecs), binary tensors.

A generation is a sequence (a random id) whose KV cache the server keeps. Each step is a row: the
position of its first new token (0 starts the sequence), the new tokens, and flags. The rows of
all generations of this process go together, one request per round (the step gate,
client/rounds.py), and each row gets its status and the K most likely next tokens with their
logits (contract/triton_io.py). Because a row names its position, sending it again gives the same
answer: a step that timed out may simply be sent again; a sequence the server no longer holds
(restart, idle timeout, another replica) is started again at position 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_http
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from tritonclient.utils import InferenceServerException

from client.rounds import GateConfig, StepGate
from contract import triton_io as io

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0  # seconds a call to Triton may take (TRITON_TIMEOUT)


class TritonError(RuntimeError):
    """A Triton call failed; `status` is the HTTP status it answered with (0: no answer), `version`
    the model version whose answer this is ("": none answered)."""

    def __init__(self, message: str, status: int = 0, version: str = ""):
        super().__init__(message)
        self.status, self.version = status, version


class TritonUnavailable(TritonError):
    """Triton is down, not ready, or too slow: transient; worth retrying later."""


class NoFreeSlot(TritonUnavailable):
    """Every KV slot of the server is held by running generations: start again shortly."""


class ModelDown(TritonUnavailable):
    """The model's process is dead ("Stub process ... is not healthy"): no retry, it won't heal soon."""


class TritonRequestError(TritonError):
    """Triton refused the request itself (bad ids, too long a context): retrying won't help."""


class SequenceLost(TritonRequestError):
    """The server holds no cache for this sequence at that position (restarted, idle timeout,
    another replica, an onnxruntime failure): the generation goes on only by starting again at 0."""


@dataclass(frozen=True)
class ModelInfo:
    """What the client must know of the served model (from its config.pbtxt parameters)."""

    max_positions: int  # the longest context a sequence may reach (the KV slot's length)
    kv_slots: int  # sequences the server holds at once: this client runs at most as many generations


@dataclass(frozen=True)
class Row:
    """One step of one sequence, as it travels in a round."""

    sequence_id: int
    position: int  # where `ids` start in the sequence's context (0: start it)
    ids: np.ndarray  # int64 [n]
    end: bool = False
    full: bool = False  # the whole row of logits is wanted too


@dataclass(frozen=True)
class StepOutput:
    """The server's answer to a step: the K most likely next tokens (best first), their logits,
    and the whole row of logits where the step asked for it."""

    ids: np.ndarray  # int32 [K]
    logits: np.ndarray  # float32 [K]
    full: np.ndarray | None = None  # float32 [vocab]
    version: str = ""  # the model version that answered (Triton's version folder)


# How Triton answers, measured against the real server (tests/test_triton_client.py, one test each):
#   404  the model name is not in the repository ("... is not found"), or the model is loading or
#        unloaded ("... has no available versions")
#   400  a malformed request (missing tensor, wrong shapes, counts that do not add up)
#   500  "Stub process ... is not healthy" when the model's process died
#   502/503/504  what a proxy (Envoy) answers when the server behind it is down or slow
# A request that reaches the model answers 200 with a status per row (io.ROW_*): _ROW_ERRORS.
_TRANSIENT_STATUS = {502, 503, 504}
_ROW_ERRORS: dict[int, tuple[type[TritonError], int]] = {
    io.ROW_INVALID: (TritonRequestError, 400),
    io.ROW_LOST: (SequenceLost, 400),
    io.ROW_BUSY: (NoFreeSlot, 503),
    io.ROW_FAILED: (SequenceLost, 500),
}


def _status(exc: InferenceServerException) -> int:
    """The HTTP status of a Triton error (tritonclient keeps it as a string); 0 when none."""
    status = exc.status()
    return int(status) if status and str(status).isdigit() else 0


def _classify(exc: BaseException) -> TritonError:
    if isinstance(exc, TritonError):
        return exc
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError, EOFError)):  # EOF: dropped
        return TritonUnavailable(f"Triton unreachable: {exc.__class__.__name__}: {exc}")
    if not isinstance(exc, InferenceServerException):
        return TritonError(f"{exc.__class__.__name__}: {exc}")
    status, text = _status(exc), exc.message() or str(exc)
    if status in _TRANSIENT_STATUS:
        return TritonUnavailable(f"Triton unavailable ({status}): {text}", status)
    if status == 404:
        # One status for two cases: only the text tells a model being loaded from a wrong name.
        if "no available versions" in text:
            return TritonUnavailable(f"Triton's model is not loaded: {text}", status)
        return TritonRequestError(f"Triton has no such model ({text}): check TRITON_MODEL", status)
    if status == 500 and "Stub process" in text:
        return ModelDown(f"Triton's model is dead: {text}", status)
    return TritonRequestError(f"Triton refused the request ({status}): {text}", status)


def round_arrays(rows: list[Row]) -> dict[str, np.ndarray]:
    """A round request's inputs for `rows`, by tensor name (contract/triton_io.py's REQUEST_INPUTS)."""
    return {
        io.SEQUENCE_IDS: np.array([[r.sequence_id for r in rows]], np.uint64),
        io.POSITIONS: np.array([[r.position for r in rows]], np.int64),
        io.COUNTS: np.array([[r.ids.size for r in rows]], np.int32),
        io.FLAGS: np.array(
            [[(io.ROW_END if r.end else 0) | (io.ROW_FULL if r.full else 0) for r in rows]], np.int32
        ),
        io.INPUT_IDS: np.concatenate([r.ids for r in rows])[None],
    }


def round_inputs(arrays: dict[str, np.ndarray]) -> list[triton_http.InferInput]:
    """The arrays as tritonclient's binary inputs, with contract/triton_io.py's datatypes."""
    inputs = []
    for name, data in arrays.items():
        tensor = triton_http.InferInput(name, list(data.shape), io.REQUEST_INPUTS[name])
        tensor.set_data_from_numpy(data, binary_data=True)
        inputs.append(tensor)
    return inputs


PROBE = Row(
    io.PROBE_ROW[io.SEQUENCE_IDS],
    io.PROBE_ROW[io.POSITIONS],
    np.full(io.PROBE_ROW[io.COUNTS], io.PROBE_ROW[io.INPUT_IDS], np.int64),
    end=True,
)


class TritonClient:
    """Async client of the ruDialoGPT model on Triton: one HTTP connection pool, one step gate.

    The gate lines up the steps of all generations that run through this client, so that each
    round reaches Triton as one request; `routing_key` (sent as io.ROUTING_HEADER) lets a load
    balancer keep all of this client's rounds on the Triton replica that holds its caches."""

    def __init__(
        self,
        url: str = io.DEFAULT_URL,
        model: str = io.DEFAULT_MODEL_NAME,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        gate: GateConfig | None = None,
    ):
        if "://" in url:
            raise ValueError(f"TRITON_URL is host:port, without a scheme: got {url!r}")
        self.url, self.model, self.timeout, self.retries = url, model, timeout, retries
        self.gate: StepGate[Row, StepOutput] = StepGate(self._send_round, gate)
        self.routing_key = secrets.token_hex(8)
        # identity: Triton would otherwise compress every answer for aiohttp's default Accept-Encoding.
        self._headers = {io.ROUTING_HEADER: self.routing_key, "Accept-Encoding": "identity"}
        self._outputs = [
            triton_http.InferRequestedOutput(name, binary_data=True) for name in io.RESPONSE_OUTPUTS
        ]
        self._infer_url = f"http://{url}/v2/models/{quote(model)}/infer"
        self._session: aiohttp.ClientSession | None = None  # the rounds' keep-alive connections
        self._client: triton_http.InferenceServerClient | None = None  # model config (tritonclient)
        self._info: ModelInfo | None = None
        self._admit: asyncio.Semaphore | None = None
        self.version = ""  # the model version of the last answer ("": none yet)
        self.bytes_received = 0  # answers' bodies (JSON header and tensors) since start
        self.rows_answered = 0

    @property
    def client(self) -> triton_http.InferenceServerClient:
        if self._client is None:  # created lazily: aiohttp needs the running event loop
            self._client = triton_http.InferenceServerClient(self.url, conn_timeout=self.timeout)
        return self._client

    async def close(self) -> None:
        await self.gate.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, coro_fn: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await coro_fn()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _classify(exc) from exc

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(
                lambda e: isinstance(e, TritonUnavailable) and not isinstance(e, ModelDown)
            ),
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )

    async def is_ready(self) -> bool:
        """The model answers a real inference, the probe's row (Triton's own ready stays 200 when
        the model's process is dead); never raises."""
        try:
            [answer] = await self._send_round([PROBE])
        except Exception:  # unreachable, refused, malformed: not ready
            return False
        return isinstance(answer, StepOutput)

    async def model_info(self) -> ModelInfo:
        """The served model's context and slots (fetched with retries; again after a new version answered)."""
        if self._info is None:
            config: dict[str, Any] = await self._retrying()(
                self._call, lambda: self.client.get_model_config(self.model)
            )
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
            try:
                self._info = ModelInfo(int(params[io.PARAM_SLOT_LENGTH]), int(params[io.PARAM_KV_SLOTS]))
            except KeyError as exc:
                raise TritonRequestError(
                    f"model {self.model!r} lacks parameter {exc}: re-export it with `python -m export`"
                ) from None
        return self._info

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold one of the server's KV slots for a generation: at most kv_slots generations of
        this client run at once, the others wait here (not at the server)."""
        if self._admit is None:
            self._admit = asyncio.Semaphore((await self.model_info()).kv_slots)
        async with self._admit:
            yield

    async def step(
        self, sequence_id: int, ids: list[int] | np.ndarray, position: int, *, full: bool = False
    ) -> StepOutput:
        """Feed `ids` to the sequence at `position` (0 starts it): the candidates after them.

        The step waits at the gate for the rest of its round (at most its `in_flight_s`)."""
        row = Row(sequence_id, position, np.asarray(ids, dtype=np.int64).reshape(-1), full=full)
        return await self.gate.step(sequence_id, row)

    def end(self, sequence_id: int) -> None:
        """Free the sequence's cache on the server: an END row that rides with the next round
        (best effort: the idle timeout is the backstop)."""
        self.gate.end(sequence_id, Row(sequence_id, 0, np.zeros(0, np.int64), end=True))

    async def _send_round(self, rows: list[Row]) -> list[StepOutput | BaseException]:
        """One request for `rows`; each row's answer, or its error."""
        inputs = round_inputs(round_arrays(rows))
        body, json_size = triton_http.InferenceServerClient.generate_request_body(
            inputs, outputs=self._outputs
        )
        headers = {**self._headers, "Inference-Header-Content-Length": str(json_size)}
        if self._session is None:  # created lazily: aiohttp needs the running event loop
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

        async def post() -> tuple[int, str | None, bytes]:
            assert self._session is not None
            async with self._session.post(self._infer_url, data=body, headers=headers) as response:
                return (
                    response.status,
                    response.headers.get("Inference-Header-Content-Length"),
                    await response.read(),
                )

        status_code, header_length, data = await self._call(post)
        if status_code != 200:
            try:
                text = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                text = data[:200].decode("utf-8", "replace")
            raise _classify(InferenceServerException(text, status=str(status_code)))
        result = triton_http.InferenceServerClient.parse_response_body(data, header_length=header_length)
        version = str(result.get_response().get("model_version", ""))
        if version != self.version:
            self._version_seen(version)
        status = result.as_numpy(io.STATUS)[0]
        ids, logits = result.as_numpy(io.CANDIDATE_IDS)[0], result.as_numpy(io.CANDIDATE_LOGITS)[0]
        full, errors = iter(result.as_numpy(io.LOGITS)[0]), iter(result.as_numpy(io.ERRORS)[0])
        self.bytes_received += len(data)
        self.rows_answered += len(rows)
        answers: list[StepOutput | BaseException] = []
        for i, row in enumerate(rows):
            if status[i] == io.ROW_OK:
                answers.append(StepOutput(ids[i], logits[i], next(full) if row.full else None, version))
                continue
            text = next(errors).decode(errors="replace")
            kind, code = _ROW_ERRORS.get(int(status[i]), (TritonRequestError, 400))
            answers.append(kind(f"Triton refused the step ({code}): {text}", code, version))
        return answers

    def _version_seen(self, version: str) -> None:
        """Another model version answers: its config may differ (context, slots), so it is read again."""
        if self.version:
            log.info("Triton answers with model version %s (was %s)", version, self.version)
        self.version, self._info = version, None
