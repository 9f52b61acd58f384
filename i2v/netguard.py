"""Which addresses a picture URL may make the worker connect to.

A manifest is data from elsewhere, so its picture URLs must not reach the worker's own
loopback, its private network or the cloud metadata service (169.254.169.254). Before
any connection the URL's host is resolved once and every address judged (`check_host`);
an IPv4 address written inside IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4) is
judged by its IPv4 too. One refused address refuses the URL. The fetcher then connects
only to the addresses judged here, so DNS cannot change the answer in between.

Internal hosts are reachable only through the worker's own allowance, the environment
variable `I2V_PRIVATE_HOSTS` (`worker_allowance`): never a flow parameter or a manifest
value. The provider cannot reach those hosts either, so their pictures go to it as bytes
(`provider_fetches`), and plain http:// is allowed only for them.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from i2v._constants import show
from i2v.errors import ConfigError, FetchError, InputError

PRIVATE_HOSTS_ENV = "I2V_PRIVATE_HOSTS"

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

LOOPBACK = "a loopback address"
PRIVATE = "a private address"
SHARED = "a shared address (CGNAT)"
UNIQUE_LOCAL = "a unique-local address"
SITE_LOCAL = "a site-local address"
LOCAL_NAT64 = "a local-use NAT64 address"
LINK_LOCAL = "a link-local address (where cloud metadata services answer)"
MULTICAST = "a multicast address"
UNSPECIFIED = "an unspecified address"
DOCUMENTATION = "a documentation address"
BENCHMARKING = "a benchmarking address"
RESERVED = "a reserved address"
# The classes an internal picture server may live in: their refusal says how to allow it.
INTERNAL = frozenset({LOOPBACK, PRIVATE, SHARED, UNIQUE_LOCAL, SITE_LOCAL, LOCAL_NAT64})


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(net), reason) for net, reason in rows)


# IANA's special-purpose registries; an IPv4 address they miss that Python does not
# call global is RESERVED, and IPv6 outside 2000::/3 (global unicast) is RESERVED.
_V4 = _table(
    ("0.0.0.0/8", UNSPECIFIED),
    ("10.0.0.0/8", PRIVATE),
    ("100.64.0.0/10", SHARED),
    ("127.0.0.0/8", LOOPBACK),
    ("169.254.0.0/16", LINK_LOCAL),
    ("172.16.0.0/12", PRIVATE),
    ("192.0.0.0/24", RESERVED),
    ("192.0.2.0/24", DOCUMENTATION),
    ("192.88.99.0/24", RESERVED),
    ("192.168.0.0/16", PRIVATE),
    ("198.18.0.0/15", BENCHMARKING),
    ("198.51.100.0/24", DOCUMENTATION),
    ("203.0.113.0/24", DOCUMENTATION),
    ("224.0.0.0/4", MULTICAST),
    ("240.0.0.0/4", RESERVED),
)
_V6 = _table(
    ("::/128", UNSPECIFIED),
    ("::1/128", LOOPBACK),
    ("64:ff9b:1::/48", LOCAL_NAT64),
    ("2001::/23", RESERVED),
    ("2001:db8::/32", DOCUMENTATION),
    ("3fff::/20", DOCUMENTATION),
    ("fc00::/7", UNIQUE_LOCAL),
    ("fe80::/10", LINK_LOCAL),
    ("fec0::/10", SITE_LOCAL),
    ("ff00::/8", MULTICAST),
)
_GLOBAL_UNICAST = ip_network("2000::/3")
_NAT64 = ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ip_network("::/96")


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address written inside an IPv6 one (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why a picture URL may not reach `address` ("a loopback address"), or None when
    the address is global."""
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason} (IPv4 {inner} inside IPv6)"
            # A public IPv4 as mapped, NAT64 or 6to4 is that address; the deprecated
            # IPv4-compatible form is not routed at all.
            return RESERVED if address in _V4_COMPATIBLE else None
        for network, reason in _V6:
            if address in network:
                return reason
        return None if address in _GLOBAL_UNICAST else RESERVED
    for network, reason in _V4:
        if address in network:
            return reason
    return None if address.is_global else RESERVED


# ------------------------------------------------------------------------- allowance

_NAME = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")


def normal_host(host: str) -> str:
    """A host name as compared: lower case, no trailing dot, IDNA (ASCII)."""
    name = host.strip().lower().rstrip(".")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def literal_address(host: str) -> IPAddress | None:
    """The IP address a URL's host spells, or None for a name."""
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class _Entry:
    name: str | None  # "pictures.internal", or "*.internal" for every name under it
    network: IPNetwork | None
    port: int | None  # None: any port

    def names(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.name is None:
            literal = literal_address(host)
            return literal is not None and self.holds(literal)
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def holds(self, address: IPAddress) -> bool:
        if self.network is None:
            return False
        inner = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
        return address in self.network or (inner is not None and inner in self.network)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad_entry(entry)
    return int(text)


def _bad_entry(entry: str) -> ConfigError:
    return ConfigError(
        f"{PRIVATE_HOSTS_ENV} entry {entry!r} is not a host name, an IP address or a "
        "network, each with an optional :port; write e.g. "
        f"{PRIVATE_HOSTS_ENV}=pictures.internal,*.corp.example,10.20.0.0/16,127.0.0.1:8443,[::1]:8443"
    )


def _parse_entry(entry: str) -> _Entry:
    host, port = entry, None
    if entry.startswith("["):
        host, closed, rest = entry[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise _bad_entry(entry)
        port = _port(rest[1:], entry) if rest else None
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = _port(port_text, entry)
    try:
        return _Entry(None, ip_network(host, strict=False), port)
    except ValueError:
        pass
    name = normal_host(host)
    if not _NAME.fullmatch(name):
        raise _bad_entry(entry)
    return _Entry(name, None, port)


@dataclass(frozen=True)
class Allowance:
    """The internal hosts and networks this worker may fetch pictures from."""

    entries: tuple[_Entry, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Allowance:
        """`I2V_PRIVATE_HOSTS` syntax: host names (`*.corp` for names under corp), IP
        addresses or networks (CIDR), each with an optional `:port` (`[v6]:port`),
        separated by commas. Raises ConfigError naming a bad entry."""
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        return cls(tuple(_parse_entry(p) for p in parts), ",".join(parts))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def names(self, host: str, port: int) -> bool:
        """Whether an entry names this host itself (by name, or a literal address)."""
        host = normal_host(host)
        return any(e.names(host, port) for e in self.entries)

    def may_cover(self, host: str, port: int) -> bool:
        """Whether some address of `host` could be allowed (without resolving it)."""
        return self.names(host, port) or any(e.network for e in self.entries)

    def covers(self, host: str, port: int, address: IPAddress) -> bool:
        """Whether the worker may connect to `address` for `host:port`."""
        host = normal_host(host)
        return any(
            e.names(host, port) or ((e.port is None or e.port == port) and e.holds(address))
            for e in self.entries
        )


def worker_allowance() -> Allowance:
    """This worker's allowance, from its environment (`I2V_PRIVATE_HOSTS`)."""
    return _parsed(os.environ.get(PRIVATE_HOSTS_ENV, ""))


@functools.lru_cache(maxsize=8)
def _parsed(text: str) -> Allowance:
    return Allowance.parse(text)


# ----------------------------------------------------------------------------- checks


def _subject(url: str, origin: str | None) -> str:
    if origin is None or origin == url:
        return f"image URL {show(url)}"
    return f"image URL {show(origin)} (redirected to {show(url)})"


def _spelled(host: str, port: int, scheme: str) -> str:
    """`host[:port]` as an allowance entry would name it (the port only when explicit)."""
    text = f"[{host}]" if ":" in host else host
    return text if port == {"http": 80, "https": 443}.get(scheme) else f"{text}:{port}"


def _written(address: IPAddress) -> str:
    """An address as written, IPv4-mapped ones with their IPv4 (::ffff:127.0.0.1)."""
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def plain_http_message(url: str, origin: str | None = None) -> str:
    return f"{_subject(url, origin)} uses plain http; use https"


def resolve(host: str, port: int, *, url: str, origin: str | None = None) -> list[IPAddress]:
    """Every address `host` has (a literal is its own), in the resolver's order.

    Raises InputError when the name does not exist, FetchError when the resolver
    could not answer now.
    """
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        message = f"{_subject(url, origin)}: host {host!r} does not resolve ({why})"
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
        raise InputError(f"{_subject(url, origin)}: host {host!r} has no IP address")
    return found


def judge(
    scheme: str,
    host: str,
    port: int,
    addresses: list[IPAddress],
    allowance: Allowance,
    *,
    url: str,
    origin: str | None = None,
) -> None:
    """Raise InputError naming the first refused address (with how to allow an internal
    host), or refusing plain http to a host the allowance does not cover."""
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None and not allowance.covers(host, port, address):
            hint = ""
            if any(reason.startswith(kind) for kind in INTERNAL):
                hint = (
                    " (allow internal hosts on the worker with "
                    f"{PRIVATE_HOSTS_ENV}={_spelled(host, port, scheme)})"
                )
            raise InputError(
                f"{_subject(url, origin)} resolves to {_written(address)}, {reason}: refused{hint}"
            )
    if scheme == "http" and not all(allowance.covers(host, port, a) for a in addresses):
        raise InputError(plain_http_message(url, origin))


def check_host(
    scheme: str,
    host: str,
    port: int,
    allowance: Allowance,
    *,
    url: str,
    origin: str | None = None,
) -> list[IPAddress]:
    """Resolve `host` once and judge every address (see `judge`): the addresses the
    fetcher may connect to, and no others."""
    # Plain http to a name no entry could cover is refused without asking DNS.
    if scheme == "http" and literal_address(host) is None and not allowance.may_cover(host, port):
        raise InputError(plain_http_message(url, origin))
    addresses = resolve(host, port, url=url, origin=origin)
    judge(scheme, host, port, addresses, allowance, url=url, origin=origin)
    return addresses


def _parts(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None
    if not host or port is None:
        return None
    return scheme, host, port


def screen(url: str, allowance: Allowance) -> str | None:
    """What the manifest reader can say of an http(s) URL without resolving a name:
    the refusal of a literal address, or of plain http to a host the allowance cannot
    cover. None: judged when fetched."""
    parts = _parts(url)
    if parts is None:
        return None
    scheme, host, port = parts
    literal = literal_address(host)
    if literal is not None:
        try:
            judge(scheme, host, port, [literal], allowance, url=url)
        except InputError as exc:
            return str(exc)
        return None
    if scheme == "http" and not allowance.may_cover(host, port):
        return plain_http_message(url)
    return None


def provider_fetches(url: str, allowance: Allowance) -> bool:
    """Whether a checked http(s) picture goes to the provider as its URL (True) or as
    its bytes through uploadMedia (False): the URL only for https on a host the
    allowance does not cover, since the provider cannot reach internal hosts."""
    parts = _parts(url)
    if parts is None or parts[0] != "https":
        return False
    if not allowance:
        return True
    _, host, port = parts
    if allowance.names(host, port):
        return False
    if literal_address(host) is not None or not any(e.network for e in allowance.entries):
        return True
    try:
        addresses = resolve(host, port, url=url)
    except (InputError, FetchError):
        return False  # fetching the bytes says what is wrong
    return not any(allowance.covers(host, port, a) for a in addresses)
