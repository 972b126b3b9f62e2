"""What the ``cloudstack`` driver remembers about an allocation: the ids CloudStack gave.

:meth:`CloudStackDriver.allocate <pragma_cloudstack.driver.CloudStackDriver.allocate>`
puts a :class:`CloudStackState` into :attr:`Allocation.state
<pragma_core.model.Allocation.state>`; ``deploy`` and ``rollback`` read it
back with :meth:`~pragma_core.interfaces.Driver.state_of`. ``rollback``
removes only these ids (never by a name or a tag alone), so an allocation
without them removes nothing: ``pragma clean`` finds a cluster by its tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from attrs import field, frozen


def _frozen_ids(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in (value or {}).items()})


@frozen(kw_only=True)
class CloudStackState:
    """The cluster's private network and VMs, by their CloudStack ids.

    ``vm_ids`` maps each node's name (the CloudStack VM name) to its VM id;
    ``network_id`` is the isolated network made for the cluster, ``None``
    when it is not known.
    """

    network_id: str | None = None
    vm_ids: Mapping[str, str] = field(factory=dict, converter=_frozen_ids)
