"""Where a node's disk, its base image, kernel and console log are, on the node's own host.

Two site layouts (``disk_storage``):

* ``shared`` (default, the legacy one): ``diskdir`` is the same directory,
  with the same files, on the head and every host (NFS; or one machine).
  The head writes node disks there. A staged image the hosts cannot see (the
  repository is elsewhere) is first copied into diskdir, once, as
  ``pragma-base-<key>.<format>`` (kernels as ``pragma-boot-<key>-<name>``),
  and overlays are backed by that copy; later boots reuse it. With hosts that
  are all this machine (a URI without a host name) nothing is copied.
* ``pool``: each host has its own ``diskdir``. Through the host's libvirt
  (:mod:`.pool`), the base image is uploaded once per host into a storage
  pool at diskdir and reused by later boots; node disks are made on the head
  (an overlay is a few hundred KiB: header, tables and the clusters vc-out
  changed) naming the base by its path on the host, and uploaded into the
  pool; console logs are pool volumes, read back by download.

``<key>`` is a digest of the staged file's path, size, inode and
modification time: a re-staged image gets a new copy. Copies and uploads
stay for later boots; ``pragma list orphans`` shows the ones no cluster
uses and ``pragma remove orphans`` deletes them.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from attrs import frozen

from pragma_core import DriverError, StagingError
from pragma_core.pluginkit import run_parallel

from .hosts import Hosts
from .pool import HostPool, VolumeExists
from .settings import KvmRocksSettings
from .sparse import sparse_copy

# Building disks (and checking a base image) is the boot's: ``clean`` and ``list orphans`` import neither.
if TYPE_CHECKING:
    from .disks import DiskBuilder, DiskJob

log = logging.getLogger(__name__)

BASE_PREFIX = "pragma-base-"
BOOT_PREFIX = "pragma-boot-"
CONSOLE_SUFFIX = ".console.log"
#: A node's console log, or one of virtlogd's rotated copies of it (``.0``, ``.1``...: ``max_backups`` in virtlogd.conf).
_CONSOLE_LOG = re.compile(r"(?P<node>.+)\.console\.log(?:\.[0-9]{1,4})?")
#: Marks a base volume whose upload finished (``<base>.ok``, empty).
DONE_SUFFIX = ".ok"
#: A base upload that has not grown for this long is taken for dead (its boot was killed).
STALLED_UPLOAD = 120.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def disk_name(node: str, mode: str) -> str:
    """The file name of a node's disk in ``diskdir``."""
    return f"{node}.qcow2" if mode == "overlay" else f"{node}.img"


def file_key(path: Path) -> str:
    """A digest naming one staged file as it is now (path, size, inode, modification time)."""
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def staged_name(path: Path, *, fmt: str | None) -> str:
    """The file name of ``path``'s copy on a host: a base image (``fmt`` given) or a kernel/initrd."""
    if fmt is not None:
        return f"{BASE_PREFIX}{file_key(path)}.{'qcow2' if fmt == 'qcow2' else 'img'}"
    return f"{BOOT_PREFIX}{file_key(path)}-{_SAFE.sub('_', path.name)[:64]}"


@frozen(kw_only=True)
class StagedFile:
    """A file a node's host needs: a base image (``fmt``) or a kernel/initrd (``fmt`` None)."""

    path: Path
    fmt: str | None = None
    root: Path | None = None


@frozen(kw_only=True)
class NodeDisk:
    """One node disk to make on ``host``."""

    node: str
    host: str
    base: StagedFile
    vcout: bytes | None = None


class Storage(abc.ABC):
    """What both layouts share; :func:`storage_for` picks one."""

    mode = "shared"

    def __init__(self, cfg: KvmRocksSettings, hosts: Hosts) -> None:
        self.cfg = cfg
        self.hosts = hosts
        self.diskdir = cfg.disk_directory

    def disk_path(self, host: str, node: str) -> str:
        """Where ``node``'s disk is on ``host``."""
        return str(self.diskdir / disk_name(node, self.cfg.disk_mode))

    def console_path(self, host: str, node: str) -> str:
        """Where ``host``'s virtlogd writes ``node``'s serial console."""
        return str(self.diskdir / f"{node}{CONSOLE_SUFFIX}")

    def needs_base(self) -> bool:
        """Whether node disks are overlays (their host needs the base image)."""
        return self.cfg.disk_mode == "overlay"

    def builder(self, workers: int | None = None) -> DiskBuilder:
        from .disks import DiskBuilder

        return DiskBuilder(mode=self.cfg.disk_mode, injection=self.cfg.vcout_injection,
                           max_parallel=workers or self.cfg.max_parallel, guestfish=self.mode != "pool",
                           templates=self.cfg.state_dir / "templates", scratch=self.cfg.state_dir / "scratch")

    def _jobs(self, disks: Sequence[NodeDisk], staged: Mapping[tuple[str, Path], str], directory: Path) -> list[DiskJob]:
        from .disks import DiskJob

        return [
            DiskJob(node=d.node, base=d.base.path, base_format=d.base.fmt or "raw",
                    target=directory / disk_name(d.node, self.cfg.disk_mode), vcout=d.vcout, root=d.base.root,
                    backing_name=staged.get((d.host, d.base.path)))
            for d in disks
        ]

    @abc.abstractmethod
    def stage(self, needs: Mapping[str, Iterable[StagedFile]]) -> dict[tuple[str, Path], str]:
        """Make each host's files reachable there; ``(host, head path)`` -> the path on that host."""

    @abc.abstractmethod
    def check_free(self, nodes: Sequence[tuple[str, str]]) -> None:
        """Raise when a disk of one of the ``(host, node)`` pairs already exists."""

    @abc.abstractmethod
    def build(self, disks: Sequence[NodeDisk], staged: Mapping[tuple[str, Path], str], made: list[tuple[str, str]],
              *, ready: Callable[[NodeDisk], object] | None = None, workers: int | None = None) -> None:
        """Make the node disks on their hosts; each one made is added to ``made`` as ``(host, file)``.

        ``ready(disk)`` is called for each disk as soon as it is in place on
        its host, in the thread that made it (at most ``workers`` at once,
        default ``max_parallel``); its failure fails the build like the
        disk's own, and the disks are removed.
        """

    def prepare_console(self, host: str, node: str) -> None:
        """Make what the console log needs before the domain starts (nothing here)."""
        return None

    @abc.abstractmethod
    def read_console(self, host: str, node: str) -> bytes | None:
        """The start of ``node``'s console log (``None`` when there is none)."""

    @abc.abstractmethod
    def remove_node(self, host: str, node: str, disk: str = "") -> None:
        """Delete ``node``'s disk (``disk``, else its usual name) and console log on ``host``."""

    def remove_nodes(self, host: str, nodes: Sequence[tuple[str, str]]) -> None:
        """:meth:`remove_node` for every ``(node, disk)`` of ``host``."""
        for node, disk in nodes:
            self.remove_node(host, node, disk)

    @abc.abstractmethod
    def remove_file(self, host: str, name: str) -> None:
        """Delete one file (or volume) of diskdir on ``host``."""


def check_copyable(item: StagedFile) -> None:
    """A base image copied or uploaded alone must have no backing file (its chain would stay behind)."""
    from pragma_core.pluginkit import check_image

    if item.fmt is None:
        return
    try:
        checked = check_image(item.path, item.fmt, root=item.root if item.root is not None else item.path.parent)
    except StagingError as exc:
        raise DriverError(f"refusing base image: {exc}") from None
    if checked.backing_file is not None:
        raise DriverError(f"base image {item.path} has a backing file: the hosts cannot see it at its path, and"
                          " pragma copies only self-contained images (put the repository in diskdir or shared_dirs)")


class SharedStorage(Storage):
    """``disk_storage = shared``: diskdir is one directory for the head and every host."""

    mode = "shared"

    def __init__(self, cfg: KvmRocksSettings, hosts: Hosts, *, local: bool) -> None:
        super().__init__(cfg, hosts)
        self.local = local

    def visible(self, path: Path) -> bool:
        """Whether every host sees ``path`` at the same path: the hosts are this machine, or it is in a shared dir."""
        if self.local:
            return True
        resolved = path.resolve()
        return any(resolved.is_relative_to(d.resolve()) for d in (self.diskdir, *self.cfg.shared_dirs))

    def stage(self, needs: Mapping[str, Iterable[StagedFile]]) -> dict[tuple[str, Path], str]:
        items = {item.path: item for files in needs.values() for item in files}
        where = {path: self._place(item) for path, item in items.items()}
        return {(host, item.path): where[item.path] for host, files in needs.items() for item in files}

    def _place(self, item: StagedFile) -> str:
        if self.visible(item.path):
            return str(item.path)
        check_copyable(item)
        target = self.diskdir / staged_name(item.path, fmt=item.fmt)
        if not target.exists():
            self.diskdir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            started = time.monotonic()
            try:
                sparse_copy(item.path, tmp)
                tmp.chmod(0o644)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("copied %s into diskdir as %s (%.2f s): the hosts cannot see it where it is staged",
                     item.path, target.name, time.monotonic() - started)
        return str(target)

    def check_free(self, nodes: Sequence[tuple[str, str]]) -> None:
        for host, node in nodes:
            path = Path(self.disk_path(host, node))
            if path.exists():
                raise DriverError(f"node disk {path} already exists")

    def build(self, disks: Sequence[NodeDisk], staged: Mapping[tuple[str, Path], str], made: list[tuple[str, str]],
              *, ready: Callable[[NodeDisk], object] | None = None, workers: int | None = None) -> None:
        jobs = self._jobs(disks, staged, self.diskdir)
        disk_of = {job.node: disk for disk, job in zip(disks, jobs)}
        self.builder(workers).build(jobs, None if ready is None else lambda job: ready(disk_of[job.node]))
        made.extend((d.host, str(job.target)) for d, job in zip(disks, jobs))

    def read_console(self, host: str, node: str) -> bytes | None:
        try:
            with open(self.console_path(host, node), "rb") as handle:
                return handle.read(4 << 20)
        except OSError:
            return None

    def remove_node(self, host: str, node: str, disk: str = "") -> None:
        paths = {_own_disk(node, disk), self.disk_path(host, node), self.console_path(host, node)} - {""}
        try:
            with os.scandir(self.diskdir) as entries:
                paths.update(entry.path for entry in entries if console_node(entry.name) == node)
        except FileNotFoundError:
            pass
        for path in paths:
            self.remove_file(host, path)

    def remove_file(self, host: str, name: str) -> None:
        """Delete ``name`` in diskdir (a path elsewhere is refused with a warning)."""
        path = Path(name) if os.path.isabs(name) else self.diskdir / name
        if path.resolve().parent != self.diskdir.resolve():
            log.warning("not deleting %s: it is not in diskdir %s", path, self.diskdir)
            return
        path.unlink(missing_ok=True)


class PoolStorage(Storage):
    """``disk_storage = pool``: each host's own diskdir, reached through a libvirt storage pool."""

    mode = "pool"

    def __init__(self, cfg: KvmRocksSettings, hosts: Hosts) -> None:
        super().__init__(cfg, hosts)
        self._pools: dict[str, HostPool] = {}

    def pool(self, host: str) -> HostPool:
        if host not in self._pools:
            self._pools[host] = HostPool(self.hosts, host, self.cfg.pool_name, self.diskdir)
        return self._pools[host]

    def stage(self, needs: Mapping[str, Iterable[StagedFile]]) -> dict[tuple[str, Path], str]:
        pairs = [(host, item) for host, files in needs.items() for item in dict.fromkeys(files)]
        for _host, item in pairs:
            check_copyable(item)
        paths = run_parallel(lambda pair: self._upload_once(*pair), pairs, workers=len(pairs),
                             label=lambda pair: f"{pair[1].path.name} to {pair[0]}", what="uploads")
        return {(host, item.path): path for (host, item), path in zip(pairs, paths)}

    def _upload_once(self, host: str, item: StagedFile) -> str:
        """Upload ``item`` to ``host``'s pool unless it is there; its path on the host.

        The volume's name is the claim on the upload: the boot that creates it
        uploads, then creates ``<name>.ok``; others wait for that marker.
        """
        pool = self.pool(host)
        name = staged_name(item.path, fmt=item.fmt)
        for _attempt in range(2):
            if pool.volume(name + DONE_SUFFIX) is not None:
                return pool.volume_path(name)
            try:
                volume = pool.create(name, item.path.stat().st_size)
            except VolumeExists:
                if self._wait_upload(pool, name):
                    return pool.volume_path(name)
                continue
            started = time.monotonic()
            try:
                pool.upload(volume, item.path)
                pool.create(name + DONE_SUFFIX, 0)
            except BaseException:
                pool.delete(name)
                raise
            log.info("host %s: uploaded %s as %s in %.2f s", host, item.path.name, name, time.monotonic() - started)
            return pool.volume_path(name)
        raise DriverError(f"host {host}: cannot upload {item.path.name} as {name}: another boot's upload keeps"
                          " stalling (pragma list orphans)")

    def _wait_upload(self, pool: HostPool, name: str) -> bool:
        """Wait for another boot's upload of ``name``: ``True`` once done, ``False`` after removing a dead one."""
        from pragma_core.pluginkit import poll

        def done() -> bool | None:
            if pool.volume(name + DONE_SUFFIX) is not None:
                return True
            modified = pool.modified(name)
            if modified is None:
                return False  # gone: its uploader failed and removed it
            if time.time() - modified > STALLED_UPLOAD:
                log.warning("host %s: upload of %s stalled for %.0f s; removing it", pool.host, name, STALLED_UPLOAD)
                pool.delete(name)
                return False
            return None

        return poll(done, timeout=STALLED_UPLOAD * 4, interval=0.2, max_interval=2.0,
                    timed_out=lambda: DriverError(f"host {pool.host}: upload of {name} by another boot takes too long"))

    def check_free(self, nodes: Sequence[tuple[str, str]]) -> None:
        def check(pair: tuple[str, str]) -> None:
            host, node = pair
            name = disk_name(node, self.cfg.disk_mode)
            if self.pool(host).volume(name) is not None:
                raise DriverError(f"node disk {name} already exists on {host}")

        run_parallel(check, nodes, workers=len(nodes), what="node disk checks")

    def build(self, disks: Sequence[NodeDisk], staged: Mapping[tuple[str, Path], str], made: list[tuple[str, str]],
              *, ready: Callable[[NodeDisk], object] | None = None, workers: int | None = None) -> None:
        work = self.cfg.state_dir / "upload"
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="disks-", dir=work) as tmp:
            jobs = self._jobs(disks, staged, Path(tmp))
            self.builder().build(jobs)

            def send(pair: tuple[NodeDisk, DiskJob]) -> None:
                disk, job = pair
                pool = self.pool(disk.host)
                volume = pool.create(job.target.name, job.target.stat().st_size, mode="0600")
                made.append((disk.host, job.target.name))
                pool.upload(volume, job.target)
                if ready is not None:
                    ready(disk)

            run_parallel(send, list(zip(disks, jobs)),
                         workers=workers or self.cfg.max_parallel * len({d.host for d in disks}),
                         label=lambda pair: pair[0].node, what="node disk uploads" if ready is None else "nodes")

    def prepare_console(self, host: str, node: str) -> None:
        """Create the console log's volume, so it is in the pool (virtlogd writes the file, libvirt reads it)."""
        pool = self.pool(host)
        name = node + CONSOLE_SUFFIX
        pool.delete(name)  # a log of an earlier node of that name
        pool.create(name, 0)

    def read_console(self, host: str, node: str) -> bytes | None:
        return self.pool(host).download(node + CONSOLE_SUFFIX)

    def remove_node(self, host: str, node: str, disk: str = "") -> None:
        self.remove_nodes(host, [(node, disk)])

    def remove_nodes(self, host: str, nodes: Sequence[tuple[str, str]]) -> None:
        """Every node's disk, console log and virtlogd's rotated copies of it, from one listing of the pool."""
        wanted = {node for node, _disk in nodes}
        names = set()
        for node, disk in nodes:
            names.update({disk_name(node, self.cfg.disk_mode), node + CONSOLE_SUFFIX})
            if _own_disk(node, disk) and Path(disk).parent == self.diskdir:
                names.add(Path(disk).name)
        if nodes and self.pool(host).exists():
            names.update(name for name in self.pool(host).names() if console_node(name) in wanted)
        for name in sorted(names):
            self.remove_file(host, name)

    def remove_file(self, host: str, name: str) -> None:
        self.pool(host).delete(name)


def console_node(name: str) -> str | None:
    """The node whose console log file ``name`` is (``<node>.console.log``, or virtlogd's rotated
    ``<node>.console.log.N``), else ``None``."""
    match = _CONSOLE_LOG.fullmatch(name)
    return match.group("node") if match else None


def _own_disk(node: str, disk: str) -> str:
    """``disk`` (a node's recorded disk) when its file name is one of ``node``'s disk names, else ``""``:
    a record another head wrote wrong must not name another node's disk or a shared base image."""
    if disk and Path(disk).name in {disk_name(node, "overlay"), disk_name(node, "copy")}:
        return disk
    if disk:
        log.warning("not deleting %s: it is not a disk name of node %s", disk, node)
    return ""


def storage_for(cfg: KvmRocksSettings, hosts: Hosts, *, local: bool) -> Storage:
    """The storage of the site's ``disk_storage`` (``local``: every host is this machine)."""
    if cfg.disk_storage == "pool":
        return PoolStorage(cfg, hosts)
    return SharedStorage(cfg, hosts, local=local)
