"""The tiny cluster image of ``examples/image-builder``: its guest configurator and a real boot.

Fast tests run the guest's vc-out configurator (``guest/vcout-config.sh``) on
the host with busybox, in dry-run mode, against files made by
:func:`pragma_core.vcout.render`, and check the builder's pieces (cpio, module
order, disk layout, cluster description).

The ``e2e`` tests build the image from Debian packages (``apt-get download``),
inject a vc-out into copies of the disk with ``debugfs`` (as the kvm driver's
fast path does), boot one frontend and two computes with plain QEMU (TCG) on a
Linux bridge made by the test (multicast sockets when no bridge can be made),
read the serial logs, then press the ACPI power button through QMP.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pragma_core.addressing import plan_addresses
from pragma_core.clusterxml import parse_cluster_xml
from pragma_core.model import Allocation, Interface, Network, Node
from pragma_core.vcdb import read_vcdb
from pragma_core.vcout import render

BUILDER_DIR = Path(__file__).resolve().parents[1] / "examples" / "image-builder"
SCRIPT = BUILDER_DIR / "guest" / "vcout-config.sh"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"
BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (apt-get install busybox-static)")


def _load_builder():
    spec = importlib.util.spec_from_file_location("pragma_image_builder", BUILDER_DIR / "build_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


# --------------------------------------------------------------------------- allocations


def mac(serial: int, index: int) -> str:
    return f"52:54:00:{serial:02x}:00:{index:02x}"


def allocation(
    *,
    serial: int = 7,
    computes: int = 2,
    private_net: str = "10.1.0.0/16",
    private_mtu: int = 1500,
    extra: tuple[str, str, int] | None = None,
    dns: tuple[str, ...] = ("8.8.8.8",),
) -> Allocation:
    """1 frontend (private, public[, extra]) + ``computes`` computes (private[, extra]), as a driver makes it."""
    public = Network(name="public", subnet=IPv4Network("192.0.2.0/24"), gateway=IPv4Address("192.0.2.1"))
    private = Network(name="private", subnet=IPv4Network(private_net), mtu=private_mtu)
    networks = [private, public]
    plan = plan_addresses(private.subnet, computes)
    extra_plan = None
    if extra is not None:
        extra_net = Network(name=extra[0], subnet=IPv4Network(extra[1]), mtu=extra[2])
        networks.append(extra_net)
        extra_plan = plan_addresses(extra_net.subnet, computes)
    counter = iter(range(1, 256))
    fe_nics = [
        Interface(network="private", ip=plan.frontend, mac=mac(serial, next(counter))),
        Interface(network="public", ip=IPv4Address("192.0.2.10"), mac=mac(serial, next(counter))),
    ]
    if extra_plan is not None:
        fe_nics.append(Interface(network=extra[0], ip=extra_plan.frontend, mac=mac(serial, next(counter))))
    frontend = Node(
        name="vc7", hostname="vc7", role="frontend", cpus=1, memory_mib=192, interfaces=fe_nics, gateway=public.gateway
    )
    nodes = []
    for i in range(computes):
        nics = [Interface(network="private", ip=plan.computes[i], mac=mac(serial, next(counter)))]
        if extra_plan is not None:
            nics.append(Interface(network=extra[0], ip=extra_plan.computes[i], mac=mac(serial, next(counter))))
        nodes.append(
            Node(
                name=f"vm-vc7-{i}",
                hostname=f"compute-{i}",
                role="compute",
                cpus=1,
                memory_mib=192,
                interfaces=nics,
                gateway=plan.frontend,
            )
        )
    return Allocation(
        cluster="vc7",
        image="pragma-tiny",
        fqdn="vc7.example.org",
        frontend=frontend,
        computes=nodes,
        networks=networks,
        dns=dns,
        key=KEY + "\n",
    )


# --------------------------------------------------------------------------- running the configurator on the host


@dataclass
class DryRun:
    code: int
    out: str
    root: Path

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.out.splitlines() if line.startswith(prefix)]

    def file(self, name: str) -> str:
        return (self.root / name).read_text()


def fake_nics(directory: Path, nics: dict[str, str]) -> Path:
    """A stand-in for /sys/class/net: ``{device: mac}``."""
    for dev, address in nics.items():
        (directory / dev).mkdir(parents=True)
        (directory / dev / "address").write_text(address + "\n")
    return directory


def configure(tmp_path: Path, vcout: bytes, nics: dict[str, str], *, command: str = "all") -> DryRun:
    """Run the guest configurator with busybox sh in dry-run mode against ``vcout``."""
    work = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    work.mkdir()
    (work / "vc-out.xml").write_bytes(vcout)
    net = fake_nics(work / "net", {"lo": "00:00:00:00:00:00", **nics})
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "VCOUT_FILE": str(work / "vc-out.xml"),
        "VCOUT_ROOT": str(work / "root"),
        "VCOUT_NET_DIR": str(net),
        "VCOUT_DRYRUN": "1",
        "VCOUT_REACH_TIMEOUT": "0",
    }
    done = subprocess.run(
        [BUSYBOX, "sh", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stderr == "", done.stderr
    return DryRun(done.returncode, done.stdout, work / "root")


def run_commands(result: DryRun) -> list[str]:
    return [line.removeprefix("RUN: ") for line in result.lines("RUN: ")]


# --------------------------------------------------------------------------- fast: the guest configurator


@needs_busybox
@pytest.mark.parametrize("fmt", [1, 2])
def test_frontend_configures_every_nic_by_mac_from_the_cluster_file(tmp_path: Path, fmt: int) -> None:
    alloc = allocation(serial=7, computes=2)
    files = render(alloc, format=fmt)
    # eth0 is the public NIC and eth1 the private one: the opposite of the file's order for format 2.
    result = configure(tmp_path, files["vc7"], {"eth0": mac(7, 2), "eth1": mac(7, 1).upper()})
    assert result.code == 0, result.out
    vcout = result.lines("PRAGMA-VCOUT: ")
    expected = {
        "private": f"PRAGMA-VCOUT: role=frontend name=vc7 net=private iface=eth1 mac={mac(7, 1)} "
        "ip=10.1.1.1/16 netmask=255.255.0.0 mtu=1500",
        "public": f"PRAGMA-VCOUT: role=frontend name=vc7 net=public iface=eth0 mac={mac(7, 2)} "
        "ip=192.0.2.10/24 netmask=255.255.255.0 mtu=1500",
    }
    order = ["public", "private"] if fmt == 1 else ["private", "public"]  # the file's order
    assert vcout == [expected[net] for net in order]
    commands = run_commands(result)
    assert commands[:2] == ["hostname vc7", "ip link set dev lo up"]
    for dev, address in (("eth1", "10.1.1.1/16"), ("eth0", "192.0.2.10/24")):
        assert f"ip addr add {address} dev {dev}" in commands
        assert f"ip link set dev {dev} mtu 1500" in commands
        assert f"ip link set dev {dev} up" in commands
    assert "ip route replace default via 192.0.2.1" in commands
    assert result.lines("PRAGMA-HOSTS: ") == [
        "PRAGMA-HOSTS: 10.1.1.1=vc7 192.0.2.10=vc7.example.org 10.1.255.254=compute-0 10.1.255.253=compute-1"
    ]
    assert result.file("etc/hosts") == (
        "127.0.0.1 localhost\n"
        "10.1.1.1 vc7.local vc7\n"
        "192.0.2.10 vc7.example.org\n"
        "10.1.255.254 compute-0.local compute-0\n"
        "10.1.255.253 compute-1.local compute-1\n"
    )
    assert result.file("etc/hostname") == "vc7\n"
    assert result.file("etc/resolv.conf") == "search local\nnameserver 8.8.8.8\n"
    keys = result.root / "root/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    assert result.lines("PRAGMA-READY") == ["PRAGMA-READY name=vc7 role=frontend"]
    assert result.lines("PRAGMA-REACH") == [
        "PRAGMA-REACH: compute-0 10.1.255.254 ok",
        "PRAGMA-REACH: compute-1 10.1.255.253 ok",
        "PRAGMA-REACH-DONE ok=2 fail=0",
    ]
    assert "ping -c 1 -W 1 10.1.255.254" in commands and "ping -c 1 -W 1 10.1.255.253" in commands


@needs_busybox
@pytest.mark.parametrize("fmt", [1, 2])
def test_compute_configures_its_private_nic_and_maps_the_frontend_to_its_gateway(tmp_path: Path, fmt: int) -> None:
    alloc = allocation(serial=7, computes=2)
    files = render(alloc, format=fmt)
    result = configure(tmp_path, files["vm-vc7-1"], {"eth0": "52:54:00:99:99:99", "eth1": mac(7, 4)})
    assert result.code == 0, result.out
    assert result.lines("PRAGMA-VCOUT: ") == [
        f"PRAGMA-VCOUT: role=compute name=compute-1 net=private iface=eth1 mac={mac(7, 4)} "
        + "ip=10.1.255.253/16 netmask=255.255.0.0 mtu=1500"
    ]
    commands = run_commands(result)
    assert "hostname compute-1" in commands
    assert "ip addr add 10.1.255.253/16 dev eth1" in commands
    assert not any("dev eth0" in c for c in commands), "a NIC with another MAC was touched"
    assert "ip route replace default via 10.1.1.1" in commands
    assert result.file("etc/hosts") == (
        "127.0.0.1 localhost\n10.1.255.253 compute-1.local compute-1\n10.1.1.1 vc7.local vc7 vc7.example.org\n"
    )
    assert result.lines("PRAGMA-HOSTS: ") == ["PRAGMA-HOSTS: 10.1.255.253=compute-1 10.1.1.1=vc7"]
    assert result.file("etc/hostname") == "compute-1\n"
    assert (result.root / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert result.lines("PRAGMA-READY") == ["PRAGMA-READY name=compute-1 role=compute"]
    assert result.lines("PRAGMA-REACH") == [], "computes do not probe the cluster"
    assert not any(c.startswith("ping") for c in commands)


@needs_busybox
@pytest.mark.parametrize("fmt", [1, 2])
def test_extra_network_gets_its_own_nic_netmask_and_mtu(tmp_path: Path, fmt: int) -> None:
    alloc = allocation(serial=9, computes=1, private_net="10.5.0.0/24", private_mtu=1450,
                       extra=("openflow", "10.102.0.0/22", 9000))  # fmt: skip
    files = render(alloc, format=fmt)
    fe = configure(tmp_path, files["vc7"], {"eth0": mac(9, 1), "eth1": mac(9, 2), "eth2": mac(9, 3)})
    assert fe.code == 0, fe.out
    mtu_private = 1500 if fmt == 1 else 1450  # format 1's classic elements carry no MTU: the guest keeps the default
    mtu_extra = 9000  # an extra network's element carries its MTU in both formats
    by_net = {re.search(r"net=(\S+)", line).group(1): line for line in fe.lines("PRAGMA-VCOUT: ")}
    assert by_net["private"].endswith(f"iface=eth0 mac={mac(9, 1)} ip=10.5.0.1/24 netmask=255.255.255.0 mtu={mtu_private}")
    assert by_net["openflow"].endswith(f"iface=eth2 mac={mac(9, 3)} ip=10.102.1.1/22 netmask=255.255.252.0 mtu={mtu_extra}")
    assert f"ip link set dev eth2 mtu {mtu_extra}" in run_commands(fe)
    compute = configure(tmp_path, files["vm-vc7-0"], {"eth0": mac(9, 5), "eth1": mac(9, 4)})
    assert compute.code == 0, compute.out
    nets = [re.search(r"net=(\S+) iface=(\S+)", line).groups() for line in compute.lines("PRAGMA-VCOUT: ")]
    assert nets == [("private", "eth1"), ("openflow", "eth0")]
    assert "ip addr add 10.5.0.254/24 dev eth1" in run_commands(compute)
    assert "ip addr add 10.102.3.254/22 dev eth0" in run_commands(compute)


@needs_busybox
def test_frontend_only_cluster_reaches_nobody_and_succeeds(tmp_path: Path) -> None:
    files = render(allocation(computes=0), format=2)
    result = configure(tmp_path, files["vc7"], {"eth0": mac(7, 1), "eth1": mac(7, 2)})
    assert result.code == 0, result.out
    assert result.lines("PRAGMA-REACH") == ["PRAGMA-REACH-DONE ok=0 fail=0"]
    assert result.lines("PRAGMA-HOSTS: ") == ["PRAGMA-HOSTS: 10.1.1.1=vc7 192.0.2.10=vc7.example.org"]


@needs_busybox
def test_file_that_is_not_pretty_printed_gives_the_same_configuration(tmp_path: Path) -> None:
    pretty = render(allocation(), format=2)["vc7"]
    compact = re.sub(rb">\s+<", b"><", pretty)
    nics = {"eth0": mac(7, 1), "eth1": mac(7, 2)}
    assert configure(tmp_path, compact, nics).out == configure(tmp_path, pretty, nics).out


@needs_busybox
def test_missing_nic_is_reported_and_the_node_is_not_ready(tmp_path: Path) -> None:
    files = render(allocation(), format=2)
    result = configure(tmp_path, files["vc7"], {"eth0": mac(7, 2)}, command="configure")
    assert result.code == 1
    assert result.lines("PRAGMA-ERROR: ") == [
        f"PRAGMA-ERROR: no network interface has MAC {mac(7, 1)} (network private, ip 10.1.1.1)"
    ]
    assert result.lines("PRAGMA-FAILED") == ["PRAGMA-FAILED name=vc7 role=frontend errors=1"]
    assert result.lines("PRAGMA-READY") == []


@needs_busybox
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ((b'name="compute-0"', b'name="c0;reboot"'), 'bad or missing hostname "c0;reboot"'),
        ((b'ip="10.1.255.254"', b'ip="10.1.255.254 $(reboot)"'), 'bad ip "10.1.255.254 $(reboot)"'),
        ((b'mac="52:54:00:07:00:03"', b'mac="52:54:00:07:00"'), 'bad mac "52:54:00:07:00"'),
        ((b'netmask="255.255.0.0"', b'netmask="255.0.255.0"'), 'bad netmask "255.0.255.0"'),
        ((b'mtu="1500"', b'mtu="15x"'), 'bad mtu "15x"'),
    ],
)
def test_bad_values_are_refused_before_any_command_runs(tmp_path: Path, change: tuple[bytes, bytes], message: str) -> None:
    text = render(allocation(), format=2)["vm-vc7-0"]
    assert change[0] in text
    result = configure(tmp_path, text.replace(change[0], change[1], 1), {"eth0": mac(7, 3)}, command="configure")
    assert result.code == 1
    assert any(message in line for line in result.lines("PRAGMA-ERROR: ")), result.out
    assert run_commands(result) == [], "a file with a bad value must change nothing"
    assert not (result.root / "etc/hosts").exists()
    assert len(result.lines("PRAGMA-FAILED")) == 1


@needs_busybox
def test_a_file_that_is_not_vcout_is_one_error_line(tmp_path: Path) -> None:
    result = configure(tmp_path, b"<domain><name>x</name></domain>\n", {}, command="configure")
    assert result.code == 1
    assert result.lines("PRAGMA-ERROR: ") == ["PRAGMA-ERROR: not a vc-out file (no <vc> root)"]
    assert result.lines("PRAGMA-FAILED") == ["PRAGMA-FAILED name=unknown role=unknown errors=1"]
    assert run_commands(result) == []


# --------------------------------------------------------------------------- fast: the builder's pieces


def test_initramfs_cpio_lists_files_symlinks_and_a_console_node(tmp_path: Path) -> None:
    cpio = builder.Cpio()
    cpio.directory("bin")
    cpio.file("bin/busybox", b"\x7fELF-data", 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.char_device("dev/console", 5, 1)
    archive = cpio.finish()
    assert len(archive) % 512 == 0
    tool = shutil.which("cpio")
    if tool is None:
        pytest.skip("cpio is not installed")
    listing = subprocess.run([tool, "-itv"], input=archive, capture_output=True, check=True).stdout.decode()
    rows = [line.split() for line in listing.splitlines()]
    assert [(r[0], r[2], r[-1] if r[0][0] != "l" else r[-3]) for r in rows] == [
        ("drwxr-xr-x", "root", "bin"),
        ("-rwxr-xr-x", "root", "bin/busybox"),
        ("lrwxrwxrwx", "root", "bin/sh"),
        ("crw-------", "root", "dev/console"),
    ]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([tool, "-id", "--no-absolute-filenames"], input=archive, cwd=out, capture_output=True, check=True)
    assert (out / "bin/busybox").read_bytes() == b"\x7fELF-data"
    assert os.readlink(out / "bin/sh") == "busybox"


def _fake_module(path: Path, depends: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF\x00junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00vermagic=6.1\x00")


def test_modules_are_ordered_dependencies_first_and_builtins_skipped(tmp_path: Path) -> None:
    kernel = tmp_path / "6.1.0-test"
    _fake_module(kernel / "kernel/drivers/virtio/virtio.ko", "")
    _fake_module(kernel / "kernel/drivers/virtio/virtio_ring.ko", "")
    _fake_module(kernel / "kernel/drivers/virtio/virtio_pci.ko", "virtio_ring,virtio")
    _fake_module(kernel / "kernel/drivers/net/virtio_net.ko", "net_failover,virtio_ring,virtio")
    _fake_module(kernel / "kernel/drivers/net/net_failover.ko", "failover")
    _fake_module(kernel / "kernel/net/core/failover.ko", "")
    (kernel / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    order = builder.module_load_order(kernel, ["virtio_pci", "virtio_blk", "virtio_net"])
    assert [name for name, _ in order] == ["virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net"]
    with pytest.raises(builder.BuildError, match="evdev is neither built in nor in"):
        builder.module_load_order(kernel, ["evdev"])


@pytest.mark.parametrize(("text", "size"), [("64M", 64 << 20), ("1G", 1 << 30), ("33554432", 32 << 20), ("48MiB", 48 << 20)])
def test_disk_size_accepts_bytes_and_binary_units(text: str, size: int) -> None:
    assert builder.parse_size(text) == size


@pytest.mark.parametrize("text", ["8M", "64X", "", "-1M", "1000001"])
def test_disk_size_refuses_tiny_odd_or_garbled_sizes(text: str) -> None:
    with pytest.raises(builder.BuildError, match="--disk-size"):
        builder.parse_size(text)


@pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("sfdisk") and shutil.which("debugfs")),
                    reason="needs e2fsprogs and fdisk")  # fmt: skip
def test_disk_has_one_ext4_partition_at_1mib_that_debugfs_can_write(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "root").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "etc/hostname").write_text("pragma\n")
    disk = tmp_path / "disk.img"
    builder.make_disk(disk, tree, 32 << 20, tmp_path, "3c4e3469-2301-03db-2d53-2a085e9d339f")
    assert disk.stat().st_size == 32 << 20
    assert disk.stat().st_blocks * 512 < 8 << 20, "the disk is not sparse"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "dos"
    assert [(p["start"], p["size"], p["type"]) for p in parts] == [(2048, (32 << 20) // 512 - 2048, "83")]
    source = tmp_path / "vc-out.xml"
    source.write_bytes(render(allocation(), format=2)["vc7"])
    fs = f"{disk}?offset={builder.PARTITION_START}"
    subprocess.run(["debugfs", "-w", "-R", f"write {source} /root/vc-out.xml", fs], capture_output=True, check=True)
    cat = subprocess.run(["debugfs", "-R", "cat /root/vc-out.xml", fs], capture_output=True, check=True)
    assert cat.stdout == source.read_bytes()
    hostname = subprocess.run(["debugfs", "-R", "cat /etc/hostname", fs], capture_output=True, check=True)
    assert hostname.stdout == b"pragma\n"


def test_description_boots_kernel_and_initrd_relative_to_the_cluster_directory(tmp_path: Path) -> None:
    (tmp_path / "tiny.xml").write_bytes(builder.description_xml("tiny", "tiny.img", "ab" * 32))
    description = parse_cluster_xml(tmp_path / "tiny.xml", "tiny")
    assert description.compute is not None
    for template in (description.frontend, description.compute):
        assert template.disk.source == "tiny.img"
        assert template.disk.format == "raw"
        assert template.memory_mib == builder.MEMORY_MIB
        assert "<kernel>vmlinuz</kernel>" in template.domain_xml
        assert "<initrd>initrd.img</initrd>" in template.domain_xml
        assert "<cmdline>console=ttyS0,115200 root=/dev/vda1" in template.domain_xml
        assert '<model type="virtio"' in template.domain_xml


# --------------------------------------------------------------------------- e2e: build and boot

E2E_TOOLS = ("qemu-system-x86_64", "apt-get", "dpkg-deb", "mkfs.ext4", "sfdisk", "debugfs", "ip")
BOOT_TIMEOUT = 150  # seconds for a node to print PRAGMA-READY (TCG, three guests on two cores)
POWERDOWN_TIMEOUT = 60


@pytest.fixture(scope="session")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built repository (``REPO/pragma-tiny/...``); the .deb cache survives between runs."""
    missing = [tool for tool in E2E_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    repo = tmp_path_factory.mktemp("image-repo")
    cache = Path(os.environ.get("PRAGMA_IMAGE_CACHE", Path.home() / ".cache" / "pragma-image-builder"))
    done = subprocess.run(
        [sys.executable, str(BUILDER_DIR / "build_image.py"), "--output", str(repo), "--cache", str(cache)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return repo


@pytest.mark.e2e
def test_build_writes_repository_entry_and_reuse_skips_an_up_to_date_image(tiny_image: Path) -> None:
    cluster = tiny_image / "pragma-tiny"
    assert read_vcdb(tiny_image / "vcdb.txt", tiny_image) == {"pragma-tiny": cluster / "pragma-tiny.xml"}
    description = parse_cluster_xml(cluster / "pragma-tiny.xml", "pragma-tiny")
    assert (cluster / description.frontend.disk.source).stat().st_size == 64 << 20
    assert (cluster / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS", "not a bzImage"
    assert (cluster / "initrd.img").read_bytes()[:2] == b"\x1f\x8b"
    before = {p.name: p.stat().st_mtime_ns for p in cluster.iterdir()}
    done = subprocess.run(
        [sys.executable, str(BUILDER_DIR / "build_image.py"), "--output", str(tiny_image), "--reuse",
         "--cache", os.environ.get("PRAGMA_IMAGE_CACHE", str(Path.home() / ".cache" / "pragma-image-builder"))],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "is up to date" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cluster.iterdir()} == before


@dataclass
class Guest:
    name: str
    disk: Path
    log: Path
    qmp: Path
    nics: list[tuple[str, str]]  # (mac, netdev args)
    process: subprocess.Popen[bytes] | None = None
    lines: list[str] = field(default_factory=list)

    def serial(self) -> str:
        return self.log.read_bytes().decode(errors="replace") if self.log.exists() else ""

    def pragma_lines(self) -> list[str]:
        # The console may interleave other output ("Please press Enter...") on the same line.
        return re.findall(r"PRAGMA-[A-Z-]+:?[^\r\n]*", self.serial())


class Lan:
    """The private network: a Linux bridge with one tap per NIC, or multicast sockets when bridges cannot be made.

    ``PRAGMA_TEST_LAN=mcast`` forces the multicast sockets (no root needed).
    """

    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 100000}"
        self.bridge = f"brpT{self.tag}"
        self.taps: list[str] = []
        self.kind = "bridge"
        self.port = 0
        try:
            if os.environ.get("PRAGMA_TEST_LAN") == "mcast":
                raise PermissionError("multicast sockets requested")
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._ip("link", "set", self.bridge, "up")
            probe = f"tpT{self.tag}p"
            self._ip("tuntap", "add", "dev", probe, "mode", "tap")  # no /dev/net/tun: no taps
            self._ip("link", "del", probe)
        except (subprocess.CalledProcessError, PermissionError):
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
            self.kind = "mcast"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def netdev(self, ident: str) -> str:
        if self.kind == "mcast":
            return f"socket,id={ident},mcast=230.0.0.1:{self.port},localaddr=127.0.0.1"
        tap = f"tpT{self.tag}{len(self.taps)}"
        self._ip("tuntap", "add", "dev", tap, "mode", "tap")
        self.taps.append(tap)
        self._ip("link", "set", tap, "master", self.bridge)
        self._ip("link", "set", tap, "up")
        return f"tap,id={ident},ifname={tap},script=no,downscript=no"

    def close(self) -> None:
        for dev in [*self.taps, self.bridge] if self.kind == "bridge" else []:
            subprocess.run(["ip", "link", "del", dev], capture_output=True, check=False)


@pytest.fixture
def lan() -> Iterator[Lan]:
    network = Lan()
    try:
        yield network
    finally:
        network.close()


def qmp(path: Path, command: str) -> dict:
    """Send one QMP command and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        json.loads(stream.readline())  # greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            while True:
                answer = json.loads(stream.readline())
                if "event" not in answer:
                    break
            assert "return" in answer, answer
        return answer


def inject(disk: Path, vcout: bytes, work: Path) -> None:
    """Write /root/vc-out.xml into partition 1 of the raw disk, as the kvm driver's fast path does."""
    source = work / f"{disk.stem}.vc-out.xml"
    source.write_bytes(vcout)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {source} /root/vc-out.xml", f"{disk}?offset={builder.PARTITION_START}"],
        capture_output=True, check=True,
    )  # fmt: skip


def boot(guest: Guest, cluster: Path) -> None:
    argv = [
        "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "160", "-smp", "1", "-nodefaults",
        "-display", "none", "-no-reboot",
        "-kernel", str(cluster / "vmlinuz"), "-initrd", str(cluster / "initrd.img"),
        "-append", "console=ttyS0,115200 root=/dev/vda1 rootwait=30 quiet pragma.reach_timeout=120",
        "-drive", f"file={guest.disk},format=raw,if=virtio",
        "-serial", f"file:{guest.log}",
        "-qmp", f"unix:{guest.qmp},server=on,wait=off",
    ]  # fmt: skip
    for address, netdev in guest.nics:
        ident = netdev.split("id=")[1].split(",")[0]
        # romfile= skips the iPXE option ROM: nothing boots from the network here.
        argv += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev={ident},mac={address},romfile="]
    guest.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(guests: list[Guest], predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [g for g in guests if not predicate(g)]
        for g in pending:
            assert g.process is not None
            if g.process.poll() is not None:
                raise AssertionError(f"{g.name} exited ({g.process.returncode}) before {what}:\n{g.serial()[-3000:]}")
        if not pending:
            return
        time.sleep(0.5)
    late = [g for g in guests if not predicate(g)]
    raise AssertionError(f"{', '.join(g.name for g in late)}: no {what} in {timeout}s:\n" +
                         "\n".join(f"--- {g.name}\n{g.serial()[-3000:]}" for g in late))  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", [2, 1])
def test_cluster_boots_configures_from_vcout_reaches_computes_and_powers_off(
    tiny_image: Path, tmp_path: Path, lan: Lan, fmt: int
) -> None:
    cluster = tiny_image / "pragma-tiny"
    image = cluster / "pragma-tiny.img"
    alloc = allocation(serial=0x30 + fmt, computes=2)
    files = render(alloc, format=fmt)
    guests: list[Guest] = []
    for node in alloc.nodes:
        disk = tmp_path / f"{node.name}.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
        inject(disk, files[node.name], tmp_path)
        nics = []
        for nic in node.interfaces:
            ident = f"n{nic.network}"
            netdev = lan.netdev(ident) if nic.network == "private" else f"user,id={ident},restrict=on"
            nics.append((nic.mac, netdev))
        if node.role == "frontend":
            nics.reverse()  # the public NIC comes first, so the guest's eth0 is public: matching must use MACs
        guests.append(Guest(node.name, disk, tmp_path / f"{node.name}.log", tmp_path / f"{node.name}.qmp", nics))
    try:
        for guest in guests:
            boot(guest, cluster)
        wait_for(guests, lambda g: any(line.startswith(("PRAGMA-READY", "PRAGMA-FAILED")) for line in g.pragma_lines()),
                 BOOT_TIMEOUT, "PRAGMA-READY")  # fmt: skip
        frontend = guests[0]
        wait_for([frontend], lambda g: any(line.startswith("PRAGMA-REACH-DONE") for line in g.pragma_lines()),
                 BOOT_TIMEOUT, "PRAGMA-REACH-DONE")  # fmt: skip

        for node, guest in zip(alloc.nodes, guests):
            lines = guest.pragma_lines()
            assert f"PRAGMA-READY name={node.hostname} role={node.role}" in lines, "\n".join(lines)
            assert not [line for line in lines if line.startswith("PRAGMA-ERROR")], "\n".join(lines)
            configured = {re.search(r"net=(\S+)", line).group(1): line for line in lines if line.startswith("PRAGMA-VCOUT:")}
            assert set(configured) == {nic.network for nic in node.interfaces}
            for nic in node.interfaces:
                net = alloc.network(nic.network)
                assert configured[nic.network].endswith(
                    f"mac={nic.mac} ip={nic.ip}/{net.subnet.prefixlen} netmask={net.subnet.netmask} mtu={net.mtu}"
                ), configured[nic.network]
                assert f"role={node.role} name={node.hostname} net={nic.network} iface=eth" in configured[nic.network]
        fe_lines = frontend.pragma_lines()
        fe_private = re.search(r"net=private iface=(\S+)", "\n".join(fe_lines)).group(1)
        fe_public = re.search(r"net=public iface=(\S+)", "\n".join(fe_lines)).group(1)
        assert (fe_public, fe_private) == ("eth0", "eth1")
        assert "PRAGMA-HOSTS: 10.1.1.1=vc7 192.0.2.10=vc7.example.org 10.1.255.254=compute-0 10.1.255.253=compute-1" in fe_lines
        assert "PRAGMA-REACH: compute-0 10.1.255.254 ok" in fe_lines, "\n".join(fe_lines)
        assert "PRAGMA-REACH: compute-1 10.1.255.253 ok" in fe_lines, "\n".join(fe_lines)
        assert "PRAGMA-REACH-DONE ok=2 fail=0" in fe_lines

        for guest in guests:
            assert guest.process is not None
            qmp(guest.qmp, "system_powerdown")
        deadline = time.monotonic() + POWERDOWN_TIMEOUT
        for guest in guests:
            assert guest.process is not None
            try:
                code = guest.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{guest.name} ignored the ACPI power button:\n{guest.serial()[-2000:]}") from None
            assert code == 0, guest.process.stderr.read().decode() if guest.process.stderr else code
            text = guest.serial()
            assert "PRAGMA-POWERDOWN" in text and "PRAGMA-SHUTDOWN" in text, text[-2000:]
            assert "reboot: Power down" in text, text[-2000:]
        # What the guests wrote survived on their disks, and the file systems were left clean.
        for node, guest in zip(alloc.nodes, guests):
            fs = f"{guest.disk}?offset={builder.PARTITION_START}"
            hosts = subprocess.run(["debugfs", "-R", "cat /etc/hosts", fs], capture_output=True, check=True).stdout
            assert b"127.0.0.1 localhost\n" in hosts and node.hostname.encode() in hosts
            keys = subprocess.run(["debugfs", "-R", "cat /root/.ssh/authorized_keys", fs], capture_output=True, check=True)
            assert keys.stdout == (KEY + "\n").encode()
            header = subprocess.run(["dumpe2fs", "-h", fs], capture_output=True, text=True, check=True).stdout
            assert re.search(r"Filesystem state:\s+clean", header), header
    finally:
        for guest in guests:
            if guest.process is not None and guest.process.poll() is None:
                guest.process.kill()
                guest.process.wait()
        with contextlib.suppress(OSError):
            for guest in guests:
                guest.qmp.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "../escape"], "build_image: --name '../escape': use letters"),
        (["--disk-size", "4M"], "build_image: --disk-size '4M': at least 16M"),
    ],
)
def test_builder_refuses_bad_options_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert builder.main(["--output", str(tmp_path / "repo"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "repo").exists()
