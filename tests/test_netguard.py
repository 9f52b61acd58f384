"""The address policy for picture URLs (`i2v.netguard`): which addresses are refused,
what the worker's allowance (`i2v.private_hosts`) lets through, and which pictures the
provider gets as URLs."""

from __future__ import annotations

import re
from ipaddress import ip_address

import pytest

from i2v.addresses import refusal_reason
from i2v.errors import ConfigError, InputError
from i2v.netguard import Hop, judge, provider_fetches, screen
from i2v.private_hosts import Allowance, worker_allowance

LINK_LOCAL = "a link-local address (where cloud metadata services answer)"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("172.32.0.1", None),  # just past 172.16.0.0/12
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", LINK_LOCAL),
        ("fe80::1", LINK_LOCAL),
        ("100.64.0.1", "a shared address (CGNAT)"),
        ("100.127.255.254", "a shared address (CGNAT)"),
        ("100.128.0.1", None),  # just past 100.64.0.0/10
        ("fd00::1", "a unique-local address"),
        ("fc00::1", "a unique-local address"),
        ("fec0::1", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("255.255.255.255", "a reserved address"),
        ("240.0.0.1", "a reserved address"),
        ("192.0.2.1", "a documentation address"),
        ("2001:db8::1", "a documentation address"),
        ("198.18.0.1", "a benchmarking address"),
        ("100::1", "a reserved address"),  # discard-only, outside 2000::/3
        ("2001::1", "a reserved address"),  # Teredo
        ("64:ff9b:1::a00:1", "a local-use NAT64 address"),
        # IPv4 written inside IPv6 is judged by its IPv4.
        ("::ffff:10.0.0.1", "a private address (IPv4 10.0.0.1 inside IPv6)"),
        ("::ffff:127.0.0.1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),
        ("::ffff:169.254.169.254", f"{LINK_LOCAL} (IPv4 169.254.169.254 inside IPv6)"),
        ("64:ff9b::a00:1", "a private address (IPv4 10.0.0.1 inside IPv6)"),
        ("64:ff9b::7f00:1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),
        ("::10.0.0.1", "a private address (IPv4 10.0.0.1 inside IPv6)"),
        ("2002:a00:1::", "a private address (IPv4 10.0.0.1 inside IPv6)"),
        ("2002:a9fe:a9fe::1", f"{LINK_LOCAL} (IPv4 169.254.169.254 inside IPv6)"),
        # ... and a public IPv4 in those forms is that public address,
        ("::ffff:93.184.216.34", None),
        ("64:ff9b::5db8:d822", None),
        ("2002:5db8:d822::1", None),
        # except the deprecated IPv4-compatible form, which nothing routes.
        ("::93.184.216.34", "a reserved address"),
    ],
)
def test_address_classes(address: str, reason: str | None) -> None:
    assert refusal_reason(ip_address(address)) == reason


def test_allowance_syntax() -> None:
    allowance = Allowance.parse(
        " pictures.internal, *.corp.example 10.20.0.0/16,127.0.0.1:8443,[::1]:9000,fd00::/8 "
    )
    assert allowance.text == (
        "pictures.internal,*.corp.example,10.20.0.0/16,127.0.0.1:8443,[::1]:9000,fd00::/8"
    )
    assert allowance.names("Pictures.Internal.", 443)
    assert allowance.names("a.b.corp.example", 80) and not allowance.names("corp.example", 80)
    assert allowance.names("127.0.0.1", 8443) and not allowance.names("127.0.0.1", 8444)
    assert allowance.names("::1", 9000) and not allowance.names("::1", 443)
    # A network allows every address in it, however the URL names the host.
    assert allowance.covers("pics.lan", 443, ip_address("10.20.3.4"))
    assert allowance.covers("pics.lan", 443, ip_address("::ffff:10.20.3.4"))
    assert not allowance.covers("pics.lan", 443, ip_address("10.21.0.1"))
    assert allowance.covers("pics.lan", 443, ip_address("fd12::7"))
    # A named host may resolve anywhere; a port qualifier narrows the entry to it.
    assert allowance.covers("pictures.internal", 8080, ip_address("192.168.7.7"))
    assert not allowance.covers("localhost", 443, ip_address("127.0.0.1"))
    assert not Allowance.parse("") and not Allowance.parse(" , ")


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/33", "pictures.internal:http", "[::1", "[::1]8443", "*", "b/c", "h:0"]
)
def test_a_bad_allowance_entry_is_named(entry: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"I2V_PRIVATE_HOSTS entry '{entry}' is not")):
        Allowance.parse(f"pictures.internal,{entry}")


def test_the_allowance_is_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not worker_allowance()
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "pictures.internal")
    assert worker_allowance().names("pictures.internal", 443)
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "10.0.0.0/99")
    with pytest.raises(ConfigError):
        worker_allowance()


def refusal(url: str, host: str, port: int, addresses: list[str], allowance: str = "") -> str:
    hop = Hop(url, url.partition(":")[0], host, port)
    with pytest.raises(InputError) as caught:
        judge(hop, [ip_address(a) for a in addresses], Allowance.parse(allowance))
    return str(caught.value)


def test_the_refusal_names_the_address_and_how_to_allow_an_internal_host() -> None:
    assert refusal("https://localhost:8443/a.png", "localhost", 8443, ["127.0.0.1"]) == (
        "image URL 'https://localhost:8443/a.png' resolves to 127.0.0.1, a loopback address: "
        "refused (allow internal hosts on the worker with I2V_PRIVATE_HOSTS=localhost:8443)"
    )
    # One refused address refuses the URL, whatever else the name has.
    assert refusal("https://pics.lan/a.png", "pics.lan", 443, ["93.184.216.34", "10.0.0.5"]) == (
        "image URL 'https://pics.lan/a.png' resolves to 10.0.0.5, a private address: "
        "refused (allow internal hosts on the worker with I2V_PRIVATE_HOSTS=pics.lan)"
    )
    # The metadata service gets no hint: no team keeps its pictures there.
    assert refusal("https://meta/x", "meta", 443, ["169.254.169.254"]) == (
        f"image URL 'https://meta/x' resolves to 169.254.169.254, {LINK_LOCAL}: refused"
    )
    # An allowance for one host does not cover another on the same network.
    assert "resolves to 10.0.0.9" in refusal(
        "https://b.lan/", "b.lan", 443, ["10.0.0.9"], allowance="a.lan"
    )
    # Plain http reaches only allowed hosts.
    assert refusal("http://example.com/a.png", "example.com", 80, ["93.184.216.34"]) == (
        "image URL 'http://example.com/a.png' uses plain http; use https"
    )


def test_allowed_and_public_addresses_pass() -> None:
    allowance = Allowance.parse("pics.lan,127.0.0.1:8443")
    for scheme, host, port, address in [
        ("https", "example.com", 443, "93.184.216.34"),
        ("https", "pics.lan", 443, "10.1.1.1"),
        ("http", "pics.lan", 80, "10.1.1.1"),
        ("http", "127.0.0.1", 8443, "127.0.0.1"),
    ]:
        judge(Hop(f"{scheme}://{host}/", scheme, host, port), [ip_address(address)], allowance)


def test_the_manifest_screens_literal_addresses_without_resolving() -> None:
    none = Allowance()
    assert screen("https://pictures.example.com/a.png", none) is None  # judged when fetched
    assert screen("https://localhost/a.png", none) is None
    assert "resolves to 127.0.0.1" in (screen("https://127.0.0.1/a.png", none) or "")
    assert "resolves to ::1" in (screen("https://[::1]:8443/a.png", none) or "")
    assert "resolves to 0.0.0.0" in (screen("https://0.0.0.0/a.png", none) or "")
    assert screen("http://localhost/a.png", none) == (
        "image URL 'http://localhost/a.png' uses plain http; use https"
    )
    assert screen("http://localhost/a.png", Allowance.parse("localhost")) is None
    assert screen("https://127.0.0.1/a.png", Allowance.parse("127.0.0.0/8")) is None


def test_only_public_https_pictures_go_to_the_provider_as_urls() -> None:
    none = Allowance()
    assert provider_fetches("https://pictures.example.com/a.png", none)
    assert provider_fetches("https://93.184.216.34/a.png", none)
    named = Allowance.parse("pictures.internal")
    assert provider_fetches("https://pictures.example.com/a.png", named)  # nothing resolved
    assert not provider_fetches("https://pictures.internal/a.png", named)
    assert not provider_fetches("http://pictures.internal/a.png", named)
    # A network in the allowance: a name is resolved to see whether it lies inside.
    network = Allowance.parse("127.0.0.0/8")
    assert not provider_fetches("https://localhost:8443/a.png", network)
    assert not provider_fetches("https://127.0.0.1:8443/a.png", network)
    assert provider_fetches("https://93.184.216.34/a.png", network)
