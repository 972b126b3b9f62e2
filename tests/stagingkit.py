"""Helpers shared by the staging tests: small disk images, descriptions, the files staging leaves."""

from __future__ import annotations

import random
from pathlib import Path

from pragma_core.model import ClusterDescription, DiskImage, NodeTemplate

MIB = 1 << 20


def image_bytes(size: int = 3 * MIB, seed: int = 1) -> bytes:
    """A small disk image: zero regions and random data runs, like a real one."""
    rng = random.Random(seed)
    data = bytearray(size)
    for _ in range(6):
        run = rng.randrange(4096, 200_000)
        at = rng.randrange(0, size - run)
        data[at : at + run] = rng.randbytes(run)
    return bytes(data)


def describe(directory: Path, disk: DiskImage, compute: DiskImage | None = None) -> ClusterDescription:
    """A cluster description in ``directory`` whose frontend (and compute, if given) use these disks."""
    return ClusterDescription(
        name="demo",
        path=directory / "demo.xml",
        directory=directory,
        frontend=NodeTemplate(role="frontend", domain_xml="<domain/>", disk=disk),
        compute=NodeTemplate(role="compute", domain_xml="<domain/>", disk=compute) if compute else None,
    )


def cache_files(directory: Path, source: str = "img.raw") -> list[str]:
    """Everything staging may leave for ``source``: image, stamp, temporary image and stamp; not the lock."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name == source
        or (p.name.startswith(f".{source}.") and not p.name.endswith(".lock"))
        or p.name.startswith(f"..{source}.ready.tmp-")
    )
