"""Picture URLs over real sockets on loopback: a private address gets no connection at
all, the connection goes to the address that was judged (one resolution, the name kept
for Host, SNI and the certificate), an unreachable picture is its row's error, and
pictures from allowed internal hosts land through uploadMedia."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from i2v.errors import FetchError, InputError
from i2v.locations import read_location
from tests.helpers import EXAMPLES, options_for, run_batch, table, write_manifest
from tests.listeners import Listener

PICTURE = (EXAMPLES / "rocket.jpg").read_bytes()
ENV = "I2V_PRIVATE_HOSTS"


class PictureServer:
    """An HTTP(S) picture server on one loopback address: /pic.png answers the picture,
    /to?<url> redirects there, /loop/<n> redirects to /loop/<n+1>. Records each
    request's path and Host header, and (TLS) the SNI names it was asked for."""

    def __init__(self, host: str, *, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, str]] = []
        self.sni: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Host", "")))
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path[4:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path.startswith("/loop/"):
                    self.send_response(302)
                    self.send_header("Location", f"/loop/{int(self.path[6:]) + 1}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/pic.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PICTURE)))
                    self.end_headers()
                    self.wfile.write(PICTURE)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.server = ThreadingHTTPServer((host, port), Handler)
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: owner.sni.append(name)  # type: ignore[assignment,misc]
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.base = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """The service a hostile manifest aims at, on 127.0.0.1."""
    found = Listener("127.0.0.1")
    yield found
    found.close()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """Everything a test starts, closed at its end."""
    started: list[Any] = []
    yield started
    for s in started:
        s.close()


def refused(uri: str) -> str:
    with pytest.raises(InputError) as caught:
        read_location(uri)
    return str(caught.value)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# ------------------------------------------------------------- no connection at all


def test_private_addresses_get_no_connection(
    listener: Listener, servers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = listener.port
    hint = "(allow internal hosts on the worker with I2V_PRIVATE_HOSTS="
    assert refused(f"https://127.0.0.1:{port}/a.png") == (
        f"image URL 'https://127.0.0.1:{port}/a.png' resolves to 127.0.0.1, a loopback "
        f"address: refused {hint}127.0.0.1:{port})"
    )
    assert refused(f"https://localhost:{port}/a.png") == (
        f"image URL 'https://localhost:{port}/a.png' resolves to 127.0.0.1, a loopback "
        f"address: refused {hint}localhost:{port})"
    )
    assert "resolves to ::ffff:127.0.0.1, a loopback address (IPv4 127.0.0.1 inside IPv6)" in (
        refused(f"https://[::ffff:127.0.0.1]:{port}/a.png")
    )
    assert "resolves to 0.0.0.0, an unspecified address: refused" in (
        refused(f"https://0.0.0.0:{port}/a.png")
    )
    # Spellings that only the resolver turns into 127.0.0.1.
    assert "resolves to 127.0.0.1" in refused(f"https://127.1:{port}/a.png")
    assert "resolves to 127.0.0.1" in refused(f"https://2130706433:{port}/a.png")
    assert refused(f"http://127.0.0.1:{port}/a.png").startswith(
        f"image URL 'http://127.0.0.1:{port}/a.png' resolves to 127.0.0.1"
    )
    # An allowed server that redirects to the listener: the hop is judged too.
    monkeypatch.setenv(ENV, "127.0.0.2")
    allowed = PictureServer("127.0.0.2")
    servers.append(allowed)
    target = f"https://127.0.0.1:{port}/a.png"
    assert refused(f"{allowed.base}/to?{target}") == (
        f"image URL '{allowed.base}/to?{target}' (redirected to '{target}') resolves to "
        f"127.0.0.1, a loopback address: refused {hint}127.0.0.1:{port})"
    )
    assert refused(f"{allowed.base}/to?https://localhost:{port}/a.png").endswith(
        f"{hint}localhost:{port})"
    )
    assert len(allowed.requests) == 2
    assert listener.settled_count() == 0

    # The listener does count: the same URL, allowed, gets its connection.
    monkeypatch.setenv(ENV, f"127.0.0.1:{port}")
    with pytest.raises(FetchError, match=f"cannot download image https://127.0.0.1:{port}/a.png"):
        read_location(f"https://127.0.0.1:{port}/a.png")
    assert listener.settled_count() == 1


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_gets_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    six = Listener("::1")
    try:
        assert refused(f"https://[::1]:{six.port}/a.png") == (
            f"image URL 'https://[::1]:{six.port}/a.png' resolves to ::1, a loopback address: "
            f"refused (allow internal hosts on the worker with I2V_PRIVATE_HOSTS=[::1]:{six.port})"
        )
        assert six.settled_count() == 0
        monkeypatch.setenv(ENV, f"[::1]:{six.port}")
        with pytest.raises(FetchError):
            read_location(f"https://[::1]:{six.port}/a.png")
        assert six.settled_count() == 1
    finally:
        six.close()


def test_redirects_are_bounded(servers: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "127.0.0.2")
    server = PictureServer("127.0.0.2")
    servers.append(server)
    assert read_location(f"{server.base}/to?/pic.png") == PICTURE
    assert refused(f"{server.base}/loop/0") == (
        f"image URL '{server.base}/loop/0' redirects more than 5 times"
    )
    assert [path for path, _ in server.requests[2:]] == [f"/loop/{n}" for n in range(6)]
    # A redirect from an allowed host to plain http elsewhere is refused like the rest.
    assert refused(f"{server.base}/to?http://93.184.216.34/a.png") == (
        f"image URL '{server.base}/to?http://93.184.216.34/a.png' (redirected to "
        "'http://93.184.216.34/a.png') uses plain http; use https"
    )


# ------------------------------------------------------------------ DNS pinning, TLS


def tls_pair(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for `name` (DNS name only, no IP address) and the CA file
    that signed it."""
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = cert("i2v test CA", ca_key, "i2v test CA", ca_key, True)
    leaf = cert(name, leaf_key, "i2v test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return context, tmp_path / "ca.pem"


def server_and_listener_on_one_port(tls: ssl.SSLContext) -> tuple[PictureServer, Listener]:
    """A TLS picture server on 127.0.0.2 and a listener on 127.0.0.1, same port."""
    for _ in range(20):
        server = PictureServer("127.0.0.2", tls=tls)
        try:
            return server, Listener("127.0.0.1", server.port)
        except OSError:
            server.close()
    raise RuntimeError("no port free on both 127.0.0.2 and 127.0.0.1")


def rebinding_dns(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """`name` resolves to 127.0.0.2 the first time and to 127.0.0.1 ever after (what a
    rebinding attacker's DNS answers); returns the list of lookups of `name`."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def answer(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            lookups.append(host)
            host = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    return lookups


def test_the_connection_goes_to_the_judged_address(
    tmp_path: Path, servers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tls, ca_file = tls_pair(tmp_path, "pics.test")
    server, listener = server_and_listener_on_one_port(tls)
    servers += [server, listener]
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv(ENV, "127.0.0.2")  # the address, not the name
    lookups = rebinding_dns(monkeypatch, "pics.test")

    url = f"https://pics.test:{server.port}/pic.png"
    assert read_location(url) == PICTURE
    assert lookups == ["pics.test"]  # resolved once, judged, connected to
    assert server.requests == [("/pic.png", f"pics.test:{server.port}")]
    assert server.sni == ["pics.test"]  # the certificate names only pics.test
    assert listener.settled_count() == 0

    # Had the fetcher resolved again, the second answer is what a judge refuses.
    assert "resolves to 127.0.0.1, a loopback address" in refused(url)
    assert listener.settled_count() == 0


def test_the_certificate_is_checked_against_the_name(
    tmp_path: Path, servers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tls, ca_file = tls_pair(tmp_path, "other.test")
    server = PictureServer("127.0.0.2", tls=tls)
    servers.append(server)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv(ENV, "127.0.0.2")
    rebinding_dns(monkeypatch, "pics.test")
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        read_location(f"https://pics.test:{server.port}/pic.png")
    assert server.requests == []


# ------------------------------------------------------------------- a whole batch


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_hostile_pictures_are_rejected_rows_and_the_batch_lands(
    simulator: Any,
    pictures: Path,
    tmp_path: Path,
    listener: Listener,
    servers: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resetter = Listener("127.0.0.2", reset=True)
    internal = PictureServer("127.0.0.3")
    servers += [resetter, internal]
    monkeypatch.setenv(ENV, "127.0.0.2,127.0.0.3")
    port = listener.port
    rows = {
        "a": "astronaut.png",
        "b": "coffee.png",
        "literal": f"https://127.0.0.1:{port}/a.png",
        "name": f"https://localhost:{port}/b.png",
        "mapped": f"https://[::ffff:127.0.0.1]:{port}/c.png",
        "metadata": "https://169.254.169.254/latest/meta-data/",
        "redirect": f"{internal.base}/to?https://127.0.0.1:{port}/d.png",
        "reset": f"http://127.0.0.2:{resetter.port}/e.png",
        "internal": f"{internal.base}/pic.png",
    }
    manifest = write_manifest(
        pictures, [{"id": k, "image": v, "prompt": "pan left"} for k, v in rows.items()]
    )
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(simulator))

    by_id = table(dest).set_index("id")
    assert {k: by_id.loc[k, "status"] for k in rows} == {
        **dict.fromkeys(["a", "b", "internal"], "landed"),
        **dict.fromkeys(["literal", "name", "mapped", "metadata", "redirect", "reset"], "rejected"),
    }
    hint = "(allow internal hosts on the worker with I2V_PRIVATE_HOSTS="
    assert by_id.loc["literal", "error"] == (
        f"image URL '{rows['literal']}' resolves to 127.0.0.1, a loopback address: refused "
        f"{hint}127.0.0.1:{port})"
    )
    assert by_id.loc["name", "error"] == (
        f"image URL '{rows['name']}' resolves to 127.0.0.1, a loopback address: refused "
        f"{hint}localhost:{port})"
    )
    assert "resolves to ::ffff:127.0.0.1" in by_id.loc["mapped", "error"]
    assert "resolves to 169.254.169.254, a link-local address" in by_id.loc["metadata", "error"]
    assert "(redirected to 'https://127.0.0.1:" in by_id.loc["redirect", "error"]
    assert by_id.loc["reset", "error"].startswith(f"cannot download image {rows['reset']}: ")
    assert listener.settled_count() == 0
    assert resetter.accepted >= 1
    assert summary.exit_code == 1  # some rows did not land; the run did not abort (2)

    # The internal picture went to the provider as bytes: it cannot reach 127.0.0.3.
    assert simulator.stats.uploads == 3  # astronaut, coffee, the internal picture
    assert [path for path, _ in internal.requests].count("/pic.png") == 2  # check, upload
    assert (dest / "videos" / "internal.mp4").is_file()
