"""(a) Preparing 16 node disks: qcow2 overlays (written in Python) vs full sparse copies.

Two base sizes (256 MiB and 1 GiB, 10 % data): the overlay cost must not grow
with the image, and must be >= 20x cheaper than copying. Prints ratios.
Run: python benchmarks/bench_kvm_disks.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pragma_kvm_rocks.disks import DiskBuilder, DiskJob

NODES = 16


def make_base(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        fh.truncate(size)
        for i in range(0, size // (1 << 20), 10):  # 10 % data, spread out
            fh.seek(i << 20)
            fh.write(chunk)


def run(mode: str, base: Path, out: Path) -> float:
    jobs = [DiskJob(node=f"n{i}", base=base, base_format="raw", target=out / f"{mode}-{i}") for i in range(NODES)]
    start = time.perf_counter()
    DiskBuilder(mode=mode, injection="none", max_parallel=4).build(jobs)
    elapsed = time.perf_counter() - start
    for job in jobs:
        job.target.unlink()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        root = Path(tmp)
        results = {}
        for size in (256 << 20, 1 << 30):
            base = root / f"base-{size}.img"
            make_base(base, size)
            os.sync()
            overlay = min(run("overlay", base, root) for _ in range(5))  # best of 5: ms-scale timings
            results[size] = (overlay, run("copy", base, root))
            base.unlink()
        for size, (overlay, copy) in results.items():
            print(f"{size >> 20:5d} MiB base, {NODES} disks: overlay {overlay * 1000:8.1f} ms"
                  f"  copy {copy * 1000:8.1f} ms  copy/overlay = {copy / overlay:6.1f}x")
        small, large = results[256 << 20][0], results[1 << 30][0]
        print(f"overlay cost 1 GiB / 256 MiB = {large / small:.2f} (1.0 = independent of image size)")


if __name__ == "__main__":
    main()
