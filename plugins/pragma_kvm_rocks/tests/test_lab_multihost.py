"""kvm_rocks across several real hosts, on the lab (``scripts/lab-hosts``): what works, and what does not yet.

The first test is the baseline that works today (shared repository and
diskdir). Every other test states a behaviour issue 15 wants and is marked
``xfail(strict=True)`` with the reason it fails today: when the driver learns
it, the test passes, strict xfail turns that into a failure, and whoever fixed
it removes the mark. Guests have no OS (an ext4 disk, SeaBIOS); the hosts are
three lab hosts reached at ``qemu+tcp://``.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ext4_cluster, settings_from
from labhosts import Lab, LabHost, lab_hosts  # noqa: F401

from pragma_core.errors import DriverError
from pragma_core.model import BootRequest, MemorySpec, StagedCluster
from pragma_core.testing.contract import boot
from pragma_kvm_rocks.driver import KvmRocksDriver

pytestmark = [pytest.mark.e2e]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 lab@pragma"
#: 1 frontend on host 1, computes on hosts 2 and 3 (2 usable CPUs on each host, cpu_allocation_ratio = 1).
REQUEST = BootRequest(image="demo", cpus=4, key=KEY, memory=MemorySpec(frontend_mib=32, compute_mib=32))
HANG_BOUND = 30.0  # seconds: a boot that has not failed by then hangs


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
    """The no-OS test image in ``directory``, readable by QEMU (user libvirt-qemu)."""
    cluster = ext4_cluster(directory, size=32 << 20)
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)
    return cluster


def _purge(lab: Lab) -> None:
    """Remove every domain of every lab host (what a failed test or a broken rollback left)."""
    for host in lab.hosts:
        conn = lab.connect(host)
        try:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        finally:
            conn.close()


class Heads:
    """Head nodes on the lab: each with its own state_dir, one shared image and diskdir."""

    def __init__(self, lab: Lab, work: Path, host_cpus: int) -> None:
        self.lab, self.work, self.reserved = lab, work, host_cpus - 2
        self.image = _image(work / "image")
        self.made: list[KvmRocksDriver] = []

    def driver(self, head: str = "a", extra: str = "") -> KvmRocksDriver:
        conf = self.lab.kvm_rocks_conf(
            f'state_dir = "{self.lab.head_dir / head}-state"\n'
            f'diskdir = "{self.work / "disks"}"\n'
            "max_cpus_per_node = 1\nshutdown_timeout = 0\nmax_parallel = 4\n"
            f"num_processors_reserved = {self.reserved}\n" + extra
        )
        (self.work / "disks").mkdir(mode=0o755, exist_ok=True)
        driver = KvmRocksDriver(settings_from(conf, self.lab.head_dir / f"{head}.conf"))
        self.made.append(driver)
        return driver


@pytest.fixture
def heads(lab: Lab, host_cpus: int) -> Iterator[Heads]:
    work = lab.shared_dir / f"heads-{uuid.uuid4().hex[:6]}"
    work.mkdir(mode=0o755)
    yield Heads(lab, work, host_cpus)
    lab.up(3)  # a host a test stopped runs again
    _purge(lab)
    shutil.rmtree(work, ignore_errors=True)
    for state in lab.head_dir.glob("*-state"):
        shutil.rmtree(state, ignore_errors=True)


def _hosts_of(lab: Lab, cluster: str, hosts: list[LabHost]) -> dict[str, list[str]]:
    """Domains of ``cluster`` on each of ``hosts`` (by host IP)."""
    found = {}
    for host in hosts:
        conn = lab.connect(host)
        try:
            found[host.ip] = sorted(d.name() for d in conn.listAllDomains()
                                    if d.name() == cluster or d.name().startswith(cluster + "-"))
        finally:
            conn.close()
    return found


# --------------------------------------------------------------------------- what works


def test_a_cluster_spans_three_hosts_each_domain_defined_on_its_own_hosts_daemon(lab: Lab, heads: Heads) -> None:
    driver = heads.driver()
    allocation, _files = boot(driver, heads.image, REQUEST)
    try:
        where = {node.name: node.host for node in allocation.nodes}
        assert where[allocation.frontend.name] == lab.hosts[0].ip
        assert sorted(where.values()) == sorted([lab.hosts[0].ip] + [lab.hosts[1].ip] * 2 + [lab.hosts[2].ip] * 2)
        found = _hosts_of(lab, allocation.cluster, lab.hosts)
        assert found == {host.ip: sorted(n for n, h in where.items() if h == host.ip) for host in lab.hosts}
        (status,) = driver.list_clusters(allocation.cluster)
        assert {(n.name, n.host, n.state) for n in status.nodes} == {(n, h, "running") for n, h in where.items()}
        driver.shutdown(allocation.cluster)
        driver.clean(allocation.cluster)
    except BaseException:
        driver.rollback(allocation)
        raise
    assert _hosts_of(lab, allocation.cluster, lab.hosts) == {host.ip: [] for host in lab.hosts}
    assert list((heads.work / "disks").iterdir()) == []


# --------------------------------------------------------------------------- faults


@pytest.mark.xfail(strict=True, raises=DriverError, reason=(
    "allocate() reads the inventory of every host in available_containers and fails on the first it cannot"
    " reach: one host whose libvirtd is down stops every boot (and 'list cluster')"))
def test_a_boot_goes_on_the_hosts_that_answer_when_one_host_daemon_is_down(lab: Lab, heads: Heads) -> None:
    lab.hosts[2].kill_daemon()
    allocation, _files = boot(heads.driver(), heads.image, BootRequest(
        image="demo", cpus=2, key=KEY, memory=MemorySpec(frontend_mib=32, compute_mib=32)))
    assert {node.host for node in allocation.nodes} <= {lab.hosts[0].ip, lab.hosts[1].ip}


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "libvirt-python calls have no deadline: a host that accepts the TCP connection but does not answer"
    " (a frozen libvirtd) blocks allocate() forever"))
def test_a_frozen_host_fails_the_boot_in_bounded_time(lab: Lab, heads: Heads) -> None:
    frozen = lab.hosts[2].daemon_pid()
    driver = heads.driver()
    outcome: list[BaseException | object] = []

    def attempt() -> None:
        try:
            outcome.append(boot(driver, heads.image, REQUEST))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    os.kill(frozen, signal.SIGSTOP)
    worker = threading.Thread(target=attempt, daemon=True)
    try:
        worker.start()
        worker.join(HANG_BOUND)
        hung = worker.is_alive()
    finally:
        os.kill(frozen, signal.SIGCONT)
        worker.join(HANG_BOUND)
    assert not hung, f"the boot still waited for the frozen host after {HANG_BOUND:g} s"
    assert outcome and isinstance(outcome[0], DriverError)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "rollback looks up every node of the record first and raises on the unreachable host before removing"
    " anything: the frontend and the computes on the hosts still up keep running"))
def test_rollback_after_a_host_died_mid_boot_removes_the_nodes_on_the_hosts_still_up(lab: Lab, heads: Heads) -> None:
    driver = heads.driver()
    allocation = driver.allocate(REQUEST, heads.image)
    assert {node.host for node in allocation.computes} == {lab.hosts[1].ip, lab.hosts[2].ip}
    lab.hosts[2].kill_daemon()  # the host dies between allocation and start
    from pragma_core.vcout import render

    with pytest.raises(DriverError):
        try:
            driver.deploy(allocation, heads.image, render(allocation, format=2))
        except DriverError:
            driver.rollback(allocation)
            raise
    left = _hosts_of(lab, allocation.cluster, lab.hosts[:2])
    assert left[lab.hosts[0].ip] == [] and left[lab.hosts[1].ip] == []


# --------------------------------------------------------------------------- two heads


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "each head locks and records allocations in its own state_dir and sees another head's clusters only once"
    " their domains are defined: two heads allocating at once take the same public IP, VLAN, names and CPUs"))
def test_two_heads_allocating_at_once_never_take_the_same_ip_vlan_or_name(heads: Heads) -> None:
    first, second = heads.driver("a"), heads.driver("b")
    one = first.allocate(REQUEST, heads.image)
    two = second.allocate(REQUEST, heads.image)
    try:
        assert one.public_ip != two.public_ip
        assert one.vlan != two.vlan
        assert not {n.name for n in one.nodes} & {n.name for n in two.nodes}
    finally:
        first.rollback(one)
        second.rollback(two)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "a second head that allocated the same name fails at its first disk ('already exists') and its rollback"
    " removes that name's domains and disks on every host: the first head's running cluster"))
def test_one_heads_failed_boot_never_removes_another_heads_cluster(lab: Lab, heads: Heads) -> None:
    from pragma_core.vcout import render

    first, second = heads.driver("a"), heads.driver("b")
    one = first.allocate(REQUEST, heads.image)
    two = second.allocate(REQUEST, heads.image)
    first.deploy(one, heads.image, render(one, format=2))
    try:
        second.deploy(two, heads.image, render(two, format=2))
    except DriverError:
        second.rollback(two)
    (status,) = first.list_clusters(one.cluster)
    assert {node.state for node in status.nodes} == {"running"}


# --------------------------------------------------------------------------- disks


@pytest.mark.xfail(strict=True, raises=DriverError, reason=(
    "node disks are qcow2 overlays backed by the staged image at its path on the head, and kernel/initrd"
    " paths point into the head's cluster directory: with a repository only the head sees, every start"
    " fails with 'Cannot access backing file'"))
def test_a_shared_diskdir_boot_works_with_a_repository_only_the_head_sees(lab: Lab, heads: Heads) -> None:
    private = lab.head_dir / f"repo-{uuid.uuid4().hex[:6]}"
    try:
        image = _image(private)
        allocation, _files = boot(heads.driver(), image, REQUEST)
        assert len(allocation.nodes) == 5
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.xfail(strict=True, raises=DriverError, reason=(
    "with a host-local diskdir the head writes every node disk (and expects every console log) in its own"
    " directory of that path; nothing is uploaded to the node's host (no storage pool/volume upload), so"
    " the host's QEMU finds no disk"))
def test_host_local_disks_are_made_on_each_nodes_own_host(lab: Lab, heads: Heads) -> None:
    tag = uuid.uuid4().hex[:6]
    local = Path("/var/lib/libvirt/images") / f"pragma-lab-{tag}"  # a different directory on every host
    head_copy_existed = local.exists()
    try:
        allocation, _files = boot(heads.driver(extra=f'diskdir = "{local}"\n'), heads.image, REQUEST)
        assert len(allocation.nodes) == 5
        for host in lab.hosts:
            on_host = host.state_dir / "lib" / "images" / f"pragma-lab-{tag}"
            assert sorted(p.name for p in on_host.glob("*.qcow2")) == sorted(
                f"{n.name}.qcow2" for n in allocation.nodes if n.host == host.ip)
    finally:
        if not head_copy_existed:
            shutil.rmtree(local, ignore_errors=True)
