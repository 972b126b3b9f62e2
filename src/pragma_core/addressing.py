"""The private address plan of a virtual cluster: which IP each node gets.

Guest images were built against the Rocks convention, and keep working only
if it is kept (see the behaviour reference, section 6.4):

* the **frontend** gets the network address with the low bit of every host
  octet set: ``network | (0x01010101 & hostmask)``. For ``10.1.0.0/16`` that
  is ``10.1.1.1``; for a ``/24`` it is ``.1``; for ``10.0.0.0/8`` it is
  ``10.1.1.1``; for ``10.0.0.128/25`` it is ``10.0.0.129``;
* the **computes** count down from the highest host address: for
  ``10.1.0.0/16`` they are ``10.1.255.254``, ``10.1.255.253``, ...

Unlike the legacy string-pattern allocator (bug B8), the plan is computed
with real netmask arithmetic, so it holds for any subnet and prefix:

* the network and broadcast addresses are never handed out (a ``/31`` or
  ``/32`` therefore has no room at all);
* the frontend's address is never handed to a compute (a ``/24`` with 253
  computes uses ``.254`` down to ``.2``);
* subnets with an inner zero octet (``10.0.5.0/24``) are not mangled;
* after ``x.y.255.1`` the count continues with ``x.y.255.0`` and
  ``x.y.254.255``: inside a ``/16`` those are ordinary host addresses
  (the legacy allocator skipped them; it only mattered past 254 computes);
* an ``exclude``\\ d address (a gateway, an address already in use) is
  skipped; when it is the conventional frontend address the frontend gets
  the next free address above it (wrapping to the bottom of the subnet);
* running out is a :class:`~pragma_core.errors.CapacityError` that gives the
  numbers.

**Starting address** (``add-iface=net:10.102.0.10/24``): when a CIDR names a
host (``start``), the frontend gets ``start`` itself and the computes count
**up** from ``start + 1`` (skipping excluded addresses), never wrapping below
``start``: the user asked for addresses from there on. The legacy tool did
the opposite (``10.102.254.10``), which was a bug.

:func:`parse_cidr` reads such a CIDR.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network

from attrs import field, frozen

from .errors import CapacityError, FormatError

__all__ = ["AddressPlan", "frontend_address", "parse_cidr", "plan_addresses"]

#: The low bit of every octet: ANDed with the host mask it gives the
#: frontend's host part in the Rocks convention.
_LOW_BITS = 0x01010101


def _tuple(value: Iterable[IPv4Address]) -> tuple[IPv4Address, ...]:
    return tuple(value)


@frozen(kw_only=True)
class AddressPlan:
    """The private addresses of one cluster: the frontend's and one per compute, in order."""

    frontend: IPv4Address
    computes: tuple[IPv4Address, ...] = field(default=(), converter=_tuple)

    @property
    def all(self) -> tuple[IPv4Address, ...]:
        """The frontend's address followed by the computes'."""
        return (self.frontend, *self.computes)


def _as_network(subnet: IPv4Network | str) -> IPv4Network:
    if isinstance(subnet, IPv4Network):
        return subnet
    try:
        network = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise ValueError(f"not an IPv4 subnet: {subnet!r} ({exc})") from None
    if isinstance(network, IPv4Network):
        return network
    raise ValueError(f"not an IPv4 subnet: {subnet!r}")


def _host_range(subnet: IPv4Network) -> tuple[int, int]:
    """First and last address that may be handed out (``first > last``: none)."""
    return int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1


def frontend_address(subnet: IPv4Network) -> IPv4Address:
    """The conventional frontend address of ``subnet``: ``network | (0x01010101 & hostmask)``.

    It may be the broadcast address on a ``/31`` or ``/32``; :func:`plan_addresses`
    never hands that out.
    """
    return IPv4Address(int(subnet.network_address) | (_LOW_BITS & int(subnet.hostmask)))


def plan_addresses(
    subnet: IPv4Network | str,
    computes: int,
    *,
    start: IPv4Address | None = None,
    exclude: Iterable[IPv4Address] = (),
) -> AddressPlan:
    """Plan the private addresses of a frontend and ``computes`` compute nodes.

    Without ``start``: the Rocks convention (module docstring): frontend
    ``network | (0x01010101 & hostmask)``, computes from the top of the subnet
    downwards. With ``start`` (the host part of an ``add-iface`` CIDR): the
    frontend gets ``start``, computes count up from ``start + 1``.

    Addresses in ``exclude`` are never handed out; those outside ``subnet``
    are ignored. Raises :class:`~pragma_core.errors.CapacityError` when the
    subnet (or, with ``start``, its part from ``start`` up) has fewer free
    host addresses than ``1 + computes``; :class:`ValueError` for a negative
    count or a ``start`` outside the subnet's host addresses.
    """
    subnet = _as_network(subnet)
    if isinstance(computes, bool) or not isinstance(computes, int) or computes < 0:
        raise ValueError(f"computes must be a count >= 0, not {computes!r}")
    first, last = _host_range(subnet)
    excluded = {int(IPv4Address(a)) for a in exclude}
    excluded = {a for a in excluded if first <= a <= last}
    needed = 1 + computes

    if start is not None:
        start_int = int(IPv4Address(start))
        if not first <= start_int <= last:
            raise ValueError(f"start address {start} is not a host address of {subnet}")
        if start_int in excluded:
            raise CapacityError(f"start address {start} of {subnet} is already in use")
        free = (last - start_int + 1) - sum(1 for a in excluded if a > start_int)
        if needed > free:
            raise CapacityError(
                f"not enough addresses in {subnet} from {start}: {needed} needed "
                f"(frontend + {computes} computes), {free} free"
            )
        chosen = list(_walk(start_int + 1, last, 1, excluded, computes))
        return AddressPlan(frontend=IPv4Address(start_int), computes=map(IPv4Address, chosen))

    size = max(0, last - first + 1)
    free = size - len(excluded)
    if needed > free:
        detail = f", {len(excluded)} excluded" if excluded else ""
        raise CapacityError(
            f"not enough addresses in {subnet}: {needed} needed (frontend + {computes} computes), "
            f"{free} free ({size} host addresses{detail})"
        )
    fe = _first_free(int(frontend_address(subnet)), first, last, excluded)
    chosen = list(_walk(last, first, -1, excluded | {fe}, computes))
    return AddressPlan(frontend=IPv4Address(fe), computes=map(IPv4Address, chosen))


def _first_free(preferred: int, first: int, last: int, excluded: set[int]) -> int:
    """``preferred`` if free, else the next free address above it, wrapping to ``first``."""
    for address in _walk(max(preferred, first), last, 1, excluded, 1):
        return address
    for address in _walk(first, last, 1, excluded, 1):
        return address
    raise CapacityError("no free address")  # unreachable: capacity was checked


def _walk(begin: int, end: int, step: int, excluded: set[int], count: int | None) -> Iterator[int]:
    """Up to ``count`` addresses from ``begin`` towards ``end`` (inclusive), skipping ``excluded``."""
    if count == 0:
        return
    given = 0
    address = begin
    while (address <= end) if step > 0 else (address >= end):
        if address not in excluded:
            yield address
            given += 1
            if count is not None and given >= count:
                return
        address += step


def parse_cidr(text: str, *, what: str = "CIDR") -> tuple[IPv4Network, IPv4Address | None]:
    """Read ``a.b.c.d/n``: the subnet, and its host part as a starting address.

    ``10.102.0.10/24`` gives ``(IPv4Network('10.102.0.0/24'), IPv4Address('10.102.0.10'))``;
    ``10.102.0.0/24`` gives ``(IPv4Network('10.102.0.0/24'), None)``. A missing
    prefix, a bad address or prefix, an IPv6 address, or a host part that is
    the broadcast address is a :class:`~pragma_core.errors.FormatError` whose
    message starts with ``what``.
    """
    value = text.strip() if isinstance(text, str) else text
    if not isinstance(value, str) or not value:
        raise FormatError(f"{what}: empty value, expected an IPv4 subnet like 10.102.0.0/24")
    if "/" not in value:
        raise FormatError(f"{what}: {value!r} has no prefix length, expected an IPv4 subnet like 10.102.0.0/24")
    try:
        interface = ipaddress.ip_interface(value)
    except ValueError:
        raise FormatError(f"{what}: {value!r} is not an IPv4 subnet like 10.102.0.0/24 or 10.102.0.10/24") from None
    if not isinstance(interface, ipaddress.IPv4Interface):
        raise FormatError(f"{what}: {value!r} is not IPv4")
    network = interface.network
    address = interface.ip
    if address == network.network_address:
        return network, None
    if address == network.broadcast_address:
        raise FormatError(f"{what}: {value!r}: {address} is the broadcast address of {network}")
    return network, address
