"""Node disks are built only on base images whose whole backing chain passed core's image check.

A hostile repository's qcow2 base names a backing file libvirt, qemu or
libguestfs would open as root: the disk builder refuses it (one line, no
disk written, no connection to the tripwire listener) before anything but
the check reads it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pragma_kvm_rocks.disks import DiskBuilder, DiskJob
from pragma_kvm_rocks.qcow2 import read_header

from pragma_core.errors import DriverError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

MIB = 1 << 20


class Tripwire:
    """A loopback listener that counts (and at once closes) every connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


def qcow2_on(image: Path, backing: str, fmt: str = "raw") -> Path:
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-u", "-F", fmt, "-b", backing, str(image), "16M"],
        check=True,
        capture_output=True,
    )
    return image


def _fifo(cluster: Path, wire: Tripwire) -> str:
    os.mkfifo(cluster / "base.raw")
    return "base.raw"


def _symlink_out(cluster: Path, wire: Tripwire) -> str:
    (cluster / "base.raw").symlink_to(cluster.parent / "outside.raw")
    return "base.raw"


PAYLOADS: dict[str, tuple[Callable[[Path, Tripwire], str], str]] = {
    "nbd": (lambda c, w: f"nbd:127.0.0.1:{w.port}", "names a protocol (nbd:)"),
    "json": (lambda c, w: 'json:{"file.driver":"nbd","file.host":"127.0.0.1","file.port":"' + f'{w.port}"}}', "(json:)"),
    "http": (lambda c, w: f"http://127.0.0.1:{w.port}/base.raw", "names a protocol (http:)"),
    "absolute": (lambda c, w: str(c.parent / "outside.raw"), "is outside the cluster directory"),
    "dotdot": (lambda c, w: "../outside.raw", "has a '..' component"),
    "symlink-out": (_symlink_out, "is outside the cluster directory"),
    "fifo": (_fifo, "is a FIFO, not a regular file"),
}


@pytest.mark.parametrize("mode", ["overlay", "copy"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_a_hostile_backing_chain_is_refused_before_any_disk_is_made(
    tmp_path: Path, tripwire: Tripwire, payload: str, mode: str
) -> None:
    cluster = tmp_path / "repo" / "demo"
    cluster.mkdir(parents=True)
    (tmp_path / "repo" / "outside.raw").write_bytes(b"secret" + bytes(MIB))
    build, expected = PAYLOADS[payload]
    base = qcow2_on(cluster / "demo.qcow2", build(cluster, tripwire))
    disks = tmp_path / "disks"
    job = DiskJob(node="n0", base=base, base_format="qcow2", target=disks / "n0.qcow2", root=cluster)
    with pytest.raises(DriverError) as info:
        DiskBuilder(mode=mode, injection="none").build([job])
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("refusing base image: ") and expected in lines[0], lines
    assert not disks.exists() or list(disks.iterdir()) == []
    assert tripwire.connections == 0


def test_a_base_with_a_plain_backing_file_gets_an_overlay_but_no_copy(tmp_path: Path) -> None:
    cluster = tmp_path / "demo"
    cluster.mkdir()
    (cluster / "base.raw").write_bytes(bytes(2 * MIB))
    base = qcow2_on(cluster / "demo.qcow2", "base.raw")
    overlay = DiskJob(node="n0", base=base, base_format="qcow2", target=tmp_path / "disks" / "n0.qcow2")
    DiskBuilder(mode="overlay", injection="none").build([overlay])
    header = read_header(overlay.target)
    assert (header["backing_file"], header["backing_format"], header["virtual_size"]) == (str(base), "qcow2", 16 * MIB)
    copy = DiskJob(node="n1", base=base, base_format="qcow2", target=tmp_path / "disks" / "n1.img")
    with pytest.raises(DriverError, match=r"has a backing file \(base\.raw\); disk_mode = copy needs"):
        DiskBuilder(mode="copy", injection="none").build([copy])
    assert not copy.target.exists()


def _kernel(tmp_path: Path, how: str) -> tuple[Path, str]:
    cluster = tmp_path / "demo"
    cluster.mkdir()
    (tmp_path / "secret").write_bytes(b"root's secret\n")
    kernel = cluster / "vmlinuz"
    if how == "inside":
        (cluster / "boot").mkdir()
        (cluster / "boot" / "vmlinuz-6").write_bytes(b"kernel\n")
        kernel.symlink_to("boot/vmlinuz-6")
    elif how == "symlink-out":
        kernel.symlink_to(tmp_path / "secret")
    elif how == "device":
        kernel.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(kernel)
    elif how == "directory":
        kernel.mkdir()
    return cluster, "vmlinuz"


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("symlink-out", "outside"),
        ("device", "resolves to /dev/zero"),
        ("fifo", "is a FIFO"),
        ("directory", "is a directory"),
        ("missing", "No such file"),
        ("inside", None),
    ],
)
def test_a_kernel_the_domain_boots_is_a_regular_file_inside_the_cluster(tmp_path: Path, how: str, expected: str | None) -> None:
    from pragma_kvm_rocks.domainxml import build_domain_xml
    from pragma_kvm_rocks.records import NodeRecord

    from pragma_core.errors import FormatError

    cluster, kernel = _kernel(tmp_path, how)
    template = f'<domain type="kvm"><os><type arch="x86_64">hvm</type><kernel>{kernel}</kernel></os><devices/></domain>'
    record = NodeRecord(cluster="vc1", name="vc1", hostname="vc1", role="frontend", host="localhost", cpus=1, memory_mib=256)

    def build() -> str:
        return build_domain_xml(
            template, name="vc1", domain_type="kvm", vcpus=1, memory_mib=256, disk=tmp_path / "d.qcow2",
            disk_format="qcow2", nics=[], record=record, cluster_dir=cluster,
        )

    if expected is None:
        assert f"<kernel>{cluster / kernel}</kernel>" in build()
        return
    with pytest.raises(FormatError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"<os><kernel> {cluster / kernel}: ") and expected in message


def test_scratch_left_by_a_killed_build_is_removed_and_a_running_builds_is_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])  # a process that has exited: its pid is free
    gone.wait()
    scratch = tmp_path / "scratch"
    left = scratch / f"pragma-disks-{gone.pid}-abc123"
    running = scratch / f"pragma-disks-{os.getppid()}-def456"
    other = scratch / "not-ours"
    for directory in (left, running, other):
        (directory / "sub").mkdir(parents=True)
        (directory / "sub" / "template.meta").write_bytes(b"x" * 1024)
    cluster = tmp_path / "demo"
    cluster.mkdir()
    (cluster / "base.raw").write_bytes(bytes(2 * MIB))
    base = qcow2_on(cluster / "demo.qcow2", "base.raw")
    job = DiskJob(node="n0", base=base, base_format="qcow2", target=tmp_path / "disks" / "n0.qcow2")
    DiskBuilder(mode="overlay", injection="none", scratch=scratch).build([job])
    assert job.target.exists()
    assert sorted(p.name for p in scratch.iterdir()) == sorted([running.name, other.name]), \
        "the dead build's scratch goes; a live process's and anything not named so stay; this build's own is gone"


def test_a_base_claiming_a_huge_virtual_size_is_refused_before_any_overlay_is_made(tmp_path: Path) -> None:
    base = tmp_path / "demo" / "huge.qcow2"
    base.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "128T"], check=True)
    job = DiskJob(node="n0", base=base, base_format="qcow2", target=tmp_path / "disks" / "n0.qcow2")
    with pytest.raises(DriverError, match=r"claims a virtual size of 140737488355328 bytes \(at most 64 TiB\)"):
        DiskBuilder(mode="overlay", injection="none").build([job])
    assert not job.target.exists()


def _raw_jobs(tmp_path: Path, count: int) -> list[DiskJob]:
    cluster = tmp_path / "demo"
    cluster.mkdir()
    (cluster / "base.raw").write_bytes(bytes(2 * MIB))
    return [DiskJob(node=f"n{i}", base=cluster / "base.raw", base_format="raw", target=tmp_path / "disks" / f"n{i}.qcow2",
                    root=cluster) for i in range(count)]


def test_ready_runs_for_each_disk_as_soon_as_that_disk_is_complete(tmp_path: Path) -> None:
    jobs = _raw_jobs(tmp_path, 6)
    seen: dict[str, tuple[int, str]] = {}
    lock = threading.Lock()

    def ready(job: DiskJob) -> None:
        with lock:
            seen[job.node] = (read_header(job.target)["virtual_size"], threading.current_thread().name)

    DiskBuilder(mode="overlay", injection="none", max_parallel=3).build(jobs, ready)
    assert sorted(seen) == [job.node for job in jobs]
    assert {size for size, _ in seen.values()} == {2 * MIB}, "each disk is whole when its node is told"
    assert all(name.startswith("pragma-parallel") for _, name in seen.values()), "in the threads that made the disks"


def test_a_failing_ready_fails_the_build_and_removes_every_disk(tmp_path: Path) -> None:
    jobs = _raw_jobs(tmp_path, 4)

    def ready(job: DiskJob) -> None:
        if job.node == "n2":
            raise DriverError("starting node n2 on localhost: no bridge")

    with pytest.raises(DriverError, match=r"^starting node n2 on localhost: no bridge$"):
        DiskBuilder(mode="overlay", injection="none", max_parallel=2).build(jobs, ready)
    assert list((tmp_path / "disks").iterdir()) == []
