"""End to end against the real libvirtd with QEMU: boot 1 frontend + 2 computes, read vc-out back, clean.

Needs root, ``qemu:///system`` and ``ip`` (see ``.ci/setup-libvirt.sh``). Guests
have no OS (the disk holds only an ext4 filesystem): they run SeaBIOS, which
is enough to check domains, disks, metadata and the shutdown timeout path.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from pragma_core.model import BootRequest, MemorySpec
from pragma_core.testing.contract import boot
from pragma_kvm_rocks import e2fs
from pragma_kvm_rocks.driver import KvmRocksDriver

from conftest import base_conf, ext4_cluster, settings_from

pytestmark = [pytest.mark.libvirtd, pytest.mark.e2e]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 e2e@pragma"


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def system_libvirt() -> None:
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    if os.geteuid() != 0:
        pytest.skip("needs root (bridges, qemu:///system)")
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError as exc:
        pytest.skip(f"qemu:///system is unreachable ({exc.get_error_message()}); run .ci/setup-libvirt.sh")


@pytest.fixture
def bridges(system_libvirt) -> dict[str, str]:
    """Two Linux bridges made for the test: the private VLAN's and the public one.

    The VLAN is random, so a cluster already running on this libvirtd (the
    demo's, another test run's) does not hold it.
    """
    tag = uuid.uuid4().hex[:5]
    vlan = random.randrange(1000, 4000)
    names = {"private": f"pgp{tag}{vlan}", "public": f"pgpub{tag}"}
    for name in names.values():
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield names | {"tag": tag, "vlan": str(vlan)}
    for name in names.values():
        subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture
def workdir() -> Path:
    # QEMU runs as libvirt-qemu: the images must be in a directory it can traverse.
    root = Path("/var/lib/libvirt/images") / f"pragma-test-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_boot_three_nodes_read_vcout_back_shutdown_and_clean(bridges, workdir: Path) -> None:
    cluster = ext4_cluster(workdir / "image", size=32 << 20)
    for path in (workdir / "image").iterdir():
        path.chmod(0o644)
    (workdir / "image").chmod(0o755)
    conf = base_conf(workdir, extra=(
        f'private_bridge = "pgp{bridges["tag"]}{{vlan}}"\n'
        f'public_bridge = "{bridges["public"]}"\n'
        f"vlans = [{bridges['vlan']}]\n"
        "shutdown_timeout = 2\n"
        "max_parallel = 2\n"
        "domain_type = \"auto\"\n"
    ))
    settings = settings_from(conf, workdir / "kvm_rocks.conf")
    (workdir / "disks").mkdir(mode=0o755)
    driver = KvmRocksDriver(settings)
    request = BootRequest(image="demo", cpus=2, key=KEY, memory=MemorySpec(frontend_mib=64, compute_mib=64))
    # 2 compute CPUs on a 2-core host: give one node per CPU
    driver = KvmRocksDriver(settings_from(conf + "max_cpus_per_node = 1\ncpu_allocation_ratio = 64\n",
                                          workdir / "kvm_rocks.conf"))
    allocation, files = boot(driver, cluster, request)
    name = allocation.cluster
    try:
        running = _virsh("list", "--state-running", "--name").split()
        assert {n.name for n in allocation.nodes} <= set(running)
        assert len(allocation.nodes) == 3

        # A new driver (as a later pragma process would) sees the cluster through metadata.
        later = KvmRocksDriver(settings)
        (status,) = later.list_clusters(name)
        assert [n.role for n in status.nodes] == ["frontend", "compute", "compute"]
        assert {n.state for n in status.nodes} == {"running"}
        assert status.public_ip == str(allocation.public_ip)

        meta = _virsh("metadata", name, "https://pragma-grid.github.io/pragma/1")
        assert f'cluster="{name}"' in meta
        xml = _virsh("dumpxml", allocation.computes[0].name)
        assert bridges["private"] in xml and allocation.computes[0].interfaces[0].mac in xml

        # vc-out inside each node disk equals what pragma rendered for it
        for node in allocation.nodes:
            disk = workdir / "disks" / f"{node.name}.qcow2"
            raw = workdir / f"{node.name}.raw"
            subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk), str(raw)], check=True)
            location = e2fs.find_root_filesystem(raw)
            assert e2fs.read_file(raw, location, "/root/vc-out.xml") == files[node.name]
            assert KEY.encode() in files[node.name]
            assert "old-70-persistent-net.rules" in e2fs.list_directory(raw, location, "/etc/udev/rules.d")
            raw.unlink()

        with pytest.raises(Exception, match="running"):
            later.clean(name)
        later.shutdown(name)
        assert not set(_virsh("list", "--name").split()) & {n.name for n in allocation.nodes}
        later.clean(name)
    except BaseException:
        driver.rollback(allocation)
        raise
    everything = _virsh("list", "--all", "--name").split()
    assert not {n.name for n in allocation.nodes} & set(everything)
    assert list((workdir / "disks").iterdir()) == []
    assert list((workdir / "state" / "clusters").glob("*.json")) == []


class LifecycleEvents:
    """Domain lifecycle events of ``qemu:///system``, in the order libvirt emits them (a context manager)."""

    _loop_started = False

    def __enter__(self) -> LifecycleEvents:
        import libvirt

        if not LifecycleEvents._loop_started:
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=self._loop, daemon=True, name="libvirt-events").start()
            LifecycleEvents._loop_started = True
        self.events: list[tuple[str, int]] = []
        self.conn = libvirt.open("qemu:///system")
        self.callback = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda _conn, dom, event, _detail, _opaque: self.events.append((dom.name(), event)), None)
        return self

    @staticmethod
    def _loop() -> None:
        import libvirt

        while True:
            libvirt.virEventRunDefaultImpl()

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # let the last events arrive
        self.conn.domainEventDeregisterAny(self.callback)
        self.conn.close()

    def assert_frontend_ran_before_any_compute(self, allocation) -> None:
        """Every node launched paused; the frontend resumed after the last launch, before any compute."""
        import libvirt

        run_events = (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                      libvirt.VIR_DOMAIN_EVENT_RESUMED)
        for node in allocation.nodes:
            mine = [event for name, event in self.events if name == node.name and event in run_events]
            assert mine[:3] == list(run_events), (node.name, mine)
        frontend_ran = self.events.index((allocation.frontend.name, libvirt.VIR_DOMAIN_EVENT_RESUMED))
        for node in allocation.nodes:
            assert self.events.index((node.name, libvirt.VIR_DOMAIN_EVENT_SUSPENDED)) < frontend_ran, node.name
        for node in allocation.computes:
            assert self.events.index((node.name, libvirt.VIR_DOMAIN_EVENT_RESUMED)) > frontend_ran, node.name


def test_eight_node_cluster_boots_and_cleans_three_rounds_in_a_row_leaving_nothing(bridges, workdir: Path) -> None:
    """The reliability promise of the kcli benchmark, small: 1 + 7 nodes, max_parallel = 8, 3 rounds."""
    cluster = ext4_cluster(workdir / "image", size=32 << 20)
    for path in (workdir / "image").iterdir():
        path.chmod(0o644)
    (workdir / "image").chmod(0o755)
    (workdir / "disks").mkdir(mode=0o755)
    conf = base_conf(workdir, extra=(
        f'private_bridge = "pgp{bridges["tag"]}{{vlan}}"\n'
        f'public_bridge = "{bridges["public"]}"\n'
        f"vlans = [{bridges['vlan']}]\n"
        "shutdown_timeout = 0\n"
        "max_parallel = 8\n"
        "max_cpus_per_node = 1\n"
        "cpu_allocation_ratio = 64\n"  # other VMs on this libvirtd must not fail the test for capacity
        "num_processors_reserved = 0\n"
    ))
    request = BootRequest(image="demo", cpus=7, key=KEY, memory=MemorySpec(frontend_mib=64, compute_mib=64))
    for round_ in range(3):
        driver = KvmRocksDriver(settings_from(conf, workdir / "kvm_rocks.conf"))
        with LifecycleEvents() if round_ == 0 else contextlib.nullcontext() as events:
            allocation, _files = boot(driver, cluster, request)
        names = {n.name for n in allocation.nodes}
        try:
            assert len(names) == 8
            assert names <= set(_virsh("list", "--state-running", "--name").split())
            if events is not None:
                events.assert_frontend_ran_before_any_compute(allocation)
            later = KvmRocksDriver(settings_from(conf, workdir / "kvm_rocks.conf"))
            later.shutdown(allocation.cluster)
            later.clean(allocation.cluster)
        except BaseException:
            driver.rollback(allocation)
            raise
        assert not names & set(_virsh("list", "--all", "--name").split())
        assert list((workdir / "disks").iterdir()) == []
        assert list((workdir / "state" / "clusters").glob("*.json")) == []
