"""`python -m serve --repository model_repository/`: the real Triton on this machine's CPU, kept alive.

The launcher watches the model (serve/supervisor.py) and replaces the whole server when
tritonserver exits or its python-backend stub dies, with backoff; Ctrl-C/SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from contract import triton_io as io
from serve.server import PortInUse, TritonServer, TritonServerError
from serve.supervisor import Supervision, supervise

log = logging.getLogger("serve")
PORT_FLAGS = {"HTTP": "--http-port", "gRPC": "--grpc-port", "metrics": "--metrics-port"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="Triton model repository (written by `python -m export`)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all")
    p.add_argument("--http-port", type=int, default=io.DEFAULT_HTTP_PORT)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", type=Path, help="write the server's own log here")
    p.add_argument(
        "--poll-seconds",
        type=int,
        default=TritonServer.poll_seconds,
        help="look for a new model version this often (python -m export writes one); 0: never",
    )
    p.add_argument("--model", default=io.DEFAULT_MODEL_NAME, help="the model whose liveness is watched")
    p.add_argument(
        "--check-every",
        type=float,
        default=Supervision.check_every,
        help="seconds between liveness probes (one real inference each)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def make_server() -> TritonServer:
        return TritonServer(
            args.repository,
            args.http_port,
            args.grpc_port,
            args.metrics_port,
            host=args.host,
            log_file=args.log_file,
            poll_seconds=args.poll_seconds,
        )

    def on_ready(server: TritonServer) -> None:
        log.info(
            "Triton ready: HTTP http://%s  gRPC %s:%d  metrics %s",
            server.url,
            args.host,
            args.grpc_port,
            server.metrics_url,
        )
        log.info("Ctrl-C to stop")

    try:
        supervise(make_server, args.model, Supervision(check_every=args.check_every), stop, on_ready)
    except PortInUse as exc:
        flag = PORT_FLAGS.get(exc.role, "--http-port, --grpc-port or --metrics-port")
        print(
            f"error: {exc}: stop it (another `python -m serve`, `make demo`?) or pass {flag}", file=sys.stderr
        )
        return 2
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("Triton stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
