"""Session fixtures: a tiny model trained on the bundled data, its export, the real Triton."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE_CSV = ROOT / "training" / "data.csv"
IDLE_MODEL = "rudialogpt_idle"
BATCH_MODEL = "rudialogpt_batch"  # a 5 ms queue delay: counts batches, robust to a busy machine


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny GPT-2 fine-tuned for a few steps on the bundled sample (offline, ~10 s)."""
    from training.config import TrainConfig
    from training.train import train

    out = tmp_path_factory.mktemp("tiny-checkpoint")
    return train(TrainConfig(data=SAMPLE_CSV, output=out, base_model="tiny", max_steps=40,
                             logging_steps=20, save_steps=40))


@pytest.fixture(scope="session")
def model_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    """`python -m export` of the tiny checkpoint into a fresh Triton model repository."""
    from export import ServingConfig, export

    repo = tmp_path_factory.mktemp("model_repository")
    export(tiny_checkpoint, repo, serving=ServingConfig(idle_seconds=120, max_queue_delay_us=200))
    # The same model with a 2 s idle timeout, for the test that abandoned caches are freed.
    export(tiny_checkpoint, repo, name=IDLE_MODEL, serving=ServingConfig(idle_seconds=2))
    # The same model with a long queue delay, for the test that the step gate forms full batches.
    export(tiny_checkpoint, repo, name=BATCH_MODEL, serving=ServingConfig(idle_seconds=120, max_queue_delay_us=5000))
    return repo


@pytest.fixture(scope="session")
def triton(model_repository, tmp_path_factory):
    """The real tritonserver (nvidia-pytriton's binary) serving the tiny model, on free ports."""
    from serve.server import TritonServer, free_port

    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    server = TritonServer(model_repository, free_port(), free_port(), free_port(), log_file=log)
    server.model_name = "rudialogpt"
    with server:
        yield server
