"""What kind of address an IP address is, and how hosts are spelled when compared.

The facts `i2v.netguard` judges picture URLs by and `i2v.private_hosts` matches the
worker's allowance with: IANA's special-purpose ranges (loopback, private, link-local
where cloud metadata answers, ...), the IPv4 address written inside an IPv6 one, a host
name in the form it is compared in, and the address a URL's host spells.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

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
