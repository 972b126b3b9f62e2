"""``list cluster`` on CloudStack: the clusters found by their ``pragma-cluster`` tag, as rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pragma_core import ClusterStatus, NodeStatus, Role

from .naming import TAG_CLUSTER, TAG_ROLE, ordered, tag

if TYPE_CHECKING:
    from .lookups import Lookups


def list_clusters(lookups: Lookups, name: str | None = None) -> list[ClusterStatus]:
    """The clusters found by their ``pragma-cluster`` tag (only ``name`` when given), frontend first, sorted by name."""
    groups: dict[str, list[dict]] = {}
    for vm in lookups.cluster_vms(name):
        groups.setdefault(tag(vm, TAG_CLUSTER) or "", []).append(vm)
    return [cluster_status(cluster, groups[cluster]) for cluster in sorted(groups)]


def cluster_status(cluster: str, vms: list[dict]) -> ClusterStatus:
    """Cluster ``cluster`` from its VMs as CloudStack lists them: a private IP on the network named like it."""
    rows = [_node_status(cluster, vm) for vm in ordered(vms)]
    public_ip = next((row.public_ip for row in reversed(rows) if row.role == "frontend"), None)  # the (last) frontend's
    return ClusterStatus(name=cluster, nodes=rows, public_ip=public_ip)


def _node_status(cluster: str, vm: dict) -> NodeStatus:
    role: Role = "frontend" if tag(vm, TAG_ROLE) == "frontend" else "compute"
    nics = vm.get("nic", [])
    private_ip = next((n.get("ipaddress") for n in nics if n.get("networkname") == cluster), None)
    public_ip = next((n.get("ipaddress") for n in nics if n.get("networkname") != cluster), None)
    return NodeStatus(
        name=vm["name"],
        role=role,
        state=str(vm.get("state", "")),
        host=str(vm.get("hostname") or vm.get("zonename") or ""),
        cpus=int(vm.get("cpunumber") or 0),
        memory_mib=int(vm.get("memory") or 0),
        public_ip=public_ip if role == "frontend" else None,
        private_ip=private_ip,
    )
