"""The allocation policy of kvm_rocks: which public IP, VLAN, names, MACs and hosts a cluster gets.

Pure functions over a :class:`Usage` (what the site already holds, as the
head sees it: domains on the hosts, reservations on the claim hosts, its own
records) and the settings: no libvirt, no files, no clock. The driver builds
the usage (:mod:`.view`), calls :func:`plan_cluster`, and makes the plan
race-free across head nodes with a claim (:mod:`.claims`).

* **Public IP**: the first of ``public_ips`` no cluster holds; its
  reverse-DNS name names the cluster (first label), else ``vc-a-b-c-d``.
* **VLAN**: the first of ``vlans`` no cluster holds.
* **Names**: the frontend is the cluster name; computes
  ``<cluster>-compute-<i>`` (or legacy ``vm-<cluster>-<i>``); none may be a
  domain name in use anywhere.
* **MACs**: ``72:77:6e`` (locally administered, the legacy Rocks prefix),
  then 12 bits of the cluster's VLAN and 12 bits of a NIC counter: two
  clusters never share a VLAN, so they never share a MAC (a MAC some other
  domain already uses is skipped).
* **Hosts**: the frontend on ``frontend_host`` (default: the first host
  that answers); computes by free capacity (:mod:`.placement`, ``placement``
  = pack or spread) over the hosts that answer; hosts that do not answer are
  skipped, and a capacity error names them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
from attrs import field, frozen

from pragma_core import BootRequest, CapacityError, DriverError
from pragma_core.pluginkit import to_tuple

from .placement import HostCapacity, Placement, free_capacity, place, spread
from .settings import KvmRocksSettings

#: Locally administered, unicast prefix of the MACs pragma makes (the legacy Rocks one).
MAC_PREFIX = (0x72, 0x77, 0x6E)
#: NICs one cluster can have: 12 bits of the MAC count them.
MAX_NICS_PER_CLUSTER = 1 << 12
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@frozen(kw_only=True)
class Usage:
    """What the site holds, as one head sees it.

    ``hosts`` are the hosts that answered, each with the vCPUs its running
    domains use plus the CPUs reserved for nodes not running yet;
    ``unreachable`` maps each host that did not answer to why. ``idle``
    names clusters that hold resources with no node running (a capacity
    error suggests cleaning them); ``holders`` maps a domain name to the
    cluster holding it.
    """

    public_ips: frozenset[str] = frozenset()
    vlans: frozenset[int] = frozenset()
    names: frozenset[str] = frozenset()
    macs: frozenset[str] = frozenset()
    hosts: tuple[HostCapacity, ...] = field(default=(), converter=to_tuple)
    unreachable: Mapping[str, str] = field(factory=dict)
    idle: tuple[str, ...] = field(default=(), converter=to_tuple)
    holders: Mapping[str, str] = field(factory=dict)


def overcommitted(cfg: KvmRocksSettings, usage: Usage, hosts: Iterable[str]) -> list[str]:
    """Those of ``hosts`` whose vCPUs (and, with ``memory_allocation_ratio``, memory) in use and reserved
    (every head's claims) exceed what they may hold."""
    wanted = set(hosts)
    memory = cfg.memory_allocation_ratio > 0
    return sorted(h.name for h in usage.hosts if h.name in wanted
                  and (h.used > h.usable(reserved=cfg.num_processors_reserved, ratio=cfg.cpu_allocation_ratio)
                       or memory and h.used_memory_mib > h.usable_memory(reserved_mib=cfg.memory_reserved_mib,
                                                                         ratio=cfg.memory_allocation_ratio)))


def _free_memory(cfg: KvmRocksSettings, host: HostCapacity) -> int:
    """MiB ``host`` may still give guests under ``memory_allocation_ratio`` and ``memory_reserved_mib``."""
    return host.free_memory(reserved_mib=cfg.memory_reserved_mib, ratio=cfg.memory_allocation_ratio)


@frozen(kw_only=True)
class Sizes:
    """What one cluster needs: compute CPUs, the frontend's vCPUs, NICs of a frontend and of a compute, and
    the memory of a frontend and of a compute (MiB)."""

    cpus: int
    frontend_cpus: int = 1
    frontend_nics: int = 2
    compute_nics: int = 1
    frontend_memory_mib: int = 0
    compute_memory_mib: int = 0


@frozen(kw_only=True)
class ComputePlan:
    name: str
    host: str
    cpus: int


@frozen(kw_only=True)
class Plan:
    """A cluster's resources: name, FQDN, public IP, VLAN, the frontend's host, computes, MACs (frontend first)."""

    cluster: str
    fqdn: str
    public_ip: str
    vlan: int
    frontend_host: str
    computes: tuple[ComputePlan, ...] = field(converter=to_tuple)
    macs: tuple[tuple[str, ...], ...] = field(converter=to_tuple)

    @property
    def names(self) -> frozenset[str]:
        return frozenset({self.cluster, *(c.name for c in self.computes)})


def plan_cluster(cfg: KvmRocksSettings, usage: Usage, sizes: Sizes,
                 reverse: Callable[[str], str | None]) -> Plan:
    """The resources of a new cluster; :class:`CapacityError` naming what ran out.

    ``reverse(ip)`` is the reverse-DNS name of ``ip`` or ``None``.
    """
    frontend, placements = place_nodes(cfg, usage, sizes)
    public_ip = choose_public_ip(cfg, usage)
    vlan = choose_vlan(cfg, usage)
    found = reverse(public_ip)
    name = cluster_name_for(public_ip, found)
    computes = [compute_name(name, i, cfg.node_naming) for i in range(len(placements))]
    check_names(name, computes, public_ip, usage)
    counts = [sizes.frontend_nics] + [sizes.compute_nics] * len(placements)
    return Plan(
        cluster=name,
        fqdn=qualified_name(found or name, cfg.public_domain),
        public_ip=public_ip,
        vlan=vlan,
        frontend_host=frontend,
        computes=[ComputePlan(name=n, host=p.host, cpus=p.cpus) for n, p in zip(computes, placements)],
        macs=derive_macs(vlan, counts, usage.macs),
    )


# --------------------------------------------------------------------------- names


def cluster_name_for(ip: str, fqdn: str | None) -> str:
    """The cluster (frontend) name: the first label of the reverse name, else ``vc-a-b-c-d``."""
    if fqdn:
        label = fqdn.split(".", 1)[0].lower()
        if _LABEL.fullmatch(label) and not label.replace("-", "").isdigit():
            return label
    return "vc-" + ip.replace(".", "-")


def qualified_name(name: str, domain: str) -> str:
    """The frontend's FQDN: the reverse-DNS ``name`` when it is dotted, else ``name.domain`` (never dotless)."""
    name = name.rstrip(".")
    return name if "." in name else f"{name}.{domain}"


def compute_name(cluster: str, index: int, naming: str) -> str:
    """A compute node's domain name: ``<cluster>-compute-<i>`` or legacy ``vm-<cluster>-<i>``."""
    return f"vm-{cluster}-{index}" if naming == "legacy" else f"{cluster}-compute-{index}"


def check_names(name: str, computes: Sequence[str], public_ip: str, usage: Usage) -> None:
    """Refuse a cluster whose name or node names are domain names in use."""
    taken = usage.names.intersection({name, *computes})
    if taken:
        holders = {usage.holders.get(n, n) for n in taken}
        raise CapacityError(
            f"cluster name {name} (from {public_ip}) is already in use by another domain",
            reserved=[c for c in usage.idle if c in holders],
        )


# --------------------------------------------------------------------------- public IP, VLAN, MACs


def choose_public_ip(cfg: KvmRocksSettings, usage: Usage) -> str:
    """The first of ``public_ips`` no cluster holds."""
    found = next((str(ip) for ip in cfg.public_ips if str(ip) not in usage.public_ips), None)
    if found is None:
        raise CapacityError(
            f"no free public IP: all {len(cfg.public_ips)} in public_ips are in use"
            " (kvm_rocks.conf; each cluster takes one public IP and one VLAN)", reserved=usage.idle
        )
    return found


def choose_vlan(cfg: KvmRocksSettings, usage: Usage) -> int:
    """The first of ``vlans`` no cluster holds."""
    found = next((v for v in cfg.vlans if v not in usage.vlans), None)
    if found is None:
        free_ips = sum(str(ip) not in usage.public_ips for ip in cfg.public_ips)
        raise CapacityError(
            f"no free VLAN: all {len(cfg.vlans)} in vlans are in use while {free_ips} of the"
            f" {len(cfg.public_ips)} public_ips are free (kvm_rocks.conf; each cluster takes one of each)",
            reserved=usage.idle,
        )
    return found


def mac_for(vlan: int, index: int) -> str:
    """The ``index``-th MAC of the cluster on ``vlan``: ``72:77:6e:VV:VI:II``."""
    tail = ((vlan & 0xFFF) << 12) | (index & 0xFFF)
    return ":".join(f"{b:02x}" for b in (*MAC_PREFIX, tail >> 16, (tail >> 8) & 0xFF, tail & 0xFF))


def derive_macs(vlan: int, counts: Sequence[int], used: frozenset[str]) -> tuple[tuple[str, ...], ...]:
    """MACs for nodes with ``counts`` NICs each, from ``vlan``; a MAC in ``used`` is skipped."""
    out: list[tuple[str, ...]] = []
    index = 0
    for count in counts:
        macs: list[str] = []
        while len(macs) < count:
            if index >= MAX_NICS_PER_CLUSTER:
                raise CapacityError(f"more than {MAX_NICS_PER_CLUSTER} NICs in one cluster (VLAN {vlan})")
            mac = mac_for(vlan, index)
            index += 1
            if mac not in used:
                macs.append(mac)
        out.append(tuple(macs))
    return tuple(out)


# --------------------------------------------------------------------------- hosts


def place_nodes(cfg: KvmRocksSettings, usage: Usage, sizes: Sizes) -> tuple[str, list[Placement]]:
    """The frontend's host and the computes' placements, over the hosts that answered.

    With ``memory_allocation_ratio`` set, a host takes only as many compute
    nodes as its free memory holds (the frontend's counted first on its host).
    """
    frontend = frontend_host(cfg, usage, sizes.frontend_cpus, sizes.frontend_memory_mib)
    capacities = [attrs.evolve(h, used=h.used + sizes.frontend_cpus,
                               used_memory_mib=h.used_memory_mib + sizes.frontend_memory_mib)
                  if h.name == frontend else h for h in usage.hosts]
    free = free_capacity(capacities, reserved=cfg.num_processors_reserved, ratio=cfg.cpu_allocation_ratio,
                         allowed=cfg.hosts)
    limited = _memory_limits(cfg, capacities, free, sizes.compute_memory_mib)
    strategy = spread if cfg.placement_strategy == "spread" else place
    try:
        return frontend, strategy(sizes.cpus, {h: min(v, limited.get(h, v)) for h, v in free.items()},
                                  max_cpus_per_node=cfg.max_cpus_per_node)
    except CapacityError as exc:
        held = [f"{h} {n} node(s)" for h, n in sorted(_nodes_by_memory(cfg, capacities, sizes.compute_memory_mib).items())
                if h in free and limited.get(h, free[h]) < free[h]]
        memory = (f"; memory_allocation_ratio leaves room for {', '.join(held)} of {sizes.compute_memory_mib} MiB"
                  if held else "")
        raise CapacityError(str(exc) + memory + _skipped(usage, cfg.hosts), reserved=usage.idle) from None


def _nodes_by_memory(cfg: KvmRocksSettings, hosts: Iterable[HostCapacity], node_mib: int) -> dict[str, int]:
    """How many compute nodes of ``node_mib`` each host's free memory holds (empty when memory is not counted)."""
    if cfg.memory_allocation_ratio <= 0 or node_mib <= 0:
        return {}
    return {h.name: _free_memory(cfg, h) // node_mib for h in hosts}


def _memory_limits(cfg: KvmRocksSettings, hosts: Iterable[HostCapacity], free: dict[str, int],
                   node_mib: int) -> dict[str, int]:
    """The most compute CPUs each host may get so that its nodes fit its free memory.

    Nodes of at most ``max_cpus_per_node`` CPUs: ``nodes that fit x max_cpus_per_node``;
    one node per host (the legacy shape): all its free CPUs if one node fits, else none.
    """
    per_node = cfg.max_cpus_per_node
    return {host: nodes * per_node if per_node else (free.get(host, 0) if nodes else 0)
            for host, nodes in _nodes_by_memory(cfg, hosts, node_mib).items()}


def frontend_host(cfg: KvmRocksSettings, usage: Usage, cpus: int, memory_mib: int = 0) -> str:
    """The frontend's host: ``frontend_host``, else the first host (the next that answers when it does not)."""
    answered = {h.name: h for h in usage.hosts}
    host = cfg.frontend
    if host not in answered:
        if cfg.frontend_host:
            raise CapacityError(f"frontend_host {host} does not answer: {usage.unreachable.get(host, 'unknown')}",
                                reserved=usage.idle)
        host = next((h for h in cfg.all_hosts if h in answered), "")
        if not host:
            raise CapacityError("no host answers" + _skipped(usage, cfg.all_hosts), reserved=usage.idle)
    capacity = answered[host]
    usable = capacity.usable(reserved=cfg.num_processors_reserved, ratio=cfg.cpu_allocation_ratio)
    if usable < capacity.used + cpus:
        raise CapacityError(
            f"not enough capacity for the frontend on {host}: it needs {cpus} CPUs,"
            f" {max(usable - capacity.used, 0)} available", reserved=usage.idle,
        )
    if cfg.memory_allocation_ratio > 0 and memory_mib > _free_memory(cfg, capacity):
        raise CapacityError(
            f"not enough memory for the frontend on {host}: it needs {memory_mib} MiB,"
            f" {_free_memory(cfg, capacity)} MiB available (memory_allocation_ratio"
            f" {cfg.memory_allocation_ratio:g}, memory_reserved_mib {cfg.memory_reserved_mib})", reserved=usage.idle,
        )
    return host


def _skipped(usage: Usage, hosts: Sequence[str]) -> str:
    """``"; skipped, not answering: h3 (why)"`` for the hosts of ``hosts`` that did not answer, else ``""``."""
    down = [f"{h} ({usage.unreachable[h]})" for h in hosts if h in usage.unreachable]
    return f"; skipped, not answering: {', '.join(down)}" if down else ""


# --------------------------------------------------------------------------- request


@frozen(kw_only=True)
class ExtraNetwork:
    """An ``add-iface`` (or ENT) network of a request: its name, bridge setting, CIDR and MTU."""

    name: str
    bridge: str
    cidr: ipaddress.IPv4Interface
    mtu: int = 1500


def extra_networks(cfg: KvmRocksSettings, request: BootRequest) -> list[ExtraNetwork]:
    """The networks ``add-iface`` and ``enable-ent`` give every node; a :class:`DriverError` for an unknown one."""
    out = []
    for item in request.add_ifaces:
        net = cfg.extra_network(item.network)
        if net is None:
            known = ", ".join(sorted(cfg.additional_interfaces)) or "none"
            raise DriverError(
                f"add-iface: network {item.network!r} is not in additional_interfaces of kvm_rocks.conf"
                f" (known: {known})"
            )
        cidr = item.cidr or (ipaddress.IPv4Interface(str(net.subnet)) if net.subnet else None)
        if cidr is None:
            raise DriverError(
                f"add-iface: network {item.network!r} needs a subnet: give {item.network}:CIDR"
                " or set 'subnet' for it in additional_interfaces"
            )
        out.append(ExtraNetwork(name=item.network, bridge=net.bridge, cidr=cidr, mtu=net.mtu))
    if request.enable_ent:
        ent = cfg.ent_network()
        if ent is None:
            raise DriverError("enable-ent=true but kvm_rocks.conf has no 'ent' setting")
        if ent.subnet is None:
            raise DriverError("enable-ent=true: set 'subnet' in kvm_rocks.conf ent (or additional_interfaces)")
        if all(o.name != ent.name for o in out):
            out.append(ExtraNetwork(name=ent.name, bridge=ent.bridge, cidr=ipaddress.IPv4Interface(str(ent.subnet)),
                                    mtu=ent.mtu))
    return out
