"""Prefect's API for one `i2v run`, made ready while the CLI loads and checks.

With no API configured, Prefect starts its temporary server at the flow's first API
call, after this process has imported and checked everything: about 5 s spent in
series. `i2v run` starts that server first instead, in a child process, so it comes up
on the other core while this process imports and reads the manifest. The child serves
what Prefect 3.9's own `SubprocessASGIServer` serves (uvicorn, the factory
`prefect.server.api.server:create_app`, UI off, the same settings and database), and
this process sets PREFECT_API_URL to it before it imports Prefect, so the flow sees a
configured API and starts no second server.

The child reads Prefect's settings itself (env, profile, prefect.toml), so an API set
anywhere Prefect looks is used as before and nothing is served. With PREFECT_API_URL
in the environment no child is started at all: a background request to its /health
turns an API that is down into one line before anything is submitted.

The child is stopped when this process exits (atexit, registered before Prefect's own
exit handlers, so they still reach it; a SIGTERM outside the flow exits through it),
and stops itself if this process dies without stopping it (kill -9). It has a process
group of its own: a Ctrl-C in the terminal reaches only this process, which winds the
run down while the server still records it. Only the child imports Prefect.
"""

from __future__ import annotations

import atexit
import http.client
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

# What Prefect 3.9's SubprocessASGIServer sets for its server: no UI, the services an
# ephemeral server runs, and the optimisations of the last app in the process.
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
STOP_GRACE_S = 5.0  # as Prefect's own stop, then SIGKILL
# Unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS says otherwise: more than
# Prefect's own 20 s, because this server shares the cores with the CLI's imports and
# checks from its first second, and a first run creates its database (measured: 20 s
# on a busy 2-core machine).
DEFAULT_STARTUP_TIMEOUT_S = 60.0
PARENT_CHECK_S = 0.25

log = logging.getLogger("i2v.cli")


class PrefectUnavailable(Exception):
    """No Prefect API for the flow; nothing was submitted."""


class PrefectApi:
    """The API this run's flow talks to: `start` it first, `use` it before importing
    Prefect, `wait_ready` before the flow; it stops itself at exit."""

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None  # of the temporary server, once the child serves
        self.port = 0
        try:  # the child reports Prefect's value; until then the environment's
            self.timeout_s = float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
        except (KeyError, ValueError):
            self.timeout_s = DEFAULT_STARTUP_TIMEOUT_S
        self._answer: int | None = None  # read end of the child's one-line answer
        self._ready = False
        self._unreachable: str | None = None  # the configured API refused us

    @classmethod
    def start(cls) -> PrefectApi:
        """Start the temporary server in the background (or check the configured API)."""
        api = cls()
        if "prefect" in sys.modules or os.name == "nt":
            # Prefect's settings are loaded here already (tests, a program calling the
            # CLI): setting PREFECT_API_URL now would not reach them. On Windows the
            # child's pipe and process group are not available. Prefect does as usual.
            return api
        url = os.environ.get("PREFECT_API_URL", "").strip()
        if url:
            threading.Thread(target=api._probe, args=(url,), daemon=True).start()
        else:
            api._spawn()
        return api

    def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                # -P: a `cli` folder in the user's working directory must not shadow ours.
                [sys.executable, "-P", "-m", "cli.prefect_api", str(os.getpid()), str(write_fd)],
                env={**os.environ, **SERVER_ENV},
                stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                process_group=0,
            )
        except OSError as exc:
            os.close(read_fd)
            log.warning("could not start Prefect's temporary server early (%s)", exc)
            return
        finally:
            os.close(write_fd)
        self._answer = read_fd
        atexit.register(self.stop)
        _exit_on_sigterm()
        log.info("Starting Prefect's temporary server in the background")

    def use(self) -> None:
        """Right before this process imports Prefect: point it at the temporary server,
        once the child has read Prefect's settings and knows whether one is needed."""
        if self._unreachable is not None:
            raise PrefectUnavailable(self._unreachable)
        if self._answer is None or self.proc is None:
            return
        if "prefect" in sys.modules:  # imported early after all: the env var comes too late
            self.stop()
            return
        words = self._read_answer().split()
        if words[:1] == ["serve"] and len(words) == 3:
            self.port = int(words[1])
            self.url = f"http://127.0.0.1:{self.port}/api"
            if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
                self.timeout_s = float(words[2])
            os.environ["PREFECT_API_URL"] = self.url
            # It serves no UI: no "View at" link to a page that does not exist.
            os.environ["PREFECT_UI_URL"] = ""
        else:
            # "api": configured in a profile or prefect.toml, which Prefect here reads too;
            # "off": ephemeral mode disabled; nothing: the child failed (Prefect will say why).
            self.stop()

    def _read_answer(self) -> str:
        assert self._answer is not None
        data = b""
        deadline = time.monotonic() + self.timeout_s
        try:
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._answer], [], [], left)[0]:
                    raise PrefectUnavailable(self._too_slow())
                chunk = os.read(self._answer, 256)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._answer)
            self._answer = None
        return data.decode(errors="replace")

    def wait_ready(self) -> None:
        """Before the flow's first API call: the temporary server answers its health
        check, or PrefectUnavailable says why not."""
        if self._unreachable is not None:
            raise PrefectUnavailable(self._unreachable)
        if self.url is None or self._ready or self.proc is None:
            return
        # Counted from here, like Prefect's own wait: the time it shared the machine
        # with this process's imports is not held against it.
        deadline = time.monotonic() + self.timeout_s
        while not self._ready:
            code = self.proc.poll()
            if code is not None:
                raise PrefectUnavailable(
                    f"Prefect's temporary server exited with code {code} before it answered "
                    "(its messages are above)"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise PrefectUnavailable(self._too_slow())
            self._ready = _healthy(self.port, min(left, 1.0))
            if not self._ready:
                time.sleep(0.05)
        log.info(
            "Prefect's temporary server is ready on %s (%.1f s after its start)",
            self.url,
            time.monotonic() - self.started_at,
        )

    def _too_slow(self) -> str:
        return (
            f"Prefect's temporary server did not start within {self.timeout_s:g} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); a busy machine may need "
            "more, or run `prefect server start` and set PREFECT_API_URL"
        )

    def _probe(self, url: str) -> None:
        """A configured API that refuses connections fails the run before it starts; any
        answer, a timeout or a TLS problem is left to Prefect's client and its settings."""
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10).close()
        except urllib.error.HTTPError:
            pass
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError | socket.gaierror):
                self._unreachable = (
                    f"the Prefect API at {url} (PREFECT_API_URL) does not answer "
                    f"({exc.reason}): start it (`prefect server start`), or unset "
                    "PREFECT_API_URL and i2v starts a temporary one"
                )
        except OSError:
            pass

    def stop(self) -> None:
        """Stop the child and wait for it: nothing outlives the CLI."""
        proc, self.proc = self.proc, None
        if self._answer is not None:
            os.close(self._answer)
            self._answer = None
        if proc is None:
            return
        if proc.poll() is None:
            began = time.monotonic()
            log.info("Stopping Prefect's temporary server")
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.info("Prefect's temporary server stopped (%.1f s)", time.monotonic() - began)


def _healthy(port: int, timeout_s: float) -> bool:
    """GET /api/health answers 200 (http.client: no proxy from the environment)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _exit_on_sigterm() -> None:
    """SIGTERM outside the flow (which winds a run down itself: flows.control) exits 143
    through atexit, so the temporary server is stopped and waited for."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_143)


def _exit_143(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one does not wait
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------------ the child


def _watch_parent(parent: int) -> None:
    """Stop when the CLI is gone without having stopped us (kill -9)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly
    time.sleep(2 * STOP_GRACE_S)
    os._exit(1)


def serve(parent: int, answer_fd: int) -> None:
    """Answer the CLI with `serve PORT TIMEOUT_S`, `api` or `off`, then serve (or exit)."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    with os.fdopen(answer_fd, "w") as answer:
        if settings.api.url:
            answer.write("api\n")
            return
        if not settings.server.ephemeral.enabled:
            answer.write("off\n")
            return
        # Listening before the app loads: the CLI's health check waits in the backlog and
        # is answered the moment the server is up.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        answer.write(f"serve {port} {settings.server.ephemeral.startup_timeout_seconds}\n")
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
