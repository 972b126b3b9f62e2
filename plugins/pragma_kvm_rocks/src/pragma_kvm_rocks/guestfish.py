"""vc-out injection through libguestfs: one appliance for every disk of a cluster.

Used when the e2fsprogs fast path (:mod:`pragma_kvm_rocks.e2fs`) does not
apply: a qcow2 base image, or a root filesystem that is not ext2/3/4 on a
partition. libguestfs' Python binding is not on PyPI, so this drives the
``guestfish`` command: ``guestfish --listen`` starts a server with every node
disk attached (``--rw --format=F -a disk1 ...``), one ``run`` launches **one**
appliance, then each edit is a ``guestfish --remote`` call (argument lists, no
shell). On these machines libguestfs works only with
``LIBGUESTFS_BACKEND=direct`` and TCG, which is what :data:`ENVIRONMENT` sets;
launching the appliance takes about 10 s, so launching it once instead of once
per node is what matters.

Facts about ``guestfish --listen`` this module depends on (libguestfs 1.48):

* the foreground process prints ``GUESTFISH_PID=N`` and exits, but the forked
  server inherits its stdout and stderr: they must be files, never pipes we
  wait on, or ``subprocess.run`` blocks until the server exits;
* a failing remote command **ends the server**, and its error message goes to
  the server's stderr, not to the ``--remote`` client's. So the server's
  stderr is a log file read back on failure, and probing commands that may
  fail (mounting a candidate root) use guestfish's ``-command`` prefix, which
  makes the server ignore the error.

libguestfs opens only node disks :class:`pragma_kvm_rocks.disks.DiskBuilder`
made, on base images whose whole backing chain passed
:func:`pragma_core.imagecheck.check_image`: a qcow2 overlay names its base by
absolute path with its format recorded, so nothing the repository wrote makes
the appliance open another file or a network connection.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self

from attrs import frozen

from pragma_core import DriverError
from pragma_core.pluginkit import Deadline, run_tool

from .e2fs import LEGACY_NETWORK_FILES, VCOUT_PATH

log = logging.getLogger(__name__)

#: Environment for libguestfs on machines where KVM aborts its appliance.
ENVIRONMENT = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
#: Filesystem types a Linux root can have (as ``vfs-type`` names them).
LINUX_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs"})
#: How long to wait for the server (and its appliance) to go away after ``exit``.
EXIT_TIMEOUT = 60.0
#: The longest one guestfish command may take, seconds (launching the appliance under TCG takes ~10 s).
#: The appliance reads a filesystem from the repository: a crafted one must not hold a boot for ever.
CALL_SECONDS = 600.0

_PID = re.compile(r"GUESTFISH_PID=(\d+)")


def available(program: str = "guestfish") -> bool:
    """Whether the ``guestfish`` command is installed."""
    return shutil.which(program) is not None


@frozen(kw_only=True)
class GuestDisk:
    """One node disk to edit: its path, format, and the vc-out bytes it receives."""

    path: Path
    format: str
    vcout: bytes


def _process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` exits or ``timeout`` seconds pass; whether it exited."""
    deadline = time.monotonic() + timeout
    while not _process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class GuestfishSession:
    """A running ``guestfish --listen`` with disks attached and its appliance launched.

    Use as a context manager: entering launches the appliance once, leaving
    syncs nothing by itself (call :meth:`inject_all`, which syncs) and shuts
    the server and appliance down, waiting until they are gone so the disks
    are free for the VMs.
    """

    def __init__(self, disks: Sequence[GuestDisk], *, program: str = "guestfish") -> None:
        self.disks = list(disks)
        self.program = program
        self.env = {**os.environ, **ENVIRONMENT}
        self.pid: int | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="pragma-guestfish-")
        self._log = Path(self._tmp.name) / "server.log"
        self._log_seen = 0

    def __enter__(self) -> Self:
        try:
            self._listen()
            try:
                self.call("run")
            except DriverError as exc:
                raise DriverError(
                    f"libguestfs could not launch its appliance ({exc}); it needs a readable kernel in /boot"
                    " (Debian linux-image-cloud-amd64) and /dev/kvm or TCG; LIBGUESTFS_DEBUG=1 shows why"
                ) from exc
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _listen(self) -> None:
        argv = [self.program, "--listen", "--rw"]
        for disk in self.disks:
            argv += [f"--format={disk.format}", "-a", str(disk.path)]
        with open(self._log, "wb") as log_fh:
            # Files, not pipes: the forked server keeps these descriptors open. Its own process group,
            # which the server and the appliance stay in: close() can stop them all.
            proc = run_tool(argv, what="guestfish --listen", deadline=Deadline(CALL_SECONDS), error=DriverError,
                            stdout=log_fh, stderr=log_fh, env=self.env)
        output = self._log.read_text(errors="replace")
        self._log_seen = len(output.encode())
        match = _PID.search(output)
        if proc.returncode != 0 or not match:
            raise DriverError(f"guestfish could not start: {output.strip()}")
        self.pid = int(match.group(1))
        log.debug("guestfish server %d with %d disks", self.pid, len(self.disks))

    def _server_errors(self) -> str:
        """What the server wrote to its stderr since the last look."""
        try:
            with open(self._log, "rb") as fh:
                fh.seek(self._log_seen)
                data = fh.read()
        except OSError:
            return ""
        self._log_seen += len(data)
        return data.decode(errors="replace").strip()

    def call(self, *words: str) -> str:
        """Run one guestfish command in the session; its standard output.

        A command prefixed with ``-`` (``"-mount"``) may fail without ending
        the server; any other failure ends it and raises :class:`DriverError`
        with the server's message.
        """
        if self.pid is None:
            raise DriverError("guestfish session is not running")
        argv = [self.program, f"--remote={self.pid}", "--", *words]
        done = run_tool(argv, what=f"guestfish {' '.join(words[:1])}", deadline=Deadline(CALL_SECONDS),
                        error=DriverError, env=self.env)
        proc = subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))
        if proc.returncode != 0:
            message = self._server_errors() or proc.stderr.strip() or f"exit status {proc.returncode}"
            if _process_gone(self.pid):
                self.pid = None
            raise DriverError(f"guestfish {' '.join(words[:1])} failed: {message}")
        return proc.stdout

    def close(self) -> None:
        """Stop the server and its appliance (if running) and wait for them to exit."""
        pid, self.pid = self.pid, None
        if pid is not None and not _process_gone(pid):
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                group = None
            try:
                proc = run_tool([self.program, f"--remote={pid}", "--", "exit"], what="guestfish exit",
                                deadline=Deadline(EXIT_TIMEOUT), error=DriverError, env=self.env)
                if proc.returncode != 0:
                    log.warning("guestfish did not exit cleanly: %s", proc.stderr.decode(errors="replace").strip())
            except DriverError as exc:
                log.warning("%s", exc)
            if not _wait_gone(pid, EXIT_TIMEOUT) and group is not None and group != os.getpgrp():
                log.warning("guestfish server %d still running %.0f s after exit: stopping it and its appliance",
                            pid, EXIT_TIMEOUT)
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._tmp.cleanup()

    def devices(self) -> list[str]:
        """The appliance's whole-disk devices, in the order the disks were added."""
        return self.call("list-devices").split()

    def mount_root(self, device: str, partitions: Sequence[str], disk: GuestDisk) -> str:
        """Mount the root filesystem of ``device`` read-write on ``/``; its device name.

        The root is the first partition (or the whole disk when it has none)
        with a Linux filesystem that mounts and holds ``/etc``: a ``/boot``
        partition before the root is skipped.
        """
        own = [p for p in partitions if re.fullmatch(re.escape(device) + r"\d+", p)]
        tried = []
        for candidate in own or [device]:
            kind = self.call("vfs-type", candidate).strip()
            if kind not in LINUX_FILESYSTEMS:
                tried.append(f"{candidate} ({kind or 'no filesystem'})")
                continue
            self.call("-mount", candidate, "/")
            if candidate not in self.call("mounts").split():
                tried.append(f"{candidate} ({kind}, does not mount: {self._server_errors()})")
                continue
            if self.call("is-dir", "/etc").strip() == "true":
                return candidate
            tried.append(f"{candidate} ({kind}, no /etc)")
            self.call("umount-all")
        raise DriverError(
            f"{disk.path}: no Linux root filesystem found (tried {', '.join(tried) or 'nothing'});"
            " pragma needs an ext2/3/4, xfs or btrfs root on a partition or the whole disk (LVM is not supported)"
        )

    def edit_mounted(self, disk: GuestDisk, source: Path, patterns: Sequence[str]) -> None:
        """Rename legacy network files to ``old-<name>`` and upload ``source`` as the vc-out."""
        for pattern in patterns:
            for path in self.call("glob-expand", pattern).split():
                name = PurePosixPath(path)
                if not name.name.startswith("old-"):
                    self.call("mv", path, str(name.with_name(f"old-{name.name}")))
        self.call("mkdir-p", str(PurePosixPath(VCOUT_PATH).parent))
        self.call("upload", str(source), VCOUT_PATH)
        self.call("chmod", "0644", VCOUT_PATH)

    def inject_all(self, patterns: Sequence[str] = LEGACY_NETWORK_FILES) -> None:
        """Make the guest edits (rename legacy network files, write vc-out) on every disk."""
        devices = self.devices()
        if len(devices) != len(self.disks):
            raise DriverError(f"guestfish sees {len(devices)} disks, {len(self.disks)} were attached")
        partitions = self.call("list-partitions").split()
        for index, (device, disk) in enumerate(zip(devices, self.disks, strict=True)):
            root = self.mount_root(device, partitions, disk)
            source = Path(self._tmp.name) / f"vc-out-{index}.xml"
            source.write_bytes(disk.vcout)
            try:
                self.edit_mounted(disk, source, patterns)
            finally:
                if self.pid is not None:
                    self.call("umount-all")
            log.debug("vc-out written into %s (%s)", disk.path, root)
        self.call("sync")


def inject(disks: Sequence[GuestDisk], *, program: str = "guestfish") -> None:
    """Inject vc-out into every disk with one appliance launch."""
    if not disks:
        return
    if not available(program):
        raise DriverError(
            "vc-out injection needs libguestfs for these images (qcow2 base or no ext root partition):"
            " install libguestfs-tools, or use raw images with an ext2/3/4 root partition"
        )
    start = time.monotonic()
    with GuestfishSession(disks, program=program) as session:
        session.inject_all()
    log.info("vc-out injected into %d disks with one libguestfs appliance in %.1f s",
             len(disks), time.monotonic() - start)
