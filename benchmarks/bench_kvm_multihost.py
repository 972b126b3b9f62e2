"""16 nodes on one libvirt host vs the same 16 across three: boot and teardown, on the lab (scripts/lab-hosts).

The lab runs three libvirt daemons on this machine, each reached over
``qemu+tcp://``; the head boots 1 frontend + 15 computes (no OS: an ext4
disk, SeaBIOS, 32 MiB) with ``max_cpus_per_node = 1``, first on host 1 only,
then spread over the three hosts. Boot = allocate + vc-out + deploy (disks,
defines, starts); teardown = shutdown (forced, ``shutdown_timeout = 0``) +
clean. The repository is the head's own: the base image is copied into the
shared diskdir once (a warm-up boot), as a real site's first boot would.

All the daemons share this machine's CPUs, so the ratio shows what spreading
the per-host work (libvirtd's defines, QEMU launches, destroys) over several
daemons gives, not more CPU. Needs root (the lab). Run:
    python benchmarks/bench_kvm_multihost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins/pragma_kvm_rocks/tests"))

from conftest import ext4_cluster, settings_from  # noqa: E402

from pragma_core.model import BootRequest, MemorySpec  # noqa: E402
from pragma_core.testing.contract import boot  # noqa: E402
from pragma_kvm_rocks.driver import KvmRocksDriver  # noqa: E402

NODES = 16
KEY = "ssh-ed25519 AAAAbench bench@pragma"
REQUEST = BootRequest(image="demo", cpus=NODES - 1, key=KEY, memory=MemorySpec(frontend_mib=32, compute_mib=32))


def lab(*args: str) -> dict:
    out = subprocess.run([str(ROOT / "scripts" / "lab-hosts"), *args], capture_output=True, text=True, check=True,
                         timeout=300)
    return json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}


def driver(conf: dict, work: Path, hosts: list[str], tag: str) -> KvmRocksDriver:
    text = conf["conf_lines"] + (
        f"available_containers = {json.dumps(hosts)}\n"
        f'diskdir = "{work / "disks"}"\nstate_dir = "{work / ("state-" + tag)}"\n'
        "max_cpus_per_node = 1\ncpu_allocation_ratio = 64\nshutdown_timeout = 0\nmax_parallel = 8\n"
    )
    return KvmRocksDriver(settings_from(text, work / f"kvm_rocks-{tag}.conf"))


def cycle(make, cluster) -> tuple[float, float, int]:  # noqa: ANN001
    """One boot and teardown with a fresh driver (a new pragma command each): seconds, seconds, hosts used."""
    head = make()
    started = time.perf_counter()
    allocation, _files = boot(head, cluster, REQUEST)
    booted = time.perf_counter() - started
    hosts = len({n.host for n in allocation.nodes})
    head = make()
    started = time.perf_counter()
    head.shutdown(allocation.cluster)
    head.clean(allocation.cluster)
    return booted, time.perf_counter() - started, hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    name = "b" + uuid.uuid4().hex[:4]
    conf = lab("up", "3", "--name", name, "--json")
    work = Path(conf["shared_dir"]) / "bench"
    repo = Path(conf["head_dir"]) / "repo"
    try:
        work.mkdir(mode=0o755)
        (work / "disks").mkdir(mode=0o755)
        cluster = ext4_cluster(repo / "demo", size=32 << 20)
        for path in (repo, repo / "demo"):
            path.chmod(0o755)
        for path in (repo / "demo").iterdir():
            path.chmod(0o644)
        hosts = conf["conf"]["available_containers"]
        one = lambda: driver(conf, work, hosts[:1], "one")  # noqa: E731
        three = lambda: driver(conf, work, hosts, "three")  # noqa: E731
        cycle(three, cluster)  # warm-up: copies the base images, probes the hosts
        results = {"1 host": [], "3 hosts": []}
        for _ in range(opts.rounds):
            results["1 host"].append(cycle(one, cluster))
            results["3 hosts"].append(cycle(three, cluster))
    finally:
        lab("down", "--name", name)
        shutil.rmtree(repo, ignore_errors=True)
    medians = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), v[0][2])
               for k, v in results.items()}
    print(f"{NODES} nodes (1 frontend + {NODES - 1} computes), median of {opts.rounds} rounds:")
    for label, (booted, down, used) in medians.items():
        print(f"  {label:<8} ({used} used): boot {booted:6.2f} s   teardown {down:6.2f} s")
    b1, d1, _ = medians["1 host"]
    b3, d3, _ = medians["3 hosts"]
    print(f"  1 host / 3 hosts: boot {b1 / b3:.2f}x   teardown {d1 / d3:.2f}x   (> 1: spreading is faster)")


if __name__ == "__main__":
    main()
