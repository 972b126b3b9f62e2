"""How far one head goes: kvm_rocks allocation and ``list cluster`` over 100 hosts running 1,000 VMs.

Each host is a libvirt test-driver node file (``test:///.../hN.xml``) with 16
CPUs and 10 running pragma domains (100 clusters of 10 nodes, spread over the
hosts, each with its claim on the three claim hosts). The driver reads every
host in parallel, exactly as it would read real libvirt daemons; the test
driver answers in microseconds, so this measures pragma's own work per host
and per domain (XML parsing, the view, the policy), not the network.

Budgets (issue 15): an allocation (the site read, placement, claim) under
1 s, ``list cluster`` over the 100 hosts under 2 s. Ratios in one run:
100 hosts vs 10 hosts (how the cost grows), 32 threads vs 1 (parallel reads).
Run: python benchmarks/bench_kvm_scale.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/pragma_kvm_rocks/tests"))

from conftest import ext4_cluster, settings_from  # noqa: E402

from pragma_core.model import BootRequest  # noqa: E402
from pragma_kvm_rocks import parallel  # noqa: E402
from pragma_kvm_rocks.claims import claim_xml  # noqa: E402
from pragma_kvm_rocks.driver import KvmRocksDriver  # noqa: E402
from pragma_kvm_rocks.policy import mac_for  # noqa: E402
from pragma_kvm_rocks.records import ClusterRecord, NicRecord, NodeRecord  # noqa: E402

CPUS_PER_HOST = 16
NODES_PER_CLUSTER = 10
KEY = "ssh-ed25519 AAAAbench bench@pragma"


def _site(root: Path, hosts: int) -> tuple[Path, list[ClusterRecord]]:
    """Node files for ``hosts`` hosts running ``hosts`` clusters of 10 nodes (10 VMs per host)."""
    names = [f"h{i}" for i in range(hosts)]
    on_host: dict[str, list[str]] = {h: [] for h in names}
    records = []
    for k in range(hosts):
        cluster, vlan, allocation = f"c{k}", 1000 + k, str(uuid.uuid4())
        nodes = []
        for i in range(NODES_PER_CLUSTER):
            host = names[(k + i * 7) % hosts]
            name = cluster if i == 0 else f"{cluster}-compute-{i - 1}"
            node = NodeRecord(cluster=cluster, name=name, hostname=name, role="frontend" if i == 0 else "compute",
                              host=host, cpus=1, memory_mib=512, vlan=vlan, allocation=allocation,
                              nics=[NicRecord(network="private", ip=f"10.1.0.{i + 1}", mac=mac_for(vlan, i))])
            nodes.append(node)
            meta = ET.tostring(node.to_element(), encoding="unicode")
            on_host[host].append(
                f'<domain type="test"><name>{name}</name><memory>524288</memory><vcpu>1</vcpu>'
                f'<os><type>hvm</type></os><metadata>{meta}</metadata><devices><interface type="bridge">'
                f'<mac address="{mac_for(vlan, i)}"/><source bridge="br{vlan}"/></interface></devices></domain>')
        records.append(ClusterRecord(cluster=cluster, image="demo", fqdn=f"{cluster}.x", vlan=vlan,
                                     public_ip=f"198.18.{k // 250}.{k % 250 + 1}", nodes=nodes, allocation=allocation))
    claim_hosts = sorted(names)[:3]
    directory = root / f"hosts-{hosts}"
    directory.mkdir()
    for host in names:
        claims = [claim_xml(r).replace("<domain type=\"qemu\">", "<domain type=\"test\">") for r in records] \
            if host in claim_hosts else []
        (directory / f"{host}.xml").write_text(
            f"<node><cpu><mhz>2000</mhz><model>x86_64</model><active>{CPUS_PER_HOST}</active><nodes>1</nodes>"
            f"<sockets>1</sockets><cores>{CPUS_PER_HOST}</cores><threads>1</threads></cpu><memory>67108864</memory>"
            + "".join(on_host[host]) + "".join(claims) + "</node>")
    return directory, records


def _driver(root: Path, directory: Path, hosts: int, tag: str) -> KvmRocksDriver:
    names = ", ".join(f'"h{i}"' for i in range(hosts))
    ips = ", ".join(f'"192.0.2.{i}"' for i in range(1, 200))
    conf = (f"public_ips = [{ips}]\nvlans = range(2, 900)\navailable_containers = [{names}]\n"
            f'libvirt_uri = "test://{directory}/{{host}}.xml"\ndiskdir = "{root / "disks"}"\n'
            f'state_dir = "{root / ("state-" + tag)}"\nmax_cpus_per_node = 1\ncpu_allocation_ratio = 2\n'
            'private_bridge = "br{vlan}"\n')
    return KvmRocksDriver(settings_from(conf, root / f"kvm_rocks-{tag}.conf"))


def measure(root: Path, hosts: int, cluster) -> dict[str, float]:  # noqa: ANN001
    directory, _records = _site(root, hosts)
    driver = _driver(root, directory, hosts, f"{hosts}-{uuid.uuid4().hex[:4]}")
    started = time.perf_counter()
    listed = driver.list_clusters()
    cold = time.perf_counter() - started  # opens a connection to every host
    assert len(listed) == hosts and sum(len(c.nodes) for c in listed) == hosts * NODES_PER_CLUSTER
    warm = []
    for _ in range(3):
        started = time.perf_counter()
        driver.list_clusters()
        warm.append(time.perf_counter() - started)
    allocations = []
    for _ in range(3):
        started = time.perf_counter()
        allocation = driver.allocate(BootRequest(image="demo", cpus=16, key=KEY), cluster)
        allocations.append(time.perf_counter() - started)
        driver.rollback(allocation)
    serial = parallel.MAX_WORKERS
    parallel.MAX_WORKERS = 1
    try:
        started = time.perf_counter()
        driver.list_clusters()
        one_thread = time.perf_counter() - started
    finally:
        parallel.MAX_WORKERS = serial
    return {"cold": cold, "list": statistics.median(warm), "allocate": statistics.median(allocations),
            "one_thread": one_thread}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = ext4_cluster(root / "image", size=8 << 20)
        measure(root, 5, cluster)  # warm-up: imports, caches
        small = measure(root, 10, cluster)
        big = measure(root, 100, cluster)
    print(f"{NODES_PER_CLUSTER * 100} running VMs on 100 hosts (libvirt test driver, {CPUS_PER_HOST} CPUs each):")
    print(f"  list cluster, first (opens 100 connections): {big['cold']:.2f} s")
    print(f"  list cluster:      {big['list']:.2f} s  (budget 2 s: {big['list'] / 2:.2f} of it)")
    print(f"  allocate 16 nodes: {big['allocate']:.2f} s  (budget 1 s: {big['allocate'] / 1:.2f} of it;"
          " reads every host, places, claims)")
    print(f"  100 hosts / 10 hosts: list {big['list'] / small['list']:.1f}x, allocate"
          f" {big['allocate'] / small['allocate']:.1f}x (10x the hosts and VMs)")
    print(f"  list with 1 thread / 32 threads: {big['one_thread'] / big['list']:.2f}x"
          " (in-process test driver: the GIL, no network to wait for)")


if __name__ == "__main__":
    main()
