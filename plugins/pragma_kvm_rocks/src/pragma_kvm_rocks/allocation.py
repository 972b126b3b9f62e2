"""From a :class:`~.policy.Plan` to core's :class:`~pragma_core.model.Allocation` and pragma's records (pure).

The allocation carries a :class:`~.state.KvmRocksState` in ``Allocation.state``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen

from pragma_core import Allocation, BootRequest, Interface, Network, Node, StagedCluster
from pragma_core.pluginkit import plan_addresses

from .policy import ExtraNetwork, Plan
from .records import ClusterRecord, NicRecord, NodeRecord
from .settings import KvmRocksSettings
from .state import KvmRocksState
from .storage import disk_name


@frozen(kw_only=True)
class Memory:
    frontend_mib: int
    compute_mib: int


def build_allocation(cfg: KvmRocksSettings, request: BootRequest, plan: Plan, extras: Sequence[ExtraNetwork],
                     memory: Memory, state: KvmRocksState, frontend_cpus: int) -> Allocation:
    """The allocation of ``plan``: nodes with NICs, addresses and MACs, networks, DNS, key, state."""
    private = plan_addresses(cfg.private_network, len(plan.computes))
    netmask = cfg.netmask or "255.255.255.0"
    networks = [
        Network(name="private", subnet=cfg.private_network, vlan=plan.vlan),
        Network(name="public", subnet=ipaddress.IPv4Interface(f"{plan.public_ip}/{netmask}").network, gateway=cfg.gw),
    ]
    extra_plans = []
    for net in extras:
        start = net.cidr.ip if int(net.cidr.ip) != int(net.cidr.network.network_address) else None
        extra_plans.append((net.name, plan_addresses(net.cidr.network, len(plan.computes), start=start)))
        networks.append(Network(name=net.name, subnet=net.cidr.network, mtu=net.mtu))
    macs = iter(plan.macs)
    fe_macs = iter(next(macs))
    fe_nics = [
        Interface(network="private", ip=private.frontend, mac=next(fe_macs), device="eth0"),
        Interface(network="public", ip=ipaddress.IPv4Address(plan.public_ip), mac=next(fe_macs), device="eth1"),
    ]
    fe_nics += [Interface(network=name, ip=addresses.frontend, mac=next(fe_macs), device=f"eth{2 + k}")
                for k, (name, addresses) in enumerate(extra_plans)]
    frontend = Node(name=plan.cluster, hostname=plan.cluster, role="frontend", cpus=frontend_cpus,
                    memory_mib=memory.frontend_mib, interfaces=fe_nics, gateway=cfg.gw, host=plan.frontend_host)
    computes = []
    for i, compute in enumerate(plan.computes):
        node_macs = iter(next(macs))
        nics = [Interface(network="private", ip=private.computes[i], mac=next(node_macs), device="eth0")]
        nics += [Interface(network=name, ip=addresses.computes[i], mac=next(node_macs), device=f"eth{1 + k}")
                 for k, (name, addresses) in enumerate(extra_plans)]
        computes.append(Node(name=compute.name, hostname=f"compute-{i}", role="compute", cpus=compute.cpus,
                             memory_mib=memory.compute_mib, interfaces=nics, gateway=private.frontend,
                             host=compute.host))
    return Allocation(cluster=plan.cluster, image=request.image, fqdn=plan.fqdn, frontend=frontend,
                      computes=computes, networks=networks, dns=cfg.dns, key=request.key, vlan=plan.vlan, state=state)


def bridges_for(cfg: KvmRocksSettings, extras: Sequence[ExtraNetwork]) -> dict[str, str]:
    """Network name -> bridge setting: private, public, and each extra network."""
    bridges = {"private": cfg.private_bridge, "public": cfg.public_bridge or ""}
    bridges.update({net.name: net.bridge for net in extras})
    return bridges


def cluster_record(cfg: KvmRocksSettings, allocation: Allocation, cluster: StagedCluster, *, head: str,
                   created: float, owner_pid: int) -> ClusterRecord:
    """The record of ``allocation``: kept in ``state_dir`` and in its claim on the hosts."""
    state = allocation.state
    assert isinstance(state, KvmRocksState)
    return ClusterRecord(
        cluster=allocation.cluster,
        image=allocation.image,
        fqdn=allocation.fqdn,
        vlan=allocation.vlan or 0,
        public_ip=str(allocation.public_ip),
        nodes=[node_record(cfg, allocation, node, cluster) for node in allocation.nodes],
        owner_pid=owner_pid,
        allocation=state.allocation_id,
        head=head,
        created=created,
        storage=state.storage,
    )


def node_record(cfg: KvmRocksSettings, allocation: Allocation, node: Node, cluster: StagedCluster) -> NodeRecord:
    """What the domain metadata of ``node`` says (and the record keeps)."""
    state = allocation.state
    assert isinstance(state, KvmRocksState)
    image = cluster.frontend if node.role == "frontend" else cluster.compute
    disk = Path(cfg.disk_directory) / disk_name(node.name, cfg.disk_mode)
    return NodeRecord(
        cluster=allocation.cluster,
        name=node.name,
        hostname=node.hostname,
        role=node.role,
        host=node.host,
        cpus=node.cpus,
        memory_mib=node.memory_mib,
        disk=str(disk) if image else "",
        image=allocation.image,
        vlan=allocation.vlan,
        public_ip=str(allocation.public_ip) if node.role == "frontend" else None,
        nics=[NicRecord(network=n.network, ip=str(n.ip), mac=n.mac) for n in node.interfaces],
        allocation=state.allocation_id,
    )
