"""Sparse files: find their data extents and copy them without filling holes."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 64 << 20


def data_extents(fd: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, end)`` byte ranges of ``fd`` that hold data (``SEEK_DATA``/``SEEK_HOLE``)."""
    if size is None:
        size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            yield start, end
        pos = end


def nonzero_copy(source: Path, target: Path, *, block: int = 4096) -> None:
    """Copy ``source`` to a new sparse ``target`` in which every all-zero ``block`` is a hole.

    What reads back is identical; only the blocks that hold a non-zero byte
    take space, so later copies and scans of ``target`` touch those alone.
    """
    zero = bytes(block)
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        for start, end in data_extents(src.fileno(), size):
            start -= start % block
            pos = start
            while pos < end:
                data = os.pread(src.fileno(), min(end - pos, _CHUNK), pos)
                run_start = -1
                for rel in range(0, len(data) + block, block):
                    piece = data[rel : rel + block]
                    if piece and piece != zero[: len(piece)]:
                        if run_start < 0:
                            run_start = rel
                        continue
                    if run_start >= 0:  # write the run of non-zero blocks that ends here
                        _write_all(dst.fileno(), memoryview(data)[run_start:rel], pos + run_start)
                        run_start = -1
                pos += len(data)
        dst.truncate(size)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def sparse_copy(source: Path, target: Path, *, src_offset: int = 0, length: int | None = None) -> None:
    """Copy ``length`` bytes of ``source`` from ``src_offset`` to a new sparse ``target``.

    Only data extents are copied (with ``copy_file_range``, which shares
    blocks on file systems that support reflinks); holes stay holes. The
    target gets exactly ``length`` bytes.
    """
    with open(source, "rb") as src, open(target, "wb") as dst:
        copy_extents(src.fileno(), dst.fileno(), src_offset=src_offset, length=length)


def copy_extents(src: int, dst: int, *, src_offset: int = 0, length: int | None = None) -> None:
    """:func:`sparse_copy` between open descriptors (``dst`` empty): the data extents only, then the size."""
    size = os.fstat(src).st_size
    if length is None:
        length = size - src_offset
    end_all = min(size, src_offset + length)
    for start, end in data_extents(src, end_all):
        if end <= src_offset:
            continue
        start = max(start, src_offset)
        pos = start
        while pos < end:
            count = min(end - pos, _CHUNK)
            try:
                done = os.copy_file_range(src, dst, count, pos, pos - src_offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                done = os.pwrite(dst, os.pread(src, count, pos), pos - src_offset)
            if done <= 0:
                raise OSError(errno.EIO, "short copy")
            pos += done
    os.ftruncate(dst, length)
