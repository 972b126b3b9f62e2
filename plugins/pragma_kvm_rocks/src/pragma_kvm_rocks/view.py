"""What a head sees of the site: domains on the hosts that answer, claims, its own records.

:func:`read_view` reads every host in parallel (a host that does not answer
is noted, not fatal); :meth:`SiteView.usage` turns the view into the
:class:`~.policy.Usage` the allocation policy needs, and
:func:`cluster_statuses` into ``list cluster`` rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from attrs import evolve, field, frozen

from pragma_core import ClusterStatus, NodeStatus
from pragma_core.pluginkit import process_alive, to_tuple

from .claims import ClaimSet, claim_name
from .hosts import DomainInfo, Hosts
from .parallel import settle
from .placement import HostCapacity
from .policy import Usage
from .records import ClusterRecord, NodeRecord


@frozen(kw_only=True)
class SiteView:
    """Domains of the hosts that answered (claims among them), live claims, this head's records."""

    domains: tuple[DomainInfo, ...] = field(converter=to_tuple)
    claims: ClaimSet
    records: tuple[ClusterRecord, ...] = field(converter=to_tuple)
    cpus: Mapping[str, int] = field(factory=dict)
    #: Each answering host's memory in MiB.
    memory: Mapping[str, int] = field(factory=dict)
    unreachable: Mapping[str, str] = field(factory=dict)
    #: This head: ``<hostname>:<state_dir>`` (see :attr:`ClusterRecord.head`).
    head: str = ""

    @property
    def nodes(self) -> list[DomainInfo]:
        """The domains that are not claims."""
        return [d for d in self.domains if d.claim is None]

    def reservations(self) -> list[ClusterRecord]:
        """Every live claim, then this head's records."""
        return [*self.claims.live(), *self.records]

    def with_claims(self, claims: ClaimSet) -> SiteView:
        """The view with a fresher read of the claims (after a claim lost to another head's)."""
        return evolve(self, claims=claims)

    def usage(self) -> Usage:
        """The resources held on the site, and each answering host's load."""
        reservations = self.reservations()
        nodes = [d for d in self.nodes if d.record is not None]
        names = {d.name for d in self.domains}
        names |= {n for r in reservations for n in r.names} | {claim_name(r.cluster) for r in reservations}
        holders = {n: r.cluster for r in reservations for n in r.names}
        holders.update({d.name: d.record.cluster for d in nodes if d.record})
        return Usage(
            public_ips=frozenset({r.public_ip for r in reservations}
                                 | {d.record.public_ip for d in nodes if d.record and d.record.public_ip}),
            vlans=frozenset({r.vlan for r in reservations} | {d.record.vlan for d in nodes if d.record and d.record.vlan}),
            names=frozenset(names),
            macs=frozenset({m for d in self.nodes for m in d.macs} | {m for r in reservations for m in r.macs}),
            hosts=self.capacities(reservations),
            unreachable=dict(self.unreachable),
            idle=self.idle(),
            holders=holders,
        )

    def capacities(self, reservations: Sequence[ClusterRecord]) -> list[HostCapacity]:
        """Each answering host: online CPUs and memory; what running domains use plus what is reserved for
        nodes not running (vCPUs, MiB)."""
        active = {(d.host, d.name) for d in self.nodes if d.active}
        reserved: dict[tuple[str, str], tuple[int, int]] = {}
        for record in reservations:
            for node in record.nodes:
                if (node.host, node.name) not in active:
                    reserved[(node.host, node.name)] = (node.cpus, node.memory_mib)
        out = []
        for host, cpus in self.cpus.items():
            running = [d for d in self.nodes if d.host == host and d.active]
            held = [size for (h, _n), size in reserved.items() if h == host]
            out.append(HostCapacity(name=host, cpus=cpus, used=sum(d.vcpus for d in running) + sum(c for c, _ in held),
                                    memory_mib=self.memory.get(host, 0),
                                    used_memory_mib=sum(d.memory_mib for d in running) + sum(m for _, m in held)))
        return out

    def idle(self) -> tuple[str, ...]:
        """Clusters holding resources with no node running, sorted; one whose boot still runs here is left out.

        A boot runs here when the record (or this head's claim) names a live
        process of this machine; another head's claim without any domain may
        be booting there, and is left out too.
        """
        nodes = [d for d in self.nodes if d.record is not None]
        running = {d.record.cluster for d in nodes if d.record and d.active}
        mine = [c for c in self.claims.live() if c.head == self.head]
        owner = {c.cluster: c.owner_pid for c in mine}
        owner.update({r.cluster: r.owner_pid for r in self.records})
        booting = {cluster for cluster, pid in owner.items() if process_alive(pid)}
        holders = set(owner) | {d.record.cluster for d in nodes if d.record}
        return tuple(sorted(holders - running - booting))


def read_view(hosts: Hosts, names: Sequence[str], claim_group: Sequence[str], records: Iterable[ClusterRecord],
              head: str) -> SiteView:
    """Read every host of ``names`` (and the claim hosts) in parallel: domains, CPUs; what did not answer."""
    everyone = list(dict.fromkeys((*names, *claim_group)))

    def read(host: str) -> tuple[list[DomainInfo], tuple[int, int]]:
        return hosts.inventory(host), hosts.size(host)

    outcomes = settle(read, everyone)
    domains: list[DomainInfo] = []
    cpus: dict[str, int] = {}
    memory: dict[str, int] = {}
    unreachable: dict[str, str] = {}
    for host, outcome in zip(everyone, outcomes):
        if isinstance(outcome, BaseException):
            unreachable[host] = str(outcome)
            continue
        domains += outcome[0]
        if host in names:
            cpus[host], memory[host] = outcome[1]
    answered = [h for h in everyone if h not in unreachable]
    claims = ClaimSet.from_domains(claim_group, answered, domains,
                                   [unreachable[h] for h in claim_group if h in unreachable])
    return SiteView(domains=domains, claims=claims, records=list(records), cpus=cpus, memory=memory,
                    unreachable=unreachable, head=head)


# --------------------------------------------------------------------------- list cluster


def cluster_statuses(reservations: Mapping[str, ClusterRecord], domains: Iterable[DomainInfo],
                     unreachable: Iterable[str]) -> list[ClusterStatus]:
    """``list cluster`` rows from reservations (cluster -> record) and node domains, sorted by name.

    A node without a domain is ``reserved``, or ``unknown`` while its host
    does not answer.
    """
    down = set(unreachable)
    by_cluster: dict[str, dict[str, DomainInfo]] = {}
    for dom in domains:
        if dom.record is not None and dom.claim is None:
            by_cluster.setdefault(dom.record.cluster, {})[dom.name] = dom
    out = []
    for cluster in sorted(set(reservations) | set(by_cluster)):
        found = by_cluster.get(cluster, {})
        record = reservations.get(cluster)
        known: list[NodeRecord] = list(record.nodes) if record else []
        names = {n.name for n in known}
        known += [d.record for d in found.values() if d.record and d.record.name not in names]
        nodes = [_status(node, found.get(node.name), down) for node in known]
        nodes.sort(key=lambda n: (n.role != "frontend", natural(n.name)))
        public = next((n.public_ip for n in nodes if n.role == "frontend"), None)
        out.append(ClusterStatus(name=cluster, nodes=nodes, public_ip=public))
    return out


def _status(node: NodeRecord, dom: DomainInfo | None, down: set[str]) -> NodeStatus:
    return NodeStatus(
        name=node.name,
        role="frontend" if node.role == "frontend" else "compute",
        state=dom.state if dom else ("unknown" if node.host in down else "reserved"),
        host=dom.host if dom else node.host,
        cpus=dom.vcpus if dom else node.cpus,
        memory_mib=dom.memory_mib if dom else node.memory_mib,
        public_ip=node.public_ip,
        private_ip=node.ip("private"),
    )


def natural(name: str) -> tuple:
    """A sort key that puts ``compute-2`` before ``compute-10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
