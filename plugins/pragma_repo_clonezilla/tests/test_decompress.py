"""gzip partition images are decoded by core's one choice of library, and any library's bad-data error is one line."""

from __future__ import annotations

import gzip
import importlib.util
import io
import random
import sys

import pytest
from pragma_repo_clonezilla.decompress import (
    JoinedPieces,
    iter_chunks,
    open_decompressed,
)
from pragma_repo_clonezilla.isofile import BadImageError

from pragma_core.processors import gzip_library

LIBRARIES = {"zlib-ng": "zlib_ng", "isal": "isal", "zlib": "zlib"}


def _text(lines: int = 60_000) -> bytes:
    return b"".join(b"partition block %d of the image\n" % i for i in range(lines))


def _needs(library: str) -> None:
    if importlib.util.find_spec(LIBRARIES[library]) is None:
        pytest.skip(f"{LIBRARIES[library]} is not installed")


def _read(data: bytes, label: str = "sda1.ext4-ptcl-img.gz") -> bytes:
    halves = [data[: len(data) // 2], data[len(data) // 2 :]]
    joined = JoinedPieces([lambda piece=piece: io.BytesIO(piece) for piece in halves])
    stream = open_decompressed(joined, "gzip", label)
    return b"".join(iter_chunks(stream, label, size=1 << 16))


def _corrupt(blob: bytes, seed: int) -> bytes:
    """``blob`` with bytes of its deflate body flipped (header and trailer kept)."""
    damaged = bytearray(blob)
    rng = random.Random(seed)
    for _ in range(50):
        damaged[rng.randrange(20, len(damaged) - 10)] ^= rng.randrange(1, 256)
    return bytes(damaged)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_gzip_pieces_are_decoded_by_the_library_core_chooses(monkeypatch, library):
    _needs(library)
    monkeypatch.setenv("PRAGMA_GZIP_LIBRARY", library)
    data = _text()
    blob = gzip.compress(data[:500_000]) + gzip.compress(data[500_000:])  # two members, split mid-member
    stream = open_decompressed(io.BytesIO(blob), "gzip", "label")
    assert type(stream).__name__ == gzip_library().reader[1]
    assert _read(blob) == data


def test_without_a_forced_library_the_fastest_installed_one_is_used(monkeypatch):
    monkeypatch.delenv("PRAGMA_GZIP_LIBRARY", raising=False)
    stream = open_decompressed(io.BytesIO(gzip.compress(b"x")), "gzip", "label")
    assert type(stream).__name__ == gzip_library().reader[1]
    if importlib.util.find_spec("zlib_ng") is not None:
        assert gzip_library().name == "zlib-ng"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("library", list(LIBRARIES))
def test_corrupt_deflate_data_is_one_bad_image_line_with_every_library(monkeypatch, library, seed):
    _needs(library)
    monkeypatch.setenv("PRAGMA_GZIP_LIBRARY", library)
    blob = _corrupt(gzip.compress(_text()), seed)
    with pytest.raises(BadImageError, match=r"^sda1\.ext4-ptcl-img\.gz: (corrupt|truncated) compressed data") as info:
        _read(blob)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_truncated_gzip_data_is_a_bad_image_with_every_library(monkeypatch, library):
    _needs(library)
    monkeypatch.setenv("PRAGMA_GZIP_LIBRARY", library)
    blob = gzip.compress(_text())
    with pytest.raises(BadImageError, match="truncated compressed data"):
        _read(blob[: len(blob) * 2 // 3])


def test_a_forced_gzip_library_that_is_not_installed_is_a_bad_image_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)
    monkeypatch.setenv("PRAGMA_GZIP_LIBRARY", "isal")
    with pytest.raises(BadImageError, match="^label: gzip library 'isal' is not installed"):
        open_decompressed(io.BytesIO(gzip.compress(b"x")), "gzip", "label")


def test_without_the_fast_libraries_gzip_falls_back_to_the_standard_library(monkeypatch):
    monkeypatch.delenv("PRAGMA_GZIP_LIBRARY", raising=False)
    for name in ("zlib_ng", "zlib_ng.zlib_ng", "isal", "isal.isal_zlib"):
        monkeypatch.setitem(sys.modules, name, None)
    data = _text(5_000)
    stream = open_decompressed(io.BytesIO(gzip.compress(data)), "gzip", "label")
    assert isinstance(stream, gzip.GzipFile)
    assert b"".join(iter_chunks(stream, "label")) == data
