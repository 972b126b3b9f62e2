"""Shut down and remove clusters across their hosts, in parallel, reporting every failure.

* :func:`shutdown`: an ACPI power-off to every running node at once, a wait
  of up to ``shutdown_timeout`` seconds, then the rest forced off.
* :func:`remove`: every node's domain, disk and console log, host by host in
  parallel; then the record and, last, the claim. A rollback (``allocation``
  given) removes only domains its own allocation made, and only the disks
  its deploy made when it knows them: never a domain or disk of another
  allocation that happened to have the same name.
* A host that does not answer does not stop the others: what is on it stays,
  the reservation is narrowed to those nodes (``list cluster`` shows them
  ``unknown``, then ``reserved`` or their state once the host is back), and
  the error names every failure. Nothing is set to autostart, so a host
  that comes back starts nothing; ``pragma clean`` then removes what is left.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from attrs import frozen

from pragma_core import DriverError

from . import domains
from .claims import Claims
from .hosts import DomainInfo, Hosts, HostUnavailable
from .parallel import failure_text, settle, split
from .records import ClusterRecord, NodeRecord, RecordStore

if TYPE_CHECKING:  # clean imports neither: they are the boot's
    from .deploy import Made
    from .storage import Storage

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class Target:
    """A cluster to remove: its nodes and the allocations whose reservations it holds."""

    name: str
    nodes: tuple[NodeRecord, ...]
    record: ClusterRecord | None = None
    claim: ClusterRecord | None = None


# --------------------------------------------------------------------------- shutdown


def shutdown(hosts: Hosts, running: Sequence[DomainInfo], timeout: float,
             ask: Callable[[Sequence[DomainInfo], float], list[DomainInfo]]) -> list[BaseException]:
    """Power ``running`` off (ACPI through ``ask`` first when ``timeout`` > 0); the failures."""
    pending = ask(running, timeout) if timeout > 0 else list(running)
    if not pending:
        return []
    if timeout > 0:
        log.info("forcing off %s after %.0f s", ", ".join(d.name for d in pending), timeout)
    _good, bad = split(settle(lambda d: domains.destroy(hosts, d.host, d.name), pending))
    return bad


def ask_shutdown(hosts: Hosts, running: Sequence[DomainInfo], timeout: float) -> list[DomainInfo]:
    """Send every domain an ACPI power-off; wait up to ``timeout`` s. The domains still running (or unknown)."""
    from pragma_core.pluginkit import poll  # with the HTTP client's deadline: not for a clean --force

    outcomes = settle(lambda d: domains.ask_shutdown(hosts, d.host, d.name), running)
    pending = [d for d, o in zip(running, outcomes) if not isinstance(o, HostUnavailable)]

    def still() -> list[DomainInfo]:
        states = settle(lambda d: domains.is_active(hosts, d.host, d.name), pending)
        return [d for d, s in zip(pending, states) if s is not False]

    def settled() -> bool | None:
        pending[:] = still()
        return True if not pending else None

    try:
        poll(settled, timeout=timeout, interval=0.05, max_interval=1.0, timed_out=TimeoutError)
    except TimeoutError:
        pass
    return pending


# --------------------------------------------------------------------------- remove


def remove(target: Target, *, hosts: Hosts, storage: Storage, store: RecordStore, claims: Claims,
           allocation: str | None = None, made: Made | None = None) -> None:
    """Remove ``target`` on every host in parallel (see the module text); a :class:`DriverError` naming
    every failure, with the reservation narrowed to what stays."""
    by_host: dict[str, list[NodeRecord]] = {}
    for node in target.nodes:
        if node.host not in hosts.uris:  # a record or claim naming a host this site does not have
            log.warning("cluster %s: node %s is on host %r, which is not one of this site's hosts; left alone",
                        target.name, node.name, node.host)
            continue
        by_host.setdefault(node.host, []).append(node)
    disks = None if made is None else _by_host(made.disks)
    mark = time.monotonic()
    outcomes = settle(lambda host: _remove_on(target.name, host, by_host[host], hosts, storage, allocation,
                                              None if disks is None else disks.get(host, [])), list(by_host))
    failed = {host: o for host, o in zip(by_host, outcomes) if isinstance(o, BaseException)}
    log.debug("cluster %s: nodes on %d host(s) removed in %.2f s", target.name, len(by_host) - len(failed),
              time.monotonic() - mark)
    if failed:
        _narrow(target, [n for n in target.nodes if n.host in failed], store, claims)
        errors = ExceptionGroup("removing nodes", list(failed.values()))  # type: ignore[arg-type]
        raise DriverError(f"cluster {target.name}: {failure_text(errors)}; the nodes on"
                          f" {', '.join(sorted(failed))} stay reserved: 'pragma clean {target.name}' once"
                          " their host answers")
    _forget(target, store, claims, rollback=allocation is not None)


def _by_host(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for host, name in pairs:
        out.setdefault(host, []).append(name)
    return out


def _remove_on(cluster: str, host: str, nodes: Sequence[NodeRecord], hosts: Hosts, storage: Storage,
               allocation: str | None, disks: list[str] | None) -> None:
    """Remove ``nodes`` of one host: domains first (in parallel), then their disks and console logs.

    Only what is ``cluster``'s: a node whose name is not one of the cluster's
    node names, or whose domain's own metadata names another cluster (or
    allocation), is left alone with its files (the node list comes from
    records and claims, which another head may have written wrong).
    """
    ours = [n for n in nodes if is_node_of(cluster, n.name)]
    for node in nodes:
        if node not in ours:
            log.warning("cluster %s: %s on %s is not one of its node names; left alone", cluster, node.name, host)
    outcomes = settle(lambda n: domains.discard(hosts, host, n.name, allocation=allocation, cluster=cluster), ours)
    _good, bad = split(outcomes)
    if bad:
        raise ExceptionGroup(f"removing nodes on {host}", bad)  # type: ignore[type-var]
    gone = [n for n, outcome in zip(ours, outcomes) if outcome != domains.KEPT]
    for node in ours:
        if node not in gone:
            log.warning("cluster %s: domain %s on %s belongs to another cluster or allocation; left alone",
                        cluster, node.name, host)
    if disks is not None:  # a rollback in the process that deployed: exactly what it made
        for name in disks:
            storage.remove_file(host, name)
        for node in gone:
            storage.remove_file(host, Path(storage.console_path(host, node.name)).name)
        return
    storage.remove_nodes(host, [(node.name, node.disk) for node in gone])


def is_node_of(cluster: str, name: str) -> bool:
    """Whether ``name`` is one of ``cluster``'s node names: the frontend (the cluster's own name),
    ``<cluster>-compute-<i>`` or legacy ``vm-<cluster>-<i>`` (:func:`~.policy.compute_name`)."""
    escaped = re.escape(cluster)
    return name == cluster or re.fullmatch(rf"(?:{escaped}-compute-|vm-{escaped}-)[0-9]{{1,6}}", name) is not None


def _narrow(target: Target, left: Sequence[NodeRecord], store: RecordStore, claims: Claims) -> None:
    """Keep the reservation for the nodes ``left`` only (record and claim)."""
    for record, where in ((target.record, "record"), (target.claim, "claim")):
        if record is None:
            continue
        narrowed = attrs.evolve(record, nodes=tuple(left))
        try:
            if where == "record":
                store.put(narrowed)
            elif record.allocation:
                claims.write(narrowed, [h for h in claims.group if h not in claims.hosts.unavailable()])
        except (DriverError, OSError) as exc:
            log.warning("cluster %s: cannot narrow its %s: %s", target.name, where, exc)


def _forget(target: Target, store: RecordStore, claims: Claims, *, rollback: bool) -> None:
    """Delete the record, then withdraw the claim(s): the last step, once nothing else is left.

    A rollback deletes only its own record (``target.record`` is set only then).
    """
    if target.record is not None or not rollback:
        store.delete(target.name)
    for leftover in store.directory.glob(f".{target.name}.json.*.tmp"):  # a record a killed boot was writing
        leftover.unlink(missing_ok=True)
    ids = {r.allocation for r in (target.record, target.claim) if r is not None and r.allocation}
    for allocation in ids:
        failures = claims.withdraw(target.name, allocation)
        for exc in failures:
            log.warning("cluster %s: its claim stays on a host that does not answer (%s);"
                        " 'pragma list orphans' finds it later", target.name, exc)
