"""What crashed runs left on the hosts that belongs to no live cluster (``pragma list orphans``).

A cluster is *live* while a claim (on a majority of the claim hosts) or this
head's record holds it, or while domains of a pragma older than allocation
ids carry it. Everything else pragma made is an orphan:

* ``domain`` -- a node domain whose allocation no claim or record holds (a
  rollback or clean could not reach its host, which came back later);
* ``claim`` -- a stale claim copy, absent from a majority of the claim hosts;
* ``record`` -- a record of this head whose allocation has no claim and no
  domain any more (another head cleaned the cluster);
* ``disk`` -- a node disk or console log in diskdir (or a host's pool) of no
  live node: a disk named like a node, or one a dead domain, claim or record
  names;
* ``base`` -- a base image or kernel copied or uploaded for boots that no
  live cluster uses any more (kept for later boots until removed).

Finding needs a majority of the claim hosts to answer; otherwise a claim
could be live on the hosts that did not, and nothing is judged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence

from attrs import frozen

from pragma_core import DriverError

from . import domains as domain_calls
from .claims import Claims, claim_name
from .hosts import Hosts
from .parallel import settle
from .pool import HostPool
from .records import RecordStore
from .storage import BASE_PREFIX, BOOT_PREFIX, CONSOLE_SUFFIX, DONE_SUFFIX, PoolStorage, Storage, console_node
from .view import SiteView

log = logging.getLogger(__name__)

_NODE_NAME = re.compile(r".+-compute-\d+|vm-.+-\d+")
_DISK = re.compile(r"(?P<node>.+)\.(qcow2|img)")


@frozen(kw_only=True)
class Orphan:
    """One thing pragma made that belongs to no live cluster."""

    kind: str
    #: The host it is on; ``""``: this head's own files (records, a shared diskdir).
    host: str
    name: str
    cluster: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "host": self.host, "name": self.name, "cluster": self.cluster,
                "reason": self.reason}


@frozen(kw_only=True)
class Liveness:
    """Which allocations and node names are live, and which names pragma once used (dead ones included)."""

    allocations: frozenset[str]
    clusters: frozenset[str]
    nodes: frozenset[str]
    bases: frozenset[str]
    known_nodes: frozenset[str]


def liveness(view: SiteView) -> Liveness:
    """What is live in ``view`` (see the module text)."""
    reservations = view.reservations()
    legacy = [d.record for d in view.nodes if d.record is not None and not d.record.allocation]
    return Liveness(
        allocations=frozenset(r.allocation for r in reservations if r.allocation),
        clusters=frozenset({r.cluster for r in reservations} | {n.cluster for n in legacy}),
        nodes=frozenset({n.name for r in reservations for n in r.nodes} | {n.name for n in legacy}),
        bases=frozenset(b for r in reservations for b in r.bases),
        known_nodes=frozenset({n.name for r in reservations for n in r.nodes}
                              | {d.name for d in view.nodes if d.record is not None}),
    )


def find(view: SiteView, storage: Storage, *, hosts_with_pools: Sequence[str] = ()) -> list[Orphan]:
    """Every orphan in ``view`` and in the storage (sorted by kind, host, name)."""
    if not view.claims.decisive:
        raise DriverError(
            f"cannot tell what is orphaned: {len(view.claims.answered)} of the {len(view.claims.group)} claim hosts"
            " answer, a majority is needed: " + "; ".join(view.claims.failures)
        )
    live = liveness(view)
    found = _domains(view, live) + _claims(view) + _records(view, live)
    files = _files(storage, live, hosts_with_pools)
    if view.unreachable and not isinstance(storage, PoolStorage):
        # a node on a host that does not answer may still run (a cluster from before claims has no
        # reservation elsewhere): its disk in the shared diskdir cannot be judged now
        log.warning("host(s) %s do not answer: node disks in the shared diskdir are not judged",
                    ", ".join(sorted(view.unreachable)))
        files = [o for o in files if o.kind != "disk"]
    return sorted(set(found + files), key=lambda o: (o.kind, o.host, o.name))


def _domains(view: SiteView, live: Liveness) -> list[Orphan]:
    out = []
    for dom in view.nodes:
        record = dom.record
        if record is None or not record.allocation or record.allocation in live.allocations:
            continue
        why = ("its cluster now belongs to another allocation" if record.cluster in live.clusters
               else "no claim or record holds its cluster")
        state = "running" if dom.active else dom.state
        out.append(Orphan(kind="domain", host=dom.host, name=dom.name, cluster=record.cluster,
                          reason=f"{state}; {why}"))
    return out


def _claims(view: SiteView) -> list[Orphan]:
    return [Orphan(kind="claim", host=c.host, name=claim_name(c.record.cluster), cluster=c.record.cluster,
                   reason="stale copy: absent from a majority of the claim hosts") for c in view.claims.stale()]


def _records(view: SiteView, live: Liveness) -> list[Orphan]:
    claimed = {c.allocation for c in view.claims.live()}
    defined = {d.record.allocation for d in view.nodes if d.record is not None}
    return [Orphan(kind="record", host="", name=f"{r.cluster}.json", cluster=r.cluster,
                   reason="its allocation has no claim and no domain any more")
            for r in view.records if r.allocation and r.allocation not in claimed | defined]


def _files(storage: Storage, live: Liveness, pool_hosts: Sequence[str]) -> list[Orphan]:
    if isinstance(storage, PoolStorage):
        outcomes = settle(lambda host: _pool_files(storage.pool(host), live), pool_hosts)
        for host, outcome in zip(pool_hosts, outcomes):
            if isinstance(outcome, BaseException):
                log.warning("host %s: pool not read: %s", host, outcome)
        return [o for outcome in outcomes if isinstance(outcome, list) for o in outcome]
    names = sorted(p.name for p in storage.diskdir.iterdir()) if storage.diskdir.is_dir() else []
    return judge_files("", names, live, base_key=lambda name: f"/{name}")


def _pool_files(pool: HostPool, live: Liveness) -> list[Orphan]:
    if not pool.exists():
        return []
    return judge_files(pool.host, pool.names(), live, base_key=lambda name: f"{pool.host}/{name}")


def judge_files(host: str, names: Iterable[str], live: Liveness, *, base_key: Callable[[str], str]) -> list[Orphan]:
    """The orphans among the file (or volume) ``names`` of one diskdir."""
    names = list(names)
    present = set(names)
    out = []
    for name in names:
        if name.startswith((BASE_PREFIX, BOOT_PREFIX)):
            base = name[: -len(DONE_SUFFIX)] if name.endswith(DONE_SUFFIX) else name
            if base_key(base) not in live.bases:
                out.append(Orphan(kind="base", host=host, name=name, reason="no live cluster uses it"))
            continue
        node = console_node(name)
        console = node is not None
        match = _DISK.fullmatch(name) if node is None else None
        node = node or (match.group("node") if match else None)
        if node is None or node in live.nodes:
            continue
        ours = (console or _NODE_NAME.fullmatch(node) or node in live.known_nodes
                or f"{node}{CONSOLE_SUFFIX}" in present)
        if ours:
            out.append(Orphan(kind="disk", host=host, name=name, reason=f"node {node} belongs to no live cluster"))
    return out


def remove(orphans: Sequence[Orphan], *, hosts: Hosts, claims: Claims, store: RecordStore, storage: Storage,
           view: SiteView) -> list[str]:
    """Remove ``orphans`` (each host in parallel); the failures, one line each."""
    copies = {(c.host, claim_name(c.record.cluster), c.uuid): c for c in view.claims.stale()}

    def one(orphan: Orphan) -> None:
        if orphan.kind == "domain":
            domain_calls.discard(hosts, orphan.host, orphan.name)
        elif orphan.kind == "claim":
            for (host, name, _uuid), copy in copies.items():
                if host == orphan.host and name == orphan.name:
                    claims.remove_copy(copy)
        elif orphan.kind == "record":
            store.delete(orphan.cluster)
        else:
            storage.remove_file(orphan.host, orphan.name if orphan.host else str(storage.diskdir / orphan.name))

    outcomes = settle(one, orphans)
    return [f"{o.kind} {o.name}{' on ' + o.host if o.host else ''}: {r}"
            for o, r in zip(orphans, outcomes) if isinstance(r, BaseException)]

