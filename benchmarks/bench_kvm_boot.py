"""(b) Booting 32 compute nodes on libvirt's test driver: max_parallel=8 vs 1.

The test driver answers instantly, so this measures pragma's own per-node work
(disk overlay with vc-out injection, define, start) and how well it spreads it
over threads. The legacy schedule slept 15 s before every node start (reference
§7.2.5) plus two 10 s unmount waits: at least 32 x 35 s for 32 nodes.
Run: python benchmarks/bench_kvm_boot.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/pragma_kvm_rocks/tests"))

from conftest import base_conf, ext4_cluster, host_file, settings_from  # noqa: E402

from pragma_core.model import BootRequest  # noqa: E402
from pragma_core.testing.contract import boot  # noqa: E402
from pragma_kvm_rocks.driver import KvmRocksDriver  # noqa: E402

NODES = 32


def run(root: Path, parallel: int) -> float:
    work = Path(tempfile.mkdtemp(prefix=f"p{parallel}-", dir=root))
    host_file(work, "localhost", cpus=64)
    conf = base_conf(work, hosts_dir=work, extra=f"max_parallel = {parallel}\nmax_cpus_per_node = 1\n")
    driver = KvmRocksDriver(settings_from(conf, work / "kvm_rocks.conf"))
    cluster = ext4_cluster(root / "image", size=64 << 20) if not (root / "image").exists() else CLUSTER[0]
    CLUSTER[:] = [cluster]
    start = time.perf_counter()
    allocation, _ = boot(driver, cluster, BootRequest(image="demo", cpus=NODES, key="ssh-ed25519 AAAAbench bench@pragma"))
    elapsed = time.perf_counter() - start
    driver.rollback(allocation)
    return elapsed


CLUSTER: list = []


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run(root, 4)  # warm-up: builds the image, fills caches, imports
        serial = run(root, 1)
        parallel = run(root, 8)
    legacy = NODES * 35
    print(f"{NODES} computes + frontend on test:///: max_parallel=1 {serial:.2f} s, max_parallel=8 {parallel:.2f} s,"
          f" speed-up {serial / parallel:.2f}x")
    print(f"legacy schedule (15 s sleep + 2 x 10 s unmount waits per node): >= {legacy} s,"
          f" {legacy / parallel:.0f}x slower than max_parallel=8")


if __name__ == "__main__":
    main()
