"""End to end with real guests: the ``pragma`` command boots the tiny image on libvirt/QEMU.

The image from ``examples/image-builder`` (busybox, a Debian kernel) reads
``/root/vc-out.xml`` at boot, configures its NICs by MAC and reports on its
serial console, which the driver logs to ``console_log_path(node)``. For vc-out
format 2 and format 1 the test runs the real program in child processes,
``pragma boot pragma-tiny 2 wait=...`` (1 frontend + 2 computes), then checks
that every node configured exactly the addresses pragma allocated (console
lines == vc-out inside the node's disk == ``pragma list cluster --json`` ==
the domain's NICs), that the frontend reached both computes over the private
VLAN bridge, that ``pragma shutdown`` powered the guests off through ACPI
(before the forced-off timeout), and that ``pragma clean`` leaves no domain,
disk, console log or allocation record.

Needs root, ``qemu:///system`` (``.ci/setup-libvirt.sh``), ``ip`` and the
image builder's tools (``scripts/setup`` installs them). Guests run under TCG
(``domain_type = "qemu"``): KVM cannot boot their 64-bit kernel on the build
machines.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from conftest import ext4_cluster, settings_from
from pragma_kvm_rocks import e2fs
from pragma_kvm_rocks.driver import KvmRocksDriver

from pragma_core.errors import NotFoundError
from pragma_core.model import BootRequest
from pragma_core.testing.contract import boot

ROOT = Path(__file__).resolve().parents[3]
BUILDER = ROOT / "examples" / "image-builder" / "build_image.py"
URI = "qemu:///system"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 e2e@pragma"
BOOT_WAIT = 240  # seconds pragma waits for PRAGMA-READY; under TCG on 2 cores a node needs ~10-30 s
REACH_WAIT = 180
SHUTDOWN_TIMEOUT = 120  # generous: the guests must power off through ACPI well before it
VCOUT_LINE = re.compile(r"PRAGMA-VCOUT: role=(\S+) name=(\S+) net=(\S+) iface=(\S+) mac=(\S+) ip=(\S+) netmask=(\S+)")


# --------------------------------------------------------------------------- helpers


def _virsh(*args: str, check: bool = True) -> str:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check).stdout


def _pragma(etc: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pragma_core.cli", "--conf", str(etc), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def _remove_domains(prefix: str) -> None:
    """Destroy and undefine every domain named ``prefix`` or ``prefix-*`` (finalizer)."""
    for name in _virsh("list", "--all", "--name", check=False).split():
        if name == prefix or name.startswith(prefix + "-"):
            _virsh("destroy", name, check=False)
            _virsh("undefine", name, "--nvram", check=False)
            _virsh("undefine", name, check=False)


def _wait_for(path: Path, pattern: str, timeout: float) -> str:
    """The console log's text once ``pattern`` appears in it (or whatever it holds after ``timeout``)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    return text


def _own_nics(vcout: bytes, role: str) -> dict[str, tuple[str, str]]:
    """MAC -> (network, IP) of the NICs a node's vc-out gives the node itself (formats 1 and 2)."""
    root = SafeET.fromstring(vcout)
    section = root.find("frontend" if role == "frontend" else "compute")
    assert section is not None, vcout
    return {el.get("mac", ""): (el.tag, el.get("ip", "")) for el in section if el.get("mac") and el.get("ip")}


def _domain_macs(name: str) -> set[str]:
    root = SafeET.fromstring(_virsh("dumpxml", name))
    return {mac.get("address", "") for mac in root.iter("mac")}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def system_libvirt() -> None:
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as exc:
        pytest.skip(f"{URI} is unreachable ({exc.get_error_message()}); run .ci/setup-libvirt.sh")
    assert os.geteuid() == 0, f"{URI} answers but the test needs root to make bridges"


@pytest.fixture(scope="module")
def tiny_repository(system_libvirt) -> Iterator[Path]:
    """A local repository holding the tiny image, in a directory QEMU (user libvirt-qemu) can enter."""
    root = Path("/var/lib/libvirt/images") / f"pragma-test-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    try:
        root.chmod(0o755)
        repo = root / "repo"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(BUILDER), "--output", str(repo), "--reuse"],
                              capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, f"image builder failed:\n{proc.stderr}"
        print(f"tiny image built in {time.monotonic() - started:.1f} s: {proc.stdout.strip()}")
        yield repo
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Site:
    """A pragma site on the real libvirtd with its own bridges, VLAN, public IP and directories."""

    def __init__(self, work: Path, repo: Path, vcout_format: int) -> None:
        tag = uuid.uuid4().hex[:5]
        self.format = vcout_format
        self.vlan = random.randrange(2000, 4000)
        a, b = random.randrange(256), random.randrange(2, 250)
        self.public_ip = f"198.18.{a}.{b}"  # benchmark range: unique per run, no real host has it
        self.cluster = "vc-" + self.public_ip.replace(".", "-")  # no reverse-DNS name here
        self.bridges = [f"pe{tag}{self.vlan}", f"pp{tag}"]
        self.work, self.etc, self.diskdir, self.state = work, work / "etc", work / "disks", work / "state"
        for d in (self.etc, self.diskdir, work / "tmp", work / "log"):
            d.mkdir(parents=True)
        work.chmod(0o755)
        self.diskdir.chmod(0o755)
        (self.etc / "site_conf.conf").write_text(
            'site_ve_driver = "kvm_rocks"\n'
            f'temp_directory = "{work / "tmp"}"\n'
            f'log_directory = "{work / "log"}"\n'
            f'repository_settings = {{"repository_class": "local", "repository_dir": "{repo}"}}\n'
            f"vcout_format = {vcout_format}\n"
        )
        self.conf = (
            f'public_ips = ["{self.public_ip}"]\n'
            f"vlans = [{self.vlan}]\n"
            'netmask = "255.255.255.0"\n'
            f'gw = "198.18.{a}.1"\n'
            'dns = "192.0.2.53"\n'
            f'diskdir = "{self.diskdir}"\n'
            f'state_dir = "{self.state}"\n'
            f'private_bridge = "pe{tag}{{vlan}}"\n'
            f'public_bridge = "pp{tag}"\n'
            'domain_type = "qemu"\n'
            # 2 compute CPUs -> 2 compute nodes, on a 2-core machine that may run other tests' VMs
            "max_cpus_per_node = 1\n"
            "cpu_allocation_ratio = 64\n"  # other VMs on this libvirtd (a demo, a benchmark) must not fail the test
            "max_parallel = 3\n"
            f"shutdown_timeout = {SHUTDOWN_TIMEOUT}\n"
        )
        (self.etc / "kvm_rocks.conf").write_text(self.conf)
        self.key = work / "id_e2e.pub"
        self.key.write_text(KEY + "\n")
        self.driver = KvmRocksDriver(settings_from(self.conf, work / "driver-copy.conf"))

    def make_bridges(self) -> None:
        for name in self.bridges:
            subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)

    def remove_all(self) -> None:
        _remove_domains(self.cluster)
        for name in self.bridges:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(params=[2, 1], ids=["vcout-format-2", "vcout-format-1"])
def site(request, tiny_repository: Path) -> Iterator[Site]:
    work = Path("/var/lib/libvirt/images") / f"pragma-test-{uuid.uuid4().hex[:8]}"
    s = Site(work, tiny_repository, request.param)
    try:
        s.make_bridges()
        yield s
    finally:
        s.remove_all()


# --------------------------------------------------------------------------- the console log and wait_ready, fast


def test_console_is_logged_per_node_and_wait_ready_reads_the_guest_verdicts(tmp_path: Path, make_driver) -> None:
    pytest.importorskip("libvirt")
    driver = make_driver({"localhost": 16}, extra="max_cpus_per_node = 1\n")
    cluster = ext4_cluster(tmp_path / "image")
    allocation, _files = boot(driver, cluster, BootRequest(image="demo", cpus=2, key=KEY))
    fe, c0, c1 = (n.name for n in allocation.nodes)
    logs = {node: driver.console_log_path(node) for node in (fe, c0, c1)}
    assert logs[c0] == tmp_path / "disks" / f"{c0}.console.log"
    serial = SafeET.fromstring(driver.hosts.conn("localhost").lookupByName(c0).XMLDesc()).find("devices/serial")
    assert serial is not None and serial.find("log").attrib == {"file": str(logs[c0]), "append": "off"}

    logs[fe].write_bytes(b"booting\r\n[ 1.0] x PRAGMA-READY name=vc role=frontend\r\n")
    logs[c0].write_bytes(b"PRAGMA-ERROR: no network interface has MAC 72:77:6e:00:00:01\n"
                         b"PRAGMA-FAILED name=compute-0 role=compute errors=1\n")
    started = time.monotonic()
    verdicts = driver.wait_ready(allocation.cluster, 0.5)
    assert time.monotonic() - started >= 0.5, "it waited for the node that said nothing"
    assert list(verdicts) == [fe, c0, c1]
    assert verdicts[fe] == "ready"
    assert verdicts[c0] == "failed: PRAGMA-FAILED name=compute-0 role=compute errors=1"
    assert verdicts[c1] == f"timeout: no PRAGMA-READY in {logs[c1]} after 0.5 s"

    logs[c1].write_bytes(b"PRAGMA-READY name=compute-1 role=compute\n")
    assert set(driver.wait_ready(allocation.cluster, 5).values()) == {"ready", verdicts[c0]}
    with pytest.raises(NotFoundError):
        driver.wait_ready("no-such-cluster", 0.1)

    driver.shutdown(allocation.cluster)
    assert set(driver.wait_ready(allocation.cluster, 30).values()) == {
        "stopped: domain is shutoff, not running"
    }
    rotated = [logs[c0].with_name(f"{c0}.console.log.{i}") for i in range(3)]  # virtlogd's backups of a chatty guest
    for path in rotated:
        path.write_bytes(b"x" * 1024)
    other = logs[c0].with_name(f"{c0}0.console.log.0")  # another node's (compute-00) backup
    other.write_bytes(b"x")
    driver.clean(allocation.cluster)
    assert not any(path.exists() for path in logs.values()), "clean removes the console logs"
    assert not any(path.exists() for path in rotated), "and virtlogd's rotated copies of them"
    assert other.exists()


# --------------------------------------------------------------------------- the test


@pytest.mark.libvirtd
@pytest.mark.e2e
def test_pragma_boots_guests_that_configure_the_allocated_addresses_reach_each_other_and_power_off(site: Site) -> None:
    started = time.monotonic()
    boot = _pragma(site.etc, "boot", "pragma-tiny", "2", f"key={site.key}", f"wait={BOOT_WAIT}")
    booted = time.monotonic()
    assert boot.returncode == 0, f"pragma boot failed:\n{boot.stdout}\n{boot.stderr}"
    name = site.cluster
    assert f"Cluster {name} booted: frontend {name}, 2 compute nodes (2 CPUs)" in boot.stdout
    nodes = [name, f"{name}-compute-0", f"{name}-compute-1"]
    readiness = [line.split() for line in boot.stdout.splitlines()[-3:]]
    assert readiness == [[node, "ready"] for node in nodes], boot.stdout

    listing = _pragma(site.etc, "list", "cluster", name, "--json")
    assert listing.returncode == 0, listing.stderr
    (status,) = json.loads(listing.stdout)
    assert [n["name"] for n in status["nodes"]] == nodes
    assert {n["state"] for n in status["nodes"]} == {"running"}
    listed = {n["name"]: n for n in status["nodes"]}
    assert listed[name]["public_ip"] == site.public_ip

    # Every node configured exactly the NICs, MACs and addresses pragma allocated for it.
    consoles = {node: site.driver.console_log_path(node) for node in nodes}
    assert all(path.parent == site.diskdir for path in consoles.values())
    configured: dict[str, dict[str, tuple[str, str]]] = {}
    for node in nodes:
        text = consoles[node].read_text(errors="replace")
        assert "PRAGMA-READY" in text and "PRAGMA-FAILED" not in text and "PRAGMA-ERROR" not in text, text
        lines = VCOUT_LINE.findall(text)
        role = "frontend" if node == name else "compute"
        assert {line[0] for line in lines} == {role}
        configured[node] = {mac: (net, ip) for _role, _n, net, _dev, mac, ip, _mask in lines}
        assert len(configured[node]) == len(lines) == (2 if role == "frontend" else 1), text
        assert set(configured[node]) == _domain_macs(node), "the guest configured the domain's own NICs"
        private = next(ip for net, ip in configured[node].values() if net == "private")
        assert ipaddress.IPv4Interface(private) == ipaddress.IPv4Interface(f"{listed[node]['private_ip']}/16")
        if role == "frontend":
            public = next(ip for net, ip in configured[node].values() if net == "public")
            assert public == f"{site.public_ip}/24"
    fe_private = ipaddress.IPv4Interface(next(ip for net, ip in configured[name].values() if net == "private"))
    assert str(fe_private) == "10.1.1.1/16"

    # The frontend pings both computes by the addresses in its cluster file.
    fe_text = _wait_for(consoles[name], r"PRAGMA-REACH-DONE", REACH_WAIT)
    assert "PRAGMA-REACH-DONE ok=2 fail=0" in fe_text, fe_text
    for i in range(2):
        ip = listed[f"{name}-compute-{i}"]["private_ip"]
        assert re.search(rf"PRAGMA-REACH: compute-{i} {re.escape(ip)} ok", fe_text), fe_text
    reached = time.monotonic()

    # ACPI shutdown: every guest runs its shutdown and powers off long before the forced-off timeout.
    down = _pragma(site.etc, "shutdown", name)
    shut = time.monotonic()
    assert down.returncode == 0, down.stderr
    assert shut - reached < SHUTDOWN_TIMEOUT - 10, f"shutdown took {shut - reached:.0f} s: nodes were forced off"
    for node in nodes:
        assert _virsh("domstate", node).strip() == "shut off"
        text = consoles[node].read_text(errors="replace")
        assert "PRAGMA-POWERDOWN" in text and "PRAGMA-SHUTDOWN" in text, f"{node} was not shut down through ACPI:\n{text}"

    # The vc-out inside each node disk, in the site's format, holds the same NICs the guest configured.
    for node in nodes:
        role = "frontend" if node == name else "compute"
        disk = site.diskdir / f"{node}.qcow2"
        raw = site.work / f"{node}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
        vcout = e2fs.read_file(raw, e2fs.find_root_filesystem(raw), "/root/vc-out.xml")
        raw.unlink()
        own = _own_nics(vcout, role)
        assert {mac: ip for mac, (_net, ip) in own.items()} == {
            mac: ip.split("/")[0] for mac, (_net, ip) in configured[node].items()
        }
        assert (b'subnet="' in vcout) == (site.format == 2), f"vc-out is not format {site.format}"
        if role == "frontend":
            for i in range(2):
                assert listed[f"{name}-compute-{i}"]["private_ip"].encode() in vcout

    clean = _pragma(site.etc, "clean", name)
    assert clean.returncode == 0, clean.stderr
    assert not set(_virsh("list", "--all", "--name").split()) & set(nodes)
    assert sorted(p.name for p in site.diskdir.iterdir()) == []
    assert list((site.state / "clusters").glob("*.json")) == []
    gone = _pragma(site.etc, "list", "cluster", name)
    assert gone.returncode == 1 and gone.stderr == f"Error: no virtual cluster named {name!r}\n"
    print(f"format {site.format}: boot+wait {booted - started:.1f} s, reach {reached - booted:.1f} s,"
          f" shutdown {shut - reached:.1f} s, total {time.monotonic() - started:.1f} s")
