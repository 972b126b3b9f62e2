"""``deploy`` on CloudStack: hand each VM its ``vc-out.xml`` as userdata, then start the frontend and the computes.

Every file is checked against CloudStack's userdata limit before anything is
sent (:func:`userdata`); then each VM gets its file by POST
(``updateVirtualMachine``), the frontend starts, then the computes,
``max_parallel`` at a time.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pragma_core import Allocation, DriverError, NotFoundError

from .state import CloudStackState

if TYPE_CHECKING:
    from .driver import CloudStackDriver


def userdata(allocation: Allocation, vcout: Mapping[str, bytes]) -> dict[str, str]:
    """Each node's vc-out.xml in base64; a :class:`DriverError` for a node without one or over CloudStack's limit."""
    from .client import MAX_USERDATA_POST

    encoded: dict[str, str] = {}
    for node in allocation.nodes:
        if node.name not in vcout:
            raise DriverError(f"no vc-out.xml was rendered for node {node.name}")
        text = base64.b64encode(vcout[node.name]).decode("ascii")
        if len(text) > MAX_USERDATA_POST:
            raise DriverError(
                f"vc-out.xml of {node.name} is {len(vcout[node.name])} bytes ({len(text)} in base64), "
                f"over CloudStack's userdata limit of {MAX_USERDATA_POST} base64 bytes"
            )
        encoded[node.name] = text
    return encoded


def deploy_cluster(driver: CloudStackDriver, allocation: Allocation, vcout: Mapping[str, bytes]) -> None:
    """Give each VM its vc-out.xml as userdata, then start the frontend and the computes."""
    data = userdata(allocation, vcout)
    state = driver.state_of(allocation, CloudStackState())
    ids = {node.name: vm_id(driver, state, node.name) for node in allocation.nodes}
    client = driver.client
    driver._parallel(
        lambda node: client.request("updateVirtualMachine", {"id": ids[node.name], "userdata": data[node.name]}, post=True),
        allocation.nodes,
    )
    client.call("startVirtualMachine", {"id": ids[allocation.frontend.name]})
    driver._parallel(lambda node: client.call("startVirtualMachine", {"id": ids[node.name]}), allocation.computes)


def vm_id(driver: CloudStackDriver, state: CloudStackState, name: str) -> str:
    """The id of VM ``name``: from the allocation's state, else looked up by its exact name in pragma's account."""
    known = state.vm_ids.get(name)
    if known:
        return known
    found = driver.lookups.vms_named([name])
    if not found:
        raise NotFoundError(f"CloudStack has no VM {name}")
    return str(found[0]["id"])
