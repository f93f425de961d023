"""`python -m serve --repository model_repository/`: the real Triton on this machine's CPU."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from serve.server import TritonServer, TritonServerError

log = logging.getLogger("serve")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    p.add_argument("--repository", type=Path, default=Path("model_repository"),
                   help="Triton model repository (written by `python -m export`)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", type=Path, help="write the server's own log here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    server = TritonServer(args.repository, args.http_port, args.grpc_port, args.metrics_port,
                          host=args.host, log_file=args.log_file)
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        log.info("Triton ready: HTTP http://%s  gRPC %s:%d  metrics %s",
                 server.url, args.host, args.grpc_port, server.metrics_url)
        log.info("Ctrl-C to stop")
        server.process.wait()
        log.error("tritonserver exited with code %d", server.process.returncode)
        return 1
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log.info("stopping Triton")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
