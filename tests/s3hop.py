"""A faulty hop between boto3 and a real S3 endpoint (the moto server), for the tests.

It forwards every request and can, by knob:
- answer `503 SlowDown` to a share of requests, without forwarding them (`rate_503`);
- forward a write (PUT, POST, DELETE), let S3 store it, and then drop the connection
  before the answer reaches the client (`rate_lost_writes`): what a connection cut
  between S3 and the client does in production;
- close every connection, forwarding nothing, while `outage` is on (`outage_for(s)`
  turns it on for a while).

Counters say what it did. One thread per connection; keep-alive as boto3 uses it.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "host",  # http.client names the upstream itself
}
_WRITES = {"PUT", "POST", "DELETE"}
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class HopStats:
    requests: int = 0
    slowdowns: int = 0
    lost_answers: int = 0
    refused: int = 0  # connections or requests dropped during an outage
    lost_keys: list[str] = field(default_factory=list)


class S3Hop:
    """The hop: `url` goes where `AWS_ENDPOINT_URL` would have pointed."""

    def __init__(
        self,
        upstream: str,
        *,
        rate_503: float = 0.0,
        rate_lost_writes: float = 0.0,
        seed: int | None = None,
        lose: Any = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate_503 = rate_503
        self.rate_lost_writes = rate_lost_writes
        # Optional: `lose(method, path) -> bool` decides which writes lose their answer.
        self.lose = lose
        self.stats = HopStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._outage_until = 0.0
        self._outage = False
        hop = self

        class Handler(_Handler):
            server_hop = hop

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True

    # ------------------------------------------------------------------ control

    def start(self) -> S3Hop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def outage(self) -> bool:
        return self._outage or time.monotonic() < self._outage_until

    @outage.setter
    def outage(self, on: bool) -> None:
        self._outage = on
        if not on:
            self._outage_until = 0.0

    def outage_for(self, seconds: float) -> None:
        """Close every connection for `seconds` from now."""
        self._outage_until = time.monotonic() + seconds

    def _roll(self, rate: float) -> bool:
        with self._lock:
            return rate > 0 and self._rng.random() < rate


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients that hang up mid-request are what this hop is for


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hop: S3Hop

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def setup(self) -> None:
        super().setup()
        if self.server_hop.outage:
            self.server_hop.stats.refused += 1
            self._drop()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        hop = self.server_hop
        if hop.outage:
            hop.stats.refused += 1
            self._drop()
            return
        body = self._body()
        hop.stats.requests += 1
        if hop._roll(hop.rate_503):
            hop.stats.slowdowns += 1
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(_SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*hop.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            answer_headers = answer.getheaders()
            status, reason = answer.status, answer.reason
        finally:
            upstream.close()
        lose = (
            hop.lose(self.command, self.path)
            if hop.lose is not None
            else self.command in _WRITES and hop._roll(hop.rate_lost_writes)
        )
        if lose or hop.outage:
            # Stored (or not) upstream; the client never hears which.
            if lose:
                hop.stats.lost_answers += 1
                hop.stats.lost_keys.append(f"{self.command} {self.path}")
            else:
                hop.stats.refused += 1
            self._drop()
            return
        self.send_response(status, reason)
        for name, value in answer_headers:
            if name.lower() in _HOP_BY_HOP or name.lower() in ("content-length", "date", "server"):
                continue
            self.send_header(name, value)
        if self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in answer_headers).get("content-length", "0")
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward
