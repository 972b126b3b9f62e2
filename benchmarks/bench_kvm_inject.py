"""(c) vc-out injection for a 1 + 8 node cluster.

libguestfs is not installed on these machines, so the appliance numbers are a
cost model from MACHINE-NOTES (appliance launch about 11 s under TCG), stated
as such; what is measured is the e2fsprogs fast path pragma uses for raw bases
with an ext root partition (overlay mode: e2image once, debugfs per node,
qcow2 overlay written in Python).
Run: python benchmarks/bench_kvm_inject.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/pragma_kvm_rocks/tests"))

from conftest import make_ext4_disk  # noqa: E402

from pragma_kvm_rocks.disks import DiskBuilder, DiskJob  # noqa: E402

NODES = 9
APPLIANCE_LAUNCH = 11.0  # seconds, measured once on these machines (MACHINE-NOTES)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_ext4_disk(root / "base.img", size=1 << 30, extra_data=64 << 20)
        timings = {}
        for mode in ("overlay", "copy"):
            jobs = [DiskJob(node=f"n{i}", base=base, base_format="raw", target=root / f"{mode}-{i}",
                            vcout=b"<vc>node %d</vc>\n" % i) for i in range(NODES)]
            start = time.perf_counter()
            DiskBuilder(mode=mode, injection="e2fs", max_parallel=4).build(jobs)
            timings[mode] = time.perf_counter() - start
            for job in jobs:
                job.target.unlink()
    one = APPLIANCE_LAUNCH + NODES * 0.1
    per_node = NODES * APPLIANCE_LAUNCH
    print(f"e2fs fast path, {NODES} nodes, 1 GiB base: overlay {timings['overlay']:.3f} s, copy {timings['copy']:.3f} s")
    print(f"guestfish cost model (not measured here): one appliance {one:.0f} s vs one per node {per_node:.0f} s"
          f" -> {per_node / one:.1f}x")
    print(f"fast path vs one appliance: {one / timings['overlay']:.0f}x")


if __name__ == "__main__":
    main()
