"""Where compute nodes go: pure functions over host capacities.

The legacy driver (reference §7.2.3 step 3) sorted containers by a number parsed
out of their names, added a host's *whole* capacity to the running total, did
not skip hosts with no free CPUs and called ``sys.exit`` when the request did
not fit. This module fixes all of that:

* capacity of a host = ``floor((online CPUs - reserved) * cpu_allocation_ratio)``
  minus the vCPUs of the domains running there (B11: never below zero, and hosts
  with nothing free are skipped);
* hosts are filled most-free first, ties by name, with no assumption about how
  names look (B12); an ``available_containers`` filter is an exact-name set (B10);
* the total given is the CPUs actually placed (B11), never the host's capacity;
* not enough room raises :class:`~pragma_core.errors.CapacityError` with the numbers
  (B13).

Two strategies: :func:`place` *packs* (the legacy order: the most-free host
gets as much as it can take, then the next), :func:`spread` *spreads* (each
node, or each CPU when hosts get one node each, goes to the host with the
most free CPUs left, so hosts end up equally loaded).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

from attrs import frozen

from pragma_core import CapacityError


@frozen(kw_only=True)
class HostCapacity:
    """What one host has: online CPUs and the vCPUs its running domains use; its memory and the MiB they use."""

    name: str
    cpus: int
    used: int = 0
    memory_mib: int = 0
    used_memory_mib: int = 0

    def usable_memory(self, *, reserved_mib: int = 0, ratio: float = 1.0) -> int:
        """MiB of guest memory the host may hold: ``floor((memory - reserved) * ratio)``."""
        return math.floor(max(self.memory_mib - reserved_mib, 0) * ratio + 1e-9)

    def free_memory(self, *, reserved_mib: int = 0, ratio: float = 1.0) -> int:
        """MiB still available for guests; never negative."""
        return max(self.usable_memory(reserved_mib=reserved_mib, ratio=ratio) - self.used_memory_mib, 0)

    def usable(self, *, reserved: int = 0, ratio: float = 1.0) -> int:
        """vCPUs the host may hold: ``floor((online CPUs - reserved) * ratio)``."""
        return math.floor(max(self.cpus - reserved, 0) * ratio + 1e-9)

    def free(self, *, reserved: int = 0, ratio: float = 1.0) -> int:
        """CPUs still available for new vCPUs; never negative."""
        return max(self.usable(reserved=reserved, ratio=ratio) - self.used, 0)


@frozen(kw_only=True)
class Placement:
    """One compute node to create: on ``host`` with ``cpus`` vCPUs."""

    host: str
    cpus: int


def free_capacity(
    hosts: Iterable[HostCapacity], *, reserved: int = 0, ratio: float = 1.0, allowed: Sequence[str] = ()
) -> dict[str, int]:
    """Free CPUs per host, only for hosts named in ``allowed`` (all when empty), zero-free hosts left out."""
    wanted = set(allowed)
    out = {}
    for host in hosts:
        if wanted and host.name not in wanted:
            continue
        free = host.free(reserved=reserved, ratio=ratio)
        if free > 0:
            out[host.name] = free
    return out


def _check(cpus: int, free: dict[str, int]) -> None:
    """Raise when ``cpus`` is negative or more than the hosts have free (B13: with the numbers)."""
    if cpus < 0:
        raise ValueError("cpus must not be negative")
    available = sum(v for v in free.values() if v > 0)
    if available < cpus:
        raise CapacityError(
            f"not enough capacity: {cpus} CPUs requested, {available} available"
            f" on {len([v for v in free.values() if v > 0])} host(s)"
        )


def spread(cpus: int, free: dict[str, int], *, max_cpus_per_node: int | None = None) -> list[Placement]:
    """Spread ``cpus`` compute CPUs so the hosts' free CPUs stay as even as they can.

    With ``max_cpus_per_node`` each node (of at most that many vCPUs) goes to
    the host with the most free CPUs left, ties by name; without it each host
    gets at most one node, and each CPU goes to the host with the most free
    CPUs left. Returns nodes in creation order.
    """
    _check(cpus, free)
    left = {host: value for host, value in free.items() if value > 0}
    heap = [(-value, host) for host, value in left.items()]
    heapq.heapify(heap)
    nodes: list[Placement] = []
    given: dict[str, int] = {}
    remaining = cpus
    while remaining > 0:
        negative, host = heapq.heappop(heap)
        size = min(-negative, remaining, max_cpus_per_node or 1)
        remaining -= size
        if max_cpus_per_node:
            nodes.append(Placement(host=host, cpus=size))
        else:
            given[host] = given.get(host, 0) + size
        if -negative - size > 0:
            heapq.heappush(heap, (negative + size, host))
    return nodes or [Placement(host=host, cpus=count) for host, count in given.items()]


def place(cpus: int, free: dict[str, int], *, max_cpus_per_node: int | None = None) -> list[Placement]:
    """Spread ``cpus`` compute CPUs over hosts, most free CPUs first.

    ``free`` maps host name to free CPUs (see :func:`free_capacity`). Each host
    gets one node with its share (the legacy behaviour), or several nodes of
    at most ``max_cpus_per_node`` each. Returns nodes in creation order.
    """
    _check(cpus, free)
    if cpus == 0:
        return []
    order = sorted((h for h, v in free.items() if v > 0), key=lambda h: (-free[h], h))
    remaining = cpus
    nodes: list[Placement] = []
    for host in order:
        if remaining == 0:
            break
        give = min(free[host], remaining)
        remaining -= give
        chunk = max_cpus_per_node or give
        while give > 0:
            size = min(chunk, give)
            nodes.append(Placement(host=host, cpus=size))
            give -= size
    return nodes
