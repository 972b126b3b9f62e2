"""Restore a Clonezilla image from a restore ISO into a sparse raw disk file, without a VM.

Steps (what Clonezilla's ``ocs-sr`` does inside the recovery VM, done here
on a file): make a sparse file of the disk's size; apply the saved
partition table with ``sfdisk`` (dump on stdin); put back the boot code and
the hidden data after the MBR; stream each partition's pieces out of the ISO
through the decompressor into ``partclone.<fs> -r -s - -O <disk>
--offset=<bytes>`` (dd images are written at the offset directly, skipping
zero blocks); write swap signatures with ``mkswap``. Every tool runs from an
argument list; its exit status and log are checked.

Every ISO may be hostile, and a restore runs as root on the head node, so a
restore is bounded (:class:`_Budget`): the disk the ISO declares (its table,
its parted dump or its ``.NNG`` name) may not be larger than
``max_disk_size``, refused before anything is written; every byte that goes
to the disk -- written by dd, fed to partclone -- is counted and the restore
stops when the count would pass ``max_disk_size``; the filesystem must keep
:data:`FREE_SPACE_RESERVE` free (checked before the output is made and again
every :data:`FREE_SPACE_CHECK_EVERY` bytes); partclone writes the file
itself, so after each run the file may not have grown past the declared
disk. A stopped restore removes its output and its partclone log.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pragma_core import RepositoryError
from pragma_core.pluginkit import FREE_SPACE_CHECK_EVERY, FREE_SPACE_RESERVE, Deadline, free_bytes, stop_tool

from .czimage import PARTIMAG, ClonezillaImage, PartitionImage, read_image
from .decompress import JoinedPieces, iter_chunks, open_decompressed
from .isofile import BadImageError, IsoFile
from .settings import DEFAULT_MAX_DISK_SIZE, DEFAULT_RESTORE_TIMEOUT
from . import tools
from .tools import ToolError

log = logging.getLogger(__name__)

_SIZE_IN_NAME = re.compile(r"\.(\d+)G$", re.IGNORECASE)
_PARTCLONE_MAGIC = b"partclone-image"
_ZERO = bytes(1 << 16)
_MIB = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)



class DiskLimitError(RepositoryError):
    """A restore would pass a limit of this host (``max_disk_size``, the free space); the ISO is kept."""


def _amount(count: int) -> str:
    """``count`` bytes for a message: ``3.2 GiB``, ``12.5 MiB``, ``1088 bytes``."""
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    if count >= _MIB:
        return f"{count / _MIB:.1f} MiB"
    return f"{count} bytes"


def ensure_free_space(where: int | Path, needed: int, label: str) -> None:
    """A :class:`DiskLimitError` naming ``label`` unless writing ``needed`` more bytes there leaves :data:`FREE_SPACE_RESERVE` free.

    ``where`` is a directory (checked before writing: "refused") or the
    open output (checked while writing: "stopped").
    """
    free = free_bytes(where)
    if free - needed >= FREE_SPACE_RESERVE:
        return
    if isinstance(where, int):
        problem = f"stopped: the filesystem of the disk being restored has only {_amount(free)} free"
    else:
        problem = f"refused: {where} has {_amount(free)} free and this needs at least {_amount(needed)} more"
    raise DiskLimitError(f"{label}: {problem}; a restore leaves at least {_amount(FREE_SPACE_RESERVE)} free")


def check_declared_size(label: str, size: int, max_disk_size: int) -> None:
    """A :class:`DiskLimitError` naming ``label`` when the disk to make is larger than ``max_disk_size``."""
    if size > max_disk_size:
        raise DiskLimitError(
            f"{label}: refused: its disk would be {size} bytes ({_amount(size)}), more than max_disk_size "
            f"({max_disk_size} bytes); raise max_disk_size in repository_settings if this image is expected"
        )


class _Budget:
    """What one restore may still write and how long it may take: ``max_disk_size`` bytes in all, never
    the last free GiB, and nothing after its ``restore_timeout`` deadline.

    :meth:`spend` is called with every chunk *before* it goes to the disk
    (written by dd or fed to partclone), so the limit is never passed; the
    tools the restore runs share the same ``deadline``.
    """

    def __init__(self, fd: int, label: str, *, disk_size: int, limit: int, deadline: Deadline) -> None:
        self.fd = fd
        self.label = label
        self.disk_size = disk_size
        self.limit = limit
        self.deadline = deadline
        self.spent = 0
        self._next_check = FREE_SPACE_CHECK_EVERY
        self.check()

    def spend(self, count: int) -> None:
        if self.deadline.expired:
            raise tools.overdue(self.label, self.deadline)
        self.spent += count
        if self.spent > self.limit:
            raise BadImageError(
                f"{self.label}: stopped: the image holds more data than max_disk_size ({self.limit} bytes), "
                f"whatever its disk ({self.disk_size} bytes) says"
            )
        if self.spent >= self._next_check:
            self._next_check = self.spent + FREE_SPACE_CHECK_EVERY
            self.check()

    def check(self) -> None:
        """The free space still holds the reserve, and the file has not grown past its disk (partclone writes it)."""
        st = os.fstat(self.fd)
        if st.st_size > self.disk_size:
            raise BadImageError(
                f"{self.label}: stopped: a partition image wrote past the end of its {self.disk_size}-byte disk"
            )
        ensure_free_space(self.fd, 0, self.label)


def split_iso_name(iso_name: str) -> tuple[str, int | None]:
    """The image name and the size (bytes) in a cziso-style ISO name.

    ``clonezilla-live-biolinux-frontend.40G.iso`` gives
    ``("clonezilla-live-biolinux-frontend", 40 GiB)``; a name without the
    ``.NNG`` part gives its stem and ``None``. Only ``.iso`` and the size
    suffix are cut (legacy bug B33 cut at the first dot).
    """
    stem = iso_name[:-4] if iso_name.lower().endswith(".iso") else iso_name
    match = _SIZE_IN_NAME.search(stem)
    if match:
        return stem[: match.start()], int(match.group(1)) << 30
    return stem, None


def find_image(iso: IsoFile, preferred: str) -> ClonezillaImage:
    """The Clonezilla image under ``/home/partimag`` (the one named ``preferred`` if there are several)."""
    dirs, _ = iso.listdir(PARTIMAG)
    if not dirs:
        raise BadImageError(f"{iso.path.name}: no Clonezilla image (nothing under {PARTIMAG}/)")
    if len(dirs) > 1:
        if preferred not in dirs:
            raise BadImageError(f"{iso.path.name}: several images under {PARTIMAG}/ ({', '.join(dirs)}) and none named {preferred}")
        dirs = [preferred]
    directory = f"{PARTIMAG}/{dirs[0]}"
    _, files = iso.listdir(directory)
    return read_image(directory, files, iso.read, label=iso.path.name)


def disk_size(image: ClonezillaImage, *, name_size: int | None, setting: int | None) -> int:
    """Bytes for the new disk: the ISO name's size, else parted's, else the table's end; at least ``setting``.

    Rounded up to a whole MiB (ZFS volumes and qcow2 like that); never
    smaller than the end of the last partition (GPT: plus its backup table).
    """
    table = image.table
    needed = table.end_bytes
    if table.label == "gpt":
        needed += (1 + -(-128 * 128 // table.sector_size)) * table.sector_size
    if name_size is not None:
        size = name_size
    elif image.disk_sectors is not None:
        size = image.disk_sectors * table.sector_size
    elif table.label == "gpt" and table.last_lba is not None:
        size = (table.last_lba + 1) * table.sector_size + (1 + -(-128 * 128 // table.sector_size)) * table.sector_size
    else:
        size = needed
    size = max(size, needed, setting or 0)
    return -(-size // _MIB) * _MIB


def _least_written(iso: IsoFile, image: ClonezillaImage) -> int:
    """About the least a restore writes: its compressed partition images (the disk is sparse; zeros take no room).

    At most the ISO's own length, whatever a hostile ISO's records claim.
    """
    pieces = sum(iso.size(image.path(name)) for part in image.partitions for name in part.pieces)
    return min(pieces, iso.length)


def _run(argv: list[str], what: str, deadline: Deadline, *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    result = tools.run(argv, what, deadline, input=stdin)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        raise ToolError(f"{what}: {Path(argv[0]).name} failed (exit {result.returncode}): {message[-1] if message else ''}")
    return result


def restore_iso_to_raw(
    iso_path: Path,
    output: Path,
    *,
    size_setting: int | None = None,
    log_dir: Path | None = None,
    max_disk_size: int = DEFAULT_MAX_DISK_SIZE,
    deadline: Deadline | None = None,
) -> int:
    """Restore the image in ``iso_path`` into the new sparse raw file ``output``; return its size.

    ``output`` must not exist; on failure it is removed. Raises
    :class:`BadImageError` for a bad ISO or image (the caller re-downloads),
    :class:`DiskLimitError` when the disk would be larger than
    ``max_disk_size`` or the filesystem would keep less than
    :data:`FREE_SPACE_RESERVE` free, and :class:`ToolError` when a tool
    fails for another reason or the restore is not done by ``deadline``
    (default: :data:`~.settings.DEFAULT_RESTORE_TIMEOUT` from now).
    """
    deadline = deadline or Deadline(DEFAULT_RESTORE_TIMEOUT)
    image_name, name_size = split_iso_name(iso_path.name)
    with IsoFile(iso_path) as iso:
        image = find_image(iso, image_name)
        size = disk_size(image, name_size=name_size, setting=size_setting)
        check_declared_size(iso_path.name, size, max_disk_size)
        ensure_free_space(output.parent, _least_written(iso, image), iso_path.name)
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.ftruncate(fd, size)
                budget = _Budget(fd, iso_path.name, disk_size=size, limit=max_disk_size, deadline=deadline)
                _restore(iso, image, output, fd, log_dir or output.parent, budget)
                budget.check()
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    return size


def _restore(iso: IsoFile, image: ClonezillaImage, output: Path, fd: int, log_dir: Path, budget: _Budget) -> None:
    label = f"{iso.path.name}: {image.name}"
    _run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "-q", str(output)],
        f"{label}: applying {image.disk}-pt.sf",
        budget.deadline,
        stdin=image.table.for_sfdisk(),
    )
    if image.mbr is not None:
        boot_code = iso.read(image.path(image.mbr))[:446]
        os.pwrite(fd, boot_code, 0)
    if image.hidden_after_mbr is not None and image.table.label == "dos" and image.table.partitions:
        first = min(p.start for p in image.table.partitions) * image.table.sector_size
        hidden = iso.read(image.path(image.hidden_after_mbr), limit=64 * _MIB)[: max(0, first - 512)]
        budget.spend(len(hidden))
        _write_sparse(fd, hidden, 512)
    for part in image.partitions:
        entry = image.table.find(part.device)
        assert entry is not None  # read_image checked
        offset = entry.start * image.table.sector_size
        length = entry.size * image.table.sector_size
        _restore_partition(iso, image, part, output, fd, offset, length, log_dir, budget)
        budget.check()
    for device, uuid, swap_label in image.swaps:
        entry = image.table.find(device)
        assert entry is not None
        _make_swap(fd, entry.start * image.table.sector_size, entry.size * image.table.sector_size, uuid, swap_label, output.parent, f"{label}: {device}",
                   budget.deadline)


def _partition_stream(iso: IsoFile, image: ClonezillaImage, part: PartitionImage, label: str):  # type: ignore[no-untyped-def]
    import io

    openers = [lambda name=name: iso.open(image.path(name)) for name in part.pieces]
    joined = io.BufferedReader(JoinedPieces(openers), buffer_size=_MIB)
    return open_decompressed(joined, part.compression, label)


def _restore_partition(
    iso: IsoFile,
    image: ClonezillaImage,
    part: PartitionImage,
    output: Path,
    fd: int,
    offset: int,
    length: int,
    log_dir: Path,
    budget: _Budget,
) -> None:
    label = f"{iso.path.name}: {part.pieces[0].rsplit('.', 1)[0] if len(part.pieces) > 1 else part.pieces[0]}"
    stream = _partition_stream(iso, image, part, label)
    chunks = iter_chunks(stream, label)
    try:
        first = next(chunks, b"")
        if not first:
            raise BadImageError(f"{label}: the partition image is empty")
        if part.filesystem == "dd" and not first.startswith(_PARTCLONE_MAGIC):
            _write_dd(fd, first, chunks, offset, length, label, budget)
        else:
            if not first.startswith(_PARTCLONE_MAGIC):
                raise BadImageError(f"{label}: not a partclone image (no partclone-image header)")
            _run_partclone(part.filesystem, first, chunks, output, offset, log_dir, label, image.name, part.device, budget)
        log.debug("%s: restored %s at offset %d", label, part.device, offset)
    finally:
        stream.close()


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset``, skipping 64 KiB blocks that are all zero (the file is sparse)."""
    step = len(_ZERO)
    for start in range(0, len(data), step):
        block = data[start : start + step]
        if block != _ZERO[: len(block)]:
            os.pwrite(fd, block, offset + start)


def _write_dd(fd: int, first: bytes, chunks: Iterator[bytes], offset: int, length: int, label: str, budget: _Budget) -> None:
    position = 0
    pending = first
    while pending:
        if position + len(pending) > length:
            raise BadImageError(f"{label}: the dd image is larger than its partition ({length} bytes)")
        budget.spend(len(pending))
        _write_sparse(fd, pending, offset + position)
        position += len(pending)
        pending = next(chunks, b"")


def _run_partclone(
    filesystem: str,
    first: bytes,
    chunks: Iterator[bytes],
    output: Path,
    offset: int,
    log_dir: Path,
    label: str,
    image: str,
    device: str,
    budget: _Budget,
) -> None:
    """Feed the partition image to ``partclone.<fs> -r``, which writes ``output`` itself.

    Every chunk fed is counted by ``budget`` first (partclone writes at most
    what it is fed); a lying header can still make partclone write past the
    disk's end, which the budget's checks see (file size) during and after
    the run.
    """
    if not re.fullmatch(r"[a-z0-9+]+", filesystem):
        raise BadImageError(f"{label}: invalid filesystem name {filesystem!r}")
    tool = shutil.which(f"partclone.{filesystem}")
    if tool is None:
        if shutil.which("partclone.restore") is None:
            raise ToolError(f"{label}: partclone is not installed (Debian package partclone)")
        raise BadImageError(f"{label}: unknown filesystem {filesystem!r} (no partclone.{filesystem})")
    log_dir.mkdir(parents=True, exist_ok=True)
    handle, log_name = tempfile.mkstemp(prefix=f"{image}-{device}-", suffix=".partclone.log", dir=log_dir)
    os.close(handle)
    log_file = Path(log_name)
    # -f 0: no progress refresh delay (the default waits 2 s at the end of every run).
    argv = [tool, "-r", "-s", "-", "-O", str(output), f"--offset={offset}", "-L", str(log_file), "-q", "-f", "0"]
    process = tools.start(argv, f"{label}: partclone.{filesystem}", stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert process.stdin is not None
    try:
        fcntl.fcntl(process.stdin.fileno(), _F_SETPIPE_SZ, _MIB)
    except OSError:
        pass
    broken = False
    try:
        with tools.watched(process, f"{label}: partclone.{filesystem}", budget.deadline):
            try:
                budget.spend(len(first))
                process.stdin.write(first)
                for chunk in chunks:
                    budget.spend(len(chunk))
                    process.stdin.write(chunk)
            except BrokenPipeError:
                broken = True
            finally:
                try:
                    process.stdin.close()
                except BrokenPipeError:
                    broken = True
            status = process.wait()
    except BaseException:
        stop_tool(process)
        log_file.unlink(missing_ok=True)
        raise
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    if status != 0 or "successfully" not in text:
        reason = _partclone_reason(text) or (f"exit status {status}" if status else "no success line in its log")
        message = f"{label}: partclone.{filesystem} failed: {reason} (log {log_file})"
        if re.search(r"write|No space|Permission denied", reason, re.IGNORECASE) and not broken:
            raise ToolError(message)
        raise BadImageError(message)
    log_file.unlink(missing_ok=True)


def _partclone_reason(text: str) -> str:
    for line in reversed(text.splitlines()):
        if re.search(r"error|fail|fatal", line, re.IGNORECASE) and "please check" not in line.lower():
            return line.strip()
    return ""


def _make_swap(fd: int, offset: int, length: int, uuid: str, swap_label: str, tmp_dir: Path, label: str,
               deadline: Deadline) -> None:
    """Write a swap signature (``mkswap`` on a sparse scratch file of the partition's size)."""
    mkswap = shutil.which("mkswap")
    if mkswap is None:
        log.warning("%s: mkswap is not installed; the swap partition is left empty", label)
        return
    with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix=".swap-", delete=True) as scratch:
        os.ftruncate(scratch.fileno(), length)
        argv = [mkswap]
        if re.fullmatch(r"[0-9a-fA-F-]{36}", uuid):
            argv += ["-U", uuid]
        if swap_label and re.fullmatch(r"[\w.+-]{1,16}", swap_label):
            argv += ["-L", swap_label]
        _run([*argv, scratch.name], f"{label}: mkswap", deadline)
        header = os.pread(scratch.fileno(), 65536, 0)
    _write_sparse(fd, header, offset)
