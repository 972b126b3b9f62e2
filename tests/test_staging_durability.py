"""How staging writes: durable before published, background syscalls bounded, memory released, short writes finished."""

from __future__ import annotations

import errno
import gzip
import itertools
import os
import random
import sys
import threading
from pathlib import Path

import pytest
from stagingkit import MIB, cache_files, describe, image_bytes

from pragma_core import staging
from pragma_core.errors import ChecksumError, StagingError
from pragma_core.model import (
    Checksum,
    DiskImage,
    Part,
)
from pragma_core.processors import ProcessorRegistry
from pragma_core.staging import Stager



def gzip_parts(directory: Path, data: bytes, pieces: int = 3) -> DiskImage:
    blob = gzip.compress(data)
    step = -(-len(blob) // pieces)
    parts = []
    for index, start in enumerate(range(0, len(blob), step)):
        name = f"img.part{index:02d}"
        (directory / name).write_bytes(blob[start : start + step])
        parts.append(Part(name=name))
    return DiskImage(source="img.raw", processor="splited_gzip", parts=parts)


def fd_name(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


def flush_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pragma-flush")]


@pytest.fixture(autouse=True)
def _default_gzip_library(monkeypatch):
    monkeypatch.delenv("PRAGMA_GZIP_LIBRARY", raising=False)


@pytest.fixture
def syscalls(monkeypatch):
    """Records fsync (by file name, or 'dir:' + name) and replace calls, from any thread, in order."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        name = fd_name(fd)
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            name = "dir:" + name
        real_fsync(fd)
        with lock:
            events.append(("fsync", name))

    def replace(src, dst, **dir_fds):
        real_replace(src, dst, **dir_fds)
        with lock:
            events.append(
                ("replace", f"{os.path.basename(src)}->{os.path.basename(dst)}")
            )

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_the_image_is_synced_before_it_is_renamed_into_place_and_its_stamp_after_it(
    tmp_path, syscalls
):
    disk = gzip_parts(tmp_path, image_bytes(seed=1))
    Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    image_sync = next(
        i
        for i, (what, name) in enumerate(syscalls)
        if what == "fsync" and name.startswith(".img.raw.staging-")
    )
    image_rename = next(
        i
        for i, (what, name) in enumerate(syscalls)
        if what == "replace" and name.endswith("->img.raw")
    )
    stamp_sync = next(
        i
        for i, (what, name) in enumerate(syscalls)
        if what == "fsync" and name.startswith("..img.raw.ready.tmp-")
    )
    stamp_rename = next(
        i
        for i, (what, name) in enumerate(syscalls)
        if what == "replace" and name.endswith("->.img.raw.ready")
    )
    assert image_sync < image_rename < stamp_rename, syscalls
    assert stamp_sync < stamp_rename, syscalls
    assert syscalls[-1] == ("fsync", "dir:" + tmp_path.name), (
        "the stamp's rename is made durable"
    )


def test_a_failed_image_fsync_publishes_nothing_and_names_the_image(
    tmp_path, monkeypatch
):
    disk = gzip_parts(tmp_path, image_bytes(seed=2))
    real_fsync = os.fsync

    def failing_fsync(fd):
        if fd_name(fd).startswith(".img.raw.staging-"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(
        StagingError, match=r"img\.raw: cannot write image: Input/output error"
    ):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert cache_files(tmp_path) == []
    assert flush_threads() == []


def test_an_old_stamp_is_removed_durably_before_a_restaged_image_replaces_the_old_one(
    tmp_path, syscalls
):
    disk = gzip_parts(tmp_path, image_bytes(seed=3))
    description = describe(tmp_path, disk)
    stager = Stager(progress=False)
    stager.stage_image(description, disk)
    (tmp_path / "img.raw").write_bytes(b"scribbled over")  # stale: restaged below
    syscalls.clear()
    stager.stage_image(description, disk)
    dir_sync = syscalls.index(("fsync", "dir:" + tmp_path.name))
    image_rename = next(
        i
        for i, (what, name) in enumerate(syscalls)
        if what == "replace" and name.endswith("->img.raw")
    )
    assert dir_sync < image_rename, syscalls
    assert (tmp_path / "img.raw").read_bytes() == image_bytes(seed=3)


def test_writeback_is_started_off_the_staging_thread_over_what_was_written_in_order(
    tmp_path, monkeypatch
):
    rng = random.Random(8)
    data = b"".join(rng.randbytes(640 << 10) + bytes(2 * MIB) for _ in range(6))
    disk = gzip_parts(tmp_path, data)
    monkeypatch.setattr(staging, "_WRITEBACK_EVERY", 256 << 10)
    calls: list[tuple[str, int, int, str]] = []
    real_fadvise = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        calls.append((fd_name(fd), offset, length, threading.current_thread().name))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert len(calls) >= 6, calls
    assert all(name.startswith(".img.raw.staging-") for name, *_ in calls)
    assert all(thread != threading.main_thread().name for *_, thread in calls)
    assert calls[0][1] == 0
    assert all(
        a[1] + a[2] == b[1] and b[2] > 0 for a, b in itertools.pairwise(calls)
    ), calls
    assert calls[-1][1] + calls[-1][2] <= len(data)
    assert (tmp_path / "img.raw").read_bytes() == data
    assert flush_threads() == []


def test_no_background_thread_outlives_a_staging_that_fails_mid_stream(
    tmp_path, monkeypatch
):
    # The background thread starts early.
    monkeypatch.setattr(staging, "_WRITEBACK_EVERY", 64 << 10)
    good = gzip.compress(random.Random(4).randbytes(2 * MIB))
    (tmp_path / "p0").write_bytes(good[: len(good) // 2])
    disk = DiskImage(
        source="img.raw", processor="splited_gzip", parts=[Part(name="p0")]
    )
    with pytest.raises(StagingError, match="truncated"):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert flush_threads() == []
    assert cache_files(tmp_path) == []


def test_no_background_thread_nor_stamp_outlives_an_image_checksum_mismatch(tmp_path):
    disk = gzip_parts(tmp_path, image_bytes(seed=7))
    disk = DiskImage(
        source=disk.source,
        processor=disk.processor,
        parts=disk.parts,
        checksum=Checksum(algorithm="sha256", hexdigest="0" * 64),
    )
    with pytest.raises(ChecksumError):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert flush_threads() == []
    assert cache_files(tmp_path) == []


def test_short_writes_are_continued_until_every_byte_is_written(tmp_path, monkeypatch):
    data = image_bytes(seed=5)
    disk = gzip_parts(tmp_path, data)
    real_pwrite = os.pwrite

    def short_pwrite(fd, buffer, offset):
        return real_pwrite(fd, memoryview(buffer)[:1000], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert staged.path.read_bytes() == data


class _RefcountingCopy:
    """A plugin-style decompressor that copies its input, 4 KiB at most per call.

    Each call records how many references the previous output still has
    (besides this object's own and ``getrefcount``'s argument).
    """

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen
        self.previous: bytes | None = None
        self.unconsumed_tail = b""
        self.unused_data = b""
        self.eof = False

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        if self.previous is not None:
            self.seen.append(sys.getrefcount(self.previous) - 2)
        n = min(len(data), 4096)
        out = bytes(data[:n])
        self.unconsumed_tail = data[n:]
        self.previous = out
        return out

    def flush(self) -> bytes:
        self.eof = True
        return b""


def test_each_decompressed_piece_is_released_before_the_next_is_made(tmp_path):
    seen: list[int] = []
    registry = ProcessorRegistry()
    registry.register("copy", lambda: _RefcountingCopy(seen))
    data = random.Random(6).randbytes(64 << 10)
    (tmp_path / "p0").write_bytes(data)
    disk = DiskImage(source="img.raw", processor="copy", parts=[Part(name="p0")])
    Stager(processors=registry, progress=False).stage_image(
        describe(tmp_path, disk), disk
    )
    assert (tmp_path / "img.raw").read_bytes() == data
    assert len(seen) >= 15
    assert set(seen) == {0}, "a piece was still held while the next one was made"


@pytest.mark.parametrize(
    "position", [1, 4095, 4096, 4097, 8191, 65536, MIB - 4097, MIB - 2, MIB + 4096]
)
def test_a_single_nonzero_byte_in_a_zero_megabyte_is_written(tmp_path, position):
    data = bytearray(3 * MIB)
    data[position] = 0x5A
    disk = gzip_parts(tmp_path, bytes(data), pieces=1)
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert staged.path.read_bytes() == bytes(data)
    assert staged.path.stat().st_blocks * 512 <= 256 << 10, (
        "the zeros around it stay holes"
    )


def test_data_repeating_every_4_kib_and_starting_with_zero_is_written(tmp_path):
    page = b"\0" + b"\x01" * 4094 + b"\0"
    data = bytes(MIB) + page * 256 + bytes(MIB)
    disk = gzip_parts(tmp_path, data, pieces=1)
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert staged.path.read_bytes() == data
