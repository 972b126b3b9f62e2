"""kvm_rocks under signals and without libvirtd: rollback, reservations left behind, the errors that name them.

* Fault injection on the real libvirtd (``qemu:///system``): ``pragma boot``
  is sent SIGTERM, SIGHUP or SIGKILL at random points (:mod:`faultkit`, from
  the core tests); afterwards -- for SIGKILL after ``pragma shutdown`` and
  ``pragma clean`` of what ``list cluster`` shows -- no domain (``virsh``),
  disk or console log in diskdir, allocation record or temporary directory
  may be left.
* libvirtd gone: the site talks to libvirtd through a relay socket the test
  closes during the boot, so the rollback cannot reach it. The reservation
  stays, ``list cluster`` shows it, the next boot's capacity error names it
  and ``pragma clean`` frees it once libvirtd answers again.
* The same rules on libvirt's test driver, in process (fast, no daemon).

The libvirtd tests need root, ``qemu:///system`` and ``ip`` (see
``.ci/setup-libvirt.sh``); guests run no OS (SeaBIOS), which is enough here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import base_conf, ext4_cluster, host_file, settings_from
from pragma_kvm_rocks.driver import KvmRocksDriver
from pragma_kvm_rocks.records import ClusterRecord

from pragma_core.errors import CapacityError
from pragma_core.model import BootRequest
from pragma_core.testing.contract import boot

from pragma_core.testing import faults as faultkit  # the fault-injection kit core's own tests use
from pragma_core.testing.faults import Probe, Trial

URI = "qemu:///system"
LIBVIRTD_SOCKET = Path("/var/run/libvirt/libvirt-sock")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 e2e@pragma"
PRAGMA = [sys.executable, "-m", "pragma_core.cli"]


@pytest.fixture(scope="module", autouse=True)
def fault_report(request: pytest.FixtureRequest) -> None:
    faultkit.register_report(request.config)


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=False).stdout


def _reaped() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- libvirt's test driver, in process


def test_a_capacity_error_names_the_reservations_whose_boot_is_gone(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    host_file(hosts, "localhost", cpus=16)
    conf = base_conf(tmp_path, hosts_dir=hosts).replace(
        'public_ips = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.15",'
        ' "192.0.2.16", "192.0.2.17"]', 'public_ips = ["192.0.2.10", "192.0.2.11"]')
    driver = KvmRocksDriver(settings_from(conf, tmp_path / "kvm_rocks.conf"))
    cluster = ext4_cluster(tmp_path / "image")
    request = BootRequest(image="demo", cpus=1, key=KEY)
    first = driver.allocate(request, cluster)  # this process is still booting it: not named
    second = driver.allocate(request, cluster)
    with pytest.raises(CapacityError) as caught:
        driver.allocate(request, cluster)
    assert str(caught.value) == "no free public IP: all 2 in public_ips are in use (kvm_rocks.conf; each cluster takes one public IP and one VLAN)"

    record = driver.store.get(second.cluster)
    assert record is not None
    with driver._lock():  # the boot that reserved it was killed
        driver.store.put(ClusterRecord.from_dict({**record.as_dict(), "owner_pid": _reaped()}))
    with pytest.raises(CapacityError) as caught:
        driver.allocate(request, cluster)
    name = second.cluster
    assert str(caught.value) == (f"no free public IP: all 2 in public_ips are in use (kvm_rocks.conf; each cluster takes one public IP and one VLAN);"
                                 f" reserved, not running: {name}; pragma clean {name}")
    assert caught.value.reserved == (name,)
    assert [n.state for n in driver.list_clusters(name)[0].nodes] == ["reserved", "reserved"]
    driver.clean(name)
    driver.rollback(first)
    assert driver.list_clusters() == []


def test_list_shows_the_nodes_of_an_unreachable_host_as_unknown(tmp_path: Path, make_driver, caplog) -> None:
    pytest.importorskip("libvirt")
    driver = make_driver({"h1": 2, "h2": 8}, extra="max_cpus_per_node = 1\n")  # the computes go to h2
    boot(driver, ext4_cluster(tmp_path / "image"), BootRequest(image="demo", cpus=2, key=KEY))
    (tmp_path / "hosts" / "h2.xml").unlink()  # h2's libvirt is gone: a new connection fails
    driver.hosts._conns = {key: conn for key, conn in driver.hosts._conns.items() if key[0] != "h2"}
    (status,) = driver.list_clusters()
    assert [(n.host, n.state) for n in status.nodes] == [("h1", "running"), ("h2", "unknown"), ("h2", "unknown")]
    assert "cannot connect to libvirt on h2" in caplog.text and "its nodes are listed as unknown" in caplog.text


# --------------------------------------------------------------------------- the real libvirtd


@pytest.fixture(scope="module")
def system_libvirt() -> None:
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as exc:
        pytest.skip(f"{URI} is unreachable ({exc.get_error_message()}); run .ci/setup-libvirt.sh")
    if os.geteuid() != 0:
        pytest.skip("needs root (bridges, qemu:///system)")


class Relay:
    """A Unix socket that relays to libvirtd's; :meth:`stop` drops it dead, as a daemon that is gone."""

    def __init__(self, path: Path, target: Path = LIBVIRTD_SOCKET) -> None:
        self.path, self.target = path, target
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class Site:
    """A pragma site on the real libvirtd: own bridges, VLAN, one public IP, diskdir, state, repository."""

    def __init__(self, work: Path, repo: Path, *, uri: str = URI) -> None:
        tag = uuid.uuid4().hex[:5]
        self.vlan = random.randrange(2000, 4000)
        a, b = random.randrange(256), random.randrange(2, 250)
        self.public_ip = f"198.18.{a}.{b}"
        self.cluster = "vc-" + self.public_ip.replace(".", "-")
        self.bridges = [f"ps{tag}{self.vlan}", f"pq{tag}"]
        self.work, self.etc, self.diskdir, self.state = work, work / "etc", work / "disks", work / "state"
        self.tmp = work / "child-tmp"
        for d in (self.etc, self.diskdir, work / "tmp", work / "log", self.tmp):
            d.mkdir(parents=True)
        work.chmod(0o755)
        self.diskdir.chmod(0o755)
        (self.etc / "site_conf.conf").write_text(
            'site_ve_driver = "kvm_rocks"\n'
            f'temp_directory = "{work / "tmp"}"\n'
            f'log_directory = "{work / "log"}"\n'
            f'repository_settings = {{"repository_class": "local", "repository_dir": "{repo}"}}\n'
        )
        self.conf = (
            f'public_ips = ["{self.public_ip}"]\n'
            f"vlans = [{self.vlan}]\n"
            'netmask = "255.255.255.0"\n'
            f'gw = "198.18.{a}.1"\n'
            'dns = "192.0.2.53"\n'
            f'diskdir = "{self.diskdir}"\n'
            f'state_dir = "{self.state}"\n'
            f'private_bridge = "ps{tag}{{vlan}}"\n'
            f'public_bridge = "pq{tag}"\n'
            f'libvirt_uri = "{uri}"\n'
            'domain_type = "qemu"\n'
            "max_cpus_per_node = 1\n"
            "cpu_allocation_ratio = 64\n"  # other VMs on this libvirtd must not fail the test for capacity
            "max_parallel = 3\n"
            "shutdown_timeout = 0\n"
        )
        (self.etc / "kvm_rocks.conf").write_text(self.conf)
        self.key = work / "id.pub"
        self.key.write_text(KEY + "\n")
        for name in self.bridges:
            subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)

    def driver(self) -> KvmRocksDriver:
        return KvmRocksDriver(settings_from(self.conf, self.work / "driver-copy.conf"))

    def boot_argv(self) -> list[str]:
        return [*PRAGMA, "--conf", str(self.etc), "boot", "demo", "2", f"key={self.key}", "mem=64"]

    def leftovers(self) -> list[str]:
        """Domains (through virsh), disks and console logs, records, temporary directories still there."""
        domains = [d for d in _virsh("list", "--all", "--name").split()
                   if d == self.cluster or d.startswith(self.cluster + "-")]
        problems = [f"domain left: {d} ({_virsh('domstate', d).strip()})" for d in domains]
        problems += [f"file left in diskdir: {p.name}" for p in sorted(self.diskdir.iterdir())]
        records = self.state / "clusters"
        problems += [f"record left: {p.name}" for p in sorted(records.iterdir())] if records.is_dir() else []
        problems += [faultkit.TEMPORARY_LEFT + p.name for p in sorted(self.tmp.iterdir())]
        return problems

    def clean_listed(self) -> list[str]:
        """``pragma shutdown`` (when a node is active) and ``pragma clean`` of this site's cluster, when listed.

        Only this site's: the daemon is shared, and ``list cluster`` shows every
        pragma cluster on it, other tests' included.
        """
        problems = []
        for cluster in self.driver().list_clusters(self.cluster):
            words = [("shutdown",)] if any(n.state not in ("shutoff", "reserved") for n in cluster.nodes) else []
            for word in (*words, ("clean",)):
                done = faultkit.pragma(self.etc, *word, cluster.name)
                if done.returncode:
                    problems.append(f"pragma {word[0]} {cluster.name}: {done.stderr.strip()}")
        return problems

    def remove_all(self) -> None:
        for name in _virsh("list", "--all", "--name").split():
            if name == self.cluster or name.startswith(self.cluster + "-"):
                _virsh("destroy", name)
                _virsh("undefine", name, "--nvram")
                _virsh("undefine", name)
        for name in self.bridges:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="module")
def images(system_libvirt) -> Iterator[Path]:
    """A local repository with one cluster (raw ext4 images), in a directory QEMU can enter."""
    root = Path("/var/lib/libvirt/images") / f"pragma-test-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    try:
        root.chmod(0o755)
        repo = root / "repo"
        ext4_cluster(repo / "demo", size=32 << 20)
        for path in (repo, repo / "demo"):
            path.chmod(0o755)
        for path in (repo / "demo").iterdir():
            path.chmod(0o644)
        (repo / "vcdb.txt").write_text("demo,demo/demo.xml\n")
        yield repo
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def site(images: Path) -> Iterator[Site]:
    s = Site(Path("/var/lib/libvirt/images") / f"pragma-test-{uuid.uuid4().hex[:8]}", images)
    try:
        yield s
    finally:
        s.remove_all()


#: stage events, and two points seen through libvirt: the frontend's domain defined, then running
KVM_POINTS = ("allocate:start", "deploy:start", "frontend-defined", "frontend-running")


def _frontend(site: Site, running: bool) -> Callable[[], bool]:
    import libvirt

    conn = libvirt.open(URI)

    def ready() -> bool:
        try:
            dom = conn.lookupByName(site.cluster)
            return not running or bool(dom.isActive())
        except libvirt.libvirtError:
            return False

    return ready


@pytest.mark.libvirtd
@pytest.mark.e2e
@pytest.mark.parametrize("trial", faultkit.plan("kvm-boot", KVM_POINTS, per_signal=3, max_delay=0.8),
                         ids=lambda t: t.id)
def test_boot_signalled_at_any_point_leaves_no_domain_disk_or_record(trial: Trial, site: Site) -> None:
    probe = Probe(site.work / "probe")
    env = probe.env(hold=trial.point if trial.hold else None, tmpdir=site.tmp)
    if trial.point.startswith("frontend-"):
        ready = _frontend(site, running=trial.point == "frontend-running")
    else:
        ready = probe.reached(trial.point)
    outcome = faultkit.run_trial(trial, site.boot_argv(), env=env, ready=ready, probe=probe,
                                 workdir=site.work / "trial")
    faultkit.judge(outcome, undo=lambda _o: site.clean_listed(), recover=lambda _o: site.clean_listed(),
                   leftovers=site.leftovers)
    assert outcome.clean, outcome.describe()


@pytest.mark.libvirtd
@pytest.mark.e2e
def test_without_libvirtd_the_rollback_leaves_a_listed_reservation_the_capacity_error_names(images: Path) -> None:
    work = Path("/var/lib/libvirt/images") / f"pragma-test-{uuid.uuid4().hex[:8]}"
    relay = Relay(Path("/run") / f"pragma-test-{uuid.uuid4().hex[:8]}.sock")
    relay.start()
    site = Site(work, images, uri=f"{URI}?socket={relay.path}")
    try:
        probe = Probe(work / "probe")
        env = probe.env(hold="deploy:start", tmpdir=site.tmp)
        with open(work / "boot.err", "w") as err:
            proc = subprocess.Popen(site.boot_argv(), env=env, stdout=subprocess.DEVNULL, stderr=err)
            deadline_ok = _wait(probe.reached("deploy:start"), proc)
            relay.stop()  # libvirtd is gone before the first domain is defined
            probe.let_go()
            code = proc.wait(timeout=faultkit.HANG)
        stderr = (work / "boot.err").read_text()
        assert deadline_ok and code == 1, stderr
        name = site.cluster
        assert f"rollback of cluster {name} failed" in stderr
        assert f"it stays reserved until 'pragma clean {name}'" in stderr
        assert len([line for line in stderr.splitlines() if line.startswith("Error:")]) == 1, stderr

        gone = faultkit.pragma(site.etc, "list", "cluster", name, "--json")
        assert gone.returncode == 0, gone.stderr
        assert {n["state"] for n in json.loads(gone.stdout)[0]["nodes"]} == {"unknown"}
        assert "its nodes are listed as unknown" in gone.stderr

        relay.start()  # libvirtd answers again
        back = faultkit.pragma(site.etc, "list", "cluster", name, "--json")
        (cluster,) = json.loads(back.stdout)
        assert cluster["name"] == name and {n["state"] for n in cluster["nodes"]} == {"reserved"}
        again = subprocess.run(site.boot_argv(), capture_output=True, text=True, timeout=faultkit.HANG, check=False)
        assert again.returncode == 1
        last = again.stderr.splitlines()[-1]
        # other reservations on the same daemon (another site's) may be named too: this one must be
        assert last.startswith(
            "Error: no free public IP: all 1 in public_ips are in use (kvm_rocks.conf; each cluster takes one public IP and one VLAN);"
            " reserved, not running: "
        ), last
        assert name in last.split("; reserved, not running: ", 1)[1].split(";")[0].split(", ") and f"pragma clean {name}" in last
        clean = faultkit.pragma(site.etc, "clean", name)
        assert clean.returncode == 0, clean.stderr
        assert site.leftovers() == []
    finally:
        relay.stop()
        site.remove_all()


def _wait(condition: Callable[[], bool], proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + faultkit.HANG
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
