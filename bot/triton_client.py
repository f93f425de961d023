"""Every network call to Triton: one sequence step at a time over HTTP, binary tensors.

A generation is one Triton sequence (correlation id): START with the prompt's ids, then one
sampled token per step; END frees the server's cache. A step of a running sequence is not
idempotent (it extends the server's cache), so it is never blindly retried: the generate loop
recovers by restarting the sequence with START over the whole context, which is idempotent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_http
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from tritonclient.utils import InferenceServerException

from bot.settings import TritonSettings
from bot.step_gate import GateConfig, StepGate
from contract import triton_io as io
from serve.health import is_alive

log = logging.getLogger(__name__)
T = TypeVar("T")


class TritonError(RuntimeError):
    """A Triton call failed; `status` is the HTTP status it answered with (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class TritonUnavailable(TritonError):
    """Triton is down, not ready, or too slow: transient; worth retrying later."""


class ModelDown(TritonUnavailable):
    """The model's process is dead ("Stub process ... is not healthy"): no retry, it won't heal soon."""


class TritonRequestError(TritonError):
    """Triton refused the request itself (bad ids, too long a context): retrying won't help."""


class SequenceLost(TritonRequestError):
    """The server holds no cache for this sequence (restarted, idle timeout, another replica):
    the generation can go on only by starting the sequence again."""


@dataclass(frozen=True)
class ModelInfo:
    """What the client must know of the served model (from its config.pbtxt parameters)."""

    vocab_size: int
    max_positions: int


# How Triton 2.51 answers, measured against the real server (tests/test_triton_client.py, one test each):
#   404  the model name is not in the repository ("... is not found"), or the model is loading or
#        unloaded ("... has no available versions")
#   400  a malformed request; the sequence batcher's "must specify the START flag" (no START for a
#        correlation id it holds no sequence for: after END, idle timeout, restart, another replica);
#        model.py's refusals (bad ids, too long a context) and its own "unknown sequence ...: begin
#        it with the START flag" (the engine holds no cache for it), sent as INVALID_ARG
#   500  "Stub process ... is not healthy" when the model's process died; model.py's INTERNAL (an
#        onnxruntime failure: "... begin it again with START" when the engine dropped the cache)
#   503  model.py's UNAVAILABLE (no KV slot free right now); 502/503/504 are also what a proxy
#        (Envoy) answers when the server behind it is down or slow
_TRANSIENT_STATUS = {502, 503, 504}


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
    # 500 is also model.py's onnxruntime failure: only the text tells the dead model process.
    if status == 500 and "Stub process" in text:
        return ModelDown(f"Triton's model is dead: {text}", status)
    # 400 is also a bad request, 500 a failed one: the texts of a lost sequence (the batcher's and
    # model.py's) say START.
    if status in (400, 500) and "START" in text:
        return SequenceLost(f"Triton lost the sequence: {text}", status)
    return TritonRequestError(f"Triton refused the request ({status}): {text}", status)


class _Pool:
    """Keep-alive HTTP/1.1 connections to Triton for inference requests, written as prebuilt
    bytes: once the step gate releases a round, its requests leave back to back (tens of µs
    apart), well within the sequence batcher's queue delay, and Triton runs them as one batch."""

    MAX_IDLE_S = 30.0  # an idle connection older than this is closed, not reused (proxies drop them)

    def __init__(self, url: str):
        self.host, _, port = url.rpartition(":")
        self.port = int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = asyncio.get_running_loop().time()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if not reader.at_eof() and now - since < self.MAX_IDLE_S:  # at EOF: the server closed it
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of one request; the connection is reused
        only after a complete response (on any error or cancellation it is closed)."""
        reader, writer = await self._connection()
        try:
            writer.write(head + body)
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
            if "content-length" not in headers:
                raise ConnectionError(f"Triton answered without Content-Length: {lines[0]}")
            data = await reader.readexactly(int(headers["content-length"]))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer, asyncio.get_running_loop().time()))
        return status, headers, data

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle = []


class TritonClient:
    """Async client of the ruDialoGPT model on Triton; one connection pool, reused.

    Its step gate (bot/step_gate.py) lines up the token steps of all generations that run
    through this client, so that they reach Triton's batcher as one batch per round."""

    def __init__(
        self,
        url: str = TritonSettings.url,
        model: str = TritonSettings.model,
        timeout: float = TritonSettings.timeout,
        retries: int = 3,
        gate: GateConfig | None = None,
    ):
        if "://" in url:
            raise ValueError(f"TRITON_URL is host:port, without a scheme: got {url!r}")
        self.url, self.model, self.timeout, self.retries = url, model, timeout, retries
        self.gate = StepGate(gate)
        self._pool = _Pool(url)
        self._infer_path = f"/v2/models/{quote(model)}/infer"
        self._client: triton_http.InferenceServerClient | None = None
        self._info: ModelInfo | None = None

    @property
    def client(self) -> triton_http.InferenceServerClient:
        if self._client is None:  # created lazily: aiohttp needs the running event loop
            self._client = triton_http.InferenceServerClient(self.url, conn_timeout=self.timeout)
        return self._client

    async def close(self) -> None:
        self._pool.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, coro_fn: Callable[[], Awaitable[T]]) -> T:
        try:  # asyncio.timeout, not wait_for: no extra task, so a released round is sent at once
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
        """The model answers a real inference (serve.health: Triton's own ready stays 200 when
        the model's process is dead); never raises."""
        return await asyncio.to_thread(is_alive, self.url, self.model, self.timeout)

    async def model_info(self) -> ModelInfo:
        """Vocabulary and context size of the served model (fetched once, with retries)."""
        if self._info is None:
            config: dict[str, Any] = await self._retrying()(
                self._call, lambda: self.client.get_model_config(self.model)
            )
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
            try:
                self._info = ModelInfo(int(params[io.PARAM_VOCAB_SIZE]), int(params[io.PARAM_MAX_POSITIONS]))
            except KeyError as exc:
                raise TritonRequestError(
                    f"model {self.model!r} lacks parameter {exc}: re-export it with `python -m export`"
                ) from None
        return self._info

    async def step(
        self, sequence_id: int, ids: list[int] | np.ndarray, start: bool = False, end: bool = False
    ) -> np.ndarray:
        """Feed `ids` to the sequence; the logits [vocab] after them. START steps are retried.

        A step that is neither START nor END first waits at the step gate (at most its
        `in_flight_s`); START makes the sequence a member of the gate, END removes it."""
        head, body = self._request(sequence_id, ids, start, end)  # built before the gate

        async def once() -> np.ndarray:
            status, headers, data = await self._call(lambda: self._pool.post(head, body))
            if status != 200:
                try:
                    text = json.loads(data)["error"]
                except (ValueError, KeyError, TypeError):
                    text = data[:200].decode("utf-8", "replace")
                raise _classify(InferenceServerException(text, status=str(status)))
            result = triton_http.InferenceServerClient.parse_response_body(
                data, header_length=headers.get("inference-header-content-length")
            )
            logits: np.ndarray = result.as_numpy(io.LOGITS)[0]
            return logits

        if end:
            self.gate.left(sequence_id)
            return await once()
        if start:
            self.gate.started(sequence_id)
        else:
            await self.gate.wait(sequence_id)
        try:
            return await (self._retrying()(once) if start else once())
        finally:
            self.gate.answered(sequence_id)

    def _request(
        self, sequence_id: int, ids: list[int] | np.ndarray, start: bool, end: bool
    ) -> tuple[bytes, bytes]:
        """HTTP head and body of one infer request (KServe v2, binary tensors)."""
        data = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        inp = triton_http.InferInput(io.INPUT_IDS, list(data.shape), io.INPUT_IDS_DTYPE)
        inp.set_data_from_numpy(data, binary_data=True)
        out = [triton_http.InferRequestedOutput(io.LOGITS, binary_data=True)]
        body, json_size = triton_http.InferenceServerClient.generate_request_body(
            [inp], outputs=out, sequence_id=sequence_id, sequence_start=start, sequence_end=end
        )
        # X-Sequence-Id lets a load balancer keep all steps of one sequence on one replica.
        # identity: compressing 200 KB of logits per step costs Triton more than the network.
        head = (
            f"POST {self._infer_path} HTTP/1.1\r\nHost: {self.url}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {json_size}\r\n"
            f"Content-Length: {len(body)}\r\nX-Sequence-Id: {sequence_id}\r\n"
            "Accept-Encoding: identity\r\n\r\n"
        )
        return head.encode("ascii"), body

    async def end(self, sequence_id: int) -> None:
        """Free the sequence's cache on the server (best effort: the idle timeout is the backstop)."""
        try:
            await self.step(sequence_id, [], end=True)
        except TritonError as exc:
            log.debug("END of sequence %d not delivered: %s", sequence_id, exc)
