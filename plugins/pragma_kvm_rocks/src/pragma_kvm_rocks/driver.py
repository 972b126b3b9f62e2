"""``kvm_rocks``: boot virtual clusters as libvirt/KVM domains on one or more hosts.

The successor of the Rocks-based legacy driver (reference §7.2), talking to
libvirt directly. See the plugin README for every ``kvm_rocks.conf`` key.

* :meth:`KvmRocksDriver.allocate` -- under an exclusive file lock in
  ``state_dir``: place compute CPUs on the hosts (:mod:`.placement`), pick a
  free public IP (its reverse-DNS name names the cluster), a free VLAN,
  unique MACs and private addresses, and write an allocation record.
* :meth:`KvmRocksDriver.deploy` -- make the node disks with vc-out inside
  (:mod:`.disks`), define the domains (with pragma metadata), start the
  frontend first: the computes' QEMUs are launched alongside it with paused
  vCPUs (``max_parallel`` at a time) and resumed once the frontend runs.
* ``list_clusters``, ``shutdown``, ``clean`` and ``rollback`` work from the
  domains' metadata and the records, so any later process can run them.
* A rollback that cannot reach libvirtd leaves the record (and whatever it
  made): the cluster stays *reserved*. ``list cluster`` shows its nodes
  ``reserved`` (no domain) or ``unknown`` (host unreachable), and a
  :class:`~pragma_core.errors.CapacityError` of a later boot names every
  cluster that holds resources with no node running ("reserved, not
  running: X; pragma clean X") -- except one whose boot is still running.
* Each node's serial console is logged by libvirt to
  :meth:`KvmRocksDriver.console_log_path` (``<diskdir>/<node>.console.log``);
  :meth:`KvmRocksDriver.wait_ready` (``pragma boot wait=S``) watches those
  logs for the guest's ``PRAGMA-READY`` / ``PRAGMA-FAILED`` line.

This module imports libvirt only inside methods (through :mod:`.hosts`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, ClassVar

from filelock import FileLock, Timeout

from pragma_core.errors import CapacityError, DriverError, NotFoundError
from pragma_core.interfaces import Driver
from pragma_core.model import (
    Allocation,
    BootRequest,
    ClusterStatus,
    Interface,
    Network,
    Node,
    NodeStatus,
    StagedCluster,
)
from pragma_core.signals import process_alive

from .disks import DiskBuilder, DiskJob, disk_name, target_format
from .domainxml import Nic, build_domain_xml
from .hosts import DomainInfo, Hosts, import_libvirt
from .placement import HostCapacity, free_capacity, place
from .records import ClusterRecord, NicRecord, NodeRecord, RecordStore
from .settings import KvmRocksSettings, is_ovs

log = logging.getLogger(__name__)

#: Locally administered, unicast prefix of the MACs pragma makes (the legacy Rocks one).
MAC_PREFIX = (0x72, 0x77, 0x6E)
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOCK_TIMEOUT = 300.0
_DNS_TIMEOUT = 3.0


def reverse_name(ip: str, *, timeout: float = _DNS_TIMEOUT) -> str | None:
    """The reverse-DNS name of ``ip``, or ``None`` (no name, or no answer within ``timeout``)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(socket.gethostbyaddr, ip)
        try:
            return future.result(timeout=timeout)[0]
        except (OSError, FutureTimeout):
            return None


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


class KvmRocksDriver(Driver):
    """Virtual clusters as libvirt domains (KVM or QEMU) on the site's hosts."""

    name: ClassVar[str] = "kvm_rocks"
    config_class: ClassVar[type | None] = KvmRocksSettings

    def __init__(self, config: KvmRocksSettings, *, site: Any = None, hosts: Hosts | None = None) -> None:
        super().__init__(config, site=site)
        self.settings: KvmRocksSettings = config
        self.hosts = hosts or Hosts({h: config.uri_for(h) for h in config.all_hosts})
        self.store = RecordStore(config.state_dir)
        if not is_ovs(config.private_bridge) and "{vlan}" not in config.private_bridge:
            log.warning(
                "private_bridge %r has no {vlan}: every cluster's private network shares one bridge",
                config.private_bridge,
            )

    # ------------------------------------------------------------------ helpers

    def _lock(self) -> FileLock:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.settings.state_dir / "allocation.lock"), timeout=_LOCK_TIMEOUT)

    def _pool(self, workers: int | None = None) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=workers or self.settings.max_parallel)

    def _inventory(self, *, unreachable: set[str] | None = None) -> list[DomainInfo]:
        """Every domain of every host; with ``unreachable``, a host that cannot be reached is added to it."""
        hosts = self.hosts.names
        with self._pool(len(hosts)) as pool:
            found = pool.map(lambda h: self._reach(lambda: self.hosts.inventory(h), h, [], unreachable), hosts)
            return [d for domains in found for d in domains]

    @staticmethod
    def _reach(read: Callable[[], Any], host: str, empty: Any, unreachable: set[str] | None) -> Any:
        """``read()``; when ``unreachable`` is given, a failure to reach ``host`` adds it there and gives ``empty``."""
        if unreachable is None:
            return read()
        try:
            return read()
        except DriverError as exc:
            log.warning("%s; its nodes are listed as unknown", exc)
            unreachable.add(host)
            return empty

    def _map(self, work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``work`` over ``items`` on a pool of threads (one per item, at most 32), results in order."""
        items = list(items)
        if len(items) <= 1:
            return [work(item) for item in items]
        with self._pool(min(len(items), 32)) as pool:
            return list(pool.map(work, items))

    def _run_all(self, work: Callable[[Any], None], items: Iterable[Any], *, workers: int | None = None) -> None:
        """Run ``work`` on every item in parallel; raise the first failure after all finished."""
        items = list(items)
        if not items:
            return
        with self._pool(workers) as pool:
            futures = [pool.submit(work, item) for item in items]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]

    # ------------------------------------------------------------------ allocate

    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        cfg = self.settings
        description = cluster.description
        fe_template, cn_template = description.frontend, description.compute_template
        fe_cpus = fe_template.vcpus or 1
        fe_mem = request.memory.frontend_mib or fe_template.memory_mib or cfg.default_memory_mib
        cn_mem = request.memory.compute_mib or cn_template.memory_mib or cfg.default_memory_mib
        extras = self._extra_networks(request)
        try:
            lock = self._lock()
            lock.acquire()
        except Timeout:
            raise DriverError(f"another pragma holds the allocation lock in {cfg.state_dir} for too long") from None
        except OSError as exc:
            raise DriverError(f"cannot use state_dir {cfg.state_dir}: {exc.strerror}") from None
        try:
            records = list(self.store.all())
            domains = self._inventory()
            idle = reserved_not_running(records, domains)
            try:
                placements = self._place(request.cpus, fe_cpus, records, domains)
            except CapacityError as exc:
                raise CapacityError(str(exc), reserved=idle) from None
            used_ips = {r.public_ip for r in records} | {
                d.record.public_ip for d in domains if d.record and d.record.public_ip
            }
            used_vlans = {r.vlan for r in records} | {d.record.vlan for d in domains if d.record and d.record.vlan}
            used_names = {d.name for d in domains} | {n.name for r in records for n in r.nodes}
            used_names |= {r.cluster for r in records} | {d.record.cluster for d in domains if d.record}
            used_macs = {m for d in domains for m in d.macs} | {
                nic.mac for r in records for n in r.nodes for nic in n.nics
            }
            public_ip = next((str(ip) for ip in cfg.public_ips if str(ip) not in used_ips), None)
            if public_ip is None:
                raise CapacityError(
                    f"no free public IP: all {len(cfg.public_ips)} in public_ips are in use"
                    " (kvm_rocks.conf; each cluster takes one public IP and one VLAN)", reserved=idle
                )
            vlan = next((v for v in cfg.vlans if v not in used_vlans), None)
            if vlan is None:
                free_ips = sum(str(ip) not in used_ips for ip in cfg.public_ips)
                raise CapacityError(
                    f"no free VLAN: all {len(cfg.vlans)} in vlans are in use while {free_ips} of the"
                    f" {len(cfg.public_ips)} public_ips are free (kvm_rocks.conf; each cluster takes one of each)",
                    reserved=idle,
                )
            reverse = reverse_name(public_ip)
            name = cluster_name_for(public_ip, reverse)
            fqdn = qualified_name(reverse or name, cfg.public_domain)
            computes = [compute_name(name, i, cfg.node_naming) for i in range(len(placements))]
            if name in used_names or used_names.intersection(computes):
                holders = _holders({name, *computes}, records, domains)
                raise CapacityError(
                    f"cluster name {name} (from {public_ip}) is already in use by another domain",
                    reserved=[c for c in idle if c in holders],
                )
            allocation = self._build_allocation(
                request, cluster, name, fqdn, public_ip, vlan, placements, computes,
                fe_cpus, fe_mem, cn_mem, extras, used_macs,
            )
            self.store.put(self._record(allocation, cluster))
        finally:
            lock.release()
        log.info("allocated cluster %s: %d compute node(s), VLAN %d, public IP %s",
                 allocation.cluster, len(allocation.computes), vlan, public_ip)
        return allocation

    def _extra_networks(self, request: BootRequest) -> list[tuple[str, str, ipaddress.IPv4Interface, int]]:
        """``(network, bridge, cidr, mtu)`` for every ``add-iface`` network and ENT."""
        cfg = self.settings
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
            out.append((item.network, net.bridge, cidr, net.mtu))
        if request.enable_ent:
            ent = cfg.ent_network()
            if ent is None:
                raise DriverError("enable-ent=true but kvm_rocks.conf has no 'ent' setting")
            if ent.subnet is None:
                raise DriverError("enable-ent=true: set 'subnet' in kvm_rocks.conf ent (or additional_interfaces)")
            if all(o[0] != ent.name for o in out):
                out.append((ent.name, ent.bridge, ipaddress.IPv4Interface(str(ent.subnet)), ent.mtu))
        return out

    def _place(
        self, cpus: int, fe_cpus: int, records: list[ClusterRecord], domains: list[DomainInfo]
    ) -> list[Any]:
        cfg = self.settings
        active = {(d.host, d.name) for d in domains if d.active}
        capacities = []
        for host in cfg.all_hosts:
            used = sum(d.vcpus for d in domains if d.host == host and d.active)
            # Reserved by other boots but not running yet: count them too.
            used += sum(
                n.cpus for r in records for n in r.nodes if n.host == host and (host, n.name) not in active
            )
            if host == cfg.frontend:
                used += fe_cpus
            capacities.append(HostCapacity(name=host, cpus=self.hosts.cpus(host), used=used))
        fe = next(c for c in capacities if c.name == cfg.frontend)
        usable = int((max(fe.cpus - cfg.num_processors_reserved, 0)) * cfg.cpu_allocation_ratio + 1e-9)
        if usable < fe.used:
            raise CapacityError(
                f"not enough capacity for the frontend on {cfg.frontend}: it needs {fe_cpus} CPUs,"
                f" {max(usable - fe.used + fe_cpus, 0)} available"
            )
        free = free_capacity(
            capacities, reserved=cfg.num_processors_reserved, ratio=cfg.cpu_allocation_ratio, allowed=cfg.hosts
        )
        return place(cpus, free, max_cpus_per_node=cfg.max_cpus_per_node)

    def _new_mac(self, used: set[str]) -> str:
        while True:
            tail = tuple(random.randrange(256) for _ in range(3))
            mac = ":".join(f"{b:02x}" for b in (*MAC_PREFIX, *tail))
            if mac not in used:
                used.add(mac)
                return mac

    def _build_allocation(
        self,
        request: BootRequest,
        cluster: StagedCluster,
        name: str,
        fqdn: str,
        public_ip: str,
        vlan: int,
        placements: list[Any],
        computes: list[str],
        fe_cpus: int,
        fe_mem: int,
        cn_mem: int,
        extras: list[tuple[str, str, ipaddress.IPv4Interface, int]],
        used_macs: set[str],
    ) -> Allocation:
        from pragma_core.addressing import plan_addresses

        cfg = self.settings
        private = plan_addresses(cfg.private_network, len(placements))
        netmask = cfg.netmask or "255.255.255.0"
        public_net = ipaddress.IPv4Interface(f"{public_ip}/{netmask}").network
        networks = [
            Network(name="private", subnet=cfg.private_network, vlan=vlan),
            Network(name="public", subnet=public_net, gateway=cfg.gw),
        ]
        extra_plans = []
        for net_name, _bridge, cidr, mtu in extras:
            start = cidr.ip if int(cidr.ip) != int(cidr.network.network_address) else None
            extra_plans.append((net_name, plan_addresses(cidr.network, len(placements), start=start)))
            networks.append(Network(name=net_name, subnet=cidr.network, mtu=mtu))
        fe_nics = [
            Interface(network="private", ip=private.frontend, mac=self._new_mac(used_macs), device="eth0"),
            Interface(
                network="public", ip=ipaddress.IPv4Address(public_ip), mac=self._new_mac(used_macs), device="eth1"
            ),
        ]
        for k, (net_name, plan) in enumerate(extra_plans):
            fe_nics.append(
                Interface(network=net_name, ip=plan.frontend, mac=self._new_mac(used_macs), device=f"eth{2 + k}")
            )
        frontend = Node(
            name=name,
            hostname=name,
            role="frontend",
            cpus=fe_cpus,
            memory_mib=fe_mem,
            interfaces=fe_nics,
            gateway=cfg.gw,
            host=cfg.frontend,
        )
        nodes = []
        for i, (placement, node_name) in enumerate(zip(placements, computes)):
            nics = [Interface(network="private", ip=private.computes[i], mac=self._new_mac(used_macs), device="eth0")]
            for k, (net_name, plan) in enumerate(extra_plans):
                nics.append(
                    Interface(network=net_name, ip=plan.computes[i], mac=self._new_mac(used_macs), device=f"eth{1 + k}")
                )
            nodes.append(
                Node(
                    name=node_name,
                    hostname=f"compute-{i}",
                    role="compute",
                    cpus=placement.cpus,
                    memory_mib=cn_mem,
                    interfaces=nics,
                    gateway=private.frontend,
                    host=placement.host,
                )
            )
        bridges = {"private": cfg.private_bridge, "public": cfg.public_bridge or ""}
        bridges.update({net_name: bridge for net_name, bridge, _c, _m in extras})
        return Allocation(
            cluster=name,
            image=request.image,
            fqdn=fqdn,
            frontend=frontend,
            computes=nodes,
            networks=networks,
            dns=cfg.dns,
            key=request.key,
            vlan=vlan,
            extra={f"bridge.{k}": v for k, v in bridges.items()},
        )

    def _record(self, allocation: Allocation, cluster: StagedCluster) -> ClusterRecord:
        return ClusterRecord(
            cluster=allocation.cluster,
            image=allocation.image,
            fqdn=allocation.fqdn,
            vlan=allocation.vlan or 0,
            public_ip=str(allocation.public_ip),
            nodes=[self._node_record(allocation, node, cluster) for node in allocation.nodes],
            owner_pid=os.getpid(),
        )

    def _node_record(self, allocation: Allocation, node: Node, cluster: StagedCluster) -> NodeRecord:
        image = cluster.frontend if node.role == "frontend" else cluster.compute
        disk = self.settings.disk_directory / disk_name(node.name, self.settings.disk_mode)
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
        )

    # ------------------------------------------------------------------ deploy

    def deploy(self, allocation: Allocation, cluster: StagedCluster, vcout: Mapping[str, bytes]) -> None:
        cfg = self.settings
        record = self.store.get(allocation.cluster)
        if record is None:
            raise DriverError(f"cluster {allocation.cluster} is not allocated (no record in {cfg.state_dir})")
        by_name = {n.name: n for n in record.nodes}
        jobs = []
        for node in allocation.nodes:
            image = cluster.frontend if node.role == "frontend" else cluster.compute
            jobs.append(
                DiskJob(
                    node=node.name,
                    base=image.path,
                    base_format=image.format,
                    target=Path(by_name[node.name].disk),
                    vcout=vcout.get(node.name),
                )
            )
        started = time.monotonic()
        DiskBuilder(mode=cfg.disk_mode, injection=cfg.vcout_injection, max_parallel=cfg.max_parallel).build(jobs)
        log.info("cluster %s: %d disk(s) ready in %.2f s", allocation.cluster, len(jobs), time.monotonic() - started)

        def define(node: Node) -> None:
            template = (
                cluster.description.frontend if node.role == "frontend" else cluster.description.compute_template
            )
            image = cluster.frontend if node.role == "frontend" else cluster.compute
            bridges = allocation.extra
            nics = [
                Nic(mac=nic.mac, bridge=bridges.get(f"bridge.{nic.network}", ""), vlan=allocation.vlan
                    if nic.network == "private" else None)
                for nic in node.interfaces
            ]
            for nic, iface in zip(nics, node.interfaces):
                if not nic.bridge:
                    raise DriverError(f"no bridge configured for network {iface.network} (public_bridge?)")
            xml = build_domain_xml(
                template.domain_xml,
                name=node.name,
                domain_type=self.hosts.domain_type(node.host, cfg.domain_type),
                vcpus=node.cpus,
                memory_mib=node.memory_mib,
                disk=Path(by_name[node.name].disk),
                disk_format=target_format(cfg.disk_mode, image.format),
                nics=nics,
                record=by_name[node.name],
                cluster_dir=cluster.description.directory,
                cpu_model=cfg.cpu_model,
                console_log=self.console_log_path(node.name),
            )
            libvirt = import_libvirt()
            try:
                self.hosts.conn(node.host).defineXML(xml)
            except libvirt.libvirtError as exc:
                raise DriverError(f"libvirt refused node {node.name} on {node.host}: {exc.get_error_message()}") from None

        mark = time.monotonic()
        self._run_all(define, allocation.nodes)
        log.debug("cluster %s: domains defined in %.2f s", allocation.cluster, time.monotonic() - mark)
        self._start_cluster(allocation)
        log.info("cluster %s: %d node(s) started in %.2f s", allocation.cluster, len(allocation.nodes),
                 time.monotonic() - started)

    def _start_cluster(self, allocation: Allocation) -> None:
        """Start the frontend first: no compute runs a guest instruction before the frontend runs.

        Launching a QEMU is the slow part of a start, so the computes are
        launched alongside the frontend (``max_parallel`` at a time) with
        their vCPUs paused, and resumed once the frontend runs. A host that
        cannot start a domain paused starts its computes after the frontend.
        """
        mark = time.monotonic()
        with self._pool() as pool:
            frontend = pool.submit(self._start, allocation.frontend)
            launched = [pool.submit(self._start, node, paused=True) for node in allocation.computes]
            frontend.exception()  # wait for it first; the pool runs the rest meanwhile
            log.debug("cluster %s: frontend started in %.2f s", allocation.cluster, time.monotonic() - mark)
        errors = [f.exception() for f in (frontend, *launched) if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        paused = [node for node, f in zip(allocation.computes, launched) if f.result()]
        later = [node for node, f in zip(allocation.computes, launched) if not f.result()]
        self._run_all(self._resume, paused)
        self._run_all(self._start, later)
        log.debug("cluster %s: computes running %.2f s after the frontend's start began (%d launched paused)",
                  allocation.cluster, time.monotonic() - mark, len(paused))

    def _start(self, node: Node, *, paused: bool = False) -> bool:
        """Start ``node``'s domain; with ``paused``, its vCPUs stopped if the host can (then ``True``).

        ``paused`` on a host that cannot start a domain paused (libvirt's test
        driver) starts nothing and returns ``False``.
        """
        libvirt = import_libvirt()
        try:
            dom = self.hosts.conn(node.host).lookupByName(node.name)
            if not paused:
                dom.create()
                return False
            try:
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                    return False
                raise
            return True
        except libvirt.libvirtError as exc:
            raise DriverError(f"cannot start node {node.name} on {node.host}: {exc.get_error_message()}") from None

    def _resume(self, node: Node) -> None:
        libvirt = import_libvirt()
        try:
            self.hosts.conn(node.host).lookupByName(node.name).resume()
        except libvirt.libvirtError as exc:
            raise DriverError(f"cannot resume node {node.name} on {node.host}: {exc.get_error_message()}") from None

    # ------------------------------------------------------------------ list / shutdown / clean

    def _cluster_domains(
        self, name: str | None = None, *, unreachable: set[str] | None = None
    ) -> dict[str, list[DomainInfo]]:
        """Domains by cluster: of cluster ``name`` only, or of every cluster.

        With an allocation record for ``name``, only its nodes are looked up (a
        call per node, whatever else runs on the hosts); without one, every
        domain of every host is read for pragma metadata. With ``unreachable``,
        a host libvirt cannot reach is added to it instead of failing the call.
        """
        record = self.store.get(name) if name is not None else None
        if record is not None:
            found = self._map(
                lambda n: self._reach(lambda: self.hosts.domain(n.host, n.name), n.host, None, unreachable),
                record.nodes,
            )
            mine = [d for d in found if d is not None and d.record is not None and d.record.cluster == name]
            return {name: mine} if mine else {}
        out: dict[str, list[DomainInfo]] = {}
        for dom in self._inventory(unreachable=unreachable):
            if dom.record and (name is None or dom.record.cluster == name):
                out.setdefault(dom.record.cluster, []).append(dom)
        return out

    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        """Clusters from the domains' metadata and the records; a reservation without domains is ``reserved``.

        A host libvirt cannot reach does not fail the listing: a warning names
        it and its recorded nodes are listed ``unknown``.
        """
        unreachable: set[str] = set()
        domains = self._cluster_domains(name, unreachable=unreachable)
        records = {r.cluster: r for r in self.store.all() if name is None or r.cluster == name}
        out = []
        for cluster in sorted(set(domains) | set(records)):
            found = {d.name: d for d in domains.get(cluster, [])}
            nodes = []
            record = records.get(cluster)
            known = list(record.nodes) if record else []
            known += [d.record for d in found.values() if d.record and d.record.name not in {n.name for n in known}]
            for node in known:
                dom = found.get(node.name)
                nodes.append(
                    NodeStatus(
                        name=node.name,
                        role="frontend" if node.role == "frontend" else "compute",
                        state=dom.state if dom else ("unknown" if node.host in unreachable else "reserved"),
                        host=node.host,
                        cpus=dom.vcpus if dom else node.cpus,
                        memory_mib=dom.memory_mib if dom else node.memory_mib,
                        public_ip=node.public_ip,
                        private_ip=node.ip("private"),
                    )
                )
            nodes.sort(key=lambda n: (n.role != "frontend", _natural(n.name)))
            public = next((n.public_ip for n in nodes if n.role == "frontend"), None)
            out.append(ClusterStatus(name=cluster, nodes=nodes, public_ip=public))
        return out

    def shutdown(self, name: str) -> ClusterStatus:
        domains = self._cluster_domains(name).get(name, [])
        if not domains and self.store.get(name) is None:
            raise NotFoundError(f"no cluster named {name}")
        running = [d for d in domains if d.active]
        timeout = self.settings.shutdown_timeout
        # shutdown_timeout = 0: power off at once, no ACPI request to wait for
        pending = self._ask_shutdown(running, timeout) if timeout > 0 else running
        if pending:
            if timeout > 0:
                log.info("cluster %s: forcing off %s after %.0f s", name, ", ".join(d.name for d in pending), timeout)
            mark = time.monotonic()
            self._run_all(self._destroy, pending, workers=len(pending))
            log.debug("cluster %s: %d node(s) forced off in %.2f s", name, len(pending), time.monotonic() - mark)
        statuses = self.list_clusters(name)
        return statuses[0] if statuses else ClusterStatus(name=name)

    def _ask_shutdown(self, running: list[DomainInfo], timeout: float) -> list[DomainInfo]:
        """Send every domain an ACPI power-off; wait up to ``timeout`` s. The domains still running."""
        libvirt = import_libvirt()

        def ask(dom: DomainInfo) -> None:
            try:
                self.hosts.conn(dom.host).lookupByName(dom.name).shutdown()
            except libvirt.libvirtError as exc:
                log.debug("ACPI shutdown of %s: %s", dom.name, exc.get_error_message())

        self._run_all(ask, running, workers=max(len(running), 1))
        deadline = time.monotonic() + timeout
        pending = list(running)
        delay = 0.05
        while pending and time.monotonic() < deadline:
            pending = [d for d in pending if self._is_active(d)]
            if pending:
                time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 1.0)
        return [d for d in pending if self._is_active(d)]

    def _is_active(self, dom: DomainInfo) -> bool:
        libvirt = import_libvirt()
        try:
            return bool(self.hosts.conn(dom.host).lookupByName(dom.name).isActive())
        except libvirt.libvirtError:
            return False

    def _destroy(self, dom: DomainInfo) -> None:
        libvirt = import_libvirt()
        try:
            handle = self.hosts.conn(dom.host).lookupByName(dom.name)
            if handle.isActive():
                handle.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                raise DriverError(f"cannot stop node {dom.name}: {exc.get_error_message()}") from None

    def _discard(self, dom: DomainInfo) -> None:
        """Power ``dom`` off if it runs, then undefine it (one thread per domain: no waiting for the slowest)."""
        if dom.active:
            self._destroy(dom)
        self._undefine(dom)

    def _undefine(self, dom: DomainInfo) -> None:
        libvirt = import_libvirt()
        try:
            handle = self.hosts.conn(dom.host).lookupByName(dom.name)
        except libvirt.libvirtError:
            return
        try:
            handle.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError:
            try:
                handle.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise DriverError(f"cannot remove node {dom.name}: {exc.get_error_message()}") from None

    def _remove_disk(self, path: str) -> None:
        if not path:
            return
        disk = Path(path)
        diskdir = self.settings.disk_directory.resolve()
        if disk.resolve().parent != diskdir:
            log.warning("not deleting %s: it is not in diskdir %s", disk, diskdir)
            return
        disk.unlink(missing_ok=True)

    def _remove(self, name: str, *, force: bool) -> bool:
        """Remove cluster ``name``: nodes, disks, record. Returns whether anything existed."""
        with self._lock():
            domains = self._cluster_domains(name).get(name, [])
            record = self.store.get(name)
            if not domains and record is None:
                return False
            running = [d.name for d in domains if d.active]
            if running and not force:
                raise DriverError(
                    f"cluster {name} still has running node(s): {', '.join(sorted(running))};"
                    f" run 'pragma shutdown {name}' first"
                )
            mark = time.monotonic()
            self._run_all(self._discard, domains, workers=max(len(domains), 1))
            log.debug("cluster %s: %d domain(s) removed in %.2f s", name, len(domains), time.monotonic() - mark)
            disks = {d.record.disk for d in domains if d.record} | {n.disk for n in (record.nodes if record else ())}
            for disk in disks:
                self._remove_disk(disk)
            nodes = {d.name for d in domains} | {n.name for n in (record.nodes if record else ())}
            for node in nodes:
                self._remove_disk(str(self.console_log_path(node)))
            self.store.delete(name)
            for leftover in self.store.directory.glob(f".{name}.json.*.tmp"):  # a record a killed boot was writing
                leftover.unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------------ console logs / readiness

    def console_log_path(self, node_name: str) -> Path:
        """The file libvirt logs node ``node_name``'s serial console to: ``<diskdir>/<node>.console.log``.

        libvirt's virtlogd writes it on the node's host and starts it afresh at
        every start of the domain; with several hosts, diskdir is the shared
        directory, so this machine reads it too. ``clean`` deletes it.
        """
        return self.settings.disk_directory / f"{node_name}.console.log"

    def wait_ready(self, name: str, timeout: float) -> dict[str, str]:
        """Wait until every node of ``name`` printed ``PRAGMA-READY`` on its serial console.

        Relies on the guest printing that line once its network is configured
        from vc-out (the image-builder's guests do; see
        ``examples/image-builder``), or ``PRAGMA-FAILED`` when it could not.
        Returns node -> ``"ready"``, ``"failed: <the line>"``, ``"stopped:
        ..."`` (domain not running when called: not waited for) or
        ``"timeout: ..."``, frontend first.
        """
        statuses = self.list_clusters(name)
        if not statuses:
            raise NotFoundError(f"no cluster named {name}")
        nodes = [n.name for n in statuses[0].nodes]
        # A node that does not run cannot become ready: say so at once (its log may be an old one).
        result: dict[str, str] = {
            n.name: f"stopped: domain is {n.state}, not running" for n in statuses[0].nodes if n.state != "running"
        }
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            for node in nodes:
                if node not in result:
                    found = _console_verdict(self.console_log_path(node))
                    if found is not None:
                        result[node] = found
            pending = [n for n in nodes if n not in result]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 1.0)
        for node in pending:
            result[node] = f"timeout: no PRAGMA-READY in {self.console_log_path(node)} after {timeout:g} s"
        return {node: result[node] for node in nodes}

    def clean(self, name: str) -> None:
        if not self._remove(name, force=False):
            raise NotFoundError(f"no cluster named {name}")
        log.info("cluster %s removed", name)

    def rollback(self, allocation: Allocation) -> None:
        self._remove(allocation.cluster, force=True)


_READY = re.compile(rb"PRAGMA-(READY|FAILED)\b[^\r\n]*")


def _console_verdict(path: Path) -> str | None:
    """``"ready"`` / ``"failed: <line>"`` from a console log, or ``None`` while it has neither line."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    for match in _READY.finditer(data):
        if match.group(1) == b"READY":
            return "ready"
        return "failed: " + match.group(0).decode("utf-8", "replace").strip()
    return None


def reserved_not_running(records: Iterable[ClusterRecord], domains: Iterable[DomainInfo]) -> list[str]:
    """Clusters that hold resources with no node running, sorted: a rollback that could not finish,
    a boot killed before it rolled back, a cluster shut down and not cleaned.

    A cluster whose record names a process still alive on this machine is
    being booted, and is left out.
    """
    records, domains = list(records), list(domains)
    running = {d.record.cluster for d in domains if d.record and d.active}
    booting = {r.cluster for r in records if process_alive(r.owner_pid)}
    holders = {r.cluster for r in records} | {d.record.cluster for d in domains if d.record}
    return sorted(holders - running - booting)


def _holders(names: set[str], records: Iterable[ClusterRecord], domains: Iterable[DomainInfo]) -> set[str]:
    """The clusters whose nodes (or whose own name) use one of ``names``."""
    out = {r.cluster for r in records if r.cluster in names or any(n.name in names for n in r.nodes)}
    return out | {d.record.cluster for d in domains if d.record and (d.name in names or d.record.cluster in names)}


def _natural(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
