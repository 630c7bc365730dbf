"""Addresses: which hosts a fetch may connect to when `settings.block_private_addresses` is on.

A feed URL comes from whoever edits feeds.yaml (or an OPML file imported into it), and a redirect
from whoever runs the feed's server: either could point the aggregator at a service inside its
own network (a cloud metadata endpoint, an admin port on localhost). With the setting on, every
hop is refused whose host is, or resolves to, an address that is not globally reachable:
loopback, private (RFC 1918), link-local, unique-local (RFC 4193), multicast, reserved,
unspecified, or in another special-purpose block (RFC 6890). An IPv6 address that carries an
IPv4 one (IPv4-mapped, 6to4, NAT64's well-known prefix) is judged by the IPv4 address it reaches.

Pure: it classifies addresses and names; it resolves nothing and connects nowhere. fetch.py
resolves each host once, asks here, and pins the connection to the address checked (no DNS
rebinding between the check and the connection).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

SETTING = "settings.block_private_addresses"
UNIQUE_LOCAL = IPv6Network("fc00::/7")  # RFC 4193
NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052 §2.1: the low 32 bits are the IPv4 address


def parse_address(host: str) -> IPAddress | None:
    """The IP address `host` is written as ("127.0.0.1", "[::1]", "::1"); None for a name."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def reached(address: IPAddress) -> IPAddress:
    """The address a connection to `address` ends up at: the IPv4 address inside an IPv6 one
    that only carries it, else `address` itself."""
    if isinstance(address, IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def kind(address: IPAddress) -> str | None:
    """What keeps `address` from being a public one ("a loopback address"), or None when it is
    globally reachable. The order picks the most telling word: 127.0.0.1 is private too, but
    "loopback" says more."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:  # is_global holds for some multicast blocks: asked before it
        return "a multicast address"
    if isinstance(address, IPv6Address) and address in UNIQUE_LOCAL:
        return "a unique-local address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # e.g. 100.64.0.0/10, shared by carriers (RFC 6598)
        return "an address not globally reachable"
    return None


def is_local_name(host: str) -> bool:
    """`localhost` and names under it, which resolve to this machine (RFC 6761 §6.3) whatever
    a DNS server would answer."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Refuses every address that is not globally reachable, but those in `allowed` (for a
    deployment that must reach one internal feed server, and for tests that serve feeds on
    127.0.0.1 while proving 127.0.0.2 is refused)."""

    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be connected to ("is a loopback address", "leads to
        127.0.0.1, a loopback address"), or None if it may."""
        target = reached(address)
        if any(address in net or target in net for net in self.allowed):
            return None
        found = kind(target)
        if found is None:
            return None
        return f"is {found}" if target == address else f"leads to {target}, {found}"

    def refuse_address(self, host: str, address: IPAddress) -> str | None:
        """The reason a URL whose host is the literal `address` is refused, or None."""
        why = self.refusal(address)
        return None if why is None else f"refused: {host} {why} ({SETTING})"

    def refuse_name(self, host: str) -> str | None:
        """The reason a host name is refused before it is even resolved, or None."""
        if is_local_name(host):
            return f"refused: {host} names this machine ({SETTING})"
        return None

    def refuse_resolved(self, host: str, addresses: Iterable[IPAddress]) -> str | None:
        """The reason `host` is refused given the addresses it resolves to, or None. One
        address refused is enough: the connection could go to any of them."""
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                return f"refused: {host} resolves to {address}, which {why} ({SETTING})"
        return None
