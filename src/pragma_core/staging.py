"""Staging: turn a cluster description's disk parts into ready, verified local images.

One streaming pass per image, no shell and no intermediate file: the parts are
read in order (from the cluster directory, or through a repository's
``opener`` that streams them from elsewhere), fed through the processor's
decompressor (:mod:`pragma_core.processors`) and written straight into a
temporary file beside the image.  All-zero blocks become holes (the image
stays sparse), checksums are checked on the fly, and only a complete,
verified image is renamed into place.

The cache, per image ``<dir>/<source>``:

``<source>``
    the image;
``.<source>.ready``
    a JSON stamp written after the image: the processor, each part's name,
    size and modification time, the image's size and modification time and
    the checksums verified.  An image is *ready* when its stamp matches it,
    every part still present locally matches the stamp, and every checksum
    the description (or a sidecar file) expects was verified.  Parts that are
    gone (``delete_parts=True``, or parts only ever streamed from a remote
    repository) do not make a ready image stale;
``.<source>.lock``
    the per-image lock (:mod:`filelock`, ``flock``: it dies with its holder),
    so concurrent runs stage once and the others reuse the result;
``.<source>.staging-<pid>-<random>``
    the image being written; never taken as ready, removed on failure and by
    the next run after a crash.

Checksums come from the description (:attr:`Part.checksum`,
:attr:`DiskImage.checksum`) or, when it gives none, from a sidecar file in
``sha256sum``/``md5sum`` format next to the part or the image
(``<name>.sha256``, then ``<name>.md5``).

``raw`` and ``qcow2`` images are used in place.  ``qemu-img info`` (when
installed; else the qcow2 header is read) gives a qcow2's virtual size and
backing chain; a backing file outside the cluster directory is refused.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

from attrs import frozen

from .errors import ChecksumError, FormatError, StagingError
from .model import (
    CHECKSUM_ALGORITHMS,
    Checksum,
    ClusterDescription,
    DiskImage,
    Part,
    StagedCluster,
    StagedImage,
)
from .paths import fsync_directory, safe_join
from .processors import OUTPUT_CHUNK, Processor, ProcessorRegistry

__all__ = [
    "PartOpener",
    "ProcessorRegistry",
    "StageReport",
    "Stager",
    "inspect_image",
    "read_sidecar",
]

log = logging.getLogger("pragma_core.staging")

#: Yields a readable binary stream of one part.
PartOpener = Callable[[Part], AbstractContextManager[BinaryIO]]

#: Bytes read from a part (and fed to the decompressor) at once.  Smaller
#: than a MiB: the decompressor stops at :data:`OUTPUT_CHUNK` of output and
#: copies the input it has not consumed yet, which costs more the larger the
#: input (256 KiB: 0.076 s per GiB image against 0.089 s with 1 MiB).
INPUT_CHUNK = 256 << 10
#: Granularity of hole detection; aligned to file offsets so holes are whole blocks.
SPARSE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(SPARSE_BLOCK)
_ZERO_PAGE = bytes(4096)
#: Start writing dirty pages to disk after this many bytes of data (in the
#: flush thread).  8 MiB left less for the final fsync than 32 MiB: ~7 ms
#: less per GiB image (2 MiB: no better).
_WRITEBACK_EVERY = 8 << 20

_STAMP_VERSION = 1
_QCOW2_MAGIC = b"QFI\xfb"


def _local_stat(stream: BinaryIO, path: Path) -> os.stat_result | None:
    """The stat of ``stream`` when an opener handed us the local part itself (stamp it like a local read)."""
    with contextlib.suppress(
        OSError, ValueError, AttributeError, io.UnsupportedOperation
    ):
        st = os.fstat(stream.fileno())
        if os.path.samestat(st, os.stat(path)):
            return st
    return None


@frozen(kw_only=True)
class StageReport:
    """What staging one image did, for ``pragma stage`` and the logs.

    ``reused`` is true when the image was already ready and nothing was read
    or written; ``bytes_in`` is what was read from the parts, ``bytes_out``
    the image's size, ``bytes_allocated`` what it occupies on disk.
    """

    path: Path
    processor: str
    reused: bool
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_allocated: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One human line: ``<path>: staged 3 parts ...`` or ``<path>: ready (reused)``."""
        if self.reused:
            return f"{self.path}: ready (reused, {_size(self.bytes_out)})"
        rate = self.bytes_out / self.seconds / 2**20 if self.seconds > 0 else 0.0
        return (
            f"{self.path}: staged ({self.processor}) {_size(self.bytes_in)} in, {_size(self.bytes_out)} out, "
            f"{_size(self.bytes_allocated)} on disk, {self.seconds:.2f} s ({rate:.0f} MiB/s)"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------
# checksums


def read_sidecar(path: Path) -> Checksum | None:
    """The checksum a ``<path>.sha256`` (else ``<path>.md5``) file gives for ``path``.

    The sidecar is in ``sha256sum``/``md5sum`` format: lines of
    ``<hex>  <name>`` (``*<name>`` in binary mode).  The line for
    ``path``'s file name is used; a file of one line may name anything (or
    hold only the digest).  ``None`` when there is no sidecar; a malformed
    one is a :class:`StagingError` naming it and the line.
    """
    for algorithm in CHECKSUM_ALGORITHMS:
        sidecar = path.with_name(path.name + "." + algorithm)
        try:
            text = sidecar.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StagingError(
                f"{sidecar}: cannot read checksum file: {exc.strerror}"
            ) from None
        length = hashlib.new(algorithm).digest_size * 2
        entries: list[tuple[str, str, int]] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            digest, _, name = line.partition(" ")
            name = name.strip().lstrip("*")
            if len(digest) != length or any(
                c not in "0123456789abcdefABCDEF" for c in digest
            ):
                raise StagingError(
                    f"{sidecar} line {number}: not a {algorithm} checksum line"
                )
            entries.append((digest.lower(), name, number))
        for digest, name, _ in entries:
            if name and os.path.basename(name) == path.name:
                return Checksum(algorithm=algorithm, hexdigest=digest)
        if len(entries) == 1:
            return Checksum(algorithm=algorithm, hexdigest=entries[0][0])
        if not entries:
            raise StagingError(f"{sidecar}: empty checksum file")
        raise StagingError(f"{sidecar}: no checksum line for {path.name}")
    return None


class _Digests:
    """Running digests of one file's bytes against what is expected of them."""

    def __init__(self, expected: list[Checksum]) -> None:
        self.expected = expected
        self._hashers = [hashlib.new(c.algorithm) for c in expected]

    def __bool__(self) -> bool:
        return bool(self._hashers)

    def update(self, data: bytes) -> None:
        for hasher in self._hashers:
            hasher.update(data)

    def verify(self, label: str | Path) -> list[str]:
        """Check every digest; a :class:`ChecksumError` naming ``label`` on the first mismatch."""
        verified = []
        for checksum, hasher in zip(self.expected, self._hashers, strict=True):
            actual = hasher.hexdigest()
            if actual != checksum.hexdigest:
                raise ChecksumError(
                    label, checksum.algorithm, checksum.hexdigest, actual
                )
            verified.append(str(checksum))
        return verified


# --------------------------------------------------------------------------
# sparse output


class _Flusher:
    """Runs the image's syscalls that wait for the disk off the decompressing thread.

    One worker thread, started on first use, runs in order what it is given:
    starting writeback of what was written (``posix_fadvise``) and the final
    ``fsync``.  Both release the GIL and mostly wait for the disk or the
    file system, so decompression goes on meanwhile (inline, starting
    writeback blocked the decompressing thread 5-60 ms per GiB image on a
    busy disk), and the ``fsync`` overlaps with writing the stamp.
    :meth:`close` waits for everything given before the file descriptor may
    be closed (never a syscall on a reused descriptor).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._sync: concurrent.futures.Future[None] | None = None

    def _submit(
        self, func: Callable[..., None], *args: Any
    ) -> concurrent.futures.Future[None]:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="pragma-flush"
            )
        return self._pool.submit(func, *args)

    def start_writeback(self, start: int, end: int) -> None:
        """Have the kernel start writing ``[start, end)`` to disk (asynchronously, best effort)."""
        self._submit(_start_writeback, self.fd, start, end)

    def start_sync(self) -> None:
        """Start the ``fsync`` of everything written; :meth:`wait_sync` waits for it."""
        self._sync = self._submit(os.fsync, self.fd)

    def wait_sync(self) -> None:
        """Wait for the ``fsync`` :meth:`start_sync` started; its :class:`OSError` if it failed."""
        assert self._sync is not None, "start_sync() first"
        self._sync.result()

    def close(self) -> None:
        """Wait for every syscall given; the descriptor may be closed afterwards."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _start_writeback(fd: int, start: int, end: int) -> None:
    # POSIX_FADV_DONTNEED writes dirty pages back (asynchronously: they are
    # written, not dropped) and drops those already clean, so the final
    # fsync finds little left and the page cache is not filled with the image.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


class _SparseWriter:
    """Writes the image at increasing offsets, leaving all-zero blocks as holes.

    Hole detection and ``pwrite`` run inline in the decompressing thread, and
    no piece is kept once written: the decompressor's next output then reuses
    its memory.  (Measured: handing pieces to a writer thread cost more in
    GIL hand-offs than the overlap gained, and so did ``pwrite`` in a second
    thread on a busy machine; holding pieces to write adjacent ones with one
    ``pwritev`` made the allocator give memory back to the kernel and fault
    it in again, ~25,000 page faults and ~30 ms more CPU per GiB image.)
    The syscalls that wait for the disk (starting writeback, ``fsync``) run
    in a :class:`_Flusher`.
    """

    def __init__(self, fd: int, label: Path, digests: _Digests) -> None:
        self.fd = fd
        self.label = label
        self.digests = digests
        self.pos = 0
        self.flusher = _Flusher(fd)
        self._unflushed = 0  # bytes written since writeback was last started
        self._flushed_to = 0  # offset up to which writeback was started

    def write_all(self, pieces: Iterable[bytes]) -> None:
        """:meth:`write` each piece, releasing it before the next is made (see :meth:`StreamDecoder._feed`)."""
        for piece in pieces:
            self.write(piece)
            del piece

    def write(self, data: bytes) -> None:
        """Write ``data`` after what came before (holes for its zero blocks)."""
        if type(data) is not bytes:
            data = bytes(data)
        if self.digests:
            self.digests.update(data)
        if len(data) <= OUTPUT_CHUNK:
            self._piece(data)
        else:
            for start in range(0, len(data), OUTPUT_CHUNK):
                self._piece(data[start : start + OUTPUT_CHUNK])

    def _piece(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        pos = self.pos
        # A first or last byte that is not zero answers at once (the usual
        # case for data).
        if data[0] == 0 and data[-1] == 0 and _is_zero(data):
            self.pos = pos + n
            return
        view = memoryview(data)
        start = -1  # start of the pending run of data blocks
        i = 0
        while i < n:
            j = min(n, i + SPARSE_BLOCK - (pos + i) % SPARSE_BLOCK)
            if (
                data[i] == 0
                and data[j - 1] == 0
                and _ZERO_BLOCK.startswith(view[i:j])  # a memcmp, without a copy
            ):
                if start >= 0:
                    self._pwrite(view[start:i], pos + start)
                    start = -1
            elif start < 0:
                start = i
            i = j
        if start >= 0:
            self._pwrite(view[start:n], pos + start)
        self.pos = pos + n

    def _pwrite(self, view: memoryview, offset: int) -> None:
        self._unflushed += len(view)
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise _write_error(self.label, exc) from None
        if self._unflushed >= _WRITEBACK_EVERY:
            self.flusher.start_writeback(self._flushed_to, offset)
            self._flushed_to = offset
            self._unflushed = 0

    def finish(self) -> os.stat_result:
        """Set the exact size (trailing zeros are a hole too), start the ``fsync``.

        Returns the file's final stat (size and modification time, which the
        ``fsync`` does not change); :meth:`wait_durable` waits for the disk.
        """
        try:
            os.ftruncate(self.fd, self.pos)
            image = os.fstat(self.fd)
        except OSError as exc:
            raise _write_error(self.label, exc) from None
        self.flusher.start_sync()
        return image

    def wait_durable(self) -> None:
        """Wait for the ``fsync`` :meth:`finish` started: the image is on disk."""
        try:
            self.flusher.wait_sync()
        except OSError as exc:
            raise _write_error(self.label, exc) from None

    def close(self) -> None:
        """Wait for the flusher's syscalls (before the descriptor is closed)."""
        self.flusher.close()


def _is_zero(data: bytes) -> bool:
    """True when every byte of ``data`` is zero.

    The first 4 KiB are compared with zeros, the rest with ``data`` itself
    4 KiB earlier (``x.startswith(y)`` is a memcmp, without a copy): equal
    to its predecessor all along and zero at the start means zero
    throughout.  Unlike comparing with a MiB of zeros, this reads no second
    MiB: 10 ms instead of 16 ms per GiB here.
    """
    if len(data) <= len(_ZERO_PAGE):
        return _ZERO_PAGE.startswith(data)
    view = memoryview(data)
    return _ZERO_PAGE.startswith(view[: len(_ZERO_PAGE)]) and data.startswith(
        view[len(_ZERO_PAGE) :]
    )


def _write_error(path: Path, exc: OSError) -> StagingError:
    hint = (
        " (disk full?)"
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        else ""
    )
    return StagingError(f"{path}: cannot write image: {exc.strerror}{hint}")


# --------------------------------------------------------------------------
# image formats


def inspect_image(path: Path, fmt: str, directory: Path) -> StagedImage:
    """``path`` as a :class:`StagedImage`: format, virtual size and backing file.

    ``raw``: the file size.  Others: ``qemu-img info --backing-chain`` when
    ``qemu-img`` is on PATH, else (qcow2 only) the qcow2 header.  Every
    backing file must lie inside ``directory``.
    """
    if fmt == "raw":
        return StagedImage(path=path, format="raw", virtual_size=path.stat().st_size)
    qemu_img = shutil.which("qemu-img")
    if qemu_img is not None:
        return _inspect_with_qemu_img(qemu_img, path, fmt, directory)
    if fmt == "qcow2":
        return _inspect_qcow2_header(path, directory)
    raise StagingError(
        f"{path}: cannot inspect a {fmt} image without qemu-img (install qemu-utils)"
    )


def _inside(path: Path, directory: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(directory)
    return real != root and real.startswith(root.rstrip(os.sep) + os.sep)


def _check_backing(image: Path, backing: Path, directory: Path) -> None:
    if not _inside(backing, directory):
        raise StagingError(
            f"{image}: backing file {backing} is outside the cluster directory {directory}"
        )


def _inspect_with_qemu_img(
    qemu_img: str, path: Path, fmt: str, directory: Path
) -> StagedImage:
    argv = [qemu_img, "info", "--output=json", "--backing-chain", "-f", fmt, str(path)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StagingError(f"{path}: qemu-img info failed: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise StagingError(f"{path}: not a usable {fmt} image: {reason}")
    try:
        chain = json.loads(done.stdout)
        if isinstance(chain, dict):
            chain = [chain]
        top = chain[0]
        virtual_size = int(top["virtual-size"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise StagingError(f"{path}: unexpected qemu-img info output: {exc}") from None
    backing_file = None
    for entry in chain:
        name = entry.get("full-backing-filename") or entry.get("backing-filename")
        if not name:
            break
        image = Path(entry.get("filename", path))
        backing = Path(name) if os.path.isabs(name) else image.parent / name
        _check_backing(path, backing, directory)
        if backing_file is None:
            backing_file = Path(os.path.abspath(backing))
    return StagedImage(
        path=path, format=fmt, virtual_size=virtual_size, backing_file=backing_file
    )


def _inspect_qcow2_header(path: Path, directory: Path) -> StagedImage:
    try:
        with open(path, "rb") as f:
            header = f.read(72)
            if len(header) < 32 or header[:4] != _QCOW2_MAGIC:
                raise StagingError(f"{path}: not a qcow2 image (bad magic)")
            backing_offset, backing_size = struct.unpack(">QI", header[8:20])
            (virtual_size,) = struct.unpack(">Q", header[24:32])
            backing_file = None
            if backing_offset:
                f.seek(backing_offset)
                name = f.read(backing_size).decode("utf-8", "replace")
                backing = Path(name) if os.path.isabs(name) else path.parent / name
                _check_backing(path, backing, directory)
                backing_file = Path(os.path.abspath(backing))
    except OSError as exc:
        raise StagingError(f"{path}: cannot read image: {exc.strerror}") from None
    return StagedImage(
        path=path, format="qcow2", virtual_size=virtual_size, backing_file=backing_file
    )


# --------------------------------------------------------------------------
# the stager


@frozen(kw_only=True)
class _Plan:
    """Everything about one disk that staging it needs, resolved and checked."""

    description: ClusterDescription
    disk: DiskImage
    processor: Processor
    output: Path
    parts: tuple[Part, ...]  # what is streamed; () when the image is used in place
    part_paths: tuple[Path, ...]  # where each part would be locally
    local: bool  # parts are read from part_paths (no custom opener)

    @property
    def in_place(self) -> bool:
        return not self.parts

    @property
    def stamp(self) -> Path:
        return self.output.with_name(f".{self.output.name}.ready")

    @property
    def lock(self) -> Path:
        return self.output.with_name(f".{self.output.name}.lock")

    @property
    def temp_prefix(self) -> str:
        return f".{self.output.name}.staging-"


class Stager:
    """Stages the disk images of cluster descriptions into ready local files.

    ``processors``: the processor registry (default: core's four);
    ``delete_parts``: delete local parts after a successful staging (the
    legacy tool always did; pragma keeps them unless asked); ``progress``:
    show a tqdm bar (default: when stderr is a terminal).  Each staging
    appends a :class:`StageReport` to :attr:`reports`.
    """

    def __init__(
        self,
        *,
        processors: ProcessorRegistry | None = None,
        delete_parts: bool = False,
        progress: bool | None = None,
    ) -> None:
        self.processors = processors if processors is not None else ProcessorRegistry()
        self.delete_parts = delete_parts
        self.progress = progress
        self.reports: list[StageReport] = []

    # -- public API ---------------------------------------------------------

    def stage(
        self, description: ClusterDescription, *, opener: PartOpener | None = None
    ) -> StagedCluster:
        """Stage the frontend's and the compute nodes' images (both at once when they differ)."""
        front_disk = description.frontend.disk
        compute_disk = description.compute_template.disk
        front_out = self._output(description, front_disk)
        if (
            compute_disk == front_disk
            or self._output(description, compute_disk) == front_out
        ):
            if compute_disk != front_disk:
                raise StagingError(
                    f"{description.path}: frontend and compute describe the image {front_disk.source} differently"
                )
            image = self.stage_image(description, front_disk, opener=opener)
            return StagedCluster(description=description, frontend=image, compute=image)
        with concurrent.futures.ThreadPoolExecutor(
            2, thread_name_prefix="pragma-stage"
        ) as pool:
            front = pool.submit(
                self.stage_image, description, front_disk, opener=opener, _position=0
            )
            compute = pool.submit(
                self.stage_image, description, compute_disk, opener=opener, _position=1
            )
            # Both run to the end (a finished one stays cached); the frontend's error comes first.
            concurrent.futures.wait([front, compute])
            return StagedCluster(
                description=description,
                frontend=front.result(),
                compute=compute.result(),
            )

    def stage_image(
        self,
        description: ClusterDescription,
        disk: DiskImage,
        *,
        opener: PartOpener | None = None,
        _position: int = 0,
    ) -> StagedImage:
        """Make ``description.directory / disk.source`` ready and return it.

        Does nothing but checks when the image is already ready.  Otherwise,
        under the image's lock, streams the parts into a temporary file,
        verifies it and renames it into place.  Errors are one-line
        :class:`StagingError`\\ s (or :class:`ChecksumError`) naming the file;
        the cache is then left as it was.
        """
        plan = self._plan(description, disk, opener)
        started = time.monotonic()
        if self._ready(plan):
            return self._done(plan, reused=True, started=started)
        plan.output.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(plan):
            if self._ready(plan):  # staged by whoever held the lock before us
                return self._done(plan, reused=True, started=started)
            self._remove_stale_temps(plan)
            if plan.in_place:
                self._verify_in_place(plan)
                return self._done(plan, reused=False, started=started)
            bytes_in = self._stream(plan, opener, position=_position)
        if self.delete_parts and plan.local:
            self._delete_parts(plan)
        return self._done(plan, reused=False, started=started, bytes_in=bytes_in)

    def is_ready(self, description: ClusterDescription, disk: DiskImage) -> bool:
        """True when ``disk``'s image is staged, verified and up to date (no work to do)."""
        return self._ready(self._plan(description, disk, None))

    # -- planning -------------------------------------------------------------

    @staticmethod
    def _output(description: ClusterDescription, disk: DiskImage) -> Path:
        try:
            return safe_join(
                description.directory,
                disk.source,
                what="image",
                source=description.path,
            )
        except FormatError as exc:
            raise StagingError(str(exc)) from None

    def _plan(
        self,
        description: ClusterDescription,
        disk: DiskImage,
        opener: PartOpener | None,
    ) -> _Plan:
        processor = self.processors.get(disk.processor, source=description.path)
        output = self._output(description, disk)
        parts = tuple(disk.parts)
        try:
            paths = tuple(
                safe_join(
                    description.directory, p.name, what="part", source=description.path
                )
                for p in parts
            )
        except FormatError as exc:
            raise StagingError(str(exc)) from None
        if processor.in_place:
            if all(path == output for path in paths):
                parts, paths = (), ()  # no parts, or the image itself: used in place
                if not output.exists() and opener is not None:
                    # A raw image a remote repository holds: fetch it as its own single part.
                    parts, paths = (Part(name=disk.source, checksum=None),), (output,)
        elif not parts:
            raise StagingError(
                f"{description.path}: image {disk.source}: processor {processor.name!r} needs <part> files and "
                "none are listed"
            )
        if output in paths and not (processor.in_place and not disk.parts):
            raise StagingError(
                f"{description.path}: image {disk.source} is also listed as one of its own parts"
            )
        return _Plan(
            description=description,
            disk=disk,
            processor=processor,
            output=output,
            parts=parts,
            part_paths=paths,
            local=opener is None,
        )

    def _expected_image(self, plan: _Plan) -> list[Checksum]:
        if plan.disk.checksum is not None:
            return [plan.disk.checksum]
        sidecar = read_sidecar(plan.output)
        return [sidecar] if sidecar is not None else []

    @staticmethod
    def _expected_part(part: Part, path: Path) -> list[Checksum]:
        if part.checksum is not None:
            return [part.checksum]
        sidecar = read_sidecar(path)
        return [sidecar] if sidecar is not None else []

    # -- readiness -------------------------------------------------------------

    def _ready(self, plan: _Plan) -> bool:
        try:
            image = plan.output.stat()
        except FileNotFoundError:
            return False
        expected_image = self._expected_image(plan)
        if plan.in_place and not expected_image:
            return True  # a raw file with nothing to verify: it is the image
        stamp = _read_stamp(plan.stamp)
        if stamp is None:
            return False
        if (
            stamp.get("version") != _STAMP_VERSION
            or stamp.get("processor") != plan.processor.name
            or stamp.get("source") != plan.disk.source
            or stamp.get("image")
            != {"size": image.st_size, "mtime_ns": image.st_mtime_ns}
        ):
            return False
        verified = set(stamp.get("verified", []))
        if any(str(c) not in verified for c in expected_image):
            return False
        recorded = stamp.get("parts", [])
        names = [p.name for p in plan.parts] if not plan.in_place else []
        if [entry.get("name") for entry in recorded] != names:
            return False
        for part, path, entry in zip(
            plan.parts, plan.part_paths, recorded, strict=False
        ):
            checksum_ok = all(
                str(c) in entry.get("verified", [])
                for c in self._expected_part(part, path)
            )
            if not checksum_ok:
                return False
            if entry.get("mtime_ns") is None:
                continue  # streamed through a repository's opener, not read from a local file
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted after staging
            if (
                entry.get("size") != st.st_size
                or entry.get("mtime_ns") != st.st_mtime_ns
            ):
                return False
        return True

    # -- doing the work ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, plan: _Plan) -> Iterator[None]:
        """Hold the image's lock; say so in the log when someone else has it."""
        import filelock

        lock = filelock.FileLock(str(plan.lock))
        try:
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                log.info(
                    "waiting for another staging of %s to finish (lock %s)",
                    plan.output,
                    plan.lock,
                )
                lock.acquire()
        except OSError as exc:
            raise StagingError(
                f"{plan.lock}: cannot take the image lock: {exc.strerror}"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _remove_stale_temps(self, plan: _Plan) -> None:
        # Holding the lock, no one else is writing this image: any temp file is
        # what a killed run left behind.
        with contextlib.suppress(OSError):
            for entry in os.scandir(plan.output.parent):
                if entry.name.startswith(plan.temp_prefix) or entry.name.startswith(
                    f".{plan.stamp.name}.tmp-"
                ):
                    log.info("removing %s left by an interrupted staging", entry.path)
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _verify_in_place(self, plan: _Plan) -> None:
        """A raw image used in place that has a checksum: verify it once, then stamp it."""
        if not plan.output.exists():
            raise StagingError(
                f"{plan.output}: image not found (listed in {plan.description.path})"
            )
        digests = _Digests(self._expected_image(plan))
        try:
            with open(plan.output, "rb") as f:
                before = os.fstat(f.fileno())
                while chunk := f.read(INPUT_CHUNK):
                    digests.update(chunk)
        except OSError as exc:
            raise StagingError(
                f"{plan.output}: cannot read image: {exc.strerror}"
            ) from None
        verified = digests.verify(plan.output)
        self._write_stamp(plan, before, [], verified)

    def _open_local(self, plan: _Plan, index: int) -> AbstractContextManager[BinaryIO]:
        return open(plan.part_paths[index], "rb")

    def _stream(self, plan: _Plan, opener: PartOpener | None, *, position: int) -> int:
        """Write the image from its parts; returns the bytes read."""
        sizes: list[int | None] = []
        for part, path in zip(plan.parts, plan.part_paths, strict=True):
            size = part.size
            if plan.local:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    raise StagingError(
                        f"{path}: part not found (listed in {plan.description.path})"
                    ) from None
                except OSError as exc:
                    raise StagingError(
                        f"{path}: cannot read part: {exc.strerror}"
                    ) from None
                if part.size is not None and st.st_size != part.size:
                    raise StagingError(
                        f"{path}: part is {st.st_size} bytes, the description says {part.size}"
                    )
                size = st.st_size
            sizes.append(size)
        expected_parts = [
            self._expected_part(p, path)
            for p, path in zip(plan.parts, plan.part_paths, strict=True)
        ]
        temp = plan.output.with_name(
            f"{plan.temp_prefix}{os.getpid()}-{secrets.token_hex(4)}"
        )
        bar = self._progress_bar(plan, sizes, position)
        fd = -1
        writer: _SparseWriter | None = None
        stamp_temp: Path | None = None
        try:
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
            writer = _SparseWriter(
                fd, plan.output, _Digests(self._expected_image(plan))
            )
            decoder = plan.processor.decoder(label=str(plan.part_paths[0]))
            bytes_in = 0
            part_records = []
            for index, (part, path) in enumerate(
                zip(plan.parts, plan.part_paths, strict=True)
            ):
                decoder.label = str(path)
                digests = _Digests(expected_parts[index])
                read = 0
                try:
                    with (
                        opener(part)
                        if opener is not None
                        else self._open_local(plan, index)
                    ) as stream:
                        info = (
                            _local_stat(stream, path)
                            if opener is not None and not plan.local
                            else (os.fstat(stream.fileno()) if plan.local else None)
                        )
                        while chunk := stream.read(INPUT_CHUNK):
                            read += len(chunk)
                            if digests:
                                digests.update(chunk)
                            writer.write_all(decoder.feed(chunk))
                            if bar is not None:
                                bar.update(len(chunk))
                                bar.set_postfix_str(
                                    f"out {_size(writer.pos)}", refresh=False
                                )
                except FileNotFoundError:
                    raise StagingError(
                        f"{path}: part not found (listed in {plan.description.path})"
                    ) from None
                except OSError as exc:
                    raise StagingError(
                        f"{path}: cannot read part: {exc.strerror}"
                    ) from None
                if part.size is not None and read != part.size:
                    raise StagingError(
                        f"{path}: read {read} bytes, the description says {part.size}"
                    )
                verified = digests.verify(path)
                if plan.processor.member_per_part:
                    writer.write_all(decoder.drain())
                    if not decoder.at_stream_end:
                        raise StagingError(
                            f"{path}: truncated {plan.processor.name} data (the part ends inside a compressed stream)"
                        )
                bytes_in += read
                part_records.append(
                    {
                        "name": part.name,
                        "size": info.st_size if info is not None else read,
                        "mtime_ns": info.st_mtime_ns if info is not None else None,
                        "verified": verified,
                    }
                )
            writer.write_all(decoder.finish())
            # From here the image's fsync runs in the background.
            image = writer.finish()
            verified_image = writer.digests.verify(plan.output)
            # The stamp is written and synced while the image is; it is
            # renamed into place only after the image is durable and in place.
            stamp_temp = self._prepare_stamp(plan, image, part_records, verified_image)
            writer.wait_durable()
            writer.close()
            writer = None
            os.close(fd)
            fd = -1
            self._publish(plan, temp, stamp_temp)
            return bytes_in
        except OSError as exc:
            raise StagingError(
                f"{plan.output}: cannot stage image: {exc.strerror or exc}"
            ) from None
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()  # its background syscalls end before the descriptor is closed
            if fd >= 0:
                os.close(fd)
            for leftover in (temp, stamp_temp):
                if leftover is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)

    def _publish(self, plan: _Plan, temp: Path, stamp_temp: Path) -> None:
        """Rename the durable image into place, then its stamp; the image is ready only with both.

        An old stamp is removed (and that made durable) first: it must never
        vouch for the new file.  The stamp names the image's size and
        modification time, so a stamp whose rename reached the disk while the
        image's did not (a crash in between, on a file system that reorders
        renames) does not match whatever file is there: never a torn image
        taken as ready.
        """
        try:
            os.unlink(plan.stamp)
        except FileNotFoundError:
            pass
        else:
            fsync_directory(plan.output.parent)
        os.replace(temp, plan.output)
        self._install_stamp(plan, stamp_temp)

    def _write_stamp(
        self,
        plan: _Plan,
        image: os.stat_result,
        parts: list[dict[str, Any]],
        verified: list[str],
    ) -> None:
        self._install_stamp(plan, self._prepare_stamp(plan, image, parts, verified))

    def _prepare_stamp(
        self,
        plan: _Plan,
        image: os.stat_result,
        parts: list[dict[str, Any]],
        verified: list[str],
    ) -> Path:
        """Write and sync the stamp under a temporary name (never taken as a stamp); returns it."""
        stamp = {
            "version": _STAMP_VERSION,
            "source": plan.disk.source,
            "processor": plan.processor.name,
            "image": {"size": image.st_size, "mtime_ns": image.st_mtime_ns},
            "verified": verified,
            "parts": parts,
        }
        temp = plan.stamp.with_name(
            f".{plan.stamp.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        )
        try:
            with open(temp, "w", encoding="utf-8") as f:
                json.dump(stamp, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise StagingError(f"{plan.stamp}: cannot write: {exc.strerror}") from None
        return temp

    def _install_stamp(self, plan: _Plan, temp: Path) -> None:
        """Rename a prepared stamp into place and make that durable."""
        try:
            os.replace(temp, plan.stamp)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise StagingError(f"{plan.stamp}: cannot write: {exc.strerror}") from None
        fsync_directory(plan.output.parent)

    def _delete_parts(self, plan: _Plan) -> None:
        for path in plan.part_paths:
            if path == plan.output:
                continue
            try:
                path.unlink()
                log.info("deleted part %s", path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: cannot delete part: %s", path, exc.strerror)

    def _progress_bar(self, plan: _Plan, sizes: list[int | None], position: int) -> Any:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm  # type: ignore[import-untyped]

        total = (
            sum(s for s in sizes if s is not None)
            if all(s is not None for s in sizes)
            else None
        )
        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=plan.output.name,
            position=position,
            leave=True,
            file=sys.stderr,
        )

    def _done(
        self, plan: _Plan, *, reused: bool, started: float, bytes_in: int = 0
    ) -> StagedImage:
        staged = inspect_image(
            plan.output, plan.disk.format, plan.description.directory
        )
        st = plan.output.stat()
        report = StageReport(
            path=plan.output,
            processor=plan.processor.name,
            reused=reused,
            bytes_in=bytes_in,
            bytes_out=st.st_size,
            bytes_allocated=st.st_blocks * 512,
            seconds=time.monotonic() - started,
        )
        self.reports.append(report)
        if reused:
            log.debug("%s", report.summary())
        else:
            log.info("%s", report.summary())
        return staged


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
