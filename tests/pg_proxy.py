"""A TCP proxy in front of PostgreSQL that loses a commit's acknowledgement: it forwards the client's
COMMIT, lets the server commit and answer, and then cuts the connection instead of passing the
answer on. To the client this is a network cut or a server crash right after its commit: it cannot
tell whether the transaction committed (it did)."""

from __future__ import annotations

import select
import socket
import struct
import threading

COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"  # asyncpg's COMMIT: a simple query message
COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"  # the server's CommandComplete for it


class CommitCutter:
    """`with CommitCutter(port) as proxy:` connect to `proxy.port`; `proxy.lose(n)` loses the answer
    to the n-th COMMIT from then on (1: the next one), on whichever connection it comes."""

    def __init__(self, server_port: int):
        self.server_port = server_port
        self.commits = 0  # COMMITs forwarded since `lose`
        self.cut = 0  # acknowledgements lost
        self._nth: int | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, name="pg-proxy")]

    def url(self, url: str) -> str:
        """The database URL `url` (of the server behind) through the proxy."""
        return url.replace(f":{self.server_port}/", f":{self.port}/")

    def lose(self, nth: int) -> None:
        with self._lock:
            self._nth, self.commits = nth, 0

    def __enter__(self) -> CommitCutter:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._threads[0].join()  # no connection is accepted after it
        for thread in self._threads[1:]:
            thread.join()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._pipe, args=(client,), name="pg-proxy-connection")
            self._threads.append(thread)
            thread.start()

    def _is_the_one(self, data: bytes) -> bool:
        """Count the COMMITs in `data`; whether one of them is the one to lose."""
        with self._lock:
            found = False
            for _ in range(data.count(COMMIT)):
                self.commits += 1
                found = found or self.commits == self._nth
            return found

    def _pipe(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.server_port))
        held = b""  # the server's answer to the lost COMMIT, never passed on
        losing = False
        try:
            while not self._closing.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.1)
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    if end is client:
                        losing = self._is_the_one(data) or losing
                        server.sendall(data)
                    elif losing:
                        held += data
                        if COMMITTED in held:  # committed: cut the client off without the answer
                            with self._lock:
                                self.cut += 1
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()
