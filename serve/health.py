"""Is the model alive? One real inference, not Triton's own health endpoints.

Triton 2.51 keeps `/v2/health/ready`, `/v2/health/live` and `/v2/models/<m>/ready` at 200 after
its python-backend stub died; only an inference tells ("Stub process ... is not healthy"). The
probe is a round of one row (contract/triton_io.py's PROBE_ROW): one token at position 0 with END
on a reserved sequence id, in the probe's own KV slot; the model runs it, answers its candidates
and frees the slot at once. The launcher's supervisor, the Triton container's entrypoint and
healthcheck and the Kubernetes probes use `probe()` (the bot sends the same row through its own
client). Standard library only, so it runs in the Triton image's system Python:

    python -m serve.health [--url 127.0.0.1:8000] [--model rudialogpt] [--timeout 5]

exits 0 ("alive") or 1 with the reason on one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from contract import triton_io as io


class ModelDead(RuntimeError):
    """The model did not answer a real inference; the message says what happened."""


def probe(url: str = io.DEFAULT_URL, model: str = io.DEFAULT_MODEL_NAME, timeout: float = 5.0) -> None:
    """Run the probe's row (io.PROBE_ROW); raise ModelDead unless its candidates come back."""
    shapes = io.round_shapes(rows=1, tokens=1)
    body = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": shapes[name], "datatype": dtype, "data": [io.PROBE_ROW[name]]}
                for name, dtype in io.REQUEST_INPUTS.items()
            ],
            "outputs": [{"name": io.STATUS}, {"name": io.ERRORS}, {"name": io.CANDIDATE_IDS}],
        }
    ).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            header = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip()
        raise ModelDead(f"model {model!r} at {url}: HTTP {exc.code} {text}") from None
    except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
        raise ModelDead(f"model {model!r} at {url}: {exc.__class__.__name__}: {exc}") from None
    outputs = {o.get("name"): o for o in header.get("outputs", [])}
    status = outputs.get(io.STATUS, {}).get("data") or [None]
    shape = outputs.get(io.CANDIDATE_IDS, {}).get("shape") or [0]
    if status[0] != io.ROW_OK or shape[-1] <= 0:
        errors = outputs.get(io.ERRORS, {}).get("data")
        raise ModelDead(f"model {model!r} at {url}: the probe's row failed (status {status[0]}): {errors}")


def is_alive(url: str = io.DEFAULT_URL, model: str = io.DEFAULT_MODEL_NAME, timeout: float = 5.0) -> bool:
    """probe() as a bool."""
    try:
        probe(url, model, timeout)
    except ModelDead:
        return False
    return True


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """--url and --model: which server and model to probe (this CLI and the supervisor's)."""
    p.add_argument("--url", default=io.DEFAULT_URL, help="Triton HTTP host:port")
    p.add_argument("--model", default=io.DEFAULT_MODEL_NAME, help="model to probe")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serve.health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    args = p.parse_args(argv)
    try:
        probe(args.url, args.model, args.timeout)
    except ModelDead as exc:
        print(f"dead: {exc}", file=sys.stderr)
        return 1
    print("alive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
