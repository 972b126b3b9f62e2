"""Reading files out of an ISO 9660 image without mounting or extracting it.

:class:`IsoFile` opens a restore ISO with pycdlib, lists a directory by its
Rock Ridge (else Joliet) names and streams a file's bytes straight from the
ISO's extents. Anything wrong with the ISO itself is a :class:`BadImageError`
(the sync then deletes the download so the next sync fetches it again):
pycdlib meets a malformed image with all sorts of exceptions (``KeyError``,
``AttributeError``, ``UnicodeDecodeError``, ``struct.error`` ...), and every
one of them becomes that one error naming the ISO.

The ISO is opened once, with :func:`pragma_core.pluginkit.open_inside` (a
regular file really in its directory: no link leading out, no FIFO), and
everything -- the signature check, pycdlib's parsing, the files' bytes -- is
read through that one descriptor, so what is parsed is what is streamed.

pycdlib parses the whole ISO's metadata when it opens it, and a hostile
image's metadata can make that endless: an El Torito boot catalog may run on
through every sector of a multi-GiB ISO (one object kept per 32 bytes), a
path table may declare gigabytes. So pycdlib reads through :class:`_Budget`:
at most :data:`PARSE_MAX_BYTES` in all, each read refused before it is made
when it would pass that, and nothing read after :data:`PARSE_SECONDS`.
Either is a :class:`BadImageError`. A Clonezilla ISO's metadata is a few
directories of a few dozen files: kilobytes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pragma_core import RepositoryError
from pragma_core.pluginkit import open_inside

#: The most pycdlib may read of an ISO while it parses its metadata (see the module).
PARSE_MAX_BYTES = 16 << 20
#: How long pycdlib may take to parse an ISO's metadata, in seconds.
PARSE_SECONDS = 60.0
#: ISO 9660 volume descriptors start at sector 16; each holds "CD001" at byte 1.
_MAGIC_OFFSET = 16 * 2048 + 1
_MAGIC = b"CD001"


class BadImageError(RepositoryError):
    """The ISO or the Clonezilla image in it is unusable; the download should be fetched again."""


def is_iso9660(path: Path) -> bool:
    """Whether ``path`` is a regular file in its directory that starts like an ISO 9660 image ("CD001")."""
    try:
        with open_inside(Path(path).parent, path) as handle:
            return _has_magic(handle.fileno())
    except OSError:
        return False


def _has_magic(fd: int) -> bool:
    return os.pread(fd, len(_MAGIC), _MAGIC_OFFSET) == _MAGIC


class _ExtentReader(io.RawIOBase):
    """A file inside the ISO, read with ``pread`` from its extents; short data is an error."""

    def __init__(self, fd: int, extents: list[tuple[int, int]], label: str) -> None:
        self._fd = fd
        self._extents = extents
        self._index = 0
        self._pos = 0
        self._label = label

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._index < len(self._extents):
            offset, length = self._extents[self._index]
            left = length - self._pos
            if left <= 0:
                self._index += 1
                self._pos = 0
                continue
            wanted = min(left, len(view))
            data = os.pread(self._fd, wanted, offset + self._pos)
            if not data:
                raise BadImageError(f"{self._label}: the ISO is truncated (file data missing)")
            view[: len(data)] = data
            self._pos += len(data)
            return len(data)
        return 0


class _Budget:
    """The ISO file as pycdlib parses it: reads bounded in bytes and time (see the module)."""

    def __init__(self, file: Any, label: str) -> None:
        self._file = file
        self._label = label
        self._left = PARSE_MAX_BYTES
        self._until = time.monotonic() + PARSE_SECONDS

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            raise BadImageError(f"{self._label}: its metadata takes more than {PARSE_MAX_BYTES >> 20} MiB to read"
                                " (a hostile or broken ISO)")
        if time.monotonic() > self._until:
            raise BadImageError(f"{self._label}: its metadata takes more than {PARSE_SECONDS:g} s to read"
                                " (a hostile or broken ISO)")
        data = self._file.read(size)
        self._left -= len(data)
        return bytes(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def parsed(self) -> None:
        """The parse is over: what pycdlib may still read stays within the bytes left, with no deadline."""
        self._until = math.inf

    def close(self) -> None:
        """Nothing: the :class:`IsoFile` closes the file it opened."""


class IsoFile:
    """An open ISO image: list directories and stream files by their long names."""

    def __init__(self, path: Path) -> None:
        import pycdlib

        self.path = Path(path)
        try:
            self._file = open_inside(self.path.parent, self.path)
        except OSError as exc:
            raise BadImageError(f"{self.path.name}: cannot open the ISO: {exc.strerror or exc}") from None
        self._fd = self._file.fileno()
        self._iso = pycdlib.PyCdlib()
        try:
            self._kind = self._open()
        except BaseException:
            self._abandon()
            raise
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> str:
        """Parse the ISO; the pycdlib keyword of the long names it has (``rr_path`` or ``joliet_path``)."""
        if not _has_magic(self._fd):
            raise BadImageError(f"{self.path.name}: not an ISO 9660 image")
        with self._parsing():
            budget = _Budget(self._file, self.path.name)
            self._iso.open_fp(budget)
            budget.parsed()
            if self._iso.has_rock_ridge():
                return "rr_path"
            if self._iso.has_joliet():
                return "joliet_path"
        raise BadImageError(f"{self.path.name}: the ISO has neither Rock Ridge nor Joliet names")

    def _abandon(self) -> None:
        """Let go of a half-opened ISO (pycdlib may fail to close what it failed to parse)."""
        with contextlib.suppress(Exception):
            self._iso.close()
        self._file.close()

    @contextlib.contextmanager
    def _parsing(self, path: str = "") -> Iterator[None]:
        """Any exception pycdlib raises on a malformed image as a :class:`BadImageError` naming the ISO."""
        try:
            yield
        except BadImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - pycdlib's errors on hostile input are of every kind
            where = f"{self.path.name}: {path}: " if path else f"{self.path.name}: "
            raise BadImageError(f"{where}unreadable ISO 9660 image ({_describe(exc)})") from None

    def __enter__(self) -> IsoFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._iso.close()
        finally:
            self._file.close()

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """The sub-directory and file names in directory ``path``; ``([], [])`` when it does not exist."""
        from pycdlib.pycdlibexception import PyCdlibException

        with self._parsing(path):
            try:
                for _, dirs, files in self._iso.walk(**{self._kind: path}):
                    return sorted(dirs), sorted(files)
            except PyCdlibException:
                return [], []
        return [], []

    def _extents(self, path: str) -> list[tuple[int, int]]:
        from pycdlib.pycdlibexception import PyCdlibException

        with self._parsing(path):
            try:
                if hasattr(self._iso, "get_file_byte_extents"):
                    found = self._iso.get_file_byte_extents(**{self._kind: path})
                    return [(int(offset), int(length)) for offset, length in found]
                # pycdlib < 1.22: one extent per directory record
                record = self._iso.get_record(**{self._kind: path})
                return [(record.extent_location() * self._iso.logical_block_size, record.get_data_length())]
            except PyCdlibException as exc:  # no such file, mostly
                raise BadImageError(f"{self.path.name}: {path}: {_first_line(exc) or type(exc).__name__}") from None

    @property
    def length(self) -> int:
        """The length in bytes of the ISO file itself."""
        return self._size

    def size(self, path: str) -> int:
        """The length in bytes of file ``path``."""
        return sum(length for _, length in self._extents(path))

    def open(self, path: str) -> io.BufferedReader:
        """A binary stream of file ``path``; reading past the end of a truncated ISO raises :class:`BadImageError`."""
        extents = self._extents(path)
        for offset, length in extents:
            if offset < 0 or length < 0 or offset + length > self._size:
                raise BadImageError(f"{self.path.name}: {path} lies past the end of the ISO (truncated download)")
        return io.BufferedReader(_ExtentReader(self._fd, extents, f"{self.path.name}: {path}"), buffer_size=1 << 20)

    def read(self, path: str, limit: int = 1 << 20) -> bytes:
        """The whole content of a small file (metadata files of the image)."""
        if self.size(path) > limit:
            raise BadImageError(f"{self.path.name}: {path} is larger than {limit} bytes")
        with self.open(path) as handle:
            return handle.read()


def _describe(exc: BaseException) -> str:
    """What pycdlib said: its own message, or the exception's type and first line."""
    from pycdlib.pycdlibexception import PyCdlibException

    text = _first_line(exc)
    if isinstance(exc, PyCdlibException) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
