"""Every network call to Triton: rounds, the probe, over HTTP (aiohttp, with tritonclient's
request and response codecs), binary tensors.

A generation is a sequence (a random id) whose KV cache the server keeps. Each step is a row: the
position of its first new token (0 starts the sequence), the new tokens, and flags. A round (one
request: client/rounds.py) carries a row per generation of this process, and each row gets its
status and the K most likely next tokens with their logits (contract/triton_io.py). Because a row
names its position, sending it again gives the same answer: a step that timed out may simply be
sent again; a sequence the server no longer holds (restart, idle timeout, another replica) is
started again at position 0.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_http
from numpy.typing import ArrayLike

from contract import triton_io as io

log = logging.getLogger(__name__)
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
    """What the client must know of the served model (the probe's io.SERVED)."""

    max_positions: int  # the longest context a sequence may reach (the KV slot's length)
    kv_slots: int  # sequences the server holds at once: this client runs at most as many generations


@dataclass(frozen=True)
class Answer:
    """A round's answer, row by row as the request's rows (contract/triton_io.py)."""

    version: str  # the model version that answered (Triton's version folder)
    status: np.ndarray  # int32 [rows]: io.ROW_OK or the row's error code
    errors: list[str]  # the message of each row not ROW_OK, in row order
    ids: np.ndarray  # int32 [rows, K]: the K most likely next tokens, best first
    logits: np.ndarray  # float32 [rows, K]: their logits
    full: np.ndarray  # float32 [ROW_FULL rows, vocab]: the whole row of each, in row order
    served: list[str] | None = None  # io.SERVED where asked for (see Serving)

    def error(self, row: int, at: int) -> TritonError:
        """Row `row`'s error, the `at`-th failed row: its class says whose move it is."""
        kind, code = _ROW_ERRORS.get(int(self.status[row]), (TritonRequestError, 400))
        return kind(f"Triton refused the step ({code}): {self.errors[at]}", code, self.version)


@dataclass(frozen=True)
class Serving:
    """What the model version now serving says of itself (the probe's io.SERVED)."""

    version: str
    tokenizer_sha256: str  # tokenizer_digest of the tokenizer it was exported with
    tokenizer_folder: str  # where that tokenizer is, as the Triton host sees it
    info: ModelInfo  # its context and slots


# How Triton answers, measured against the real server (tests/test_transport.py, one test each):
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


RoundRow = tuple[int, int, Sequence[int], int]  # sequence id, position, new token ids, FLAGS


def round_columns(
    sequences: ArrayLike, positions: ArrayLike, counts: ArrayLike, flags: ArrayLike, ids: ArrayLike
) -> dict[str, np.ndarray]:
    """A round request's inputs, by tensor name (contract/triton_io.py's REQUEST_INPUTS), from its
    rows' columns: each row's sequence, position, token count and FLAGS, and all rows' ids."""
    return {
        io.SEQUENCE_IDS: np.asarray(sequences, np.uint64).reshape(1, -1),
        io.POSITIONS: np.asarray(positions, np.int64).reshape(1, -1),
        io.COUNTS: np.asarray(counts, np.int32).reshape(1, -1),
        io.FLAGS: np.asarray(flags, np.int32).reshape(1, -1),
        io.INPUT_IDS: np.asarray(ids, np.int64).reshape(1, -1),
    }


def round_arrays(rows: Sequence[RoundRow]) -> dict[str, np.ndarray]:
    """round_columns() of `rows` given one by one."""
    sequences, positions, ids, flags = zip(*rows, strict=True) if rows else ((), (), (), ())
    counts = [len(i) for i in ids]
    return round_columns(
        np.array(sequences, np.uint64), positions, counts, flags, list(itertools.chain.from_iterable(ids))
    )


def round_inputs(arrays: dict[str, np.ndarray]) -> list[triton_http.InferInput]:
    """The arrays as tritonclient's binary inputs, with contract/triton_io.py's datatypes."""
    inputs = []
    for name, data in arrays.items():
        tensor = triton_http.InferInput(name, list(data.shape), io.REQUEST_INPUTS[name])
        tensor.set_data_from_numpy(data, binary_data=True)
        inputs.append(tensor)
    return inputs


_P = io.PROBE_ROW
PROBE: RoundRow = (_P[io.SEQUENCE_IDS], _P[io.POSITIONS], [_P[io.INPUT_IDS]] * _P[io.COUNTS], _P[io.FLAGS])
_ROUND_OUTPUTS = [name for name in io.RESPONSE_OUTPUTS if name != io.SERVED]


class Transport:
    """The served model over HTTP: one aiohttp session (keep-alive connections) for rounds, the
    model's config and the probe; every failure is a TritonError whose class says what to do.

    `routing_key` (sent as io.ROUTING_HEADER) lets a load balancer keep all of this process's
    rounds on the Triton replica that holds its caches."""

    def __init__(
        self,
        url: str = io.DEFAULT_URL,
        model: str = io.DEFAULT_MODEL_NAME,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
    ):
        if "://" in url:
            raise ValueError(f"TRITON_URL is host:port, without a scheme: got {url!r}")
        self.url, self.model, self.timeout, self.retries = url, model, timeout, retries
        self.routing_key = secrets.token_hex(8)
        # identity: Triton would otherwise compress every answer for aiohttp's default Accept-Encoding.
        self._headers = {io.ROUTING_HEADER: self.routing_key, "Accept-Encoding": "identity"}
        self._base = f"http://{url}/v2/models/{quote(model)}"
        self._session: aiohttp.ClientSession | None = None  # created in the running event loop
        self._info: ModelInfo | None = None
        self.version = ""  # the model version of the last answer ("": none yet)
        self.bytes_received = 0  # answers' bodies (JSON header and tensors) since start
        self.rows_answered = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _http(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, Any, bytes]:
        """(status, response headers, body) of one call within the timeout; TritonError otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.request(
                    method, self._base + path, data=body, headers={**self._headers, **headers}
                ) as response:
                    return response.status, response.headers, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError, EOFError) as exc:  # EOF: dropped
            raise TritonUnavailable(f"Triton unreachable: {exc.__class__.__name__}: {exc}") from exc

    async def send(self, arrays: dict[str, np.ndarray], outputs: list[str] = _ROUND_OUTPUTS) -> Answer:
        """One round request (round_arrays' tensors); its answer, or the TritonError of the whole."""
        requested = [triton_http.InferRequestedOutput(name, binary_data=True) for name in outputs]
        body, json_size = triton_http.InferenceServerClient.generate_request_body(
            round_inputs(arrays), outputs=requested
        )
        status, headers, data = await self._http(
            "POST", "/infer", body, **{"Inference-Header-Content-Length": str(json_size)}
        )
        if status != 200:
            raise _refusal(status, data)
        result = triton_http.InferenceServerClient.parse_response_body(
            data, header_length=headers.get("Inference-Header-Content-Length")
        )
        version = str(result.get_response().get("model_version", ""))
        if version != self.version:
            if self.version:
                log.info("Triton answers with model version %s (was %s)", version, self.version)
            self.version, self._info = version, None  # another version: its config is read again
        self.bytes_received += len(data)
        self.rows_answered += arrays[io.SEQUENCE_IDS].shape[1]
        numpy = {name: result.as_numpy(name) for name in outputs}
        served = numpy.get(io.SERVED)
        return Answer(
            version,
            numpy[io.STATUS][0],
            [e.decode(errors="replace") for e in numpy[io.ERRORS][0]],
            numpy[io.CANDIDATE_IDS][0],
            numpy[io.CANDIDATE_LOGITS][0],
            numpy[io.LOGITS][0],
            None if served is None else [bytes(value).decode() for value in served[0]],
        )

    async def model_info(self) -> ModelInfo:
        """The served model's context and slots (asked again after another version answered)."""
        if self._info is None:
            for attempt in range(self.retries):
                try:
                    self._info = (await self.serving()).info
                    break
                except TritonUnavailable as exc:
                    if isinstance(exc, ModelDown) or attempt == self.retries - 1:
                        raise
                    await asyncio.sleep(0.2 * 2**attempt)
        assert self._info is not None
        return self._info

    async def serving(self) -> Serving:
        """What the model version now serving says of itself: the probe's row with io.SERVED."""
        try:
            answer = await self.send(round_arrays([PROBE]), [*_ROUND_OUTPUTS, io.SERVED])
        except TritonRequestError as exc:
            if io.SERVED not in str(exc):
                raise
            raise TritonRequestError(
                f"model {self.model!r} (version {self.version or '?'}) was exported before it could say "
                f"which tokenizer it has: export it again with `python -m export`",
                exc.status,
            ) from None
        if answer.status[0] != io.ROW_OK:
            raise answer.error(0, 0)
        assert answer.served is not None
        digest, folder, length, slots = answer.served
        return Serving(answer.version, digest, folder, ModelInfo(int(length), int(slots)))

    async def is_ready(self) -> bool:
        """The model answers a real inference, the probe's row (Triton's own ready stays 200 when
        the model's process is dead); never raises."""
        try:
            answer = await self.send(round_arrays([PROBE]))
        except TritonError:
            return False
        return bool(answer.status[0] == io.ROW_OK)


def _refusal(status: int, data: bytes) -> TritonError:
    """The error of a request Triton answered with HTTP `status` (not 200): see the table above."""
    try:
        text = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        text = data[:200].decode("utf-8", "replace")
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
