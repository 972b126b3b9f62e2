"""(c) vc-out injection for a 1 + 8 node cluster: one libguestfs appliance vs one per node vs e2fsprogs.

Measured, not modelled:

* guestfish, one appliance: the 9 node disks (qcow2 overlays of a qcow2 base
  with an ext4 root partition) attached to one ``guestfish --listen``, one
  launch, then the edits on each disk (what :class:`DiskBuilder` does);
* guestfish, one appliance per node: the same edits, one launch per disk
  (what a per-node ``guestmount``/``virt-customize`` driver pays);
* the e2fsprogs fast path pragma uses for raw bases with an ext root
  partition (overlay mode: e2image once, debugfs per node, qcow2 overlay
  written in Python; copy mode: sparse copy + debugfs).

Needs guestfish and a kernel in /boot (scripts/setup installs both); about
2.5 minutes on the 2-core machine, most of it the 10 appliance launches.
Run: python benchmarks/bench_kvm_inject.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/pragma_kvm_rocks/tests"))

from conftest import make_ext4_disk, to_qcow2
from pragma_kvm_rocks import guestfish
from pragma_kvm_rocks.disks import DiskBuilder, DiskJob

NODES = 9


def _jobs(base: Path, fmt: str, root: Path, tag: str) -> list[DiskJob]:
    return [DiskJob(node=f"n{i}", base=base, base_format=fmt, target=root / f"{tag}-{i}",
                    vcout=b"<vc>node %d</vc>\n" % i) for i in range(NODES)]


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _e2fs(base: Path, root: Path) -> dict[str, float]:
    timings = {}
    for mode in ("overlay", "copy"):
        jobs = _jobs(base, "raw", root, f"e2fs-{mode}")
        builder = DiskBuilder(mode=mode, injection="e2fs", max_parallel=4)
        timings[mode] = _timed(lambda: builder.build(jobs))  # noqa: B023 (called at once)
        for job in jobs:
            job.target.unlink()
    return timings


def _guestfish(base: Path, root: Path) -> tuple[float, float]:
    jobs = _jobs(base, "qcow2", root, "gf")
    DiskBuilder(mode="overlay", injection="none").build(jobs)
    disks = [guestfish.GuestDisk(path=j.target, format="qcow2", vcout=j.vcout or b"") for j in jobs]

    def one_per_node() -> None:
        for disk in disks:
            guestfish.inject([disk])

    one = _timed(lambda: guestfish.inject(disks))
    per_node = _timed(one_per_node)
    for job in jobs:
        job.target.unlink()
    return one, per_node


def main() -> None:
    if not guestfish.available():
        sys.exit("guestfish is not installed (scripts/setup installs it)")
    with tempfile.TemporaryDirectory(prefix="bench-kvm-inject-") as tmp:
        root = Path(tmp)
        raw = make_ext4_disk(root / "base.img", size=1 << 30, extra_data=64 << 20)
        qcow = to_qcow2(raw, root / "base.qcow2")
        e2fs = _e2fs(raw, root)
        one, per_node = _guestfish(qcow, root)
    print(f"{NODES} node disks, 1 GiB base (64 MiB data), ext4 root partition")
    print(f"guestfish, one appliance for all {NODES} disks (qcow2 base): {one:7.2f} s")
    print(f"guestfish, one appliance per node ({NODES} launches):      {per_node:7.2f} s"
          f"  -> per node / one = {per_node / one:.1f}x")
    print(f"e2fs fast path (raw base): overlay {e2fs['overlay']:.3f} s, copy {e2fs['copy']:.3f} s"
          f"  -> one appliance / e2fs overlay = {one / e2fs['overlay']:.0f}x")


if __name__ == "__main__":
    main()
