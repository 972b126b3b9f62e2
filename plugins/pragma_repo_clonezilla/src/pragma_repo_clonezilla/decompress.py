"""Decompressing streams: the split pieces of a partition image, joined and decompressed once.

gzip goes through core's one choice of library,
:func:`pragma_core.processors.gzip_library` (zlib-ng, then python-isal, then
the standard library; ``PRAGMA_GZIP_LIBRARY`` forces one), as every other
gzip image pragma stages; bzip2 and xz/lzma use the standard library; zstd
needs the ``zstandard`` package. Corrupt or truncated data raises
:class:`BadImageError` naming the image, whichever library raised.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from pragma_core import StagingError
from pragma_core.pluginkit import gzip_library

from .isofile import BadImageError

#: Errors decompressors raise on bad or short input (plus the chosen gzip library's own, see :func:`_data_errors`).
_DATA_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, ValueError)


class JoinedPieces(io.RawIOBase):
    """The concatenation of several streams (``.aa``, ``.ab`` ...), opened one at a time."""

    def __init__(self, openers: list[Callable[[], IO[bytes]]]) -> None:
        self._openers = list(openers)
        self._current: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._openers:
                    return 0
                self._current = self._openers.pop(0)()
            count = self._current.readinto(buffer)  # type: ignore[attr-defined]
            if count:
                return count
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


def _gzip_open(raw: IO[bytes], label: str) -> IO[bytes]:
    """``raw`` as a gzip reader of core's chosen library; a forced library that is missing is a :class:`BadImageError`."""
    try:
        return gzip_library().open(raw)
    except StagingError as exc:
        raise BadImageError(f"{label}: {exc}") from None


def _data_errors() -> tuple[type[BaseException], ...]:
    """What a decompressing read raises on bad data: the fixed ones and the gzip library's error class."""
    try:
        return (*_DATA_ERRORS, gzip_library().error)
    except StagingError:
        return _DATA_ERRORS


def open_decompressed(raw: IO[bytes], compression: str, label: str) -> IO[bytes]:
    """A readable stream of ``raw`` decompressed; ``compression`` is a value of :data:`.czimage.COMPRESSIONS`."""
    if compression == "gzip":
        return _gzip_open(raw, label)
    if compression == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if compression in ("xz", "lzma"):
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise BadImageError(f"{label}: zstd images need the Python package zstandard (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[return-value]
    if compression == "none":
        return raw
    raise BadImageError(f"{label}: compression {compression!r} is not supported (gz, bz2, xz, zst or uncomp)")


def iter_chunks(stream: IO[bytes], label: str, size: int = 1 << 20) -> Iterator[bytes]:
    """Read ``stream`` in chunks; decompression errors become one-line :class:`BadImageError`."""
    errors = _data_errors()
    while True:
        try:
            chunk = stream.read(size)
        except errors as exc:
            reason = "truncated" if isinstance(exc, EOFError) else "corrupt"
            raise BadImageError(f"{label}: {reason} compressed data ({str(exc).strip() or type(exc).__name__})") from None
        except OSError as exc:
            if isinstance(exc, BadImageError):
                raise
            raise BadImageError(f"{label}: corrupt compressed data ({str(exc).strip() or type(exc).__name__})") from None
        if not chunk:
            return
        yield chunk
