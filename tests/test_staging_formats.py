"""Image formats: raw and qcow2 used in place, qcow2 virtual size and backing chain."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest

from pragma_core import imagecheck
from pragma_core.errors import StagingError
from pragma_core.model import ClusterDescription, DiskImage, NodeTemplate, Part
from pragma_core.staging import Stager

MIB = 1 << 20

needs_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed"
)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def describe(directory, disk):
    return ClusterDescription(
        name="demo",
        path=directory / "demo.xml",
        directory=directory,
        frontend=NodeTemplate(role="frontend", domain_xml="<domain/>", disk=disk),
    )


@pytest.fixture(params=["qemu-img", "header"])
def inspector(request, monkeypatch):
    """Run each test with ``qemu-img info`` and with the built-in qcow2 header reader."""
    if request.param == "qemu-img":
        if shutil.which("qemu-img") is None:
            pytest.skip("qemu-img (qemu-utils) not installed")
    else:
        real = shutil.which
        monkeypatch.setattr(
            imagecheck.shutil,
            "which",
            lambda name: None if name == "qemu-img" else real(name),
        )
    return request.param


@needs_qemu_img
def test_qcow2_is_used_in_place_with_its_virtual_size(tmp_path, inspector):
    qemu_img("create", "-f", "qcow2", str(tmp_path / "img.qcow2"), "64M")
    before = (tmp_path / "img.qcow2").stat()
    disk = DiskImage(source="img.qcow2", format="qcow2")
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert (staged.format, staged.virtual_size, staged.backing_file) == (
        "qcow2",
        64 * MIB,
        None,
    )
    assert (tmp_path / "img.qcow2").stat().st_mtime_ns == before.st_mtime_ns


@needs_qemu_img
def test_qcow2_backing_file_inside_the_cluster_directory_is_reported(
    tmp_path, inspector
):
    (tmp_path / "base.raw").write_bytes(bytes(2 * MIB))
    qemu_img(
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        str(tmp_path / "img.qcow2"),
    )
    disk = DiskImage(source="img.qcow2", format="qcow2")
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert staged.backing_file == tmp_path / "base.raw"
    assert staged.virtual_size == 2 * MIB


@needs_qemu_img
def test_a_backing_file_outside_the_cluster_directory_is_refused(tmp_path, inspector):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "base.raw").write_bytes(bytes(MIB))
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    qemu_img(
        "create",
        "-f",
        "qcow2",
        "-b",
        str(outside / "base.raw"),
        "-F",
        "raw",
        str(cluster / "img.qcow2"),
    )
    disk = DiskImage(source="img.qcow2", format="qcow2")
    with pytest.raises(StagingError) as info:
        Stager(progress=False).stage_image(describe(cluster, disk), disk)
    assert str(info.value) == (
        f"{cluster / 'img.qcow2'}: backing file {outside / 'base.raw'} is outside the cluster directory {cluster}"
    )


@needs_qemu_img
def test_a_backing_file_escaping_through_a_symlink_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "base.raw").write_bytes(bytes(MIB))
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "base.raw").symlink_to(outside / "base.raw")
    qemu_img(
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        str(cluster / "img.qcow2"),
    )
    disk = DiskImage(source="img.qcow2", format="qcow2")
    with pytest.raises(StagingError, match="is outside the cluster directory"):
        Stager(progress=False).stage_image(describe(cluster, disk), disk)


@needs_qemu_img
def test_a_gzipped_split_qcow2_is_staged_then_inspected(tmp_path):
    source = tmp_path / "src.qcow2"
    qemu_img("create", "-f", "qcow2", str(source), "32M")
    blob = gzip.compress(source.read_bytes())
    (tmp_path / "img.qcow2.gz.aa").write_bytes(blob[:100])
    (tmp_path / "img.qcow2.gz.ab").write_bytes(blob[100:])
    disk = DiskImage(
        source="img.qcow2",
        format="qcow2",
        processor="splited_gzip",
        parts=[Part(name="img.qcow2.gz.aa"), Part(name="img.qcow2.gz.ab")],
    )
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert staged.format == "qcow2" and staged.virtual_size == 32 * MIB
    assert staged.path.read_bytes() == source.read_bytes()


def test_a_file_declared_qcow2_that_is_not_is_refused(tmp_path, inspector):
    (tmp_path / "img.qcow2").write_bytes(b"\x00" * 4096)
    disk = DiskImage(source="img.qcow2", format="qcow2")
    with pytest.raises(StagingError, match=r"img\.qcow2: not a (usable )?qcow2 image"):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)


def test_raw_virtual_size_is_the_file_size(tmp_path):
    (tmp_path / "img.raw").write_bytes(bytes(12345))
    disk = DiskImage(source="img.raw")
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert (staged.format, staged.virtual_size, staged.backing_file) == (
        "raw",
        12345,
        None,
    )
