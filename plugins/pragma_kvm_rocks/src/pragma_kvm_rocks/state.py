"""The driver's typed state: what it carries in ``Allocation.state``.

:class:`KvmRocksState` goes between ``allocate``, ``deploy`` and ``rollback``:
the allocation's id (the UUID of its claim, and a mark on every domain it
defines, so a rollback only ever removes what its own allocation made), the
bridges of its networks and where its disks go. It is its own module because
the driver class names it (``Driver[KvmRocksSettings, KvmRocksState]``): a
command that only lists clusters loads this, not the allocation code.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

__all__ = ["KvmRocksState"]


def _frozen_map(value: Mapping[str, str]) -> Mapping[str, str]:
    from types import MappingProxyType

    return MappingProxyType(dict(value))


@frozen(kw_only=True)
class KvmRocksState:
    """The driver's own part of an allocation (``Allocation.state``)."""

    #: Unique id of this allocation: its claim's UUID, written into every node's metadata.
    allocation_id: str
    #: Network name -> bridge setting (``brvlan{vlan}``, ``ovs:NAME``).
    bridges: Mapping[str, str] = field(factory=dict, converter=_frozen_map)
    #: ``shared`` or ``pool`` (``disk_storage``).
    storage: str = "shared"

    def bridge(self, network: str) -> str:
        return self.bridges.get(network, "")
