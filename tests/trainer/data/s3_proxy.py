"""A TCP proxy on loopback in front of an S3 server that behaves like real object storage: each request waits
`latency_s` before it is forwarded, responses flow at most `bandwidth_mb_s` per connection, and the first
`slow_down` GETs (after the first `pass_first`) are answered `503 SlowDown` without reaching the server; it
notes when it sent the first of them. It counts the requests it saw by method. Used by
tests/trainer/data/test_streaming.py, tests/trainer/test_storage_retries.py and benchmarks/bench_storage.py.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time

METHODS = (b"GET ", b"PUT ", b"HEAD ", b"POST ", b"DELETE ")
SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s")
SLOW_DOWN_BODY = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
                  b"<Message>Please reduce your request rate.</Message></Error>")


class StorageProxy:
    def __init__(self, target_port: int, latency_s: float = 0.0, bandwidth_mb_s: float | None = None,
                 slow_down: int = 0, pass_first: int = 0) -> None:
        self.target_port, self.latency_s, self.bandwidth_mb_s = target_port, latency_s, bandwidth_mb_s
        self.slow_down = slow_down  # GETs still to answer with 503 SlowDown
        self.pass_first = pass_first  # GETs still to forward before those
        self.first_slow_down_at: float | None = None  # time.monotonic() of the first 503
        self.requests: collections.Counter[str] = collections.Counter()
        self.slowed_down = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get_count(self) -> int:
        return self.requests["GET"]

    def close(self) -> None:
        self._open = False
        self._listener.close()

    def _accept(self) -> None:
        while self._open:
            try:
                if not select.select([self._listener], [], [], 0.05)[0]:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            first = client.recv(65536)
            if first.startswith(b"GET ") and self._take_slow_down():
                client.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()
            data = first
            while data:
                if data.startswith(METHODS):
                    with self._lock:
                        self.requests[data.split(b" ", 1)[0].decode()] += 1
                    if self.latency_s:
                        time.sleep(self.latency_s)
                upstream.sendall(data)
                data = client.recv(65536)
        except OSError:
            pass
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)

    def _take_slow_down(self) -> bool:
        with self._lock:
            if self.pass_first > 0:
                self.pass_first -= 1
                return False
            if self.slow_down <= 0:
                return False
            if self.first_slow_down_at is None:
                self.first_slow_down_at = time.monotonic()
            self.slow_down -= 1
            self.slowed_down += 1
            self.requests["GET"] += 1
            return True

    def _responses(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
                if self.bandwidth_mb_s:
                    time.sleep(len(data) / (self.bandwidth_mb_s * 2**20))
        except OSError:
            pass
        finally:
            _close(client)


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()
