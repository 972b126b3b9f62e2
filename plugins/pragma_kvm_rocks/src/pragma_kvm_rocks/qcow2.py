"""Write qcow2 overlay files in Python: no ``qemu-img`` process per node.

An overlay is a qcow2 (version 3) file whose backing file is the staged base
image. It may carry some data clusters of its own: the blocks of the guest
filesystem that vc-out injection changed (see :mod:`pragma_kvm_rocks.e2fs`).
Everything else reads through to the base.

Layout (cluster size 64 KiB, 16-bit refcounts)::

    cluster 0      header, backing-format extension, backing file name
    cluster 1..    L1 table
    next           refcount table (one cluster)
    next           refcount blocks
    next           L2 tables, one per 512 MiB region that holds data
    next           data clusters

Every allocated cluster has refcount 1, so L1 and L2 entries carry the
``COPIED`` flag. ``qemu-img check`` finds these files clean (tested).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path

from pragma_core import StagingError
from pragma_core.pluginkit import read_qcow2_header

CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
_MAGIC = b"QFI\xfb"
_HEADER_LENGTH = 112
_EXT_BACKING_FORMAT = 0xE2792ACA
_COPIED = 1 << 63
_L2_ENTRIES = CLUSTER_SIZE // 8
_REFCOUNTS_PER_BLOCK = CLUSTER_SIZE // 2


def _clusters(nbytes: int) -> int:
    return (nbytes + CLUSTER_SIZE - 1) // CLUSTER_SIZE


def write_overlay(
    path: Path,
    *,
    backing_file: Path,
    backing_format: str,
    virtual_size: int,
    data: Mapping[int, bytes] | None = None,
) -> None:
    """Create ``path`` as a qcow2 overlay of ``backing_file``.

    ``data`` maps guest offsets (multiples of :data:`CLUSTER_SIZE`) to the full
    cluster of bytes the overlay holds there. The file is written to a
    temporary name and renamed, so a reader never sees half of it.
    """
    data = dict(data or {})
    for offset, chunk in data.items():
        if offset % CLUSTER_SIZE or len(chunk) != CLUSTER_SIZE or not 0 <= offset < virtual_size:
            raise ValueError(f"data at offset {offset} is not one whole cluster inside the disk")
    if backing_format not in ("raw", "qcow2"):
        raise ValueError(f"backing format must be raw or qcow2, not {backing_format!r}")
    layout = _Layout(virtual_size, sorted(data))
    first = _first_cluster(os.fsencode(str(backing_file)), backing_format.encode(), virtual_size, layout)
    l1, l2_tables, reftable, refs = _tables(layout)
    _write_atomically(path, [first, l1, reftable, refs, *l2_tables, *(data[o] for o in layout.data_offsets)])


class _Layout:
    """Where everything goes in an overlay: header cluster, L1, refcount table and blocks, L2 tables, data."""

    def __init__(self, virtual_size: int, data_offsets: list[int]) -> None:
        self.data_offsets = data_offsets
        self.l1_size = max(1, -(-virtual_size // (CLUSTER_SIZE * _L2_ENTRIES)))
        self.l1_clusters = _clusters(self.l1_size * 8)
        self.l2_regions = sorted({offset // (CLUSTER_SIZE * _L2_ENTRIES) for offset in data_offsets})
        # Count clusters; the refcount blocks must cover themselves too.
        fixed = 1 + self.l1_clusters + 1 + len(self.l2_regions) + len(data_offsets)
        self.refblocks = 1
        while (fixed + self.refblocks) > self.refblocks * _REFCOUNTS_PER_BLOCK:
            self.refblocks += 1
        if self.refblocks > _L2_ENTRIES:
            raise ValueError("overlay data too large for one refcount table")
        self.total = fixed + self.refblocks
        self.l1_offset = CLUSTER_SIZE
        self.reftable_offset = self.l1_offset + self.l1_clusters * CLUSTER_SIZE
        self.refblock_offset = self.reftable_offset + CLUSTER_SIZE
        self.l2_offset = self.refblock_offset + self.refblocks * CLUSTER_SIZE
        self.data_start = self.l2_offset + len(self.l2_regions) * CLUSTER_SIZE


def _first_cluster(backing: bytes, fmt: bytes, virtual_size: int, layout: _Layout) -> bytes:
    """The header, the backing-format extension and the backing file name, padded to one cluster."""
    ext = struct.pack(">II", _EXT_BACKING_FORMAT, len(fmt)) + fmt + b"\0" * (-len(fmt) % 8)
    ext += struct.pack(">II", 0, 0)
    backing_offset = _HEADER_LENGTH + len(ext)
    if backing_offset + len(backing) > CLUSTER_SIZE or len(backing) > 1023:
        raise ValueError("backing file name is too long")
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        _MAGIC,
        3,  # version
        backing_offset,
        len(backing),
        CLUSTER_BITS,
        virtual_size,
        0,  # crypt_method
        layout.l1_size,
        layout.l1_offset,
        layout.reftable_offset,
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        4,  # refcount_order: 16-bit refcounts
        _HEADER_LENGTH,
    )
    header += bytes(_HEADER_LENGTH - len(header))  # compression type zlib + padding
    first = header + ext + backing
    return first + bytes(CLUSTER_SIZE - len(first))


def _tables(layout: _Layout) -> tuple[bytearray, list[bytearray], bytearray, bytearray]:
    """The L1 table, the L2 tables, the refcount table and the refcount blocks (every cluster used once)."""
    l1 = bytearray(layout.l1_clusters * CLUSTER_SIZE)
    l2_tables = {region: bytearray(CLUSTER_SIZE) for region in layout.l2_regions}
    for index, region in enumerate(layout.l2_regions):
        struct.pack_into(">Q", l1, region * 8, (layout.l2_offset + index * CLUSTER_SIZE) | _COPIED)
    for index, offset in enumerate(layout.data_offsets):
        region, entry = divmod(offset // CLUSTER_SIZE, _L2_ENTRIES)
        struct.pack_into(">Q", l2_tables[region], entry * 8, (layout.data_start + index * CLUSTER_SIZE) | _COPIED)
    reftable = bytearray(CLUSTER_SIZE)
    for index in range(layout.refblocks):
        struct.pack_into(">Q", reftable, index * 8, layout.refblock_offset + index * CLUSTER_SIZE)
    refs = bytearray(layout.refblocks * CLUSTER_SIZE)
    struct.pack_into(f">{layout.total}H", refs, 0, *([1] * layout.total))
    return l1, [l2_tables[r] for r in layout.l2_regions], reftable, refs


def _write_atomically(path: Path, chunks: list[bytes | bytearray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_header(path: Path) -> dict[str, object]:
    """The main fields of a qcow2 header (for checks and tests): version, size, backing file and its format.

    Parsed by :func:`pragma_core.imagecheck.read_qcow2_header`, the one
    reader of the format; a file that is not qcow2 is a :class:`ValueError`.
    """
    with open(path, "rb") as fh:
        try:
            header = read_qcow2_header(fh, path)
        except StagingError as exc:
            raise ValueError(str(exc)) from None
    return {
        "version": header.version,
        "cluster_bits": header.cluster_bits,
        "virtual_size": header.virtual_size,
        "backing_file": header.backing_file,
        "backing_format": header.backing_format,
    }
