"""Every network call to Triton: one sequence step at a time over HTTP, binary tensors.

A generation is one Triton sequence (correlation id): START with the prompt's ids, then one
sampled token per step; END frees the server's cache. A step of a running sequence is not
idempotent (it extends the server's cache), so it is never blindly retried: the generate loop
recovers by restarting the sequence with START over the whole context, which is idempotent.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_http
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from tritonclient.utils import InferenceServerException

from contract import triton_io as io
from serve.health import is_alive

log = logging.getLogger(__name__)


class TritonError(RuntimeError):
    """A Triton call failed."""


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


_TRANSIENT_STATUS = {"502", "503", "504"}


def _classify(exc: BaseException) -> TritonError:
    if isinstance(exc, TritonError):
        return exc
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError)):
        return TritonUnavailable(f"Triton unreachable: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, InferenceServerException):
        text = exc.message() or str(exc)
        if "Stub process" in text:
            return ModelDown(f"Triton's model is dead: {text}")
        if exc.status() in _TRANSIENT_STATUS or "not ready" in text or "unavailable" in text.lower():
            return TritonUnavailable(f"Triton unavailable: {text}")
        if "START" in text or "unknown sequence" in text:
            return SequenceLost(f"Triton lost the sequence: {text}")
        return TritonRequestError(f"Triton refused the request: {text}")
    return TritonError(f"{exc.__class__.__name__}: {exc}")


class TritonClient:
    """Async client of the ruDialoGPT model on Triton; one connection pool, reused."""

    def __init__(self, url: str = "127.0.0.1:8000", model: str = io.DEFAULT_MODEL_NAME,
                 timeout: float = 10.0, retries: int = 3):
        if "://" in url:
            raise ValueError(f"TRITON_URL is host:port, without a scheme: got {url!r}")
        self.url, self.model, self.timeout, self.retries = url, model, timeout, retries
        self._client: triton_http.InferenceServerClient | None = None
        self._info: ModelInfo | None = None

    @property
    def client(self) -> triton_http.InferenceServerClient:
        if self._client is None:  # created lazily: aiohttp needs the running event loop
            self._client = triton_http.InferenceServerClient(self.url, conn_timeout=self.timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, coro_fn):
        try:
            return await asyncio.wait_for(coro_fn(), self.timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _classify(exc) from exc

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(retry=retry_if_exception(lambda e: isinstance(e, TritonUnavailable)
                                                      and not isinstance(e, ModelDown)),
                             stop=stop_after_attempt(self.retries),
                             wait=wait_exponential(multiplier=0.2, max=2.0), reraise=True)

    async def is_ready(self) -> bool:
        """The model answers a real inference (serve.health: Triton's own ready stays 200 when
        the model's process is dead); never raises."""
        return await asyncio.to_thread(is_alive, self.url, self.model, self.timeout)

    async def model_info(self) -> ModelInfo:
        """Vocabulary and context size of the served model (fetched once, with retries)."""
        if self._info is None:
            async for attempt in self._retrying():
                with attempt:
                    config = await self._call(lambda: self.client.get_model_config(self.model))
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
            try:
                self._info = ModelInfo(int(params[io.PARAM_VOCAB_SIZE]), int(params[io.PARAM_MAX_POSITIONS]))
            except KeyError as exc:
                raise TritonRequestError(f"model {self.model!r} lacks parameter {exc}: re-export it "
                                         "with `python -m export`") from None
        return self._info

    async def step(self, sequence_id: int, ids: list[int] | np.ndarray, start: bool = False,
                   end: bool = False) -> np.ndarray:
        """Feed `ids` to the sequence; the logits [vocab] after them. START steps are retried."""
        data = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        inp = triton_http.InferInput(io.INPUT_IDS, list(data.shape), io.INPUT_IDS_DTYPE)
        inp.set_data_from_numpy(data, binary_data=True)
        out = [triton_http.InferRequestedOutput(io.LOGITS, binary_data=True)]
        # X-Sequence-Id lets a load balancer keep all steps of one sequence on one replica.
        # identity: aiohttp asks for gzip by default, and Triton compressing 200 KB of logits
        # per step costs more than the step's whole network time.
        headers = {"X-Sequence-Id": str(sequence_id), "Accept-Encoding": "identity"}

        async def once():
            result = await self._call(lambda: self.client.infer(
                self.model, [inp], outputs=out, sequence_id=sequence_id, sequence_start=start,
                sequence_end=end, headers=headers))
            return result.as_numpy(io.LOGITS)[0]

        if not start:
            return await once()
        async for attempt in self._retrying():
            with attempt:
                return await once()

    async def end(self, sequence_id: int) -> None:
        """Free the sequence's cache on the server (best effort: the idle timeout is the backstop)."""
        try:
            await self.step(sequence_id, [], end=True)
        except TritonError as exc:
            log.debug("END of sequence %d not delivered: %s", sequence_id, exc)
