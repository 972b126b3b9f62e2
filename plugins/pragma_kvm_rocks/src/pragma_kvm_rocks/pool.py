"""A host's own disk directory, reached through libvirt: a storage pool and its volumes.

With ``disk_storage = pool`` each host keeps node disks in its own
``diskdir``; the head never sees it. Everything goes through the host's
libvirtd (no scp, no shared file system): a ``dir`` storage pool at
``diskdir`` (made, started and set to autostart on first use), volumes
created by name (atomic on the host: a second create of a name fails),
files sent with a sparse stream upload (holes are not sent) and read back
with a download (console logs).
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET

from pragma_core import DriverError

from .hosts import Hosts, import_libvirt

log = logging.getLogger(__name__)

#: Bytes a download reads at most (a console log larger than this is read from its start only).
MAX_DOWNLOAD = 4 << 20
#: How long listing a pool waits for libvirt to let it be refreshed (it refuses while a volume is built), seconds.
REFRESH_WAIT = 10.0


class VolumeExists(DriverError):
    """A volume of that name is already in the pool."""


class HostPool:
    """The pool ``name`` at ``path`` on ``host``."""

    def __init__(self, hosts: Hosts, host: str, name: str, path: Path) -> None:
        self.hosts, self.host, self.name, self.path = hosts, host, name, path
        self._pool: Any = None

    def _error(self, exc: Exception, what: str) -> DriverError:
        return self.hosts.failure(self.host, self.hosts.conn(self.host), exc, what)

    def pool(self) -> Any:
        """The started pool (defined, built, started and set to autostart when missing)."""
        if self._pool is not None:
            return self._pool
        libvirt = import_libvirt()
        conn = self.hosts.conn(self.host)
        try:
            pool = self._lookup(conn) or self._define(conn)
            self._check_path(pool)
            if not pool.isActive():
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():
                        raise
        except libvirt.libvirtError as exc:
            raise self._error(exc, f"preparing storage pool {self.name}") from None
        self._pool = pool
        return pool

    def exists(self) -> bool:
        """Whether the host has the pool (nothing is made)."""
        libvirt = import_libvirt()
        conn = self.hosts.conn(self.host)
        try:
            return self._lookup(conn) is not None
        except libvirt.libvirtError as exc:
            raise self._error(exc, f"looking up storage pool {self.name}") from None

    def _lookup(self, conn: Any) -> Any:
        libvirt = import_libvirt()
        try:
            return conn.storagePoolLookupByName(self.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise

    def _define(self, conn: Any) -> Any:
        libvirt = import_libvirt()
        xml = (f"<pool type='dir'><name>{self.name}</name><target><path>{_escape(str(self.path))}</path>"
               "<permissions><mode>0755</mode></permissions></target></pool>")
        try:
            pool = conn.storagePoolDefineXML(xml, 0)
        except libvirt.libvirtError:
            pool = self._lookup(conn)  # another head defined it a moment ago
            if pool is None:
                raise
            return pool
        pool.build(0)
        pool.setAutostart(1)
        log.info("host %s: storage pool %s at %s made", self.host, self.name, self.path)
        return pool

    def _check_path(self, pool: Any) -> None:
        found = SafeET.fromstring(pool.XMLDesc(0)).findtext("target/path", "")
        if Path(found) != self.path:
            raise DriverError(f"storage pool {self.name} on {self.host} is at {found}, not diskdir {self.path}"
                              " (kvm_rocks.conf storage_pool names another pool)")

    # ------------------------------------------------------------------ volumes

    def volume(self, name: str) -> Any:
        """Volume ``name``, or ``None``."""
        libvirt = import_libvirt()
        try:
            return self.pool().storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise self._error(exc, f"looking up volume {name}") from None

    def volume_path(self, name: str) -> str:
        """Where volume ``name`` is (or would be) on the host."""
        return str(self.path / name)

    def create(self, name: str, size: int, *, mode: str = "0644") -> Any:
        """A new raw volume of ``size`` bytes (sparse); :class:`VolumeExists` when the name is taken."""
        libvirt = import_libvirt()
        xml = (f"<volume><name>{_escape(name)}</name><capacity unit='bytes'>{size}</capacity>"
               "<allocation unit='bytes'>0</allocation><target><format type='raw'/>"
               f"<permissions><mode>{mode}</mode></permissions></target></volume>")
        try:
            return self.pool().createXML(xml, 0)
        except libvirt.libvirtError as exc:
            if self.volume(name) is not None:
                raise VolumeExists(f"volume {name} already exists in pool {self.name} on {self.host}") from None
            raise self._error(exc, f"creating volume {name}") from None

    def upload(self, volume: Any, source: Path) -> None:
        """Send ``source`` into ``volume`` (from offset 0) as a sparse stream: holes are not sent."""
        libvirt = import_libvirt()
        size = source.stat().st_size
        stream = volume.connect().newStream(0)  # a stream must be of the volume's own connection
        fd = os.open(source, os.O_RDONLY)
        try:
            volume.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            stream.sparseSendAll(_read, _hole, _skip, fd)
            stream.finish()
        except libvirt.libvirtError as exc:
            _abort(stream)
            raise self._error(exc, f"uploading {source.name}") from None
        except BaseException:
            _abort(stream)
            raise
        finally:
            os.close(fd)

    def download(self, name: str, *, limit: int = MAX_DOWNLOAD) -> bytes | None:
        """The first ``limit`` bytes of volume ``name``; ``None`` when there is no such volume."""
        libvirt = import_libvirt()
        volume = self.volume(name)
        if volume is None:
            return None
        stream = volume.connect().newStream(0)
        chunks: list[bytes] = []
        try:
            volume.download(stream, 0, limit, 0)
            stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
            stream.finish()
        except libvirt.libvirtError as exc:
            _abort(stream)
            raise self._error(exc, f"reading volume {name}") from None
        return b"".join(chunks)[:limit]

    def delete(self, name: str) -> bool:
        """Delete volume ``name``; whether it existed."""
        libvirt = import_libvirt()
        volume = self.volume(name)
        if volume is None:
            return False
        try:
            volume.delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise self._error(exc, f"deleting volume {name}") from None
        return True

    def names(self) -> list[str]:
        """Every volume in the pool (after a refresh: files other programs wrote are listed too).

        libvirt refuses to refresh a pool while it builds a volume (another
        boot's, on this or another head): the refresh is tried again for up
        to :data:`REFRESH_WAIT` s, then the pool is listed as libvirt last
        saw it (the files it made itself, not yet virtlogd's newest
        rotations).
        """
        from pragma_core.pluginkit import poll

        libvirt = import_libvirt()
        pool = self.pool()

        def refreshed() -> bool | None:
            try:
                pool.refresh(0)
            except libvirt.libvirtError as exc:
                if "asynchronous jobs" not in (exc.get_error_message() or ""):
                    raise self._error(exc, f"listing pool {self.name}") from None
                return None
            return True

        try:
            poll(refreshed, timeout=REFRESH_WAIT, interval=0.05, max_interval=1.0, timed_out=TimeoutError)
        except TimeoutError:
            log.debug("host %s: pool %s still busy after %.0f s; listed unrefreshed", self.host, self.name,
                      REFRESH_WAIT)
        try:
            return sorted(v.name() for v in pool.listAllVolumes(0))
        except libvirt.libvirtError as exc:
            raise self._error(exc, f"listing pool {self.name}") from None

    def modified(self, name: str) -> float | None:
        """The modification time of volume ``name`` (seconds since the epoch), ``None`` when unknown."""
        volume = self.volume(name)
        if volume is None:
            return None
        text = SafeET.fromstring(volume.XMLDesc(0)).findtext("target/timestamps/mtime")
        try:
            return float(text) if text else None
        except ValueError:
            return None


def _escape(text: str) -> str:
    element = ET.Element("x")
    element.text = text
    return ET.tostring(element, encoding="unicode")[3:-4]


def _abort(stream: Any) -> None:
    try:
        stream.abort()
    except Exception:  # noqa: BLE001 - the stream is gone anyway
        pass


def _read(_stream: Any, nbytes: int, fd: int) -> bytes:
    return os.read(fd, nbytes)


def _hole(_stream: Any, fd: int) -> list[Any]:
    """``[in_data, length]`` of the section at the current offset: data up to the next hole, or a hole."""
    here = os.lseek(fd, 0, os.SEEK_CUR)
    end = os.fstat(fd).st_size
    if here >= end:
        return [True, 0]
    try:
        data = os.lseek(fd, here, os.SEEK_DATA)
    except OSError:
        data = end  # only a hole up to the end
    if data > here:
        os.lseek(fd, here, os.SEEK_SET)
        return [False, data - here]
    hole = min(os.lseek(fd, here, os.SEEK_HOLE), end)
    os.lseek(fd, here, os.SEEK_SET)
    return [True, hole - here]


def _skip(_stream: Any, length: int, fd: int) -> int:
    os.lseek(fd, length, os.SEEK_CUR)
    return 0
