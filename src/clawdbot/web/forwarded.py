"""Who the client is when reverse proxies stand in front: nginx's realip rules, over three headers.

A connection's peer is the client unless the peer is one of our trusted proxies (--trusted-proxies). Then the
client is named by the headers the proxy wrote: X-Real-IP (one address: the seed's nginx snippet sends only this),
Forwarded (RFC 7239's `for=`) or X-Forwarded-For (a list, each proxy appending the address it saw). The lists are
read from the right, skipping our own proxies, as nginx's `real_ip_recursive on` does: the first address that is
not a trusted proxy is the client; what lies to its left is whatever the client claimed.

A proxy overwrites or appends the header it writes and passes the others through as the client sent them (the
seed's nginx passes X-Forwarded-For on untouched, Caddy passes X-Real-IP), so when two headers disagree the client
forged one and nothing tells which: with --client-address-header auto (the default) such a request counts as
coming from the proxy itself, so a forger can neither pose as someone else nor dodge its own throttling by
changing its headers. Naming the header the proxy writes (x-real-ip, forwarded or x-forwarded-for) believes that
one alone. docs/deployment.md says what each proxy configuration sends.
"""

from __future__ import annotations

import functools
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Literal

from aiohttp import web
from multidict import CIMultiDictProxy

from ..logs import LOG

Header = Literal["auto", "x-real-ip", "forwarded", "x-forwarded-for"]
HEADERS: tuple[Header, ...] = ("x-real-ip", "forwarded", "x-forwarded-for")
_WARN_EVERY_S = 60.0
_PEERS_KEPT = 4096
_Address = IPv4Address | IPv6Address


class Proxies:
    """Our reverse proxies (CIDR networks) and the header that names the client behind them."""

    def __init__(self, networks: list[str] | tuple[str, ...], header: Header = "auto") -> None:
        self.networks = _networks(tuple(networks))
        self.headers: tuple[Header, ...] = HEADERS if header == "auto" else (header,)
        self._warned = -_WARN_EVERY_S
        self._peers: dict[str, bool] = {}  # trusted() by peer address: parsing one costs more than the rest

    def trusted(self, peer: str) -> bool:
        """Whether a connection comes from one of our proxies (whose forwarded headers are believed)."""
        known = self._peers.get(peer)
        if known is None:
            address = _parse(peer)
            known = address is not None and self._ours(address)
            if len(self._peers) >= _PEERS_KEPT:
                self._peers.clear()
            self._peers[peer] = known
        return known

    def client(self, request: web.Request) -> str:
        """The client's address: the peer's, or behind a trusted proxy the one its headers name. Worked out once
        per request."""
        found: str | None = request.get("client_address")
        if found is None:
            found = request["client_address"] = self.named(request.remote or "", request.headers)
        return found

    def named(self, peer: str, headers: CIMultiDictProxy[str]) -> str:
        if not self.networks or not self.trusted(peer):
            return peer  # anyone can send any header: only our proxies' are read
        named = {header: address for header in self.headers if (address := self._read(header, headers)) is not None}
        distinct = set(named.values())
        if len(distinct) == 1:
            return distinct.pop()
        if distinct:
            self._warn(peer, named)
        return peer

    def _read(self, header: Header, headers: CIMultiDictProxy[str]) -> str | None:
        values = headers.getall(header, [])
        if not values:
            return None
        if header == "x-real-ip":
            address = _parse(values[-1].strip())
            # One of our own proxies says nothing of the client (a CDN in front of nginx): the lists may.
            return None if address is None or self._ours(address) else str(address)
        hops = [hop for value in values for hop in value.split(",")]
        if header == "forwarded":
            hops = [_forwarded_for(element) for element in hops]
        return self._walk([hop.strip() for hop in hops])

    def _walk(self, hops: list[str]) -> str | None:
        """From the right, the first hop that is not one of our proxies; None when the list cannot be read."""
        address: _Address | None = None
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                return None  # unreadable ("unknown", an obfuscated name, junk): nobody can be named
            if not self._ours(address):
                return str(address)
        return None if address is None else str(address)  # every hop is ours: the first one is the client

    def _ours(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)

    def _warn(self, peer: str, named: dict[Header, str]) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            LOG.warning(
                "a proxy's client-address headers disagree (one was written by the client); the request counts as "
                "the proxy's own: set --client-address-header to the header the proxy writes",
                extra={"address": peer, "named": named},
            )


def _forwarded_for(element: str) -> str:
    """The `for=` of one Forwarded element (`for=192.0.2.1;proto=https`, `for="[2001:db8::1]:4711"`)."""
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.lower() == "for":
            value = value.strip().strip('"')
            if value.startswith("["):
                return value[1:].partition("]")[0]
            return value.rpartition(":")[0] if value.count(":") == 1 else value
    return ""


def _parse(text: str) -> _Address | None:
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's ::ffff:192.0.2.1 is 192.0.2.1
    return address


@functools.cache
def _networks(networks: tuple[str, ...]) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parsed once per setting, not on every request."""
    return tuple(ip_network(network, strict=False) for network in networks)
