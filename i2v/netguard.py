"""Which addresses a picture URL may make the worker connect to.

A manifest is data from elsewhere, so its picture URLs must not reach the worker's own
loopback, its private network or the cloud metadata service (169.254.169.254). Before
any connection the URL's host is resolved once and every address judged (`check_host`);
an IPv4 address written inside IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4) is
judged by its IPv4 too. One refused address refuses the URL. The fetcher then connects
only to the addresses judged here, so DNS cannot change the answer in between.

Internal hosts are reachable only through the worker's own allowance
(`i2v.private_hosts`, the environment variable `I2V_PRIVATE_HOSTS`): never a flow
parameter or a manifest value. The provider cannot reach those hosts either, so their
pictures go to it as bytes (`provider_fetches`), and plain http:// is allowed only for
them.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from urllib.parse import urlsplit

from i2v._constants import show
from i2v.addresses import INTERNAL, IPAddress, literal_address, refusal_reason
from i2v.errors import FetchError, InputError
from i2v.private_hosts import PRIVATE_HOSTS_ENV, Allowance

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Hop:
    """One URL about to be requested (`origin`: the manifest's URL that led to it)."""

    url: str
    scheme: str
    host: str  # as the connection's Host header and TLS name: IDNA, no brackets
    port: int
    origin: str | None = None

    @classmethod
    def of(cls, url: str) -> Hop | None:
        """The hop for a manifest's http(s) URL, or None when it names no host."""
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), parts.hostname
            port = parts.port or _DEFAULT_PORTS.get(scheme)
        except ValueError:
            return None
        return cls(url, scheme, host, port) if host and port else None

    @property
    def subject(self) -> str:
        if self.origin is None or self.origin == self.url:
            return f"image URL {show(self.url)}"
        return f"image URL {show(self.origin)} (redirected to {show(self.url)})"

    @property
    def spelled(self) -> str:
        """`host[:port]` as an allowance entry names it (the port only when explicit)."""
        text = f"[{self.host}]" if ":" in self.host else self.host
        return text if self.port == _DEFAULT_PORTS.get(self.scheme) else f"{text}:{self.port}"


def _written(address: IPAddress) -> str:
    """An address as written, IPv4-mapped ones with their IPv4 (::ffff:127.0.0.1)."""
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def resolve(hop: Hop) -> list[IPAddress]:
    """Every address the hop's host has (a literal is its own), in the resolver's order.

    Raises InputError when the name does not exist, FetchError when the resolver
    could not answer now.
    """
    literal = literal_address(hop.host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(hop.host, hop.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        message = f"{hop.subject}: host {hop.host!r} does not resolve ({why})"
        if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN:
            raise FetchError(message) from None
        raise InputError(message) from None
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ip_address(str(sockaddr[0]).partition("%")[0])
            if address not in found:
                found.append(address)
    if not found:
        raise InputError(f"{hop.subject}: host {hop.host!r} has no IP address")
    return found


def judge(hop: Hop, addresses: list[IPAddress], allowance: Allowance) -> None:
    """Raise InputError naming the first refused address (with how to allow an internal
    host), or refusing plain http to a host the allowance does not cover."""
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None and not allowance.covers(hop.host, hop.port, address):
            hint = ""
            if any(reason.startswith(kind) for kind in INTERNAL):
                hint = (
                    f" (allow internal hosts on the worker with {PRIVATE_HOSTS_ENV}={hop.spelled})"
                )
            raise InputError(
                f"{hop.subject} resolves to {_written(address)}, {reason}: refused{hint}"
            )
    if hop.scheme == "http" and not all(allowance.covers(hop.host, hop.port, a) for a in addresses):
        raise _plain_http(hop)


def _plain_http(hop: Hop) -> InputError:
    return InputError(f"{hop.subject} uses plain http; use https")


def _no_http_name(hop: Hop, allowance: Allowance) -> bool:
    """Plain http to a name no entry could cover: refused without asking DNS."""
    return (
        hop.scheme == "http"
        and literal_address(hop.host) is None
        and not allowance.may_cover(hop.host, hop.port)
    )


def check_host(hop: Hop, allowance: Allowance) -> list[IPAddress]:
    """Resolve the hop's host once and judge every address (see `judge`): the addresses
    the fetcher may connect to, and no others."""
    if _no_http_name(hop, allowance):
        raise _plain_http(hop)
    addresses = resolve(hop)
    judge(hop, addresses, allowance)
    return addresses


def screen(url: str, allowance: Allowance) -> str | None:
    """What the manifest reader can say of an http(s) URL without resolving a name:
    the refusal of a literal address, or of plain http to a host the allowance cannot
    cover. None: judged when fetched."""
    hop = Hop.of(url)
    if hop is None:
        return None
    literal = literal_address(hop.host)
    if literal is None:
        return str(_plain_http(hop)) if _no_http_name(hop, allowance) else None
    try:
        judge(hop, [literal], allowance)
    except InputError as exc:
        return str(exc)
    return None


def provider_fetches(url: str, allowance: Allowance) -> bool:
    """Whether a checked http(s) picture goes to the provider as its URL (True) or as
    its bytes through uploadMedia (False): the URL only for https on a host the
    allowance does not cover, since the provider cannot reach internal hosts."""
    hop = Hop.of(url)
    if hop is None or hop.scheme != "https":
        return False
    if not allowance:
        return True
    if allowance.names(hop.host, hop.port):
        return False
    if literal_address(hop.host) is not None or not allowance.has_networks:
        return True
    try:
        addresses = resolve(hop)
    except (InputError, FetchError):
        return False  # fetching the bytes says what is wrong
    return not any(allowance.covers(hop.host, hop.port, a) for a in addresses)
