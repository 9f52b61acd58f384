"""The worker's allowance for internal picture hosts: `I2V_PRIVATE_HOSTS`.

What a worker may reach is the worker's setting, read from its environment, never a
flow parameter or a manifest value. Entries are host names (`*.corp.example` for every
name under it), IP addresses and networks (CIDR), each with an optional `:port`
(`[v6]:port`), separated by commas. A named host may resolve anywhere; a network allows
the addresses inside it, whatever name led there. `i2v.netguard` asks `covers`.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_network

from i2v.addresses import IPAddress, IPNetwork, embedded_ipv4, literal_address, normal_host
from i2v.errors import ConfigError

PRIVATE_HOSTS_ENV = "I2V_PRIVATE_HOSTS"

_NAME = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")


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

    @property
    def has_networks(self) -> bool:
        """Whether an entry is an address or network (so a name may resolve into it)."""
        return any(e.network is not None for e in self.entries)

    def may_cover(self, host: str, port: int) -> bool:
        """Whether some address of `host` could be allowed (without resolving it)."""
        return self.names(host, port) or self.has_networks

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
