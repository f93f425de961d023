"""The served model on the real Triton: round requests, KV-cache parity, positions, isolation,
errors per row and per request, metrics."""

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
from tests.helpers import IDLE_MODEL, RowError, full_row, metric, round_request


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


def end(client, *seqs: int, model: str = "rudialogpt") -> None:
    round_request(client, [(s, 0, [], io.ROW_END) for s in seqs], model)


def test_ready_and_metadata(triton, client):
    assert client.is_server_ready() and client.is_model_ready("rudialogpt")
    meta = client.get_model_metadata("rudialogpt")
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == io.REQUEST_INPUTS
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == io.RESPONSE_OUTPUTS
    params = client.get_model_config("rudialogpt")["parameters"]
    assert params[io.PARAM_EXECUTION_PROVIDER]["string_value"] == "cpu"
    # "auto" slots: the CPU's default count, said in the log with how it was chosen.
    assert params[io.PARAM_KV_SLOTS]["string_value"] == io.KV_SLOTS_AUTO
    log = triton.log_file.read_text(encoding="utf-8", errors="replace")
    assert f"rudialogpt version 1: KV slots: {io.DEFAULT_KV_SLOTS} (auto on the cpu" in log


def test_token_by_token_matches_pytorch_and_ort(client, sample_ids, torch_logits, model_repository):
    """Prompt step then single tokens through Triton == PyTorch on the whole text == ORT in-process."""
    from engine.core import KVEngine, make_session
    from export.verify import served_path

    n = 8
    served = [full_row(client, 101, 0, sample_ids[:n])]
    served += [full_row(client, 101, p, [sample_ids[p]]) for p in range(n, len(sample_ids))]
    end(client, 101)
    served = np.stack(served)
    assert np.abs(served - torch_logits[n - 1 :]).max() < 1e-4
    engine = KVEngine(make_session(str(model_repository / "rudialogpt" / "1" / "model.onnx")), slots=1)
    in_process = np.stack([v for _, v in sorted(served_path(engine, sample_ids, n).items())])
    assert np.abs(served - in_process).max() < 1e-5


def test_a_round_runs_many_sequences_and_answers_each_row(client, sample_ids, torch_logits):
    """One request: two prompts of different lengths, then both decoding in one round; each row's
    candidates are its logits' K largest, a ROW_FULL row gets its whole row too."""
    other = list(reversed(sample_ids))
    out = round_request(client, [(201, 0, sample_ids[:4]), (202, 0, other[:3], io.ROW_FULL)])
    assert list(out[io.STATUS]) == [0, 0] and out[io.ERRORS].size == 0  # messages of failed rows only
    k = out[io.CANDIDATE_IDS].shape[1]
    assert out[io.LOGITS].shape == (1, torch_logits.shape[1])  # only the row that asked
    assert np.abs(out[io.CANDIDATE_LOGITS][0] - np.sort(torch_logits[3])[::-1][:k]).max() < 1e-4
    assert out[io.CANDIDATE_IDS][0][0] == torch_logits[3].argmax()
    for i in range(4, 10):
        out = round_request(client, [(201, i, [sample_ids[i]]), (202, i - 1, [other[i - 1]], io.ROW_FULL)])
        assert out[io.CANDIDATE_IDS][0][0] == torch_logits[i].argmax()
        alone = full_row(client, 203, 0, other[:i])
        assert np.abs(out[io.LOGITS][0] - alone).max() < 1e-5
    end(client, 201, 202, 203)


def test_a_step_sent_again_gets_the_same_answer(client, sample_ids, torch_logits):
    """Rows name their position: the same step twice (its answer lost) recomputes it; a position
    past what the server holds is a lost sequence."""
    full_row(client, 251, 0, sample_ids[:5])
    first = full_row(client, 251, 5, [sample_ids[5]])
    again = full_row(client, 251, 5, [sample_ids[5]])
    assert np.abs(first - again).max() == 0 and np.abs(first - torch_logits[5]).max() < 1e-4
    with pytest.raises(RowError, match="holds 6 tokens") as lost:
        full_row(client, 251, 9, [1])
    assert lost.value.code == io.ROW_LOST
    end(client, 251)


def test_concurrent_round_requests_are_exact(triton, client, sample_ids, torch_logits):
    """8 threads (as 8 bot processes) stepping at once: every answer exact; Triton's dynamic batcher
    may run several requests in one execute()."""
    errors, barrier = [], threading.Barrier(8)

    def run(seq):
        own = http.InferenceServerClient(triton.url)  # tritonclient.http is not thread-safe
        try:
            barrier.wait()
            out = [full_row(own, seq, 0, sample_ids[:6])]
            out += [full_row(own, seq, p, [sample_ids[p]]) for p in range(6, len(sample_ids))]
            end(own, seq)
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


def test_end_frees_the_cache(triton, client, sample_ids):
    full_row(client, 401, 0, sample_ids)
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model="rudialogpt") >= 1
    end(client, 401)
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model="rudialogpt") == 0
    assert metric(triton.metrics_url, "rudialogpt_cached_tokens", model="rudialogpt") == 0


def test_idle_sequence_cache_is_freed(triton, client, sample_ids):
    full_row(client, 501, 0, sample_ids, model=IDLE_MODEL)
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model=IDLE_MODEL) == 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        probe(triton.url, IDLE_MODEL)  # the sweeper frees caches; gauges follow in execute() only
        if metric(triton.metrics_url, "rudialogpt_cached_sequences", model=IDLE_MODEL) == 0:
            break
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model=IDLE_MODEL) == 0
    with pytest.raises(RowError, match="holds no cache") as lost:  # the sequence is gone
        full_row(client, 501, len(sample_ids), [5], model=IDLE_MODEL)
    assert lost.value.code == io.ROW_LOST


BAD_ROWS = [
    ("id at vocab size", [1, 10**6], "must be in"),
    ("negative id", [-3], "must be in"),
    ("empty step without END", [], "no tokens"),
    ("longer than the slot", [5] * 600, "exceeds"),
    ("3000-token prompt", [5] * 3000, "exceeds"),
]


@pytest.mark.parametrize("name,ids,message", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_a_bad_row_fails_alone_and_the_server_keeps_serving(
    client, sample_ids, torch_logits, name, ids, message
):
    out = round_request(client, [(601, 0, ids), (602, 0, sample_ids, io.ROW_FULL | io.ROW_END)])
    assert out[io.STATUS][0] == io.ROW_INVALID and message in out[io.ERRORS][0].decode()
    assert out[io.STATUS][1] == io.ROW_OK and np.abs(out[io.LOGITS][0] - torch_logits[-1]).max() < 1e-4


BAD_REQUESTS = [
    ("float ids", {io.INPUT_IDS: np.float32}, "data-type"),
    ("int32 ids", {io.INPUT_IDS: np.int32}, "data-type"),
    ("signed sequence ids", {io.SEQUENCE_IDS: np.int64}, "data-type"),
]


@pytest.mark.parametrize("name,dtypes,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_malformed_request_is_refused_whole(client, name, dtypes, message):
    with pytest.raises(InferenceServerException, match=message) as refused:
        round_request(client, [(603, 0, [1, 2])], dtypes=dtypes)
    assert refused.value.status() == "400"


def test_counts_that_do_not_add_up_are_refused(client):
    inputs = []
    for name, data in {
        io.SEQUENCE_IDS: np.array([[1, 2]], np.uint64),
        io.POSITIONS: np.array([[0, 0]], np.int64),
        io.COUNTS: np.array([[2, 2]], np.int32),
        io.FLAGS: np.array([[0, 0]], np.int32),
        io.INPUT_IDS: np.array([[5, 6, 7]], np.int64),
    }.items():
        tensor = http.InferInput(name, list(data.shape), http.np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    with pytest.raises(InferenceServerException, match="add up to the 3 ids") as refused:
        client.infer("rudialogpt", inputs)
    assert refused.value.status() == "400"


def test_metrics_count_successes(triton, client, sample_ids):
    """Two answered requests and a refused one: the success count grows by exactly two (a request
    whose rows failed is answered: its rows say so)."""
    successes = lambda: metric(triton.metrics_url, "nv_inference_request_success", model="rudialogpt")  # noqa: E731
    before = successes()
    full_row(client, 801, 0, sample_ids)
    with pytest.raises(InferenceServerException):
        round_request(client, [(802, 0, [5])], dtypes={io.POSITIONS: np.int32})  # malformed: refused
    end(client, 801)
    deadline = time.monotonic() + 5
    while successes() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert successes() == before + 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 40),
    low=st.integers(-(2**40), 2**40),
    span=st.integers(0, 2**20),
    position=st.integers(-5, 50),
    flags=st.integers(0, 3),
)
def test_fuzzed_rows_get_an_answer_or_an_error_never_a_dead_server(
    triton, client, n, low, span, position, flags
):
    """Random ids, positions and flags: each row is answered or refused; the server stays up."""
    ids = np.random.default_rng(n).integers(low, low + span + 1, n).tolist()
    out = round_request(client, [(900 + n, position, ids, flags), (950, 0, [1, 2], io.ROW_END)])
    assert out[io.STATUS][1] == io.ROW_OK and out[io.STATUS][0] in (io.ROW_OK, io.ROW_INVALID, io.ROW_LOST)
    if out[io.STATUS][0] == io.ROW_OK:
        assert np.isfinite(out[io.CANDIDATE_LOGITS][0]).all()
    else:
        assert out[io.ERRORS][0]
    probe(triton.url)  # the model itself answers (Triton calls a model with a dead stub ready)
    with contextlib.suppress(InferenceServerException):  # leave no cache behind for the tests that count
        end(client, 900 + n)
