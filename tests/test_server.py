"""The served model on the real Triton: contract, KV-cache parity, isolation, errors, metrics."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import tritonclient.http as http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from contract import triton_io as io
from serve.health import probe
from tests.helpers import IDLE_MODEL, metric


def step(client, seq, ids, start=False, end=False, model="rudialogpt", dtype=np.int64, shape=None):
    data = np.asarray(ids, dtype=dtype).reshape(shape or (1, -1))
    inp = http.InferInput(io.INPUT_IDS, list(data.shape), http.np_to_triton_dtype(data.dtype))
    inp.set_data_from_numpy(data)
    result = client.infer(
        model,
        [inp],
        outputs=[http.InferRequestedOutput(io.LOGITS)],
        sequence_id=seq,
        sequence_start=start,
        sequence_end=end,
    )
    return result.as_numpy(io.LOGITS)[0]


@pytest.fixture(scope="module")
def client(triton):
    c = http.InferenceServerClient(triton.url, concurrency=8)
    yield c
    c.close()


@pytest.fixture(scope="module")
def sample_ids(tiny_checkpoint):
    from transformers import AutoTokenizer

    from contract.dialogue import build_prompt

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    return tok(build_prompt(["Привет!", "Привет, как дела?", "Хорошо, а у тебя?"]) + " Отлично")["input_ids"]


@pytest.fixture(scope="module")
def torch_logits(tiny_checkpoint, sample_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        return model(torch.tensor([sample_ids])).logits[0].numpy()


def test_ready_and_metadata(triton, client):
    assert client.is_server_ready() and client.is_model_ready("rudialogpt")
    meta = client.get_model_metadata("rudialogpt")
    assert [i["name"] for i in meta["inputs"]] == [io.INPUT_IDS]
    assert meta["inputs"][0]["datatype"] == io.INPUT_IDS_DTYPE
    assert [o["name"] for o in meta["outputs"]] == [io.LOGITS]
    params = client.get_model_config("rudialogpt")["parameters"]
    assert params[io.PARAM_EXECUTION_PROVIDER]["string_value"] == "cpu"


def test_token_by_token_matches_pytorch_and_ort(client, sample_ids, torch_logits, model_repository):
    """Prompt step then single tokens through Triton == PyTorch on the whole text == ORT in-process."""
    from export.verify import served_path
    from serve.engine import KVEngine, make_session

    n = 8
    served = [step(client, 101, sample_ids[:n], start=True)]
    served += [step(client, 101, [t]) for t in sample_ids[n:]]
    step(client, 101, [], end=True)
    served = np.stack(served)
    assert np.abs(served - torch_logits[n - 1 :]).max() < 1e-4
    engine = KVEngine(make_session(str(model_repository / "rudialogpt" / "1" / "model.onnx")), slots=1)
    in_process = np.concatenate([v for _, v in sorted(served_path(engine, sample_ids, n).items())])
    assert np.abs(served - in_process).max() < 1e-5


def test_interleaved_sequences_keep_their_own_cache(client, sample_ids, torch_logits):
    other = list(reversed(sample_ids))
    a = [step(client, 201, sample_ids[:4], start=True)]
    b = [step(client, 202, other[:3], start=True)]
    for i in range(4, 10):
        a.append(step(client, 201, [sample_ids[i]]))
        b.append(step(client, 202, [other[i - 1]]))
    for s in (201, 202):
        step(client, s, [], end=True)
    assert np.abs(np.stack(a) - torch_logits[3:10]).max() < 1e-4
    b_alone = [step(client, 203, other[:3], start=True)] + [step(client, 203, [t]) for t in other[3:9]]
    step(client, 203, [], end=True)
    assert np.abs(np.stack(b) - np.stack(b_alone)).max() < 1e-5


def test_concurrent_sequences_are_batched_and_exact(triton, client, sample_ids, torch_logits):
    """8 threads stepping at once: Triton batches them into fewer executions; results stay exact."""
    before = client.get_inference_statistics("rudialogpt")["model_stats"][0]
    errors, barrier = [], threading.Barrier(8)

    def run(seq):
        own = http.InferenceServerClient(triton.url)  # tritonclient.http is not thread-safe
        try:
            barrier.wait()
            out = [step(own, seq, sample_ids[:6], start=True)]
            out += [step(own, seq, [t]) for t in sample_ids[6:]]
            step(own, seq, [], end=True)
            assert np.abs(np.stack(out) - torch_logits[5:]).max() < 1e-4
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=run, args=(300 + k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    after = client.get_inference_statistics("rudialogpt")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 8 * (len(sample_ids) - 6 + 2)
    assert executions < inferences  # several sequences per execute()


def test_end_frees_the_cache(triton, client, sample_ids):
    step(client, 401, sample_ids, start=True)
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model="rudialogpt") >= 1
    step(client, 401, [], end=True)
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model="rudialogpt") == 0
    assert metric(triton.metrics_url, "rudialogpt_cached_tokens", model="rudialogpt") == 0


def test_idle_sequence_cache_is_freed(triton, client, sample_ids):
    step(client, 501, sample_ids, start=True, model=IDLE_MODEL)
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model=IDLE_MODEL) == 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        probe(triton.url, IDLE_MODEL)  # the sweeper frees caches; gauges follow in execute() only
        if metric(triton.metrics_url, "rudialogpt_cached_sequences", model=IDLE_MODEL) == 0:
            break
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model=IDLE_MODEL) == 0
    with pytest.raises(InferenceServerException):  # the sequence is gone: a plain step is refused
        step(client, 501, [5], model=IDLE_MODEL)


BAD_REQUESTS = [
    ("id at vocab size", dict(ids=[1, 10**6]), "must be in"),
    ("negative id", dict(ids=[-3]), "must be in"),
    ("empty step without END", dict(ids=[]), "empty"),
    ("float ids", dict(ids=[1.0, 2.0], dtype=np.float32), "data-type"),
    ("rank 3", dict(ids=[1, 2], shape=(1, 1, 2)), "shape"),
    ("longer than the model's positions", dict(ids=[5] * 600), "exceeds"),
    ("3000-token prompt", dict(ids=[5] * 3000), "exceeds"),
    ("int32 ids", dict(ids=[1, 2], dtype=np.int32), "data-type"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_an_error_and_server_keeps_serving(
    client, sample_ids, torch_logits, name, kwargs, message
):
    with pytest.raises(InferenceServerException, match=message):
        step(client, 601, start=True, **kwargs)
    logits = step(client, 602, sample_ids, start=True, end=True)
    assert np.abs(logits - torch_logits[-1]).max() < 1e-4


def test_step_of_unknown_sequence_is_refused(client):
    with pytest.raises(InferenceServerException, match="START"):
        step(client, 777, [5])


def test_metrics_count_successes(triton, client, sample_ids):
    """Two answered requests and a refused one: the success count grows by exactly two."""
    successes = lambda: metric(triton.metrics_url, "nv_inference_request_success", model="rudialogpt")  # noqa: E731
    before = successes()
    step(client, 801, sample_ids, start=True)
    with pytest.raises(InferenceServerException):
        step(client, 802, [5])  # no START: refused
    step(client, 801, [5], end=True)
    deadline = time.monotonic() + 5
    while successes() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert successes() == before + 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 40),
    low=st.integers(-(2**40), 2**40),
    span=st.integers(0, 2**20),
    dtype=st.sampled_from([np.int64, np.int32, np.float32, np.uint8]),
    start=st.booleans(),
    end=st.booleans(),
)
def test_fuzzed_requests_get_logits_or_an_error_never_a_dead_server(
    triton, client, n, low, span, dtype, start, end
):
    """Random shapes, values and dtypes: each request is answered or refused; the server stays up."""
    vocab = int(client.get_model_config("rudialogpt")["parameters"][io.PARAM_VOCAB_SIZE]["string_value"])
    ids = np.random.default_rng(n).integers(low, low + span + 1, n)
    try:
        logits = step(client, 900 + n, ids.astype(dtype), start=start, end=end, dtype=dtype)
        assert logits.shape in ((vocab,), (0,)) and np.isfinite(logits).all()
    except InferenceServerException:
        pass
    probe(triton.url)  # the model itself answers (Triton calls a model with a dead stub ready)
    with contextlib.suppress(InferenceServerException):  # leave no cache behind for the tests that count
        step(client, 900 + n, [], end=True)
