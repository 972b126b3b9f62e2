"""Where a restored image goes: the ``local_image_url`` template and its three kinds of target.

``local_image_url`` is a :class:`string.Template` with ``$imagename`` (the ISO
name without ``.iso`` and without the ``.NNG`` size), ``$repository_dir``
(the configured repository root; legacy bug B33 gave the cluster directory)
and ``$cluster`` (the cluster's folder name). After substitution it must be
one of:

``file:///abs/path/name.raw`` (or ``.img``, ``.vda``)
    a sparse raw file;
``file:///abs/path/name.qcow2``
    a qcow2 file (``qemu-img convert -O qcow2``);
``zfs://nas/pool/volume``
    a ZFS volume on host ``nas``, written over ``ssh`` (volume name from the
    URL: legacy bug B34 always used ``<imagename>-vol``).

File targets must lie inside the repository (``repository_dir``, checked
after normalisation, so ``..`` cannot leave it). The default keeps each image
beside its cluster's description (``$repository_dir/$cluster/$imagename.raw``);
the form the original README documents, ``$repository_dir/$imagename.raw``
(or ``.img``, ``.qcow2``), keeps the images beside the cluster folders in the
repository root, and the ``-local.xml`` then goes beside the images (see
:mod:`.localxml`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import string
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO, Literal

from attrs import frozen

from pragma_core import ConfigError, RepositoryError
from pragma_core.pluginkit import FREE_SPACE_RESERVE, Deadline

from .restore import DEFAULT_MAX_DISK_SIZE, DiskLimitError, check_declared_size, ensure_free_space, restore_iso_to_raw, split_iso_name
from .settings import DEFAULT_RESTORE_TIMEOUT
from . import tools
from .tools import ToolError

log = logging.getLogger(__name__)

_FORMATS = {".raw": "raw", ".img": "raw", ".vda": "raw", ".qcow2": "qcow2"}
_ZFS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_SAFE_IMAGE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_VARIABLES = ("imagename", "repository_dir", "cluster")
#: How long removing a half-written staging volume may take, once a restore has failed (or run out of time).
CLEANUP_SECONDS = 60.0


@frozen(kw_only=True)
class Target:
    """A resolved ``local_image_url``."""

    url: str
    kind: Literal["file", "zfs"]
    format: str = "raw"
    path: Path | None = None
    host: str = ""
    pool: str = ""
    volume: str = ""

    @property
    def dataset(self) -> str:
        return f"{self.pool}/{self.volume}"


def resolve_target(template: str, *, imagename: str, repository_dir: Path, cluster: str) -> Target:
    """Substitute and check ``local_image_url``; a :class:`ConfigError` (or bad-name error) naming what is wrong."""
    if not _SAFE_IMAGE.fullmatch(imagename):
        raise RepositoryError(f"image name {imagename!r} (from the ISO name) is not a safe file name")
    values = {"imagename": imagename, "repository_dir": str(repository_dir), "cluster": cluster}
    url = string.Template(template).safe_substitute(values)
    leftover = [m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(url) if m.group("named") or m.group("braced")]
    if leftover:
        raise ConfigError(
            f"local_image_url: unknown variable ${leftover[0]} (known: {', '.join('$' + v for v in _VARIABLES)})",
            key="repository_settings",
        )
    scheme, sep, rest = url.partition("://")
    if scheme == "file" and sep:
        path = Path(os.path.normpath(rest))
        if not rest.startswith("/"):
            raise ConfigError(f"local_image_url: {url!r} must be file:///absolute/path", key="repository_settings")
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError(
                f"local_image_url: {url!r} must end in .raw, .img, .vda or .qcow2", key="repository_settings"
            )
        root = Path(os.path.normpath(os.path.abspath(repository_dir)))
        if root not in path.parents:
            raise ConfigError(
                f"local_image_url: {path} is outside the repository {root}; "
                "use file://$repository_dir/$cluster/$imagename.raw or file://$repository_dir/$imagename.raw",
                key="repository_settings",
            )
        return Target(url=url, kind="file", format=fmt, path=path)
    if scheme == "zfs" and sep:
        pieces = rest.split("/")
        if len(pieces) != 3 or not _HOST.fullmatch(pieces[0]) or not all(_ZFS_NAME.fullmatch(p) for p in pieces[1:]):
            raise ConfigError(f"local_image_url: {url!r} must be zfs://<nas>/<pool>/<volume>", key="repository_settings")
        return Target(url=url, kind="zfs", host=pieces[0], pool=pieces[1], volume=pieces[2])
    raise ConfigError(f"local_image_url: {url!r}: scheme must be file:// or zfs://", key="repository_settings")


# --------------------------------------------------------------------------- ZFS over ssh


class ZfsHost:
    """``zfs`` commands on a NAS over ``ssh``: argument lists, each remote word quoted and validated."""

    def __init__(self, host: str, *, ssh: str = "ssh", deadline: Deadline | None = None) -> None:
        if not _HOST.fullmatch(host):
            raise ConfigError(f"local_image_url: invalid host {host!r}", key="repository_settings")
        self.host = host
        self.ssh = ssh
        #: Every ssh call shares it: a NAS that stops answering or reading stops the restore, not the sync.
        self.deadline = deadline or Deadline(DEFAULT_RESTORE_TIMEOUT)

    def argv(self, *remote: str) -> list[str]:
        import shlex

        # ssh joins the remote words with spaces for the remote shell: quote each.
        return [self.ssh, "-o", "BatchMode=yes", self.host, "--", *(shlex.quote(word) for word in remote)]

    def run(self, *remote: str, check: bool = True, stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
        result = tools.run(self.argv(*remote), f"ssh {self.host} {' '.join(remote[:2])}", self.deadline, stdin=stdin)
        if check and result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raise ToolError(f"ssh {self.host} {' '.join(remote[:2])}: exit {result.returncode}: {lines[-1] if lines else ''}")
        return result

    def creation_time(self, dataset: str) -> float | None:
        """The volume's creation time (epoch seconds, ``zfs get -Hp``: no locale parsing, B37), ``None`` if absent."""
        result = self.run("zfs", "get", "-Hp", "-o", "value", "creation", dataset, check=False)
        text = result.stdout.decode(errors="replace").strip()
        return float(text) if result.returncode == 0 and text.isdigit() else None

    def available(self, pool: str) -> int:
        """Bytes the pool can still store (``zfs get -Hp available``); a :class:`ToolError` when unknown."""
        result = self.run("zfs", "get", "-Hp", "-o", "value", "available", pool, check=False)
        text = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or not text.isascii() or not text.isdigit():
            raise ToolError(f"ssh {self.host} zfs get available {pool}: cannot read how much space the pool has")
        return int(text)

    def replace_volume(self, raw: Path, size: int, pool: str, volume: str) -> None:
        """Write ``raw`` to a new volume, then swap it in for ``pool/volume`` (clones of the old one survive).

        The volume is sparse and only the raw image's data blocks are written
        (``dd conv=sparse``); that much must leave the pool
        :data:`~pragma_core.paths.FREE_SPACE_RESERVE` free, or nothing is made.
        """
        dataset = f"{pool}/{volume}"
        staging = f"{dataset}-pragma-new"
        needed = raw.stat().st_blocks * 512
        available = self.available(pool)
        if available - needed < FREE_SPACE_RESERVE:
            raise DiskLimitError(f"{volume}: refused: pool {pool} on {self.host} has {available} bytes available and"
                                 f" this restore writes {needed}; a restore leaves at least {FREE_SPACE_RESERVE} free")
        self.run("zfs", "destroy", "-r", staging, check=False)
        self.run("zfs", "create", "-s", "-V", str(size), staging)
        try:
            with open(raw, "rb") as data:
                self.run("dd", f"of=/dev/zvol/{staging}", "bs=4M", "conv=notrunc,sparse", stdin=data.fileno())
            if self.creation_time(dataset) is not None:
                listing = self.run("zfs", "list", "-H", "-o", "name,origin", "-t", "volume", "-r", pool)
                for line in listing.stdout.decode(errors="replace").splitlines():
                    name, _, origin = line.partition("\t")
                    if origin.startswith(f"{dataset}@"):
                        self.run("zfs", "promote", name)
                self.run("zfs", "destroy", "-r", dataset)
            self.run("zfs", "rename", staging, dataset)
        except BaseException:
            # Its own minute: the restore's deadline may be what just passed.
            try:
                ZfsHost(self.host, ssh=self.ssh, deadline=Deadline(CLEANUP_SECONDS)).run(
                    "zfs", "destroy", "-r", staging, check=False)
            except ToolError as exc:
                log.warning("%s: staging volume %s may be left on %s: %s", volume, staging, self.host, exc)
            raise


# --------------------------------------------------------------------------- delivery


def target_mtime(target: Target, *, ssh: str = "ssh", deadline: Deadline | None = None) -> float | None:
    """When the target was last written; ``None`` when it does not exist."""
    if target.kind == "file":
        assert target.path is not None
        try:
            return target.path.stat().st_mtime
        except FileNotFoundError:
            return None
    return ZfsHost(target.host, ssh=ssh, deadline=deadline).creation_time(target.dataset)


def deliver(
    iso: Path,
    target: Target,
    *,
    size_setting: int | None,
    work_dir: Path,
    ssh: str = "ssh",
    max_disk_size: int = DEFAULT_MAX_DISK_SIZE,
    deadline: Deadline | None = None,
) -> None:
    """Restore ``iso`` into ``target``, replacing what is there only once the new image is complete.

    The restore is bounded by ``max_disk_size`` and keeps the reserve of free
    space (see :mod:`.restore`); the qcow2 copy is made only when the raw
    image's allocated bytes, written again, still leave that reserve free.
    The whole of it -- restore, qcow2 copy, transfer to a NAS -- is done by
    ``deadline`` (default: ``restore_timeout``'s default from now) or stopped.
    """
    deadline = deadline or Deadline(DEFAULT_RESTORE_TIMEOUT)
    if target.kind == "file":
        assert target.path is not None
        directory = target.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        raw = _scratch(directory, target.path.name, ".raw")
        try:
            restore_iso_to_raw(iso, raw, size_setting=size_setting, log_dir=work_dir, max_disk_size=max_disk_size,
                               deadline=deadline)
            if target.format == "qcow2":
                # qemu-img writes the copy itself: it takes about what the raw file has allocated.
                allocated = raw.stat().st_blocks * 512
                ensure_free_space(directory, allocated + allocated // 64, f"{iso.name}: qcow2 copy")
                qcow = _scratch(directory, target.path.name, ".qcow2")
                try:
                    _qemu_img_convert(raw, qcow, deadline)
                    os.replace(qcow, target.path)
                finally:
                    qcow.unlink(missing_ok=True)
            else:
                os.replace(raw, target.path)
        finally:
            raw.unlink(missing_ok=True)
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    raw = _scratch(work_dir, target.volume, ".raw")
    try:
        size = restore_iso_to_raw(iso, raw, size_setting=size_setting, log_dir=work_dir, max_disk_size=max_disk_size,
                                  deadline=deadline)
        ZfsHost(target.host, ssh=ssh, deadline=deadline).replace_volume(raw, size, target.pool, target.volume)
    finally:
        raw.unlink(missing_ok=True)


def _scratch(directory: Path, name: str, suffix: str) -> Path:
    """A fresh name for an unfinished file beside its destination (the name does not exist yet)."""
    handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=f".restoring{suffix}", dir=directory)
    os.close(handle)
    os.unlink(path)
    return Path(path)


def _qemu_img_convert(raw: Path, qcow: Path, deadline: Deadline) -> None:
    argv = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)]
    if shutil.which("qemu-img") is None:
        raise ToolError("qemu-img is not installed (Debian package qemu-utils)")
    result = tools.run(argv, f"qemu-img convert {raw.name}", deadline)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise ToolError(f"qemu-img convert to {qcow.name} failed: {lines[-1] if lines else result.returncode}")


def cziso_restore(
    cziso: Path,
    iso: Path,
    target: Target,
    *,
    size_setting: int | None,
    log_file: Path,
    max_disk_size: int = DEFAULT_MAX_DISK_SIZE,
    deadline: Deadline | None = None,
) -> None:
    """Restore with the legacy ``cziso`` tool (boots a VM): ``cziso restore <iso> <url> overwrite=true``.

    Its output goes to ``log_file``, a new file put in place by rename: a
    symbolic link (or anything else) planted at that name is replaced, never
    written through. The VM writes the disk, so only the sizes known
    beforehand are checked: the ``.NNG`` of the ISO's name and ``size`` may
    not pass ``max_disk_size``. cziso and what it started in its process
    group are stopped at ``deadline`` (a VM libvirt started for it is
    libvirt's, and stays).
    """
    deadline = deadline or Deadline(DEFAULT_RESTORE_TIMEOUT)
    _, name_size = split_iso_name(iso.name)
    check_declared_size(iso.name, max(name_size or 0, size_setting or 0), max_disk_size)
    argv = [str(cziso), "restore", str(iso), target.url, "overwrite=true"]
    if size_setting:
        argv.append(f"size={-(-size_setting // (1 << 30))}")
    with _fresh_log(log_file) as out:
        result = tools.run(argv, f"cziso restore {iso.name}", deadline, stdout=out)
    if result.returncode != 0:
        raise ToolError(f"cziso restore {iso.name} failed (exit {result.returncode}); see {log_file}")


def _fresh_log(log_file: Path) -> BinaryIO:
    """A new, empty file renamed onto ``log_file`` (whatever was there is replaced, not opened), open for writing."""
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{log_file.name}.", suffix=".tmp", dir=log_file.parent)
    except OSError as exc:
        raise ToolError(f"{log_file}: cannot create the restore log: {exc.strerror or exc}") from None
    out = os.fdopen(handle, "wb")
    try:
        os.fchmod(handle, 0o644)
        os.replace(tmp, log_file)
    except OSError as exc:
        out.close()
        Path(tmp).unlink(missing_ok=True)
        raise ToolError(f"{log_file}: cannot create the restore log: {exc.strerror or exc}") from None
    return out
