"""Test helpers: ext4 disk images built without root, libvirt test-driver hosts, driver factories."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from pragma_core.config import ConfigFile, build_settings, parse_legacy
from pragma_core.model import StagedCluster
from pragma_core.testing.contract import make_cluster
from pragma_kvm_rocks.driver import KvmRocksDriver
from pragma_kvm_rocks.settings import KvmRocksSettings

#: The guest tree every test image carries: legacy network files to be renamed.
GUEST_FILES = {
    "etc/udev/rules.d/70-persistent-net.rules": b'SUBSYSTEM=="net", NAME="eth0"\n',
    "etc/sysconfig/network-scripts/ifcfg-eth0": b"DEVICE=eth0\nBOOTPROTO=static\n",
    "etc/sysconfig/network-scripts/ifcfg-eth1": b"DEVICE=eth1\n",
    "etc/sysconfig/network-scripts/ifcfg-lo": b"DEVICE=lo\n",
    "etc/hostname": b"template\n",
    "root/.keep": b"",
}

PART_OFFSET = 1 << 20


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian e2fsprogs, fdisk, qemu-utils)")


def make_ext4_disk(path: Path, *, size: int = 64 << 20, files: dict[str, bytes] | None = None,
                   extra_data: int = 0, block_size: int | None = None) -> Path:
    """A raw disk with an MBR and one ext4 partition at 1 MiB holding ``files`` (no root needed).

    ``extra_data`` bytes of pseudo-random data go into ``/data.bin`` so tests can
    check that file contents survive injection.
    """
    need("sfdisk", "mkfs.ext4")
    work = path.parent / f".{path.name}.tree"
    if work.exists():
        shutil.rmtree(work)
    for name, data in (files if files is not None else GUEST_FILES).items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    work.mkdir(exist_ok=True)
    if extra_data:
        import random

        rng = random.Random(7)
        (work / "data.bin").write_bytes(rng.randbytes(extra_data))
    fs = path.parent / f".{path.name}.fs"
    with open(path, "wb") as fh:
        fh.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=f"start={PART_OFFSET // 512}, type=83\n",
                   text=True, check=True, capture_output=True)
    with open(fs, "wb") as fh:
        fh.truncate(size - PART_OFFSET)
    block = ["-b", str(block_size)] if block_size else []
    subprocess.run(["mkfs.ext4", "-q", "-F", *block, "-d", str(work), str(fs)], check=True, capture_output=True)
    with open(fs, "rb") as src, open(path, "r+b") as dst:
        from pragma_kvm_rocks.sparse import data_extents

        for start, end in data_extents(src.fileno()):
            src.seek(start)
            dst.seek(PART_OFFSET + start)
            dst.write(src.read(end - start))
    fs.unlink()
    shutil.rmtree(work)
    return path


def _tree(work: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (guest path -> bytes) under a fresh directory ``work``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name, data in files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return work


def _make_filesystem(kind: str, image: Path, files: dict[str, bytes]) -> None:
    """Make an ``ext4`` or ``btrfs`` filesystem in ``image`` holding ``files`` (no root needed)."""
    work = _tree(image.parent / f".{image.name}.tree", files)
    if kind == "ext4":
        argv = ["mkfs.ext4", "-q", "-F", "-d", str(work), str(image)]
    elif kind == "btrfs":
        need("mkfs.btrfs")
        argv = ["mkfs.btrfs", "-q", "-f", "--rootdir", str(work), str(image)]
    else:
        raise ValueError(f"unsupported filesystem {kind!r}")
    try:
        subprocess.run(argv, check=True, capture_output=True)
    finally:
        shutil.rmtree(work)


def make_partitioned_disk(path: Path, partitions: list[tuple[str | None, dict[str, bytes]]], *,
                          part_size: int = 128 << 20) -> Path:
    """A raw MBR disk with one ``part_size`` partition per entry (no root needed).

    Each entry is ``(kind, files)``: ``kind`` ``"ext4"``, ``"btrfs"`` or
    ``None`` (a partition left without a filesystem), ``files`` what it holds.
    Partition ``i`` starts at ``PART_OFFSET + i * part_size``.
    """
    need("sfdisk", "mkfs.ext4")
    with open(path, "wb") as fh:
        fh.truncate(PART_OFFSET + len(partitions) * part_size + PART_OFFSET)
    sectors = part_size // 512
    table = "".join(f"start={(PART_OFFSET + i * part_size) // 512}, size={sectors}, type=83\n"
                    for i in range(len(partitions)))
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True, capture_output=True)
    for index, (kind, files) in enumerate(partitions):
        if kind is None:
            continue
        fs = path.parent / f".{path.name}.p{index}"
        with open(fs, "wb") as fh:
            fh.truncate(part_size)
        try:
            _make_filesystem(kind, fs, files)
            with open(fs, "rb") as src, open(path, "r+b") as dst:
                from pragma_kvm_rocks.sparse import data_extents

                for start, end in data_extents(src.fileno()):
                    src.seek(start)
                    dst.seek(PART_OFFSET + index * part_size + start)
                    dst.write(src.read(end - start))
        finally:
            fs.unlink(missing_ok=True)
    return path


def to_qcow2(raw: Path, target: Path) -> Path:
    """``qemu-img convert`` a raw image into a standalone qcow2 image."""
    need("qemu-img")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(target)],
                   check=True, capture_output=True)
    return target


def to_raw(image: Path, target: Path) -> Path:
    """``qemu-img convert`` any image (a qcow2 overlay with its backing chain) into raw."""
    need("qemu-img")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(target)], check=True, capture_output=True)
    return target


def ext4_cluster(directory: Path, *, name: str = "demo", size: int = 64 << 20) -> StagedCluster:
    """A staged cluster (frontend + compute) whose raw images hold an ext4 root partition."""
    cluster = make_cluster(directory, name=name, size=size)
    for image in (cluster.frontend.path, cluster.compute.path):
        make_ext4_disk(image, size=size)
    return cluster


def host_file(directory: Path, name: str, *, cpus: int, running: dict[str, int] | None = None,
              stopped: dict[str, int] | None = None, memory_mib: int = 256 << 10) -> Path:
    """A libvirt test-driver node file: a host with ``cpus`` CPUs, ``memory_mib`` of memory and some domains
    (512 MiB each)."""
    domains = []
    for dom, vcpus in (running or {}).items():
        domains.append(f'<domain type="test"><name>{dom}</name><memory>524288</memory>'
                       f'<vcpu>{vcpus}</vcpu><os><type>hvm</type></os></domain>')
    for dom, vcpus in (stopped or {}).items():
        domains.append(f'<domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">'
                       f'<name>{dom}</name><memory>524288</memory><vcpu>{vcpus}</vcpu>'
                       f'<os><type>hvm</type></os><test:runstate>5</test:runstate></domain>')
    path = directory / f"{name}.xml"
    path.write_text(textwrap.dedent(f"""\
        <node>
          <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes>
               <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
          <memory>{memory_mib * 1024}</memory>
          {''.join(domains)}
        </node>
        """))
    return path


def settings_from(text: str, path: Path) -> KvmRocksSettings:
    """Build the driver settings the way core does: parse the file, then build_settings."""
    path.write_text(text)
    return build_settings(KvmRocksSettings, parse_legacy(text, path))


def base_conf(tmp: Path, *, hosts_dir: Path | None = None, containers: list[str] | None = None,
              extra: str = "") -> str:
    uri = f'libvirt_uri = "test://{hosts_dir}/{{host}}.xml"\n' if hosts_dir else ""
    ctr = f"available_containers = {containers!r}\n" if containers else ""
    return (
        'public_ips = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.15",'
        ' "192.0.2.16", "192.0.2.17"]\n'
        "vlans = range(100, 110)\n"
        'netmask = "255.255.255.0"\n'
        'gw = "192.0.2.1"\n'
        'dns = "192.0.2.53"\n'
        f'diskdir = "{tmp / "disks"}"\n'
        f'state_dir = "{tmp / "state"}"\n'
        'private_bridge = "br-p{vlan}"\n'
        'public_bridge = "br-pub"\n'
        + uri + ctr + extra
    )


@pytest.fixture
def make_driver(tmp_path: Path):
    """Factory: a driver on libvirt test-driver hosts described by ``hosts`` (name -> cpus)."""

    def factory(hosts: dict[str, int] | None = None, *, extra: str = "", running: dict[str, dict[str, int]] | None = None,
                root: Path | None = None, memory_mib: dict[str, int] | None = None) -> KvmRocksDriver:
        root = root or tmp_path
        hosts_dir = root / "hosts"
        hosts_dir.mkdir(exist_ok=True)
        hosts = hosts or {"localhost": 16}
        for name, cpus in hosts.items():
            host_file(hosts_dir, name, cpus=cpus, running=(running or {}).get(name),
                      **({"memory_mib": memory_mib[name]} if memory_mib and name in memory_mib else {}))
        containers = None if list(hosts) == ["localhost"] else list(hosts)
        conf = base_conf(root, hosts_dir=hosts_dir, containers=containers, extra=extra)
        settings = settings_from(conf, root / "kvm_rocks.conf")
        return KvmRocksDriver(settings, site=None)

    return factory


__all__ = ["ConfigFile", "ext4_cluster", "make_ext4_disk", "make_partitioned_disk", "to_qcow2", "to_raw", "settings_from", "base_conf", "host_file"]
