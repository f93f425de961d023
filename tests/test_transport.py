"""client/transport.py's error classes, each from the real error of the real Triton 2.51 (status
and text as the server sends them, or the row's status), and what the client does with it; a
round of this client's generations as one request, its routing key on every request."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
import tritonclient.http.aio as triton_http

from client.rounds import TritonClient, generate
from client.sampling import SamplingConfig
from client.transport import (
    Answer,
    ModelDown,
    NoFreeSlot,
    SequenceLost,
    Transport,
    TritonError,
    TritonRequestError,
    TritonUnavailable,
    _refusal,
    round_arrays,
)
from contract import triton_io as io
from serve.supervisor import stub_processes
from tests.helpers import start_triton

RETRIES = 50  # a retried error would take over a minute (backoff up to 2 s): none takes 5 s


async def step(c: Transport, sequence_id: int, ids: list[int], position: int, flags: int = 0) -> Answer:
    """A round of one row; the row's error raised."""
    answer = await c.send(round_arrays([(sequence_id, position, ids, flags)]))
    if answer.status[0] != io.ROW_OK:
        raise answer.error(0, 0)
    return answer


def failure(url: str, body, model: str = "rudialogpt", retries: int = RETRIES, **client) -> TritonError:
    """The TritonError that `body(client)` raises (the test fails if it raises none), within 5 s
    unless the client retried it."""

    async def main() -> TritonError:
        c = Transport(url, model, retries=retries, **client)
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
    exc = failure("127.0.0.1:9", lambda c: step(c, 1, [5], 0), timeout=1.0, retries=2)
    assert type(exc) is TritonUnavailable and "Connect call failed" in str(exc)


def test_timeout_is_unavailable(triton):
    exc = failure(triton.url, lambda c: step(c, 1, [5], 0), timeout=1e-6, retries=2)
    assert type(exc) is TritonUnavailable and "TimeoutError" in str(exc)


def test_wrong_model_name_is_refused_not_retried(triton):
    """404 "... is not found": the fix is the setting, so no retry and the error names it."""
    for body in (lambda c: step(c, 1, [5], 0), lambda c: c.model_info()):
        exc = failure(triton.url, body, model="nope")
        assert type(exc) is TritonRequestError and "check TRITON_MODEL" in str(exc)
        assert "Request for unknown model: 'nope' is not found" in str(exc)


def test_a_step_past_what_the_server_holds_is_a_lost_sequence(triton):
    """The row's status: the server holds no cache for this sequence at that position (END, idle,
    restart, another replica)."""

    async def body(c):
        await step(c, 7001, [5], 0)
        await step(c, 7001, [], 0, io.ROW_END)
        await step(c, 7001, [6], 1)

    exc = failure(triton.url, body)
    assert type(exc) is SequenceLost and "holds no cache for it" in str(exc)
    assert exc.status == 400


def test_a_bad_row_is_refused_and_the_round_goes_on(triton):
    """A row with an id outside the vocabulary is refused (400-like, no retry); the other row of the
    same round is answered."""

    async def main():
        c = Transport(triton.url)
        try:
            answer = await c.send(round_arrays([(7002, 0, [10**6], 0), (7003, 0, [1, 2], 0)]))
            await step(c, 7003, [], 0, io.ROW_END)
            return answer
        finally:
            await c.close()

    answer = asyncio.run(main())
    refused = answer.error(0, 0)
    assert (
        type(refused) is TritonRequestError
        and "token ids must be in" in str(refused)
        and refused.status == 400
    )
    assert answer.status[1] == io.ROW_OK and answer.ids[1].size == answer.logits[1].size > 0


def test_no_free_slot_is_unavailable_for_now(triton):
    """Every KV slot held by generations that stepped just now: a new sequence is refused as busy
    (503, retried by the generate loop), not given another's slot."""

    async def main():
        c = Transport(triton.url)
        slots = (await c.model_info()).kv_slots
        try:
            await c.send(round_arrays([(7100 + k, 0, [1, 2], 0) for k in range(slots)]))
            with pytest.raises(NoFreeSlot) as busy:
                await step(c, 7099, [1], 0)
            return busy.value
        finally:
            await c.send(round_arrays([(7100 + k, 0, [], io.ROW_END) for k in range(slots)]))
            await c.close()

    busy = asyncio.run(main())
    assert busy.status == 503 and "KV slots are held" in str(busy)


def test_a_round_is_one_request_with_the_clients_routing_key(triton, monkeypatch):
    """Five generations started together: their rows travel as one request per round, which
    carries the client's routing key (a load balancer keeps this process's rounds on one replica)."""
    import json

    import aiohttp

    sent: list[tuple[int, str]] = []
    real_request = aiohttp.ClientSession.request

    def request(self, method, url, *, data=None, headers, **kwargs):
        if data is not None:
            header = json.loads(data[: int(headers["Inference-Header-Content-Length"])])
            rows = next(i["shape"][1] for i in header["inputs"] if i["name"] == io.SEQUENCE_IDS)
            sent.append((rows, headers[io.ROUTING_HEADER]))
        return real_request(self, method, url, data=data, headers=headers, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "request", request)
    cfg = SamplingConfig.greedy(max_new_tokens=3, stop_ids=())

    async def main():
        c = TritonClient(triton.url)
        try:
            await asyncio.gather(*(generate(c, [1, 2, 3], cfg, np.random.default_rng(k)) for k in range(5)))
            return c.routing_key
        finally:
            await c.close()

    key = asyncio.run(main())
    rounds = [rows for rows, _ in sent if rows > 1]  # (the probe for the model's slots is a row alone)
    assert rounds[:3] == [5] * 3 and all(k == key for _, k in sent)  # 3 tokens: 3 rounds of 5


@pytest.mark.parametrize("status", ["502", "503", "504"])
def test_proxy_statuses_are_unavailable(status):
    """Triton 2.51 sent none of these here; a proxy before it (Envoy in k8s/) does."""
    exc = _refusal(int(status), b'{"error": "upstream connect error"}')
    assert type(exc) is TritonUnavailable


@pytest.mark.timeout(180)
def test_model_unloaded_then_dead(model_repository, tmp_path):
    """A second server (explicit model control) to unload the model and kill its process:
    404 "has no available versions" is unavailable; a dead stub's 500 is ModelDown, not retried."""
    server = start_triton(
        model_repository,
        tmp_path / "t.log",
        poll_seconds=0,
        extra_args=["--model-control-mode=explicit", "--load-model=rudialogpt"],
    )

    async def control(action: str) -> None:
        admin = triton_http.InferenceServerClient(server.url)
        try:
            await getattr(admin, f"{action}_model")("rudialogpt")
        finally:
            await admin.close()

    start = lambda c: step(c, 1, [5], 0)  # noqa: E731 (the step each phase tries)
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
    """A step and END go through."""

    async def main() -> bool:
        c = Transport(url)
        try:
            out = await step(c, 2, [5], 0, io.ROW_END)
            return out.ids.ndim == 2 and out.ids.size > 0
        finally:
            await c.close()

    return asyncio.run(main())
