"""The address policy of settings.block_private_addresses, on plain values: no DNS, no sockets."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from aggregator.addresses import AddressPolicy, is_local_name, kind, parse_address, reached

SETTING = "(settings.block_private_addresses)"
ONLY_127_0_0_1 = AddressPolicy(allowed=(ip_network("127.0.0.1/32"),))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata endpoints live here
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("100.64.0.1", "an address not globally reachable"),  # carrier-grade NAT
        ("192.0.2.1", "a private address"),  # documentation (TEST-NET-1)
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fd12:3456::1", "a unique-local address"),
        ("fc00::1", "a unique-local address"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a private address"),  # documentation
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_kind(address: str, expected: str | None) -> None:
    assert kind(ip_address(address)) == expected


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2002:7f00:1::", "127.0.0.1"),  # 6to4
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64's well-known prefix
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("2606:4700:4700::1111", "2606:4700:4700::1111"),  # carries none
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_an_ipv6_address_is_judged_by_the_ipv4_address_it_carries(address: str, inner: str) -> None:
    assert reached(ip_address(address)) == ip_address(inner)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("::ffff:127.0.0.1", "leads to 127.0.0.1, a loopback address"),
        ("::ffff:192.168.0.7", "leads to 192.168.0.7, a private address"),
        ("2002:a00:1::", "leads to 10.0.0.1, a private address"),
        ("64:ff9b::a9fe:a9fe", "leads to 169.254.169.254, a link-local address"),
        ("::1", "is a loopback address"),
        ("127.0.0.1", "is a loopback address"),
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::", None),
        ("9.9.9.9", None),
    ],
)
def test_refusal_with_the_default_policy(address: str, why: str | None) -> None:
    assert AddressPolicy().refusal(ip_address(address)) == why


def test_allowed_networks_are_let_through_and_nothing_else() -> None:
    assert ONLY_127_0_0_1.refusal(ip_address("127.0.0.1")) is None
    assert ONLY_127_0_0_1.refusal(ip_address("::ffff:127.0.0.1")) is None  # same address
    assert ONLY_127_0_0_1.refusal(ip_address("127.0.0.2")) == "is a loopback address"
    assert ONLY_127_0_0_1.refusal(ip_address("::1")) == "is a loopback address"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("feeds.example.com", None),
        ("localhost", None),
        ("经济日报.example.cn", None),
    ],
)
def test_parse_address(host: str, address: str | None) -> None:
    expected = ip_address(address) if address else None
    assert parse_address(host) == expected


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("feeds.localhost", True),
        ("localhost.example.com", False),
        ("mylocalhost", False),
        ("example.com", False),
    ],
)
def test_localhost_names(host: str, local: bool) -> None:
    assert is_local_name(host) is local


def test_the_reasons_people_read() -> None:
    policy = AddressPolicy()
    assert policy.refuse_address("127.0.0.1", ip_address("127.0.0.1")) == (
        f"refused: 127.0.0.1 is a loopback address {SETTING}"
    )
    assert policy.refuse_address("[::ffff:7f00:1]", ip_address("::ffff:127.0.0.1")) == (
        f"refused: [::ffff:7f00:1] leads to 127.0.0.1, a loopback address {SETTING}"
    )
    assert policy.refuse_name("localhost") == f"refused: localhost names this machine {SETTING}"
    assert policy.refuse_name("feeds.example.com") is None
    public, private = ip_address("93.184.215.14"), ip_address("10.0.0.5")
    assert policy.refuse_resolved("intranet.example", [public, private]) == (
        f"refused: intranet.example resolves to 10.0.0.5, which is a private address {SETTING}"
    )
    assert policy.refuse_resolved("feeds.example.com", [public]) is None
    assert policy.refuse_address("8.8.8.8", ip_address("8.8.8.8")) is None
