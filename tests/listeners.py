"""A raw TCP listener on loopback, for tests that prove nothing connects to an address."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class Listener:
    """Counts the connections it accepts, keeps what each sent when `record` is set
    (read until the peer closes), and closes each one; `reset` closes it with a TCP
    reset once the request has arrived."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, reset: bool = False, record: bool = False
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.reset, self.record = reset, record
        self.accepted = 0
        self.received: list[bytes] = []  # one entry per connection, when recording
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            with conn:
                if not (self.reset or self.record):
                    continue
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        data += chunk
                        if self.reset:
                            break
                if self.record:
                    self.received.append(data)
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def settled_count(self) -> int:
        """Connections accepted, once any already queued would have been accepted."""
        time.sleep(0.3)
        return self.accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
