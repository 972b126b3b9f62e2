"""kvm_rocks across several real hosts, on the lab (``scripts/lab-hosts``): three libvirt daemons, one head.

Every domain is checked on its own host's daemon through that host's URI
(not through pragma). Guests have no OS (an ext4 disk, SeaBIOS), except in
the last test, which boots the tiny image (``examples/image-builder``) and
checks that the frontend reaches computes on other hosts over the VLAN.
The repository is in the head's own directory, which the hosts do not see.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ext4_cluster, settings_from
from labhosts import Lab, LabHost, lab_hosts  # noqa: F401

from pragma_core.errors import CapacityError, DriverError
from pragma_core.model import BootRequest, MemorySpec, StagedCluster
from pragma_core.testing.contract import boot
from pragma_core.vcout import render
from pragma_kvm_rocks.claims import CLAIM_SUFFIX, claim_name
from pragma_kvm_rocks.pool import HostPool
from pragma_kvm_rocks.driver import KvmRocksDriver

pytestmark = [pytest.mark.e2e]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 lab@pragma"
MEMORY = MemorySpec(frontend_mib=32, compute_mib=32)
#: 1 frontend on host 1, computes on hosts 2 and 3 (2 usable CPUs on each host, cpu_allocation_ratio = 1).
REQUEST = BootRequest(image="demo", cpus=4, key=KEY, memory=MEMORY)
HANG_BOUND = 30.0  # seconds: a boot that has not failed by then hangs
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def lab(lab_hosts) -> Lab:  # noqa: F811 - the fixture imported above
    return lab_hosts(3)


@pytest.fixture(scope="module")
def host_cpus(lab: Lab) -> int:
    """CPUs a lab host reports (the machine's): the tests keep 2 of them usable on each host."""
    conn = lab.connect(lab.hosts[0])
    try:
        cpus = int(conn.getInfo()[2])
    finally:
        conn.close()
    if cpus < 2:
        pytest.skip("the placements here need hosts with at least 2 CPUs")
    return cpus


def _image(directory: Path) -> StagedCluster:
    """The no-OS test image in ``directory``."""
    cluster = ext4_cluster(directory, size=32 << 20)
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)
    return cluster


def _purge(lab: Lab) -> None:
    """Remove every domain and pragma pool of every lab host (what a failed test left)."""
    for host in lab.hosts:
        conn = lab.connect(host)
        try:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            for pool in conn.listAllStoragePools():
                if pool.name().startswith("pragma-"):
                    for volume in pool.listAllVolumes() if pool.isActive() else ():
                        volume.delete(0)
                    if pool.isActive():
                        pool.destroy()
                    pool.undefine()
        finally:
            conn.close()


class Heads:
    """Head nodes on the lab: each its own state_dir; a repository only the head sees; a shared diskdir."""

    def __init__(self, lab: Lab, work: Path, host_cpus: int) -> None:
        self.lab, self.work, self.reserved = lab, work, host_cpus - 2
        self.repo = lab.head_dir / f"repo-{work.name}"
        self.image = _image(self.repo / "demo")
        self.diskdir = work / "disks"
        self.diskdir.mkdir(mode=0o755)

    def driver(self, head: str = "a", extra: str = "") -> KvmRocksDriver:
        conf = self.lab.kvm_rocks_conf(
            f'state_dir = "{self.lab.head_dir / self.work.name}-{head}-state"\n'
            f'diskdir = "{self.diskdir}"\n'
            "max_cpus_per_node = 1\nshutdown_timeout = 0\nmax_parallel = 4\nconnect_timeout = 5\n"
            f"num_processors_reserved = {self.reserved}\n" + extra
        )
        return KvmRocksDriver(settings_from(conf, self.lab.head_dir / f"{self.work.name}-{head}.conf"))


@pytest.fixture
def heads(lab: Lab, host_cpus: int) -> Iterator[Heads]:
    work = lab.shared_dir / f"heads-{uuid.uuid4().hex[:6]}"
    work.mkdir(mode=0o755)
    made = Heads(lab, work, host_cpus)
    yield made
    lab.up(3)  # a host a test stopped runs again
    _purge(lab)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(made.repo, ignore_errors=True)
    for state in lab.head_dir.glob(f"{work.name}-*"):
        shutil.rmtree(state, ignore_errors=True) if state.is_dir() else state.unlink()


def _on_hosts(lab: Lab, hosts: list[LabHost] | None = None) -> dict[str, dict[str, str]]:
    """Every domain on each host (by host IP), with its state, read through each host's own URI."""
    found = {}
    for host in hosts or lab.hosts:
        conn = lab.connect(host)
        try:
            found[host.ip] = {d.name(): ("running" if d.isActive() else "off") for d in conn.listAllDomains()}
        finally:
            conn.close()
    return found


def _nodes_on_hosts(lab: Lab, hosts: list[LabHost] | None = None) -> dict[str, list[str]]:
    return {ip: sorted(n for n in doms if not n.endswith(CLAIM_SUFFIX)) for ip, doms in _on_hosts(lab, hosts).items()}


# --------------------------------------------------------------------------- placement, disks


def test_computes_spread_by_free_capacity_each_on_its_own_hosts_daemon_and_clean_leaves_nothing(
        lab: Lab, heads: Heads) -> None:
    # 8 vCPUs per host (2 usable CPUs x 4); the frontend takes one on host 1: free 7, 8, 8
    driver = heads.driver(extra="cpu_allocation_ratio = 4\n")
    request = BootRequest(image="demo", cpus=7, key=KEY, memory=MEMORY)
    allocation, _files = boot(driver, heads.image, request)
    try:
        where = {node.name: node.host for node in allocation.nodes}
        h1, h2, h3 = (h.ip for h in lab.hosts)
        assert where[allocation.frontend.name] == h1
        assert sorted(n.host for n in allocation.computes) == sorted([h1] * 2 + [h2] * 3 + [h3] * 2)
        on_hosts = _on_hosts(lab)
        for host in lab.hosts:
            mine = {n: s for n, s in on_hosts[host.ip].items() if not n.endswith(CLAIM_SUFFIX)}
            assert mine == {n: "running" for n, h in where.items() if h == host.ip}
            assert on_hosts[host.ip][claim_name(allocation.cluster)] == "off", "the claim is on every claim host"
        (status,) = driver.list_clusters(allocation.cluster)
        assert {(n.name, n.host, n.state) for n in status.nodes} == {(n, h, "running") for n, h in where.items()}
        # the repository is the head's own: the base images (frontend, compute) were copied into diskdir, once
        bases = sorted(p.name for p in heads.diskdir.glob("pragma-base-*.img"))
        assert len(bases) == 2
        inodes = {name: (heads.diskdir / name).stat().st_ino for name in bases}
        again = heads.driver("b", extra="cpu_allocation_ratio = 4\n")
        second, _files = boot(again, heads.image, BootRequest(image="demo", cpus=1, key=KEY, memory=MEMORY))
        assert {p.name: p.stat().st_ino for p in heads.diskdir.glob("pragma-base-*.img")} == inodes, "reused"
        again.shutdown(second.cluster)
        again.clean(second.cluster)
        driver.shutdown(allocation.cluster)
        driver.clean(allocation.cluster)
    except BaseException:
        driver.rollback(allocation)
        raise
    assert _on_hosts(lab) == {host.ip: {} for host in lab.hosts}, "no domain, no claim left on any host"
    assert sorted(p.name for p in heads.diskdir.iterdir()) == bases
    assert sorted((o.kind, o.name) for o in driver.orphans()) == [("base", name) for name in bases]
    driver.remove_orphans()
    assert list(heads.diskdir.iterdir()) == []


def test_host_local_disks_reach_each_host_through_its_pool_once_and_are_reused(lab: Lab, heads: Heads,
                                                                              monkeypatch) -> None:
    tag = uuid.uuid4().hex[:6]
    local = Path("/var/lib/libvirt/images") / f"pragma-lab-{tag}"  # a different directory on every host
    extra = f'diskdir = "{local}"\ndisk_storage = "pool"\ncpu_allocation_ratio = 4\n'
    driver = heads.driver(extra=extra)
    allocation, _files = boot(driver, heads.image, REQUEST)
    on_host = {host.ip: host.state_dir / "lib" / "images" / f"pragma-lab-{tag}" for host in lab.hosts}
    try:
        assert not local.exists(), "nothing is written on the head"
        bases = {}
        for host in lab.hosts:
            names = sorted(p.name for p in on_host[host.ip].iterdir())
            nodes = [n.name for n in allocation.nodes if n.host == host.ip]
            assert [n for n in names if n.endswith(".qcow2")] == sorted(f"{n}.qcow2" for n in nodes)
            assert sorted(n for n in names if n.endswith(".console.log")) == sorted(f"{n}.console.log" for n in nodes)
            roles = {n.role for n in allocation.nodes if n.host == host.ip}
            found = [n for n in names if n.startswith("pragma-base-") and n.endswith(".img")]
            assert len(found) == len(roles), "one base per image its nodes use"
            assert all(f"{base}.ok" in names for base in found)
            bases[host.ip] = {base: (on_host[host.ip] / base).stat() for base in found}
        assert _nodes_on_hosts(lab) == {h.ip: sorted(n.name for n in allocation.nodes if n.host == h.ip)
                                        for h in lab.hosts}
        assert {n.state for n in driver.list_clusters(allocation.cluster)[0].nodes} == {"running"}

        # the console log is read through the host's libvirt
        compute = allocation.computes[0]
        with open(on_host[compute.host] / f"{compute.name}.console.log", "ab") as log_file:
            log_file.write(b"PRAGMA-READY name=compute-0 role=compute\n")
        verdicts = driver.wait_ready(allocation.cluster, 1)
        assert verdicts[compute.name] == "ready"
        fe = allocation.frontend
        assert verdicts[fe.name] == f"timeout: no PRAGMA-READY in {local}/{fe.name}.console.log on {fe.host} after 1 s"

        second = heads.driver("b", extra=extra)
        other, _files = boot(second, heads.image, BootRequest(image="demo", cpus=1, key=KEY, memory=MEMORY))
        for ip, before in bases.items():
            for base, stat in before.items():
                now = (on_host[ip] / base).stat()
                assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), "reused, not sent again"
        second.shutdown(other.cluster)
        second.clean(other.cluster)
        driver.shutdown(allocation.cluster)
        listed: list[str] = []
        real_names = HostPool.names

        def names(pool: HostPool) -> list[str]:
            listed.append(pool.host)
            return real_names(pool)

        monkeypatch.setattr(HostPool, "names", names)
        driver.clean(allocation.cluster)
        monkeypatch.undo()
        hosts_used = {n.host for n in allocation.nodes}
        assert sorted(listed) == sorted(hosts_used), "one pool listing per host, not one per node"
    except BaseException:
        driver.rollback(allocation)
        raise
    for directory in on_host.values():
        assert all(p.name.startswith("pragma-base-") for p in directory.iterdir()), "only the bases stay"
    assert {o.kind for o in driver.orphans()} == {"base"}
    driver.remove_orphans()
    assert all(list(directory.iterdir()) == [] for directory in on_host.values())


# --------------------------------------------------------------------------- faults


def test_a_boot_goes_on_the_hosts_that_answer_when_one_host_daemon_is_down(lab: Lab, heads: Heads, caplog) -> None:
    lab.hosts[2].kill_daemon()
    driver = heads.driver()
    caplog.set_level(logging.WARNING)
    with pytest.raises(CapacityError) as error:  # 4 CPUs need host 3 too
        driver.allocate(REQUEST, heads.image)
    assert f"skipped, not answering: {lab.hosts[2].ip} (cannot connect to libvirt on {lab.hosts[2].ip}" in str(error.value)
    allocation, _files = boot(driver, heads.image, BootRequest(image="demo", cpus=2, key=KEY, memory=MEMORY))
    assert {node.host for node in allocation.nodes} <= {lab.hosts[0].ip, lab.hosts[1].ip}
    assert f"host {lab.hosts[2].ip} is skipped" in caplog.text
    (status,) = driver.list_clusters()
    assert {n.state for n in status.nodes} == {"running"}
    driver.clean(allocation.cluster, force=True)


def test_a_frozen_host_is_skipped_in_bounded_time(lab: Lab, heads: Heads) -> None:
    driver = heads.driver(extra="keepalive_interval = 1\nkeepalive_count = 2\n")
    driver.list_clusters()  # connections to every host are open: the freeze hits calls on them
    frozen = lab.hosts[2].daemon_pid()
    outcome: list[BaseException | object] = []

    def attempt(request: BootRequest) -> None:
        try:
            outcome.append(boot(driver, heads.image, request)[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    os.kill(frozen, signal.SIGSTOP)
    try:
        for request in (REQUEST, BootRequest(image="demo", cpus=2, key=KEY, memory=MEMORY)):
            worker = threading.Thread(target=attempt, args=(request,), daemon=True)
            worker.start()
            worker.join(HANG_BOUND)
            assert not worker.is_alive(), f"the boot still waited for the frozen host after {HANG_BOUND:g} s"
    finally:
        os.kill(frozen, signal.SIGCONT)
    too_big, fits = outcome
    assert isinstance(too_big, CapacityError) and f"skipped, not answering: {lab.hosts[2].ip}" in str(too_big)
    assert not isinstance(fits, BaseException), fits
    assert lab.hosts[2].ip not in {n.host for n in fits.nodes}
    driver.clean(fits.cluster, force=True)


def test_rollback_after_a_host_died_mid_boot_removes_the_nodes_on_every_other_host(lab: Lab, heads: Heads) -> None:
    driver = heads.driver(extra="placement = 'pack'\n")
    allocation = driver.allocate(REQUEST, heads.image)
    assert {node.host for node in allocation.computes} == {lab.hosts[1].ip, lab.hosts[2].ip}
    lab.hosts[2].kill_daemon()  # the host dies between allocation and start
    with pytest.raises(DriverError) as failed:
        driver.deploy(allocation, heads.image, render(allocation, format=2))
    assert lab.hosts[2].ip in str(failed.value)
    with pytest.raises(DriverError) as rolled:
        driver.rollback(allocation)
    assert f"stay reserved: 'pragma clean {allocation.cluster}' once their host answers" in str(rolled.value)
    left = _nodes_on_hosts(lab, lab.hosts[:2])
    assert left == {lab.hosts[0].ip: [], lab.hosts[1].ip: []}
    dead = {n.name for n in allocation.computes if n.host == lab.hosts[2].ip}
    (status,) = driver.list_clusters(allocation.cluster)
    assert {(n.name, n.state) for n in status.nodes} == {(n, "unknown") for n in dead}, "a reservation for the dead host"

    lab.up(3)  # the host is back: nothing was defined there, nothing starts
    driver = heads.driver(extra="placement = 'pack'\n")  # a later pragma command
    (status,) = driver.list_clusters(allocation.cluster)
    assert {(n.name, n.state) for n in status.nodes} == {(n, "reserved") for n in dead}
    driver.clean(allocation.cluster)
    assert _on_hosts(lab) == {host.ip: {} for host in lab.hosts}


def test_a_host_that_died_comes_back_without_resurrecting_anything_and_clean_removes_it(lab: Lab, heads: Heads) -> None:
    driver = heads.driver()
    allocation, _files = boot(driver, heads.image, REQUEST)
    dead = sorted(n.name for n in allocation.computes if n.host == lab.hosts[2].ip)
    lab.hosts[2].kill_all()  # daemons and QEMUs: the host is gone
    with pytest.raises(DriverError, match=lab.hosts[2].ip.replace(".", r"\.")):
        driver.clean(allocation.cluster, force=True)
    assert _nodes_on_hosts(lab, lab.hosts[:2]) == {lab.hosts[0].ip: [], lab.hosts[1].ip: []}
    lab.up(3)
    driver = heads.driver()  # a later pragma command
    assert _nodes_on_hosts(lab, lab.hosts[2:]) == {lab.hosts[2].ip: dead}
    assert set(_on_hosts(lab, lab.hosts[2:])[lab.hosts[2].ip].values()) == {"off"}, "no autostart"
    assert "qemu-system-x86" not in lab.hosts[2].pids()
    (status,) = driver.list_clusters(allocation.cluster)
    assert {(n.name, n.state) for n in status.nodes} == {(n, "shutoff") for n in dead}
    driver.clean(allocation.cluster)
    assert _on_hosts(lab) == {host.ip: {} for host in lab.hosts}
    assert list(heads.diskdir.glob("*.qcow2")) == []


# --------------------------------------------------------------------------- two heads


def test_two_heads_booting_at_once_never_share_an_ip_vlan_mac_or_name(lab: Lab, heads: Heads) -> None:
    drivers = [heads.driver("a"), heads.driver("b")]
    outcome: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcome[i] = boot(drivers[i], heads.image, BootRequest(image="demo", cpus=2, key=KEY, memory=MEMORY))[0]
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    one, two = outcome[0], outcome[1]
    assert not isinstance(one, BaseException) and not isinstance(two, BaseException), outcome
    assert one.public_ip != two.public_ip and one.vlan != two.vlan
    assert not {n.name for n in one.nodes} & {n.name for n in two.nodes}
    assert not {i.mac for n in one.nodes for i in n.interfaces} & {i.mac for n in two.nodes for i in n.interfaces}
    for driver, allocation in zip(drivers, (one, two)):
        (status,) = driver.list_clusters(allocation.cluster)
        assert {n.state for n in status.nodes} == {"running"}
    # each head sees the other's cluster (from its claim) and cleans only its own
    assert {c.name for c in drivers[0].list_clusters()} == {one.cluster, two.cluster}
    drivers[0].clean(one.cluster, force=True)
    drivers[1].clean(two.cluster, force=True)
    assert _on_hosts(lab) == {host.ip: {} for host in lab.hosts}


def test_one_heads_failed_boot_never_removes_another_heads_cluster(lab: Lab, heads: Heads) -> None:
    first, second = heads.driver("a", "cpu_allocation_ratio = 4\n"), heads.driver("b", "cpu_allocation_ratio = 4\n")
    one, _files = boot(first, heads.image, REQUEST)
    two = second.allocate(BootRequest(image="demo", cpus=2, key=KEY, memory=MEMORY), heads.image)
    # a domain that is not the second head's holds the name of one of its nodes
    victim = two.computes[0]
    host = next(h for h in lab.hosts if h.ip == victim.host)
    conn = lab.connect(host)
    try:
        conn.defineXML(f"<domain type='qemu'><name>{victim.name}</name><memory unit='MiB'>16</memory>"
                       "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")
        with pytest.raises(DriverError, match="already exists"):
            try:
                second.deploy(two, heads.image, render(two, format=2))
            except DriverError:
                second.rollback(two)
                raise
        assert conn.lookupByName(victim.name).name() == victim.name, "the rollback left the domain it did not make"
        conn.lookupByName(victim.name).undefine()
    finally:
        conn.close()
    (status,) = first.list_clusters(one.cluster)
    assert {node.state for node in status.nodes} == {"running"}
    assert all((heads.diskdir / f"{n.name}.qcow2").exists() for n in one.nodes)
    first.clean(one.cluster, force=True)
    assert _on_hosts(lab) == {host.ip: {} for host in lab.hosts}


# --------------------------------------------------------------------------- a real cluster


def test_a_tiny_image_cluster_across_hosts_configures_itself_and_the_frontend_reaches_every_compute(
        lab: Lab, heads: Heads) -> None:
    from pragma_core.clusterxml import parse_cluster_xml
    from pragma_core.testing.contract import staged_in_place

    repo = heads.repo / "tiny"
    built = subprocess.run([sys.executable, str(ROOT / "examples" / "image-builder" / "build_image.py"),
                            "--output", str(repo), "--reuse"], capture_output=True, text=True, timeout=900, check=False)
    if built.returncode != 0:
        pytest.fail(f"image builder failed:\n{built.stderr}")
    cluster = staged_in_place(parse_cluster_xml(repo / "pragma-tiny" / "pragma-tiny.xml", "pragma-tiny"))
    tag = uuid.uuid4().hex[:6]
    driver = heads.driver(extra=f'diskdir = "/var/lib/libvirt/images/pragma-lab-{tag}"\ndisk_storage = "pool"\n'
                                'domain_type = "qemu"\ncpu_allocation_ratio = 4\nmax_cpus_per_node = 1\n')
    request = BootRequest(image="pragma-tiny", cpus=2, key=KEY, memory=MemorySpec(frontend_mib=160, compute_mib=160))
    started = time.monotonic()
    allocation, _files = boot(driver, cluster, request)
    try:
        assert len({n.host for n in allocation.nodes}) >= 2
        verdicts = driver.wait_ready(allocation.cluster, 300)
        assert set(verdicts.values()) == {"ready"}, verdicts
        fe = allocation.frontend
        deadline = time.monotonic() + 180
        text = ""
        while time.monotonic() < deadline:
            text = (driver.storage.read_console(fe.host, fe.name) or b"").decode(errors="replace")
            if "PRAGMA-REACH-DONE" in text:
                break
            time.sleep(1)
        assert "PRAGMA-REACH-DONE ok=2 fail=0" in text, text
        print(f"tiny cluster over {len({n.host for n in allocation.nodes})} hosts ready and reached in"
              f" {time.monotonic() - started:.0f} s")
    finally:
        driver.clean(allocation.cluster, force=True)
    assert _nodes_on_hosts(lab) == {host.ip: [] for host in lab.hosts}
