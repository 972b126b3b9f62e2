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

``raw`` and ``qcow2`` images are used in place.  Every image handed out is
checked by :func:`pragma_core.imagecheck.check_image` first (its qcow2
backing chain confined to the cluster directory, read by pragma before any
qemu tool opens it), then ``qemu-img info`` (when installed) confirms each
qcow2 level and gives the virtual size.

Confinement (the repository is not trusted):

* every file staging *reads* -- parts, in-place images, checksum sidecars,
  its own stamps -- is opened with :func:`pragma_core.paths.open_inside`
  under the cluster directory: a regular file really inside it (symbolic
  links that stay inside are fine), never a device, FIFO or directory;
* every file staging *writes* -- the image, its stamp, lock and temporary
  files -- is named from the description's validated image name, in a
  directory reached from the cluster directory without following a symbolic
  link (:func:`pragma_core.paths.open_lane`), through ``dir_fd`` calls:
  temporary files are created ``O_EXCL|O_NOFOLLOW``, an image, stamp or lock
  that is a symbolic link is refused, never written through;
* a description may not make staging write over its own description, its
  own parts (beyond the documented in-place image), the other node's files,
  or a file the repository reserves (``reserved``: the catalogue, every
  cluster description, other clusters' images and parts);
* a staged image (and its stamp) is never more readable than its sources:
  its permission bits are the intersection of ``0644`` and those of every
  local part.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

from attrs import frozen

from .errors import ChecksumError, FormatError, StagingError
from .imagecheck import check_image
from .model import (
    CHECKSUM_ALGORITHMS,
    Checksum,
    ClusterDescription,
    DiskImage,
    Part,
    StagedCluster,
    StagedImage,
)
from .paths import (
    DEFAULT_MAX_IMAGE_SIZE,
    FREE_SPACE_CHECK_EVERY,
    FREE_SPACE_RESERVE,
    UnsafeFileError,
    free_bytes,
    open_inside,
    open_lane,
    safe_join,
    stat_inside,
)
from .processors import OUTPUT_CHUNK, Processor, ProcessorRegistry, StreamDecoder

__all__ = [
    "PartOpener",
    "ProcessorRegistry",
    "StageReport",
    "Stager",
    "bookkeeping_paths",
    "inspect_image",
    "read_sidecar",
    "sidecar_paths",
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
#: A stamp larger than this is not one pragma wrote (one part takes ~200 bytes).
_MAX_STAMP = 16 << 20
#: A checksum file larger than this is refused before it is read.
_MAX_SIDECAR = 1 << 20
#: Permission bits of a staged image (and stamp) made from nothing more private.
_OUTPUT_MODE = 0o644


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


def sidecar_paths(path: Path) -> list[Path]:
    """The checksum files :func:`read_sidecar` looks for beside ``path``, in order."""
    return [path.with_name(f"{path.name}.{algorithm}") for algorithm in CHECKSUM_ALGORITHMS]


def _read_small(root: Path, path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of the regular file ``path`` inside ``root``; a :class:`StagingError` if larger."""
    with open_inside(root, path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise StagingError(f"{path}: {what} is larger than {limit} bytes")
    return data


def read_sidecar(path: Path, *, root: Path | None = None) -> Checksum | None:
    """The checksum a ``<path>.sha256`` (else ``<path>.md5``) file gives for ``path``.

    The sidecar is in ``sha256sum``/``md5sum`` format: lines of
    ``<hex>  <name>`` (``*<name>`` in binary mode).  The line for
    ``path``'s file name is used; a file of one line may name anything (or
    hold only the digest).  ``None`` when there is no sidecar; a malformed
    one, or one that is not a regular file inside ``root`` (default: the
    directory of ``path``), is a :class:`StagingError` naming it.
    """
    for algorithm, sidecar in zip(CHECKSUM_ALGORITHMS, sidecar_paths(path), strict=True):
        try:
            text = _read_small(root or path.parent, sidecar, _MAX_SIDECAR, "checksum file").decode(
                "utf-8", errors="replace"
            )
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StagingError(
                f"{sidecar}: cannot read checksum file: {exc.strerror}"
            ) from None
        entries = _sidecar_entries(sidecar, text, algorithm)
        for digest, name in entries:
            if name and os.path.basename(name) == path.name:
                return Checksum(algorithm=algorithm, hexdigest=digest)
        if len(entries) == 1:
            return Checksum(algorithm=algorithm, hexdigest=entries[0][0])
        if not entries:
            raise StagingError(f"{sidecar}: empty checksum file")
        raise StagingError(f"{sidecar}: no checksum line for {path.name}")
    return None


def _sidecar_entries(sidecar: Path, text: str, algorithm: str) -> list[tuple[str, str]]:
    """The ``(hexdigest, name)`` lines of a checksum file (blank and ``#`` lines skipped); an error naming a bad line."""
    length = hashlib.new(algorithm).digest_size * 2
    entries: list[tuple[str, str]] = []
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
        entries.append((digest.lower(), name))
    return entries


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

    def __init__(self, fd: int, label: Path, digests: _Digests, *, limit: int = DEFAULT_MAX_IMAGE_SIZE) -> None:
        self.fd = fd
        self.label = label
        self.digests = digests
        self.limit = limit
        self.pos = 0
        self._until_check = 0  # data bytes left before the free space is checked again
        self.flusher = _Flusher(fd)
        self._unflushed = 0  # bytes written since writeback was last started
        self._flushed_to = 0  # offset up to which writeback was started

    def write_all(self, pieces: Iterable[bytes]) -> None:
        """:meth:`write` each piece, releasing it before the next is made (see :meth:`StreamDecoder._feed`)."""
        for piece in pieces:
            self.write(piece)
            del piece

    def write(self, data: bytes) -> None:
        """Write ``data`` after what came before (holes for its zero blocks).

        Raises :class:`StagingError` when the image would grow past
        ``limit`` (``max_image_size``), or when less than
        :data:`FREE_SPACE_RESERVE` would stay free on its filesystem.
        """
        if self.pos + len(data) > self.limit:
            raise StagingError(f"{self.label}: the image grows past {self.limit} bytes (max_image_size); refused")
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
        self._until_check -= len(view)
        if self._until_check <= 0:
            self._check_free_space()
            self._until_check = FREE_SPACE_CHECK_EVERY
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

    def _check_free_space(self) -> None:
        try:
            free = free_bytes(self.fd)
        except OSError:
            return  # no answer: ENOSPC still stops the write
        if free < FREE_SPACE_RESERVE + FREE_SPACE_CHECK_EVERY:
            raise StagingError(f"{self.label}: fewer than {(FREE_SPACE_RESERVE + FREE_SPACE_CHECK_EVERY) >> 20} MiB"
                               " would stay free on its filesystem; refused")

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


class _Output:
    """The temporary file an image is streamed into: its descriptor, permission bits and sparse writer."""

    def __init__(self) -> None:
        self.fd = -1
        self.mode = 0
        self.writer: _SparseWriter | None = None

    def narrow_mode(self, source: os.stat_result | None) -> None:
        """Make the image no more readable than ``source`` (a part's stat; ``None``: not a local file)."""
        if source is not None and self.mode & ~_mode_of(source):
            self.mode &= _mode_of(source)
            os.fchmod(self.fd, self.mode)

    def close(self) -> None:
        """Wait for the writer's syscalls, then close the descriptor; idempotent."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _copy(stream: BinaryIO, digests: _Digests, decoder: StreamDecoder, writer: _SparseWriter, bar: Any) -> int:
    """Read ``stream`` to its end through ``decoder`` into ``writer``, digesting the input; the bytes read."""
    read = 0
    while chunk := stream.read(INPUT_CHUNK):
        read += len(chunk)
        if digests:
            digests.update(chunk)
        writer.write_all(decoder.feed(chunk))
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix_str(f"out {_size(writer.pos)}", refresh=False)
    return read


# --------------------------------------------------------------------------
# image formats


def inspect_image(path: Path, fmt: str, directory: Path) -> StagedImage:
    """``path`` as a :class:`StagedImage`: format, virtual size and backing file.

    The image and its whole backing chain are checked by
    :func:`pragma_core.imagecheck.check_image` under ``directory`` (the
    cluster directory) before any tool opens them; then, when ``qemu-img``
    is installed, ``qemu-img info`` confirms each qcow2 level. Raises a
    one-line :class:`StagingError`.
    """
    checked = check_image(path, fmt, root=directory, qemu_img=True)
    return StagedImage(
        path=checked.path,
        format=checked.format,
        virtual_size=checked.virtual_size,
        backing_file=checked.backing_file,
    )


# --------------------------------------------------------------------------
# the stager


#: What a file the repository reserves is, for messages: path -> "the image catalogue".
Reserved = Mapping[Path, str]


def bookkeeping_paths(image: Path) -> tuple[Path, Path]:
    """The stamp and the lock staging keeps beside ``image`` (``.<image>.ready``, ``.<image>.lock``)."""
    return image.with_name(f".{image.name}.ready"), image.with_name(f".{image.name}.lock")


def _written_key(path: Path) -> str:
    """Where a file pragma writes lands: its directory resolved, its own name not (it is never followed)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def _read_keys(path: Path) -> set[str]:
    """The names under which writing could clobber the file ``path``: as named, and where it leads."""
    return {_written_key(path), os.path.realpath(path)}


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
    guarded: frozenset[str]  # real paths staging this image may not write
    kept: frozenset[str]  # real paths it may not delete (its own parts excepted)

    @property
    def in_place(self) -> bool:
        return not self.parts

    @property
    def root(self) -> Path:
        """The cluster directory: everything this image reads lies in it."""
        return self.description.directory

    @property
    def stamp(self) -> Path:
        return bookkeeping_paths(self.output)[0]

    @property
    def lock(self) -> Path:
        return bookkeeping_paths(self.output)[1]

    @property
    def temp_prefix(self) -> str:
        return f".{self.output.name}.staging-"

    @property
    def stamp_temp_prefix(self) -> str:
        return f".{self.stamp.name}.tmp-"

    @property
    def written(self) -> tuple[Path, ...]:
        """The files staging this image may write (the image itself unless it is used in place)."""
        own = (self.stamp, self.lock)
        return own if self.in_place else (self.output, *own)


def _own_stat(lane: int, path: Path) -> os.stat_result | None:
    """The stat of a file pragma writes in ``lane`` (never followed); ``None`` when absent.

    A symbolic link or anything but a regular file there is refused: pragma
    neither writes through it nor replaces it.
    """
    try:
        st = os.stat(path.name, dir_fd=lane, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise StagingError(f"{path}: is a symbolic link; pragma does not write through symbolic links (remove it)")
    if not stat.S_ISREG(st.st_mode):
        raise StagingError(f"{path}: is not a regular file; pragma will not replace it")
    return st


def _create(lane: int, name: str, mode: int) -> int:
    """A new file ``name`` in ``lane``: never an existing file, never through a link."""
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=lane)


def _unlink_quietly(lane: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=lane)


def _fsync_lane(lane: int) -> None:
    """Make the renames and removals in the lane durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        os.fsync(lane)


def _temp_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"


def _mode_of(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


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
        max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    ) -> None:
        self.processors = processors if processors is not None else ProcessorRegistry()
        self.delete_parts = delete_parts
        self.progress = progress
        self.max_image_size = max_image_size
        self.reports: list[StageReport] = []

    # -- public API ---------------------------------------------------------

    def stage(
        self,
        description: ClusterDescription,
        *,
        opener: PartOpener | None = None,
        reserved: Reserved | None = None,
    ) -> StagedCluster:
        """Stage the frontend's and the compute nodes' images (both at once when they differ).

        ``reserved``: files of the repository staging may never write or
        delete, with what each is (the catalogue, other descriptions, other
        clusters' images and parts; see
        :meth:`pragma_core.repositories.local.LocalRepository.reserved_paths`).
        """
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
            image = self.stage_image(description, front_disk, opener=opener, reserved=reserved)
            return StagedCluster(description=description, frontend=image, compute=image)
        return self._stage_both(description, opener, reserved)

    def _stage_both(
        self, description: ClusterDescription, opener: PartOpener | None, reserved: Reserved | None
    ) -> StagedCluster:
        """Stage the frontend's and the compute nodes' different images at once."""
        disks = (description.frontend.disk, description.compute_template.disk)
        # Plan both first: a description whose two images collide fails before either is written.
        for disk in disks:
            self._plan(description, disk, opener, reserved)
        with concurrent.futures.ThreadPoolExecutor(
            2, thread_name_prefix="pragma-stage"
        ) as pool:
            front, compute = (
                pool.submit(self.stage_image, description, disk, opener=opener, reserved=reserved, _position=position)
                for position, disk in enumerate(disks)
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
        reserved: Reserved | None = None,
        _position: int = 0,
    ) -> StagedImage:
        """Make ``description.directory / disk.source`` ready and return it.

        Does nothing but checks when the image is already ready.  Otherwise,
        under the image's lock, streams the parts into a temporary file,
        verifies it and renames it into place.  Errors are one-line
        :class:`StagingError`\\ s (or :class:`ChecksumError`) naming the file;
        the cache is then left as it was.
        """
        plan = self._plan(description, disk, opener, reserved)
        started = time.monotonic()
        if plan.in_place and not self._expected_image(plan):
            # Nothing to verify, nothing to write: the file is the image.
            if self._image_stat(plan, None) is None:
                raise StagingError(f"{plan.output}: image not found (listed in {plan.description.path})")
            return self._done(plan, reused=True, started=started)
        with self._lane(plan, create=True) as lane:
            for path in plan.written:
                _own_stat(lane, path)  # a link or special file where pragma writes: refused, not replaced
            if self._ready(plan, lane):
                return self._done(plan, reused=True, started=started)
            with self._locked(plan, lane):
                if self._ready(plan, lane):  # staged by whoever held the lock before us
                    return self._done(plan, reused=True, started=started)
                self._remove_stale_temps(plan, lane)
                if plan.in_place:
                    self._verify_in_place(plan, lane)
                    return self._done(plan, reused=False, started=started)
                bytes_in = self._stream(plan, lane, opener, position=_position)
        if self.delete_parts and plan.local:
            self._delete_parts(plan)
        return self._done(plan, reused=False, started=started, bytes_in=bytes_in)

    def is_ready(self, description: ClusterDescription, disk: DiskImage) -> bool:
        """True when ``disk``'s image is staged, verified and up to date (no work to do)."""
        plan = self._plan(description, disk, None, None)
        if plan.in_place and not self._expected_image(plan):
            return self._image_stat(plan, None) is not None
        try:
            with self._lane(plan, create=False) as lane:
                return self._ready(plan, lane)
        except FileNotFoundError:
            return False

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

    @staticmethod
    def _part_paths(description: ClusterDescription, disk: DiskImage) -> tuple[Path, ...]:
        try:
            return tuple(
                safe_join(description.directory, p.name, what="part", source=description.path)
                for p in disk.parts
            )
        except FormatError as exc:
            raise StagingError(str(exc)) from None

    def _plan(
        self,
        description: ClusterDescription,
        disk: DiskImage,
        opener: PartOpener | None,
        reserved: Reserved | None,
    ) -> _Plan:
        processor = self.processors.get(disk.processor, source=description.path)
        output = self._output(description, disk)
        parts, paths = self._streamed_parts(description, disk, processor, output, opener)
        guarded = self._guarded(description, disk, reserved, own_parts=True)
        plan = _Plan(
            description=description,
            disk=disk,
            processor=processor,
            output=output,
            parts=parts,
            part_paths=paths,
            local=opener is None,
            guarded=frozenset(guarded),
            kept=frozenset(self._guarded(description, disk, reserved, own_parts=False)),
        )
        for path in plan.written:
            what = guarded.get(_written_key(path))
            if what is not None:
                raise StagingError(
                    f"{description.path}: image {disk.source}: staging it would write {path}, which is {what}"
                )
        return plan

    def _streamed_parts(
        self,
        description: ClusterDescription,
        disk: DiskImage,
        processor: Processor,
        output: Path,
        opener: PartOpener | None,
    ) -> tuple[tuple[Part, ...], tuple[Path, ...]]:
        """The parts to stream into ``output`` and where each is locally; none when the image is used in place."""
        parts = tuple(disk.parts)
        paths = self._part_paths(description, disk)
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
        return parts, paths

    def _guarded(
        self,
        description: ClusterDescription,
        disk: DiskImage,
        reserved: Reserved | None,
        *,
        own_parts: bool,
    ) -> dict[str, str]:
        """Real path -> what it is, for every file staging ``disk`` may not write (or delete).

        The description itself, every part of either image (of ``disk``
        itself only with ``own_parts``) and their checksum files, the other
        image of the cluster (with its stamp and lock) and the repository's
        ``reserved`` files.
        """
        guarded: dict[str, str] = {}

        def guard(path: Path, what: str) -> None:
            for key in _read_keys(path):
                guarded.setdefault(key, what)

        guard(description.path, "the cluster description itself")
        own_output = self._output(description, disk)
        for other in (description.frontend.disk, description.compute_template.disk):
            for part, path in zip(other.parts, self._part_paths(description, other), strict=True):
                if other == disk and (path == own_output or not own_parts):
                    continue  # the documented in-place case is checked by _plan
                guard(path, f"part {part.name} of image {other.source}")
                for sidecar in sidecar_paths(path):
                    guard(sidecar, f"the checksum file of part {part.name}")
            output = self._output(description, other)
            for sidecar in sidecar_paths(output):
                guard(sidecar, f"the checksum file of image {other.source}")
            if output != own_output:
                guard(output, f"image {other.source} of this cluster")
                stamp, lock = bookkeeping_paths(output)
                guard(stamp, f"the stamp of image {other.source}")
                guard(lock, f"the lock of image {other.source}")
        for path, what in (reserved or {}).items():
            guard(Path(path), what)
        return guarded

    def _expected_image(self, plan: _Plan) -> list[Checksum]:
        if plan.disk.checksum is not None:
            return [plan.disk.checksum]
        sidecar = read_sidecar(plan.output, root=plan.root)
        return [sidecar] if sidecar is not None else []

    @staticmethod
    def _expected_part(plan: _Plan, part: Part, path: Path) -> list[Checksum]:
        if part.checksum is not None:
            return [part.checksum]
        sidecar = read_sidecar(path, root=plan.root)
        return [sidecar] if sidecar is not None else []

    # -- where files are -------------------------------------------------------

    @contextlib.contextmanager
    def _lane(self, plan: _Plan, *, create: bool) -> Iterator[int]:
        """The directory the image is written in, reached without a symbolic link (a descriptor)."""
        relative = os.path.relpath(plan.output.parent, plan.root)
        try:
            lane = open_lane(plan.root, relative, create=create)
        except FileNotFoundError:
            if not create:
                raise
            raise StagingError(f"{plan.output}: cannot stage image: {plan.root} does not exist") from None
        except UnsafeFileError as exc:
            raise StagingError(f"{plan.output}: cannot stage image: {exc}") from None
        except OSError as exc:
            raise StagingError(f"{plan.output}: cannot stage image: {exc.strerror or exc}") from None
        try:
            yield lane
        finally:
            os.close(lane)

    def _image_stat(self, plan: _Plan, lane: int | None) -> os.stat_result | None:
        """The image's stat, ``None`` when it does not exist yet; a refusal when it is not a file pragma may use."""
        if plan.in_place:
            try:
                return stat_inside(plan.root, plan.output)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StagingError(f"{plan.output}: cannot read image: {exc.strerror or exc}") from None
        assert lane is not None
        return _own_stat(lane, plan.output)

    @staticmethod
    def _part_stat(plan: _Plan, path: Path) -> os.stat_result:
        """The stat of a local part, once it is known to be a regular file in the cluster directory."""
        try:
            return stat_inside(plan.root, path)
        except FileNotFoundError:
            raise StagingError(f"{path}: part not found (listed in {plan.description.path})") from None
        except OSError as exc:
            raise StagingError(f"{path}: cannot read part: {exc.strerror or exc}") from None

    # -- readiness -------------------------------------------------------------

    def _ready(self, plan: _Plan, lane: int) -> bool:
        image = self._image_stat(plan, lane)
        if image is None:
            return False
        expected_image = self._expected_image(plan)
        if plan.in_place and not expected_image:
            return True  # a raw file with nothing to verify: it is the image
        stamp = _read_stamp(lane, plan.stamp)
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
        return self._parts_unchanged(plan, stamp.get("parts", []))

    def _parts_unchanged(self, plan: _Plan, recorded: Any) -> bool:
        """Whether the stamp's part records (``recorded``) still describe the plan's parts, verified as expected.

        A part streamed through a repository's opener, or deleted since, is
        taken as recorded; a local one must keep its size and modification time.
        """
        names = [p.name for p in plan.parts] if not plan.in_place else []
        if not isinstance(recorded, list) or [
            entry.get("name") if isinstance(entry, dict) else None for entry in recorded
        ] != names:
            return False
        for part, path, entry in zip(
            plan.parts, plan.part_paths, recorded, strict=False
        ):
            checksum_ok = all(
                str(c) in entry.get("verified", [])
                for c in self._expected_part(plan, part, path)
            )
            if not checksum_ok:
                return False
            if entry.get("mtime_ns") is None:
                continue  # streamed through a repository's opener, not read from a local file
            try:
                st = stat_inside(plan.root, path)
            except FileNotFoundError:
                continue  # deleted after staging
            except OSError as exc:
                raise StagingError(f"{path}: cannot read part: {exc.strerror or exc}") from None
            if (
                entry.get("size") != st.st_size
                or entry.get("mtime_ns") != st.st_mtime_ns
            ):
                return False
        return True

    # -- doing the work ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, plan: _Plan, lane: int) -> Iterator[None]:
        """Hold the image's lock (``flock`` on ``.<image>.lock``, never through a link); say so when someone else has it."""
        try:
            fd = os.open(
                plan.lock.name,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o644,
                dir_fd=lane,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StagingError(
                    f"{plan.lock}: is a symbolic link; pragma does not write through symbolic links (remove it)"
                ) from None
            raise StagingError(f"{plan.lock}: cannot take the image lock: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StagingError(f"{plan.lock}: is not a regular file; pragma will not use it as a lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info(
                    "waiting for another staging of %s to finish (lock %s)",
                    plan.output,
                    plan.lock,
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise StagingError(f"{plan.lock}: cannot take the image lock: {exc.strerror}") from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def _remove_stale_temps(self, plan: _Plan, lane: int) -> None:
        # Holding the lock, no one else is writing this image: any temp file is
        # what a killed run left behind. Only names staging makes, only files.
        ours = re.compile(
            f"(?:{re.escape(plan.temp_prefix)}|{re.escape(plan.stamp_temp_prefix)})[0-9]+-[0-9a-f]{{8}}"
        )
        with contextlib.suppress(OSError), os.scandir(lane) as entries:
            for entry in entries:
                if not ours.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                if _read_keys(plan.output.with_name(entry.name)) & plan.guarded:
                    continue
                log.info("removing %s left by an interrupted staging", plan.output.with_name(entry.name))
                _unlink_quietly(lane, entry.name)

    def _verify_in_place(self, plan: _Plan, lane: int) -> None:
        """A raw image used in place that has a checksum: verify it once, then stamp it."""
        digests = _Digests(self._expected_image(plan))
        try:
            with open_inside(plan.root, plan.output) as f:
                before = os.fstat(f.fileno())
                while chunk := f.read(INPUT_CHUNK):
                    digests.update(chunk)
        except FileNotFoundError:
            raise StagingError(
                f"{plan.output}: image not found (listed in {plan.description.path})"
            ) from None
        except OSError as exc:
            raise StagingError(
                f"{plan.output}: cannot read image: {exc.strerror}"
            ) from None
        verified = digests.verify(plan.output)
        self._write_stamp(plan, lane, before, [], verified)

    def _open_local(self, plan: _Plan, index: int) -> AbstractContextManager[BinaryIO]:
        return open_inside(plan.root, plan.part_paths[index])

    def _stream(self, plan: _Plan, lane: int, opener: PartOpener | None, *, position: int) -> int:
        """Write the image from its parts into a temporary file, verify it, publish it; returns the bytes read.

        Whatever fails, the temporary files are removed and the cache is left as it was.
        """
        sizes = self._part_sizes(plan)
        expected_parts = [
            self._expected_part(plan, p, path)
            for p, path in zip(plan.parts, plan.part_paths, strict=True)
        ]
        temp = _temp_name(plan.temp_prefix)
        leftovers: list[str] = [temp]  # removed on the way out unless published
        bar = self._progress_bar(plan, sizes, position)
        out = _Output()
        try:
            out.fd = _create(lane, temp, _OUTPUT_MODE)
            out.mode = _mode_of(os.fstat(out.fd))
            out.writer = _SparseWriter(out.fd, plan.output, _Digests(self._expected_image(plan)),
                                       limit=self.max_image_size)
            decoder = plan.processor.decoder(label=str(plan.part_paths[0]))
            streamed = [
                self._stream_part(plan, index, opener, expected_parts[index], out, decoder, bar)
                for index in range(len(plan.parts))
            ]
            out.writer.write_all(decoder.finish())
            self._finish(plan, lane, out, [record for _, record in streamed], temp, leftovers)
            return sum(read for read, _ in streamed)
        except OSError as exc:
            raise StagingError(
                f"{plan.output}: cannot stage image: {exc.strerror or exc}"
            ) from None
        finally:
            if bar is not None:
                bar.close()
            out.close()  # the writer's background syscalls end before the descriptor is closed
            for name in leftovers:
                _unlink_quietly(lane, name)

    def _part_sizes(self, plan: _Plan) -> list[int | None]:
        """Each part's size, for the progress bar: a local part's own (checked against the description)."""
        sizes: list[int | None] = []
        for part, path in zip(plan.parts, plan.part_paths, strict=True):
            size = part.size
            if plan.local:
                st = self._part_stat(plan, path)
                if part.size is not None and st.st_size != part.size:
                    raise StagingError(
                        f"{path}: part is {st.st_size} bytes, the description says {part.size}"
                    )
                size = st.st_size
            sizes.append(size)
        return sizes

    def _stream_part(
        self,
        plan: _Plan,
        index: int,
        opener: PartOpener | None,
        expected: list[Checksum],
        out: _Output,
        decoder: StreamDecoder,
        bar: Any,
    ) -> tuple[int, dict[str, Any]]:
        """Feed part ``index`` through ``decoder`` into the image; the bytes read and the part's stamp record."""
        part, path = plan.parts[index], plan.part_paths[index]
        assert out.writer is not None
        decoder.label = str(path)
        digests = _Digests(expected)
        try:
            with opener(part) if opener is not None else self._open_local(plan, index) as stream:
                info = (
                    _local_stat(stream, path)
                    if opener is not None and not plan.local
                    else (os.fstat(stream.fileno()) if plan.local else None)
                )
                out.narrow_mode(info)  # never more readable than a source: before its bytes are written
                read = _copy(stream, digests, decoder, out.writer, bar)
        except FileNotFoundError:
            raise StagingError(f"{path}: part not found (listed in {plan.description.path})") from None
        except OSError as exc:
            raise StagingError(f"{path}: cannot read part: {exc.strerror}") from None
        if part.size is not None and read != part.size:
            raise StagingError(f"{path}: read {read} bytes, the description says {part.size}")
        verified = digests.verify(path)
        if plan.processor.member_per_part:
            out.writer.write_all(decoder.drain())
            if not decoder.at_stream_end:
                raise StagingError(
                    f"{path}: truncated {plan.processor.name} data (the part ends inside a compressed stream)"
                )
        return read, {
            "name": part.name,
            "size": info.st_size if info is not None else read,
            "mtime_ns": info.st_mtime_ns if info is not None else None,
            "verified": verified,
        }

    def _finish(
        self, plan: _Plan, lane: int, out: _Output, part_records: list[dict[str, Any]], temp: str, leftovers: list[str]
    ) -> None:
        """Check and sync the written image, write its stamp meanwhile, then publish both (``leftovers`` emptied)."""
        writer = out.writer
        assert writer is not None
        if writer.pos == 0:
            raise StagingError(f"{plan.output}: the parts make an empty image (0 bytes)")
        # From here the image's fsync runs in the background.
        image = writer.finish()
        verified_image = writer.digests.verify(plan.output)
        # The stamp is written and synced while the image is; it is
        # renamed into place only after the image is durable and in place.
        stamp_temp = self._prepare_stamp(plan, lane, image, part_records, verified_image)
        leftovers.append(stamp_temp)
        writer.wait_durable()
        out.close()
        self._publish(plan, lane, temp, stamp_temp)
        leftovers.clear()

    def _publish(self, plan: _Plan, lane: int, temp: str, stamp_temp: str) -> None:
        """Rename the durable image into place, then its stamp; the image is ready only with both.

        An old stamp is removed (and that made durable) first: it must never
        vouch for the new file.  The stamp names the image's size and
        modification time, so a stamp whose rename reached the disk while the
        image's did not (a crash in between, on a file system that reorders
        renames) does not match whatever file is there: never a torn image
        taken as ready.  Renames work on names in the lane: a link there is
        replaced, never followed (and was refused when planning).
        """
        _own_stat(lane, plan.output)
        try:
            os.unlink(plan.stamp.name, dir_fd=lane)
        except FileNotFoundError:
            pass
        else:
            _fsync_lane(lane)
        os.replace(temp, plan.output.name, src_dir_fd=lane, dst_dir_fd=lane)
        self._install_stamp(plan, lane, stamp_temp)

    def _write_stamp(
        self,
        plan: _Plan,
        lane: int,
        image: os.stat_result,
        parts: list[dict[str, Any]],
        verified: list[str],
    ) -> None:
        self._install_stamp(plan, lane, self._prepare_stamp(plan, lane, image, parts, verified))

    def _prepare_stamp(
        self,
        plan: _Plan,
        lane: int,
        image: os.stat_result,
        parts: list[dict[str, Any]],
        verified: list[str],
    ) -> str:
        """Write and sync the stamp under a temporary name (never taken as a stamp); returns that name.

        The stamp is no more readable than the image it describes.
        """
        stamp = {
            "version": _STAMP_VERSION,
            "source": plan.disk.source,
            "processor": plan.processor.name,
            "image": {"size": image.st_size, "mtime_ns": image.st_mtime_ns},
            "verified": verified,
            "parts": parts,
        }
        temp = _temp_name(plan.stamp_temp_prefix)
        try:
            fd = _create(lane, temp, _OUTPUT_MODE & _mode_of(image))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(stamp, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            _unlink_quietly(lane, temp)
            raise StagingError(f"{plan.stamp}: cannot write: {exc.strerror}") from None
        return temp

    def _install_stamp(self, plan: _Plan, lane: int, temp: str) -> None:
        """Rename a prepared stamp into place and make that durable."""
        try:
            os.replace(temp, plan.stamp.name, src_dir_fd=lane, dst_dir_fd=lane)
        except OSError as exc:
            _unlink_quietly(lane, temp)
            raise StagingError(f"{plan.stamp}: cannot write: {exc.strerror}") from None
        _fsync_lane(lane)

    def _delete_parts(self, plan: _Plan) -> None:
        for path in plan.part_paths:
            if path == plan.output:
                continue
            if _read_keys(path) & plan.kept:
                log.info("keeping part %s: the repository uses it elsewhere", path)
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
        staged = inspect_image(plan.output, plan.disk.format, plan.root)
        st = stat_inside(plan.root, plan.output)
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


def _read_stamp(lane: int, path: Path) -> dict[str, Any] | None:
    """The stamp at ``path`` in ``lane``, ``None`` when absent or not a stamp pragma wrote."""
    if _own_stat(lane, path) is None:
        return None
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=lane)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        raw = f.read(_MAX_STAMP + 1)
    if len(raw) > _MAX_STAMP:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
