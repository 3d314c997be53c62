"""Where the proxy's tunnels may go: public internet addresses only.

Run containers share a Docker network with the proxy, and the proxy also sits on the compose network of the
stack's own services (Azurite, the workspace service), on the host's loopback in some setups, and possibly on
a cloud VM with a metadata service. A ``CONNECT`` is untrusted input, so a tunnel is refused (``403``) when:

- the name has a single label (``azurite``, ``workspace``, ``proxy``, ``localhost``: compose service names
  and machines on a local network, never public internet hosts), or ends in ``.localhost``;
- the target is an IP address, or a name that resolves to any address, that is not public: loopback,
  private (10/8, 172.16/12, 192.168/16, IPv6 ULA fc00::/7), link-local (169.254/16 with the cloud metadata
  services, fe80::/10), shared (100.64/10), multicast, reserved, or Azure's host-only wire server
  168.63.129.16; IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
  ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by the IPv4 address they carry.

Every address a name resolves to is checked (one private answer refuses the name), and the tunnel then dials
one of those checked addresses, never the name again, so a second DNS answer cannot swap in an internal
address (DNS rebinding). Resolution goes through the event loop's ``getaddrinfo`` (a thread), never blocking
the other connections. The resolver is a parameter so tests need no network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

#: ``resolve(host, port)``: the IP addresses (as text) ``host`` resolves to for a TCP connection.
Resolve = Callable[[str, int], Awaitable[list[str]]]

#: A name resolving to more addresses than this is refused: each one is checked, and only a few are dialled.
MAX_ADDRESSES = 32

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
#: Public by their numbers, but each reaches something of the machine the stack runs on.
_HOST_ONLY = {ipaddress.IPv4Address("168.63.129.16"): "Azure's host-only wire server (VM agent and DNS)"}


class DestinationRefused(Exception):
    """A tunnel target that is not a public internet address; ``reason`` says why."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"the stack's proxy tunnels to public internet addresses only, so {target} is "
                         f"refused: {reason}. A run reaches the stack's own services directly on its network "
                         "(the workspace service) or through the proxy's *.blob.core.windows.net endpoint (the "
                         "blob storage), never by tunnelling to them")
        self.host = host
        self.port = port
        self.reason = reason


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, through the event loop's ``getaddrinfo`` (it does not block the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_refusal(address: str) -> str | None:
    """Why a tunnel must not dial ``address`` (an IP address as text), or None when it is a public address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return f"{address} carries a network interface (scope id): a link-local address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_refusal(str(embedded))
            return None if reason is None else f"{address} carries the IPv4 address {embedded}: {reason}"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _HOST_ONLY:
        return f"{ip} is {_HOST_ONLY[ip]}"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address (connecting to it reaches the machine itself)"
    if ip.is_loopback:
        return f"{ip} is a loopback address (the machine itself)"
    if ip.is_link_local:
        return f"{ip} is a link-local address (where cloud metadata services answer, e.g. 169.254.169.254)"
    if ip.is_private:
        return f"{ip} is a private network address (where the stack's own services and the local network are)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if not ip.is_global:
        return f"{ip} is not a public internet address (reserved or shared address space)"
    return None


def name_refusal(host: str) -> str | None:
    """Why a tunnel must not go to the host name ``host`` whatever it resolves to, or None."""
    lower = host.lower().rstrip(".")
    if "." not in lower:
        return (f"{host!r} is a single-label name: a service or machine on a local network (such as the stack's "
                "own azurite, workspace or proxy), not a public internet host")
    if lower == "localhost" or lower.endswith(".localhost"):
        return f"{host!r} is a name for the machine itself"
    return None


async def public_addresses(host: str, port: int, resolve: Resolve) -> list[str]:
    """The addresses a tunnel to ``host:port`` may dial, every one public; ``DestinationRefused`` otherwise.

    An IP address is checked as it is; a name is checked, then resolved with ``resolve``, and refused when any
    of its addresses is not public. Resolution errors (``OSError``, ``socket.gaierror``) propagate.
    """
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        reason = address_refusal(host)
        if reason is not None:
            raise DestinationRefused(host, port, reason)
        return [str(literal)]
    reason = name_refusal(host)
    if reason is not None:
        raise DestinationRefused(host, port, reason)
    addresses = await resolve(host, port)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} resolves to no address")
    if len(addresses) > MAX_ADDRESSES:
        raise DestinationRefused(host, port, f"{host!r} resolves to {len(addresses)} addresses, over "
                                             f"{MAX_ADDRESSES}")
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            raise DestinationRefused(host, port, f"{host!r} resolves to {address}, and {reason}")
    return addresses


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # ::/128 and ::1 are judged as IPv6
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
