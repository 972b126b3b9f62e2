"""vc-out injection without an appliance: e2fsprogs on the image file itself.

The guest edits the legacy driver made through ``guestmount`` (reference
§7.2.4) are: rename ``/etc/udev/rules.d/70-persistent-net.rules`` and
``/etc/sysconfig/network-scripts/ifcfg-eth*`` to ``old-<name>``, and write the
node's vc-out to ``/root/vc-out.xml``. When the root filesystem is ext2/3/4 on
the first ext partition of a **raw** disk (or fills the whole disk), this
module makes those edits with ``debugfs`` using the ``image?offset=BYTES``
syntax. No root, no FUSE, no kernel module, no appliance: a few milliseconds a
node.

Two ways, one per disk mode:

* **copy** (:func:`inject_raw`): the node disk is a raw copy of the base; run
  ``debugfs -w`` on it directly.
* **overlay** (:class:`OverlayDelta`): the node disk is a qcow2 overlay and
  debugfs cannot write qcow2. So, once per base image, ``e2image -r`` copies
  the filesystem's *metadata* (superblocks, bitmaps, inode tables,
  directories; file data stays holes) into a sparse scratch file; per node, a
  sparse copy of that scratch receives the edits from ``debugfs -w``. The
  blocks debugfs wrote are exactly those whose bytes differ from the pristine
  scratch, or that were holes there and now hold data. Those blocks, merged
  into the base image's 64 KiB clusters around them, become the only data
  clusters of the node's qcow2 overlay (:func:`pragma_kvm_rocks.qcow2.write_overlay`).
  Cost grows with the filesystem's metadata, never with the data in the image.

Every base image given to this module has passed
:func:`pragma_core.imagecheck.check_image` first (:class:`pragma_kvm_rocks.disks.DiskBuilder`
checks each base before planning): a regular, non-empty raw file inside the
cluster directory, so ``sfdisk``, ``debugfs`` and ``e2image`` never open a
link leading out, a device or a FIFO a repository put there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from attrs import frozen

from pragma_core import DriverError
from pragma_core.pluginkit import Deadline, run_tool

from .qcow2 import CLUSTER_SIZE
from .sparse import copy_extents, data_extents, nonzero_copy, sparse_copy

log = logging.getLogger(__name__)

#: Legacy files moved aside so the guest's network configurator regenerates them.
LEGACY_NETWORK_FILES = (
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/sysconfig/network-scripts/ifcfg-eth*",
)
#: Where the guest's boot-time configurator reads its vc-out.
VCOUT_PATH = "/root/vc-out.xml"

_EXT_MAGIC = 0xEF53
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+@:,=-]+")


class InjectionUnsupported(DriverError):
    """The image is not one this module can edit (not raw, no ext filesystem...)."""


#: The longest one e2fsprogs or sfdisk run on a base image may take, seconds. The base comes from the
#: repository: a crafted filesystem must not hold a boot for ever (nor fill memory: :func:`_tool`).
TOOL_SECONDS = 600.0


def _tool(
    argv: Sequence[str],
    *,
    what: str,
    package: str = "e2fsprogs",
    input: str | None = None,  # noqa: A002 - subprocess's name
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` bounded (core's ``run_tool``: :data:`TOOL_SECONDS`, at most ``MAX_TOOL_OUTPUT`` printed);
    :class:`InjectionUnsupported` when the tool is not installed, a :class:`DriverError` past a bound."""
    if shutil.which(argv[0]) is None:
        raise InjectionUnsupported(f"{argv[0]} is not installed (Debian package {package})")
    done = run_tool(argv, what=what, deadline=Deadline(TOOL_SECONDS), error=DriverError,
                    input=None if input is None else input.encode())
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


def _run(argv: Sequence[str], *, what: str) -> str:
    proc = _tool(argv, what=what)
    if proc.returncode != 0:
        raise DriverError(f"{what} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    # debugfs reports most command failures on stderr with exit status 0.
    return proc.stdout + "\n" + proc.stderr


def has_ext_magic(path: Path, offset: int) -> bool:
    """Whether an ext2/3/4 superblock starts 1024 bytes after ``offset`` in ``path``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset + 1024 + 56)
            raw = fh.read(2)
    except OSError:
        return False
    return len(raw) == 2 and int.from_bytes(raw, "little") == _EXT_MAGIC


def ext_block_size(path: Path, offset: int) -> int:
    """The block size of the ext filesystem at ``offset`` (``1024 << s_log_block_size``)."""
    with open(path, "rb") as fh:
        fh.seek(offset + 1024 + 24)
        log_size = int.from_bytes(fh.read(4), "little")
    if log_size > 6:
        raise InjectionUnsupported(f"{path}: implausible ext block size")
    return 1024 << log_size


@frozen(kw_only=True)
class ExtLocation:
    """Where the root filesystem sits in a raw disk image: byte offset and length."""

    offset: int
    length: int


def find_root_filesystem(path: Path) -> ExtLocation:
    """The root filesystem of a raw disk: the first ext2/3/4 partition holding ``/etc``.

    The whole disk counts when it is one ext filesystem. An ext ``/boot``
    partition (no ``/etc``) is passed over: a root of another type is then not
    for this fast path (libguestfs handles it).
    """
    _e2fs_name(path)
    size = path.stat().st_size
    if has_ext_magic(path, 0):
        return ExtLocation(offset=0, length=size)
    proc = _tool(["sfdisk", "--json", str(path)], what=f"reading the partition table of {path}", package="fdisk")
    if proc.returncode != 0:
        raise InjectionUnsupported(f"{path}: no partition table and no ext filesystem")
    table = json.loads(proc.stdout).get("partitiontable", {})
    sector = int(table.get("sectorsize", 512))
    candidates = [
        ExtLocation(offset=int(part["start"]) * sector, length=int(part["size"]) * sector)
        for part in table.get("partitions", [])
        if has_ext_magic(path, int(part["start"]) * sector)
    ]
    for location in candidates:
        if _is_directory(path, location, "/etc"):
            return location
    if candidates:
        raise InjectionUnsupported(f"{path}: no ext2/3/4 partition holds /etc (the root is of another type)")
    raise InjectionUnsupported(f"{path}: no ext2/3/4 partition found")


def _is_directory(image: Path, location: ExtLocation, guest_path: str) -> bool:
    """Whether ``guest_path`` is a directory in the ext filesystem at ``location``."""
    return "Type: directory" in _debugfs(image, location, f"stat {_quote(guest_path)}\n", write=False)


def _device(path: Path, offset: int) -> str:
    """The name e2fsprogs opens for the filesystem at ``offset`` of ``path`` (``path?offset=N``)."""
    return f"{_e2fs_name(path)}?offset={offset}" if offset else _e2fs_name(path)


def _e2fs_name(path: Path) -> str:
    """``path`` as e2fsprogs takes it: refused when it holds a ``?``, which e2fsprogs reads as the start of
    its options -- ``root.img?x`` would open ``root.img``, a file nothing checked (a link leading out, a FIFO)."""
    name = str(path)
    if "?" in name:
        raise InjectionUnsupported(f"{path}: a '?' in the name (e2fsprogs would open another file)")
    return name


def _quote(path: str) -> str:
    if path != "/" and not _SAFE_NAME.fullmatch(path.replace("/", "")):
        raise DriverError(f"refusing to edit guest path {path!r} (unexpected characters)")
    return path


@frozen(kw_only=True)
class GuestPlan:
    """What to do inside one base image: which existing files to rename, what already exists."""

    renames: tuple[tuple[str, str], ...]
    existing: frozenset[str]


def plan_edits(image: Path, location: ExtLocation, patterns: Iterable[str] = LEGACY_NETWORK_FILES) -> GuestPlan:
    """List the guest directories once and decide the renames (shared by every node of a base)."""
    patterns = list(patterns)
    vcout_dir = PurePosixPath(VCOUT_PATH).parent
    dirs = sorted({str(PurePosixPath(p).parent) for p in patterns} | {str(vcout_dir), str(vcout_dir.parent)})
    script = "".join(f"ls -p {_quote(d)}\n" for d in dirs)
    out = _debugfs(image, location, script, write=False)
    listing: dict[str, set[str]] = {d: set() for d in dirs}
    current: str | None = None
    for line in out.splitlines():
        if line.startswith("debugfs: ls -p "):
            current = line[len("debugfs: ls -p ") :].strip()
            continue
        fields = line.split("/")
        # ls -p rows: /inode/mode/uid/gid/name/size/
        if current in listing and len(fields) >= 7 and fields[0] == "" and fields[1].isdigit():
            name = "/".join(fields[5:-2])
            if name not in (".", ".."):
                listing[current].add(name)
    renames = []
    existing = set()
    for directory, names in listing.items():
        existing.update(f"{directory.rstrip('/')}/{n}" for n in names)
    for pattern in patterns:
        directory, glob = str(PurePosixPath(pattern).parent), PurePosixPath(pattern).name
        for name in sorted(listing.get(directory, ())):
            if fnmatch.fnmatchcase(name, glob) and not name.startswith("old-"):
                if not _SAFE_NAME.fullmatch(name):
                    log.warning("not renaming guest file %s/%r: unexpected characters", directory, name)
                    continue
                renames.append((f"{directory}/{name}", f"{directory}/old-{name}"))
    return GuestPlan(renames=tuple(renames), existing=frozenset(existing))


def _script(plan: GuestPlan, source: Path) -> str:
    lines = []
    for old, new in plan.renames:
        if new in plan.existing:
            lines.append(f"rm {new}")
        # debugfs ln/unlink do not touch the link count, so together they are a rename.
        lines.append(f"ln {old} {new}")
        lines.append(f"unlink {old}")
    root = str(PurePosixPath(VCOUT_PATH).parent)
    if root not in plan.existing and root != "/":
        lines.append(f"mkdir {root}")
    if VCOUT_PATH in plan.existing:
        lines.append(f"rm {VCOUT_PATH}")
    if not _SAFE_NAME.fullmatch(str(source).replace("/", "")):
        raise DriverError(f"temporary file name {source} has unexpected characters")
    lines.append(f"write {source} {VCOUT_PATH}")
    lines.append(f"sif {VCOUT_PATH} mode 0100644")
    lines.append(f"sif {VCOUT_PATH} uid 0")
    lines.append(f"sif {VCOUT_PATH} gid 0")
    return "\n".join(lines) + "\n"


def _debugfs(image: Path, location: ExtLocation, script: str, *, write: bool) -> str:
    argv = ["debugfs"]
    if write:
        argv.append("-w")
    argv += ["-f", "-", _device(image, location.offset)]
    proc = _tool(argv, what=f"debugfs on {image}", input=script)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise DriverError(f"debugfs on {image} failed: {output.strip().splitlines()[-1:]}")
    if write:
        # debugfs exits 0 even when a command fails; its errors name the command.
        bad = [
            line
            for line in output.splitlines()
            if line
            and not line.startswith(("debugfs ", "debugfs:", "Allocated inode"))
        ]
        if bad:
            raise DriverError(f"debugfs could not edit {image}: {bad[0].strip()}")
    return output


def inject_raw(image: Path, location: ExtLocation, plan: GuestPlan, vcout: bytes) -> None:
    """Make the guest edits directly in a raw disk image (``disk_mode = copy``)."""
    with tempfile.TemporaryDirectory(prefix="pragma-vcout-") as tmp:
        source = Path(tmp) / "vc-out.xml"
        source.write_bytes(vcout)
        _debugfs(image, location, _script(plan, source), write=True)


def _temp_file(directory: Path, prefix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".meta", dir=directory)
    os.close(fd)
    return Path(name)


class OverlayDelta:
    """Computes, for each node, the clusters its overlay must hold (``disk_mode = overlay``).

    Built once per base image; :meth:`clusters` is safe to call from several
    threads at once (each call works in its own scratch file).
    """

    def __init__(self, base: Path, location: ExtLocation, plan: GuestPlan, workdir: Path,
                 cache: Path | None = None) -> None:
        self.base = base
        self.location = location
        self.plan = plan
        self.workdir = workdir
        self.template = _temp_file(workdir, "base-")
        self.block_size = ext_block_size(base, location.offset)
        templates = TemplateCache(cache) if cache is not None else None
        key = templates.key(base, location) if templates is not None else ""
        if templates is None or not templates.fetch(key, self.template):
            self._make_template()
            if templates is not None:
                templates.keep(key, self.template)
        with open(self.template, "rb") as fh:
            self._template_extents = list(data_extents(fh.fileno()))

    def _make_template(self) -> None:
        # e2image -r: a sparse raw image of the filesystem metadata only. Most of
        # it is zeros (unused inode tables: 16 of 17 MiB on a 1 GiB ext4), made
        # holes here, so each node copies and compares only the rest.
        full = _temp_file(self.workdir, "e2image-")
        try:
            _run(["e2image", "-r", "-o", str(self.location.offset), _e2fs_name(self.base), str(full)],
                 what=f"e2image of {self.base}")
            nonzero_copy(full, self.template, block=self.block_size)
        finally:
            full.unlink(missing_ok=True)

    def clusters(self, node: str, vcout: bytes) -> dict[int, bytes]:
        """Apply the edits for one node; return ``{disk offset: 64 KiB cluster}`` for its overlay."""
        scratch = _temp_file(self.workdir, f"{node}-")
        source = scratch.with_suffix(".xml")
        source.write_bytes(vcout)
        try:
            sparse_copy(self.template, scratch)
            scratch_location = ExtLocation(offset=0, length=self.location.length)
            _debugfs(scratch, scratch_location, _script(self.plan, source), write=True)
            changed = self._changed_ranges(scratch)
            return self._merge(scratch, changed)
        finally:
            scratch.unlink(missing_ok=True)
            source.unlink(missing_ok=True)

    def _changed_ranges(self, scratch: Path) -> list[tuple[int, int]]:
        """Byte ranges (filesystem coordinates, whole filesystem blocks) debugfs wrote in ``scratch``.

        A block counts as written when its bytes differ from the pristine
        scratch, or when the pristine scratch had a hole there and the block
        now holds non-zero bytes. (The host file system allocates in its own
        block size, so a data extent may cover filesystem blocks debugfs never
        touched; those read as zeros and must keep the base image's bytes.)
        """
        block = self.block_size
        changed: list[tuple[int, int]] = []
        zero = bytes(block)
        with open(scratch, "rb") as new, open(self.template, "rb") as old:
            for start, end in data_extents(new.fileno()):
                start -= start % block
                fresh_all = os.pread(new.fileno(), end - start, start)
                old_all = os.pread(old.fileno(), end - start, start)
                covered = self._template_covers(start, end)
                if covered and fresh_all == old_all:
                    continue
                for rel in range(0, end - start, block):
                    fresh = fresh_all[rel : rel + block]
                    pos = start + rel
                    if self._template_covers(pos, pos + len(fresh)):
                        if old_all[rel : rel + block] == fresh:
                            continue
                    elif fresh == zero[: len(fresh)]:
                        continue
                    blk_end = pos + len(fresh)
                    if changed and changed[-1][1] == pos:
                        changed[-1] = (changed[-1][0], blk_end)
                    else:
                        changed.append((pos, blk_end))
        return changed

    def _template_covers(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self._template_extents)

    def _merge(self, scratch: Path, changed: list[tuple[int, int]]) -> dict[int, bytes]:
        base_offset = self.location.offset
        by_cluster: dict[int, list[tuple[int, int]]] = {}
        for start, end in changed:
            disk_start, disk_end = start + base_offset, end + base_offset
            first = disk_start // CLUSTER_SIZE
            last = (disk_end - 1) // CLUSTER_SIZE
            for index in range(first, last + 1):
                lo = max(disk_start, index * CLUSTER_SIZE)
                hi = min(disk_end, (index + 1) * CLUSTER_SIZE)
                by_cluster.setdefault(index, []).append((lo, hi))
        out: dict[int, bytes] = {}
        with open(self.base, "rb") as base, open(scratch, "rb") as new:
            for index, ranges in by_cluster.items():
                offset = index * CLUSTER_SIZE
                cluster = bytearray(os.pread(base.fileno(), CLUSTER_SIZE, offset))
                cluster.extend(bytes(CLUSTER_SIZE - len(cluster)))
                for lo, hi in ranges:
                    cluster[lo - offset : hi - offset] = os.pread(new.fileno(), hi - lo, lo - base_offset)
                out[offset] = bytes(cluster)
        return out


class TemplateCache:
    """The metadata template of each base image (``e2image -r``), kept between boots.

    Making it costs an ``e2image`` run over the base (~70 ms for a 1 GiB
    ext4); every boot of an unchanged base reuses it. An entry is named by
    the base's path and identity (device, inode, size, modification and
    change times) and the filesystem's place in it, so a base staged anew or
    changed in place gets a new one. The directory is pragma's own
    (``<state_dir>/templates``); an entry is read only when it is a regular
    file really inside it (a link is never followed), is written under a
    temporary name and renamed into place, and an entry of the same base
    path unused for :attr:`STALE_SECONDS` is deleted when a new one is kept.
    A cache that cannot be used only costs the ``e2image`` run.
    """

    STALE_SECONDS = 600.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def key(base: Path, location: ExtLocation) -> str:
        """``<path digest>-<identity digest>``: the entry of ``base`` as it is now."""
        st = base.stat()
        where = hashlib.sha256(os.fsencode(os.path.realpath(base))).hexdigest()[:16]
        what = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{location.offset}:{location.length}"
        return f"{where}-{hashlib.sha256(what.encode()).hexdigest()[:16]}"

    def fetch(self, key: str, target: Path) -> bool:
        """Copy entry ``key`` to the new file ``target``; whether there was one to copy."""
        from pragma_core.pluginkit import open_inside

        try:
            with open_inside(self.directory, self.directory / f"{key}.img") as src, open(target, "wb") as dst:
                copy_extents(src.fileno(), dst.fileno())
                os.utime(src.fileno())  # in use: not stale
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("template cache %s: %s; making the template anew", self.directory, exc.strerror or exc)
            return False
        return True

    def keep(self, key: str, template: Path) -> None:
        """Store ``template`` as entry ``key``; drop the stale entries of the same base path."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".img", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as dst, open(template, "rb") as src:
                    copy_extents(src.fileno(), dst.fileno())
                os.replace(name, self.directory / f"{key}.img")
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
            self._prune(key)
        except OSError as exc:
            log.warning("template cache %s: cannot keep a template: %s", self.directory, exc.strerror or exc)

    def _prune(self, key: str) -> None:
        prefix = key.split("-", 1)[0] + "-"
        now = time.time()
        for entry in os.scandir(self.directory):  # older entries of this base; what a killed run was writing
            ours = entry.name.startswith((prefix, ".tmp-")) and entry.name != f"{key}.img"
            if (ours and entry.name.endswith(".img") and entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > self.STALE_SECONDS):
                Path(entry.path).unlink(missing_ok=True)


def read_file(image: Path, location: ExtLocation, guest_path: str) -> bytes:
    """Read one file out of an ext filesystem in a raw image (``debugfs cat``), for checks."""
    argv = ["debugfs", "-R", f"cat {_quote(guest_path)}", _device(image, location.offset)]
    proc = run_tool(argv, what=f"reading {guest_path} from {image}", deadline=Deadline(TOOL_SECONDS), error=DriverError)
    if proc.returncode != 0 or b"File not found" in proc.stderr:
        raise DriverError(f"cannot read {guest_path} from {image}")
    return proc.stdout


def list_directory(image: Path, location: ExtLocation, guest_dir: str) -> list[str]:
    """The names in one guest directory (``debugfs ls -p``), for checks."""
    proc = _tool(["debugfs", "-R", f"ls -p {_quote(guest_dir)}", _device(image, location.offset)],
                 what=f"listing {guest_dir} in {image}")
    names = []
    for line in proc.stdout.splitlines():
        fields = line.split("/")
        if len(fields) >= 7 and fields[0] == "" and fields[1].isdigit():
            name = "/".join(fields[5:-2])
            if name not in (".", ".."):
                names.append(name)
    return names

