"""``kvm_rocks``: boot virtual clusters as libvirt/KVM domains on one or more hosts.

The successor of the Rocks-based legacy driver (reference §7.2), talking to
libvirt directly. See the plugin README for every ``kvm_rocks.conf`` key.
This class is a thin layer; the work is in:

* :mod:`.view` -- what the head sees: every host's domains (read in
  parallel; a host that does not answer is skipped with a warning), the
  claims, its own records;
* :mod:`.policy` -- the pure allocation policy (public IP, VLAN, names,
  MACs, placement by free capacity) and :mod:`.allocation` -- the
  :class:`~pragma_core.model.Allocation` and records it gives;
* :mod:`.claims` -- the reservation on the hosts that makes allocations of
  several head nodes race-free (a local file lock orders this head's own);
* :mod:`.storage` -- disks on each node's host (shared diskdir, or each
  host's own through a libvirt storage pool);
* :mod:`.deploy`, :mod:`.teardown` -- start and remove across hosts in
  parallel, every failure reported; :mod:`.console` -- ``wait=``;
  :mod:`.orphans` -- what a crashed run left, for ``pragma list orphans``.

This module imports libvirt only inside methods (through :mod:`.hosts`).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pragma_core import CapacityError, Driver, DriverError, NotFoundError

from .claims import Claims
from .hosts import Hosts, _is_local
from .parallel import settle
from .policy import cluster_name_for, compute_name, qualified_name  # noqa: F401 - public names of this module
from .records import NodeRecord, RecordStore
from .settings import KvmRocksSettings, is_ovs
from .state import KvmRocksState
from .view import cluster_statuses, read_view

# What only the commands that boot, tear down, wait or look for orphans use is imported by their
# methods: ``list cluster`` loads none of it (nor filelock, which costs ~40 ms).
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from filelock import FileLock

    from pragma_core import Allocation, BootRequest, ClusterStatus, StagedCluster
    from pragma_core.pluginkit import NodeProgress

    from . import teardown
    from .deploy import Made
    from .hosts import DomainInfo
    from .orphans import Orphan
    from .records import ClusterRecord
    from .storage import Storage
    from .view import SiteView

__all__ = ["KvmRocksDriver", "cluster_name_for", "compute_name", "qualified_name", "reverse_name"]

log = logging.getLogger(__name__)

_LOCK_TIMEOUT = 300.0
_DNS_TIMEOUT = 3.0


def reverse_name(ip: str, *, timeout: float = _DNS_TIMEOUT) -> str | None:
    """The reverse-DNS name of ``ip``, or ``None`` (no name, or no answer within ``timeout``)."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(socket.gethostbyaddr, ip)
        try:
            return future.result(timeout=timeout)[0]
        except (OSError, FutureTimeout):
            return None


class KvmRocksDriver(Driver[KvmRocksSettings, KvmRocksState]):
    """Virtual clusters as libvirt domains (KVM or QEMU) on the site's hosts."""

    name: ClassVar[str] = "kvm_rocks"
    supports_wait: ClassVar[bool] = True

    def __init__(self, config: KvmRocksSettings, *, site: Any = None, hosts: Hosts | None = None) -> None:
        super().__init__(config, site=site)
        self.settings: KvmRocksSettings = config
        uris = {h: config.uri_for(h) for h in (*config.all_hosts, *config.claim_group)}
        self.hosts = hosts or Hosts(uris, connect_timeout=config.connect_timeout,
                                    keepalive_interval=config.keepalive_interval,
                                    keepalive_count=config.keepalive_count)
        self.store = RecordStore(config.state_dir)
        self.claims = Claims(self.hosts, config.claim_group)
        #: This head: written into its claims, so it knows its own among other heads'.
        self.head = f"{socket.gethostname()}:{config.state_dir}"
        self._made: dict[str, Made] = {}
        if not is_ovs(config.private_bridge) and "{vlan}" not in config.private_bridge:
            log.warning(
                "private_bridge %r has no {vlan}: every cluster's private network shares one bridge",
                config.private_bridge,
            )

    @functools.cached_property
    def storage(self) -> Storage:
        """Where node disks go (shared diskdir or each host's pool): made on first use."""
        from .storage import storage_for

        local = all(_is_local(u) for u in self.hosts.uris.values())
        return storage_for(self.settings, self.hosts, local=local)

    def close(self) -> None:
        """Close every libvirt connection this driver opened (``Site.close`` calls it). Idempotent."""
        self.hosts.close()

    # ------------------------------------------------------------------ helpers

    def _lock(self) -> FileLock:
        from filelock import FileLock

        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.settings.state_dir / "allocation.lock"), timeout=_LOCK_TIMEOUT)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This head's allocation lock (one error line when it cannot be had)."""
        from filelock import Timeout

        try:
            lock = self._lock()
            lock.acquire()
        except Timeout:
            raise DriverError(f"another pragma holds the allocation lock in {self.settings.state_dir}"
                              " for too long") from None
        except OSError as exc:
            raise DriverError(f"cannot use state_dir {self.settings.state_dir}: {exc.strerror}") from None
        try:
            yield
        finally:
            lock.release()

    def view(self) -> SiteView:
        """What this head sees now (hosts that do not answer are named in a warning)."""
        found = read_view(self.hosts, self.settings.all_hosts, self.settings.claim_group, self.store.all(), self.head)
        for host, why in found.unreachable.items():
            log.warning("%s; host %s is skipped", why, host)
        return found

    # ------------------------------------------------------------------ allocate

    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        import uuid

        from .allocation import Memory, bridges_for, build_allocation
        from .claims import MAX_ATTEMPTS, pause
        from .policy import Sizes, extra_networks, overcommitted, plan_cluster

        cfg = self.settings
        description = cluster.description
        fe_cpus = description.frontend.vcpus or 1
        memory = Memory(
            frontend_mib=request.memory.frontend_mib or description.frontend.memory_mib or cfg.default_memory_mib,
            compute_mib=request.memory.compute_mib or description.compute_template.memory_mib
            or cfg.default_memory_mib,
        )
        extras = extra_networks(cfg, request)
        sizes = Sizes(cpus=request.cpus, frontend_cpus=fe_cpus, frontend_nics=2 + len(extras),
                      compute_nics=1 + len(extras), frontend_memory_mib=memory.frontend_mib,
                      compute_memory_mib=memory.compute_mib)
        names: dict[str, str | None] = {}

        def reverse(ip: str) -> str | None:
            if ip not in names:
                names[ip] = reverse_name(ip)
            return names[ip]

        with self._locked():
            view = self.view()
            for attempt in range(MAX_ATTEMPTS):
                plan = plan_cluster(cfg, view.usage(), sizes, reverse)
                state = KvmRocksState(allocation_id=str(uuid.uuid4()), bridges=bridges_for(cfg, extras),
                                      storage=cfg.disk_storage)
                allocation = build_allocation(cfg, request, plan, extras, memory, state, fe_cpus)
                record = self._record(allocation, cluster)
                won, seen = self.claims.take(record)
                if won:
                    over = overcommitted(cfg, view.with_claims(seen).usage(), {n.host for n in allocation.nodes})
                    if not over:
                        break
                    # another head claimed CPUs on these hosts at the same moment: give way, place again
                    self.claims.withdraw(record.cluster, record.allocation)
                    log.info("cluster %s: with other heads' new claims %s would be over capacity; trying again",
                             record.cluster, ", ".join(over))
                pause(attempt)
                # read afresh: a head that lost with us has withdrawn its claim by now (reusing what we saw would
                # count it, and both could give up on capacity that is free); ours is withdrawn too
                view = self.view()
            else:
                raise CapacityError(f"could not reserve a cluster: other head nodes claimed the same public IP,"
                                    f" VLAN, names or CPUs {MAX_ATTEMPTS} times in a row; try again")
            try:
                self.store.put(record)
            except OSError as exc:
                self.claims.withdraw(record.cluster, record.allocation)
                raise DriverError(f"cannot write the allocation record in {cfg.state_dir}: {exc.strerror}") from None
        log.info("allocated cluster %s: %d compute node(s) on %d host(s), VLAN %d, public IP %s",
                 allocation.cluster, len(allocation.computes), len({n.host for n in allocation.nodes}),
                 plan.vlan, plan.public_ip)
        return allocation

    def _record(self, allocation: Allocation, cluster: StagedCluster) -> ClusterRecord:
        from attrs import evolve

        from .allocation import cluster_record

        record = cluster_record(self.settings, allocation, cluster, head=self.head, created=time.time(),
                                owner_pid=os.getpid())
        return evolve(record, bases=self._bases(allocation, cluster))

    def _bases(self, allocation: Allocation, cluster: StagedCluster) -> list[str]:
        """The copies and uploads this cluster's nodes use (``host/name``; ``/name`` in a shared diskdir)."""
        from . import deploy as deploying
        from .storage import staged_name

        out = []
        for host, files in deploying.needs(self.settings, cluster, allocation.nodes).items():
            for item in files:
                if self.storage.mode == "pool":
                    out.append(f"{host}/{staged_name(item.path, fmt=item.fmt)}")
                elif not self.storage.visible(item.path):  # type: ignore[attr-defined]
                    out.append(f"/{staged_name(item.path, fmt=item.fmt)}")
        return sorted(set(out))

    # ------------------------------------------------------------------ deploy

    def deploy(self, allocation: Allocation, cluster: StagedCluster, vcout: Mapping[str, bytes], *,
               progress: NodeProgress | None = None) -> None:
        from . import deploy as deploying
        from .deploy import Made

        state = self.state_of(allocation)
        record = self.store.get(allocation.cluster)
        if record is None or (record.allocation and record.allocation != state.allocation_id):
            raise DriverError(f"cluster {allocation.cluster} is not allocated (no record of it in"
                              f" {self.settings.state_dir})")
        made = self._made.setdefault(state.allocation_id, Made())
        deploying.deploy(self.settings, self.hosts, self.storage, allocation, cluster, vcout, made, progress=progress)

    # ------------------------------------------------------------------ list

    def _reservation(self, name: str) -> tuple[ClusterRecord | None, ClusterRecord | None]:
        """Cluster ``name``'s local record and live claim (``None`` each when there is none)."""
        record = self.store.get(name)
        claim = next((c for c in self.claims.read().live() if c.cluster == name), None)
        return record, claim

    def _domains_of(self, name: str, nodes: Sequence[NodeRecord], unreachable: set[str]) -> list[DomainInfo]:
        """The domains of ``nodes`` (looked up by name on their hosts); hosts that fail go to ``unreachable``."""
        outcomes = settle(lambda n: self.hosts.domain(n.host, n.name), nodes)
        found = []
        for node, outcome in zip(nodes, outcomes):
            if isinstance(outcome, BaseException):
                if node.host not in unreachable:
                    log.warning("%s; its nodes are listed as unknown", outcome)
                unreachable.add(node.host)
            elif outcome is not None and outcome.record is not None and outcome.record.cluster == name:
                found.append(outcome)
        return found

    def _scan(self, name: str | None, unreachable: set[str]) -> tuple[dict[str, ClusterRecord], list[DomainInfo]]:
        """Reservations and node domains of every cluster (or of ``name``), from every host."""
        view = read_view(self.hosts, self.settings.all_hosts, self.settings.claim_group, self.store.all(), self.head)
        for why in view.unreachable.values():
            log.warning("%s; its nodes are listed as unknown", why)
        unreachable.update(view.unreachable)
        reservations = {r.cluster: r for r in view.claims.live()}
        reservations.update({r.cluster: r for r in view.records})
        if name is not None:
            reservations = {k: v for k, v in reservations.items() if k == name}
        nodes = [d for d in view.nodes if d.record and (name is None or d.record.cluster == name)]
        return reservations, nodes

    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        """Clusters from the reservations and the domains' metadata; a node without a domain is ``reserved``.

        A host libvirt cannot reach does not fail the listing: a warning names
        it and its nodes are listed ``unknown``.
        """
        unreachable: set[str] = set()
        if name is not None:
            record, claim = self._reservation(name)
            known = record or claim
            if known is not None:
                found = self._domains_of(name, known.nodes, unreachable)
                return cluster_statuses({name: known}, found, unreachable)
        reservations, nodes = self._scan(name, unreachable)
        return cluster_statuses(reservations, nodes, unreachable)

    # ------------------------------------------------------------------ shutdown / clean / rollback

    def _target(self, name: str) -> tuple[teardown.Target, list[DomainInfo]] | None:
        """Cluster ``name``'s nodes and reservations, and the domains found; ``None`` when there is no such cluster."""
        from . import teardown

        record, claim = self._reservation(name)
        unreachable: set[str] = set()
        known = record or claim
        if known is not None:
            nodes = list(known.nodes)
            for extra in (claim, record):
                if extra is not None:
                    nodes += [n for n in extra.nodes if n.name not in {m.name for m in nodes}]
            found = self._domains_of(name, nodes, unreachable)
        else:
            _reservations, found = self._scan(name, unreachable)
            nodes = [d.record for d in found if d.record]
        if not nodes and known is None:
            return None
        return teardown.Target(name=name, nodes=tuple(nodes), record=record, claim=claim), found

    def shutdown(self, name: str) -> ClusterStatus:
        from pragma_core import ClusterStatus

        from . import teardown

        target = self._target(name)
        if target is None:
            raise NotFoundError(f"no cluster named {name}")
        running = [d for d in target[1] if d.active]
        mark = time.monotonic()
        failures = teardown.shutdown(self.hosts, running, self.settings.shutdown_timeout, self._ask_shutdown)
        log.debug("cluster %s: %d node(s) off in %.2f s", name, len(running), time.monotonic() - mark)
        if failures:
            raise DriverError(f"cluster {name}: " + "; ".join(str(f) for f in failures))
        statuses = self.list_clusters(name)
        return statuses[0] if statuses else ClusterStatus(name=name)

    def _ask_shutdown(self, running: Sequence[DomainInfo], timeout: float) -> list[DomainInfo]:
        """Send every domain an ACPI power-off; wait up to ``timeout`` s. The domains still running."""
        from . import teardown

        return teardown.ask_shutdown(self.hosts, running, timeout)

    def clean(self, name: str, *, force: bool = False) -> None:
        """Remove cluster ``name`` on every host; ``force``: running nodes are powered off at once first."""
        from . import teardown

        with self._locked():
            found = self._target(name)
            if found is None:
                raise NotFoundError(f"no cluster named {name}")
            target, domains_found = found
            running = [d.name for d in domains_found if d.active]
            if running and not force:
                raise DriverError(
                    f"cluster {name} still has running node(s): {', '.join(sorted(running))};"
                    f" run 'pragma shutdown {name}' first"
                )
            teardown.remove(target, hosts=self.hosts, storage=self.storage, store=self.store, claims=self.claims)
        log.info("cluster %s removed", name)

    def rollback(self, allocation: Allocation) -> None:
        """Remove what ``allocation`` made, and only that: its domains, its disks, its record and claim."""
        from . import teardown

        state = self.state_of(allocation)
        ident = state.allocation_id
        with self._locked():
            record = self.store.get(allocation.cluster)
            claims = self.claims.read()
            claim = next((c for c in claims.live() if c.allocation == ident), None)
            mine = record if record is not None and record.allocation == ident else None
            known = mine or claim
            nodes = known.nodes if known is not None else tuple(
                NodeRecord(cluster=allocation.cluster, name=n.name, hostname=n.hostname, role=n.role, host=n.host,
                           cpus=n.cpus, memory_mib=n.memory_mib, allocation=ident) for n in allocation.nodes)
            target = teardown.Target(name=allocation.cluster, nodes=tuple(nodes), record=mine, claim=claim)
            teardown.remove(target, hosts=self.hosts, storage=self.storage, store=self.store, claims=self.claims,
                            allocation=ident, made=self._made.pop(ident, None))

    # ------------------------------------------------------------------ orphans

    def orphans(self) -> list[Orphan]:
        """What crashed runs left on any host that belongs to no live cluster (:mod:`.orphans`)."""
        from . import orphans as orphans_module

        view = self.view()
        return orphans_module.find(view, self.storage, hosts_with_pools=[h for h in self.settings.all_hosts
                                                                          if h not in view.unreachable])

    def remove_orphans(self) -> tuple[list[Orphan], list[str]]:
        """Find the orphans and remove them: what was found, and one line per failure."""
        from . import orphans as orphans_module

        with self._locked():
            view = self.view()
            found = orphans_module.find(view, self.storage, hosts_with_pools=[h for h in self.settings.all_hosts
                                                                               if h not in view.unreachable])
            failures = orphans_module.remove(found, hosts=self.hosts, claims=self.claims, store=self.store,
                                             storage=self.storage, view=view)
        return found, failures

    # ------------------------------------------------------------------ console logs / readiness

    def console_log_path(self, node_name: str) -> Path:
        """The file libvirt logs node ``node_name``'s serial console to: ``<diskdir>/<node>.console.log``.

        libvirt's virtlogd writes it on the node's host and starts it afresh at
        every start of the domain. With a shared diskdir this machine reads it
        too; with ``disk_storage = pool`` it is a volume of the host's pool
        (``wait_ready`` downloads it). ``clean`` deletes it.
        """
        return Path(self.storage.console_path("", node_name))

    def wait_ready(self, name: str, timeout: float, *, progress: NodeProgress | None = None) -> dict[str, str]:
        """Wait until every node of ``name`` printed ``PRAGMA-READY`` on its serial console.

        Returns node -> ``"ready"``, ``"failed: <the line>"``, ``"stopped:
        ..."`` (domain not running when called: not waited for) or
        ``"timeout: ..."``, frontend first.
        """
        from .console import wait_for_verdicts

        statuses = self.list_clusters(name)
        if not statuses:
            raise NotFoundError(f"no cluster named {name}")
        return wait_for_verdicts(
            statuses[0].nodes, lambda n: self.storage.read_console(n.host, n.name), timeout,
            lambda n: self.storage.console_path(n.host, n.name) + (f" on {n.host}" if self.storage.mode == "pool"
                                                                   else ""),
            progress=progress,
        )
