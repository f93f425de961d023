"""bot/triton_client.py's error classes, each from the real error of the real Triton 2.51 (status
and text as the server sends them), and what the client does with it (retry or not)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import tritonclient.http.aio as triton_http
from tritonclient.utils import InferenceServerException

from bot.triton_client import (
    ModelDown,
    SequenceLost,
    TritonClient,
    TritonError,
    TritonRequestError,
    TritonUnavailable,
    _classify,
)
from serve.supervisor import stub_processes
from tests.helpers import start_triton

RETRIES = 50  # a retried error would take over a minute (backoff up to 2 s): none takes 5 s


def failure(url: str, body, model: str = "rudialogpt", retries: int = RETRIES, **client) -> TritonError:
    """The TritonError that `body(client)` raises (the test fails if it raises none), within 5 s
    unless the client retried it."""

    async def main() -> TritonError:
        c = TritonClient(url, model, retries=retries, **client)
        try:
            await body(c)
        except TritonError as exc:
            return exc
        finally:
            await c.close()
        raise AssertionError("no error")

    t0 = time.monotonic()
    exc = asyncio.run(main())
    assert time.monotonic() - t0 < 5 or retries < RETRIES, f"retried: {exc}"
    return exc


def test_unreachable_server():
    exc = failure("127.0.0.1:9", lambda c: c.step(1, [5], start=True), timeout=1.0, retries=2)
    assert type(exc) is TritonUnavailable and "ConnectionRefusedError" in str(exc)


def test_timeout_is_unavailable(triton):
    exc = failure(triton.url, lambda c: c.step(1, [5], start=True), timeout=1e-6, retries=2)
    assert type(exc) is TritonUnavailable and "TimeoutError" in str(exc)


def test_wrong_model_name_is_refused_not_retried(triton):
    """404 "... is not found": the fix is the setting, so no retry and the error names it."""
    for body in (lambda c: c.step(1, [5], start=True), lambda c: c.model_info()):
        exc = failure(triton.url, body, model="nope")
        assert type(exc) is TritonRequestError and "check TRITON_MODEL" in str(exc)
        assert "Request for unknown model: 'nope' is not found" in str(exc)


def test_step_without_start_is_a_lost_sequence(triton):
    """400 from the sequence batcher: the server holds no sequence for this id (END, idle, restart)."""

    async def body(c):
        await c.step(7001, [5], start=True)
        await c.end(7001)
        await c.step(7001, [6])

    exc = failure(triton.url, body)
    assert type(exc) is SequenceLost and "must specify the START flag" in str(exc)
    assert exc.status == 400


def test_sequence_the_model_dropped_is_lost(triton):
    """400 (INVALID_ARG) from model.py: Triton's batcher holds the sequence, the engine has no cache
    for it (here: its START was refused for bad ids, also a 400)."""
    refused = failure(triton.url, lambda c: c.step(7002, [10**6], start=True))
    assert type(refused) is TritonRequestError and "token ids must be in" in str(refused)
    lost = failure(triton.url, lambda c: c.step(7002, [5]))
    assert type(lost) is SequenceLost and "unknown sequence 7002" in str(lost)
    assert (refused.status, lost.status) == (400, 400)


def test_malformed_request_is_refused(triton):
    """400 that is not about START: sequence id 0 is no correlation id."""
    exc = failure(triton.url, lambda c: c.step(0, [5], start=True))
    assert type(exc) is TritonRequestError and "non-zero or non-empty correlation ID" in str(exc)


@pytest.mark.parametrize("status", ["502", "503", "504"])
def test_proxy_statuses_are_unavailable(status):
    """Triton 2.51 sent none of these here; a proxy before it (Envoy in k8s/) does."""
    exc = _classify(InferenceServerException("upstream connect error", status=status))
    assert type(exc) is TritonUnavailable


@pytest.mark.timeout(180)
def test_model_unloaded_then_dead(model_repository, tmp_path):
    """A second server (explicit model control) to unload the model and kill its process:
    404 "has no available versions" is unavailable; a dead stub's 500 is ModelDown, not retried."""
    server = start_triton(
        model_repository,
        tmp_path / "t.log",
        extra_args=["--model-control-mode=explicit", "--load-model=rudialogpt"],
    )

    async def control(action: str) -> None:
        admin = triton_http.InferenceServerClient(server.url)
        try:
            await getattr(admin, f"{action}_model")("rudialogpt")
        finally:
            await admin.close()

    start = lambda c: c.step(1, [5], start=True)  # noqa: E731 (the step each phase tries)
    try:
        asyncio.run(control("unload"))
        exc = failure(server.url, start, retries=2)
        assert type(exc) is TritonUnavailable and "has no available versions" in str(exc)
        asyncio.run(control("load"))
        assert failure_free(server.url)
        for pid in stub_processes(server.process.pid):
            os.kill(pid, signal.SIGKILL)
        exc = failure(server.url, start)  # one try: no retries against a dead model
        assert type(exc) is ModelDown and "Stub process 'rudialogpt_0_0' is not healthy" in str(exc)
    finally:
        server.stop()


def failure_free(url: str) -> bool:
    """A START and END go through."""

    async def main() -> bool:
        c = TritonClient(url)
        try:
            logits = await c.step(2, [5], start=True)
            await c.end(2)
            return logits.ndim == 1 and logits.size > 0
        finally:
            await c.close()

    return asyncio.run(main())
