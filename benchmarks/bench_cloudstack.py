"""CloudStack driver benchmark: parallel against serial node work.

    python benchmarks/bench_cloudstack.py [--computes 16] [--latency 0.05] [--rounds 3]

Boots a 1+N cluster (default 1+16) through the ``cloudstack`` driver
(allocate, render vc-out, deploy; then shutdown and clean) against the
CloudStack simulator of ``plugins/pragma_cloudstack/tests`` (``cloudstack_simulator.py``) served over HTTP
on loopback, every async job taking ``--latency`` seconds (default 50 ms),
once with ``max_parallel = 8`` and once with ``max_parallel = 1``. Prints the
median boot time of each and the ratio serial/parallel (the speed-up of
doing node work with 8 threads; ideal is close to 8 for the deploy and start
phases, less overall because the frontend starts alone first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "pragma_cloudstack" / "tests"))

from cloudstack_testkit import make_driver, standard_simulator, write_conf
from pragma_core.model import BootRequest
from pragma_core.testing import boot, make_cluster, make_site

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 bench@pragma"


def boot_once(workdir: Path, *, computes: int, latency: float, max_parallel: int) -> float:
    """Seconds to boot a 1+``computes`` cluster; the cluster is removed afterwards."""
    sim = standard_simulator(job_latency=latency)
    sim.start()
    try:
        etc = make_site(workdir / f"site-{max_parallel}", driver="cloudstack")
        write_conf(
            etc, sim, service_offering="Small Instance", max_parallel=max_parallel,
            poll_interval=0.01, poll_max_interval=0.02,
        )
        driver = make_driver(etc)
        cluster = make_cluster(workdir / "repo" / "demo", name="demo", size=4096)
        start = time.perf_counter()
        allocation, _ = boot(driver, cluster, BootRequest(image="demo", cpus=computes, key=KEY))
        seconds = time.perf_counter() - start
        assert len(allocation.computes) == computes
        assert {vm["state"] for vm in sim.vms.values()} == {"Running"}
        driver.shutdown(allocation.cluster)
        driver.clean(allocation.cluster)
        assert sim.vms == {}
        driver.close()
        return seconds
    finally:
        sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--computes", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each async job takes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cloudstack-") as tmp:
        workdir = Path(tmp)
        times: dict[int, list[float]] = {8: [], 1: []}
        for _ in range(args.rounds):
            for workers in (8, 1):
                times[workers].append(boot_once(workdir, computes=args.computes, latency=args.latency, max_parallel=workers))
    parallel = statistics.median(times[8])
    serial = statistics.median(times[1])
    print(f"boot 1+{args.computes} cluster, {args.latency * 1000:.0f} ms per async job, median of {args.rounds}:")
    print(f"  max_parallel=8: {parallel:7.3f} s")
    print(f"  max_parallel=1: {serial:7.3f} s")
    print(f"  ratio serial/parallel: {serial / parallel:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
