"""Deploy an allocated cluster: disks on each node's host, domains defined there, frontend run first.

1. the node disks must not exist yet; base images (and kernels) reach the
   hosts that need them (:meth:`~.storage.Storage.stage`);
2. node disks with vc-out inside are made (:meth:`~.storage.Storage.build`),
   and as soon as a node's disk is complete, in the same thread, its domain
   is defined on its host with the node's record as metadata (its
   allocation id included) and its QEMU is launched with paused vCPUs
   (``max_parallel`` nodes at a time on each host): the launches -- the slow
   part of a start -- overlap each other and the disks still being written;
3. once every node is launched, the frontend is resumed, then the
   computes: no guest takes CPU from the launches, and no compute runs
   before the frontend (hosts that cannot start a domain paused start the
   frontend, then the computes).

What it made is noted in a :class:`Made`, so a rollback removes exactly that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from attrs import define, field

from pragma_core import Allocation, DriverError, Node, StagedCluster, StagedImage
from pragma_core.pluginkit import NodeProgress, run_parallel

from . import domains
from .allocation import KvmRocksState, node_record
from .disks import target_format
from .domainxml import Nic, boot_files, build_domain_xml, check_template
from .hosts import Hosts
from .settings import KvmRocksSettings
from .storage import NodeDisk, StagedFile, Storage

log = logging.getLogger(__name__)


@define
class Made:
    """What a deploy made, for its rollback: disks ``(host, path or volume)`` and domains ``(host, name)``."""

    disks: list[tuple[str, str]] = field(factory=list)
    domains: list[tuple[str, str]] = field(factory=list)
    lock: threading.Lock = field(factory=threading.Lock)


def _image(cluster: StagedCluster, node: Node) -> StagedImage | None:
    return cluster.frontend if node.role == "frontend" else cluster.compute


def _template(cluster: StagedCluster, node: Node) -> str:
    description = cluster.description
    return (description.frontend if node.role == "frontend" else description.compute_template).domain_xml


def needs(cfg: KvmRocksSettings, cluster: StagedCluster, nodes: Sequence[Node]) -> dict[str, list[StagedFile]]:
    """Host -> the files its nodes need from the head: base images (overlays) and kernels, initrds, dtbs."""
    directory = cluster.description.directory
    out: dict[str, dict[Path, StagedFile]] = {}
    for node in nodes:
        files = out.setdefault(node.host, {})
        image = _image(cluster, node)
        if image is not None and cfg.disk_mode == "overlay":
            files[image.path] = StagedFile(path=image.path, fmt=image.format, root=directory)
        for path in boot_files(_template(cluster, node), directory).values():
            files[path] = StagedFile(path=path, root=directory)
    return {host: list(files.values()) for host, files in out.items()}


def deploy(cfg: KvmRocksSettings, hosts: Hosts, storage: Storage, allocation: Allocation, cluster: StagedCluster,
           vcout: Mapping[str, bytes], made: Made, *, progress: NodeProgress | None = None) -> None:
    """Make the disks, define the domains, start the cluster (see the module text)."""
    started = time.monotonic()
    nodes = allocation.nodes
    for template in {_template(cluster, n) for n in nodes}:
        check_template(template)  # a template that reaches the host is refused before anything is made
    storage.check_free([(n.host, n.name) for n in nodes])
    staged = storage.stage(needs(cfg, cluster, nodes))
    disks = [
        NodeDisk(node=n.name, host=n.host, vcout=vcout.get(n.name),
                 base=StagedFile(path=image.path, fmt=image.format, root=cluster.description.directory))
        for n in nodes if (image := _image(cluster, n)) is not None
    ]
    workers = per_host_workers(cfg.max_parallel, nodes)
    by_name = {n.name: n for n in nodes}
    paused: dict[str, bool] = {}
    disks_done = [started]

    def launch(node: Node) -> None:
        define_node(cfg, hosts, storage, allocation, cluster, node, staged, made)
        paused[node.name] = domains.start(hosts, node.host, node.name, paused=True)

    def disk_ready(disk: NodeDisk) -> None:
        disks_done.append(time.monotonic())
        launch(by_name[disk.node])

    storage.build(disks, staged, made.disks, ready=disk_ready, workers=workers)
    _parallel(launch, [n for n in nodes if n.name not in paused], workers, "nodes")  # nodes without a disk
    log.info("cluster %s: %d disk(s) ready in %.2f s", allocation.cluster, len(disks), max(disks_done) - started)
    log.debug("cluster %s: %d node(s) launched in %.2f s", allocation.cluster, len(nodes), time.monotonic() - started)
    run_cluster(hosts, allocation, {name for name, is_paused in paused.items() if is_paused}, workers,
                progress=progress)
    log.info("cluster %s: %d node(s) started in %.2f s", allocation.cluster, len(nodes), time.monotonic() - started)


def per_host_workers(max_parallel: int, nodes: Sequence[Node]) -> int:
    """Threads for defines and starts: ``max_parallel`` for each host the nodes use (at most 32).

    Hosts start their domains independently, so a cluster over three hosts
    starts three times as many at once; placement interleaves the hosts.
    """
    return max(1, min(max_parallel * len({n.host for n in nodes}), 32))


def define_node(cfg: KvmRocksSettings, hosts: Hosts, storage: Storage, allocation: Allocation,
                cluster: StagedCluster, node: Node, staged: Mapping[tuple[str, Path], str], made: Made) -> None:
    """Define ``node``'s domain on its host (its console log prepared first)."""
    state = allocation.state
    assert isinstance(state, KvmRocksState)
    nics = [Nic(mac=nic.mac, bridge=state.bridge(nic.network),
                vlan=allocation.vlan if nic.network == "private" else None) for nic in node.interfaces]
    for nic, iface in zip(nics, node.interfaces):
        if not nic.bridge:
            raise DriverError(f"no bridge configured for network {iface.network} (public_bridge?)")
    directory = cluster.description.directory
    template = _template(cluster, node)
    image = _image(cluster, node)
    xml = build_domain_xml(
        template,
        name=node.name,
        domain_type=hosts.domain_type(node.host, cfg.domain_type),
        vcpus=node.cpus,
        memory_mib=node.memory_mib,
        disk=Path(storage.disk_path(node.host, node.name)),
        disk_format=target_format(cfg.disk_mode, image.format if image else "raw"),
        nics=nics,
        record=node_record(cfg, allocation, node, cluster),
        cluster_dir=directory,
        cpu_model=cfg.cpu_model,
        console_log=storage.console_path(node.host, node.name),
        boot_paths={tag: staged[(node.host, path)] for tag, path in boot_files(template, directory).items()},
    )
    storage.prepare_console(node.host, node.name)
    domains.define(hosts, node.host, node.name, xml)
    with made.lock:
        made.domains.append((node.host, node.name))


def run_cluster(hosts: Hosts, allocation: Allocation, paused: set[str], workers: int, *,
                progress: NodeProgress | None = None) -> None:
    """Run every node: the frontend first, then the computes (``paused``: the nodes launched paused).

    No compute runs a guest instruction before the frontend runs, and no
    guest runs while QEMUs are still being launched: a running guest's
    firmware would take CPU from the launches (the slow part of a start). A
    node not launched paused (a host that cannot start a domain paused:
    libvirt's test driver) is started here, the frontend first.
    ``progress(started, total)`` is called as each node runs its guest.
    """
    mark = time.monotonic()
    fe = allocation.frontend
    counter = _Counter(len(allocation.nodes), progress)
    if fe.name in paused:
        domains.resume(hosts, fe.host, fe.name)
    else:
        domains.start(hosts, fe.host, fe.name)
    counter.step()
    computes = allocation.computes
    _parallel(lambda n: counter.step(domains.resume(hosts, n.host, n.name)), [n for n in computes if n.name in paused],
              workers, "resumes")
    _parallel(lambda n: counter.step(domains.start(hosts, n.host, n.name)), [n for n in computes if n.name not in paused],
              workers, "starts")
    log.debug("cluster %s: every node running %.2f s after the launches ended (%d launched paused)",
              allocation.cluster, time.monotonic() - mark, len(paused))


class _Counter:
    """Counts nodes started and tells ``progress`` (thread-safe)."""

    def __init__(self, total: int, progress: NodeProgress | None) -> None:
        self.total, self.progress, self.done = total, progress, 0
        self.lock = threading.Lock()

    def step(self, _result: object = None) -> None:
        with self.lock:
            self.done += 1
            done = self.done
        if self.progress is not None:
            self.progress(done, self.total)


def _parallel(work: Callable[[Node], object], items: Sequence[Node], workers: int, what: str) -> None:
    """Core's :func:`~pragma_core.pluginkit.run_parallel` over nodes: every failure raised, named by node."""
    run_parallel(work, items, workers=workers, label=lambda node: node.name, what=what)
