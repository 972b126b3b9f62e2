"""qcow2 overlays written in Python and the e2fsprogs injection, checked with qemu-img and e2fsck."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from pragma_kvm_rocks import e2fs
from pragma_kvm_rocks.qcow2 import CLUSTER_SIZE, read_header, write_overlay
from pragma_kvm_rocks.sparse import data_extents, nonzero_copy

from conftest import make_ext4_disk, need, PART_OFFSET, make_partitioned_disk


def _to_raw(overlay: Path, out: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(out)], check=True)
    return out


def test_empty_overlay_is_clean_and_reads_as_its_base(tmp_path: Path) -> None:
    need("qemu-img")
    base = tmp_path / "base.img"
    base.write_bytes(bytes(range(256)) * 4096)
    overlay = tmp_path / "o.qcow2"
    write_overlay(overlay, backing_file=base, backing_format="raw", virtual_size=base.stat().st_size)
    subprocess.run(["qemu-img", "check", str(overlay)], check=True, capture_output=True)
    info = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay), str(base)],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stdout + info.stderr
    assert read_header(overlay)["backing_file"] == str(base)


def test_overlay_data_clusters_replace_the_base_there_only(tmp_path: Path) -> None:
    need("qemu-img")
    base = tmp_path / "base.img"
    with open(base, "wb") as fh:
        fh.truncate(3 << 30)  # three L2 regions of 512 MiB... and then some
    data = {0: b"A" * CLUSTER_SIZE, (1 << 30) + CLUSTER_SIZE: b"B" * CLUSTER_SIZE}
    overlay = tmp_path / "o.qcow2"
    write_overlay(overlay, backing_file=base, backing_format="raw", virtual_size=3 << 30, data=data)
    check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors" in check.stdout
    for offset, chunk in data.items():
        out = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {chunk[0]} {offset} {CLUSTER_SIZE}",
                              str(overlay)], capture_output=True, text=True)
        assert "Pattern verification failed" not in out.stdout and out.returncode == 0
    with pytest.raises(ValueError):
        write_overlay(tmp_path / "bad.qcow2", backing_file=base, backing_format="raw", virtual_size=3 << 30,
                      data={100: b"x" * CLUSTER_SIZE})


@pytest.mark.parametrize("blocks", [1024, 4096])
def test_overlay_injection_writes_vcout_renames_legacy_files_and_keeps_data(tmp_path: Path, blocks: int) -> None:
    need("debugfs", "e2image", "qemu-img", "e2fsck")
    base = make_ext4_disk(tmp_path / "base.img", size=48 << 20, extra_data=5 << 20, block_size=blocks)
    before = hashlib.sha256(base.read_bytes()).hexdigest()
    location = e2fs.find_root_filesystem(base)
    assert e2fs.ext_block_size(base, location.offset) == blocks
    plan = e2fs.plan_edits(base, location)
    assert ("/etc/sysconfig/network-scripts/ifcfg-eth1", "/etc/sysconfig/network-scripts/old-ifcfg-eth1") in plan.renames
    work = tmp_path / "work"
    work.mkdir()
    delta = e2fs.OverlayDelta(base, location, plan, work)
    vcout = b'<?xml version="1.0" ?>\n<vc>\n  <key>ssh-ed25519 AAAA test</key>\n</vc>\n'
    clusters = delta.clusters("node-1", vcout)
    assert 0 < len(clusters) < 16, "only the clusters debugfs touched go into the overlay"
    overlay = tmp_path / "node.qcow2"
    write_overlay(overlay, backing_file=base, backing_format="raw", virtual_size=base.stat().st_size, data=clusters)
    raw = _to_raw(overlay, tmp_path / "node.raw")
    assert e2fs.read_file(raw, location, "/root/vc-out.xml") == vcout
    assert sorted(e2fs.list_directory(raw, location, "/etc/sysconfig/network-scripts")) == [
        "ifcfg-lo", "old-ifcfg-eth0", "old-ifcfg-eth1"]
    assert e2fs.list_directory(raw, location, "/etc/udev/rules.d") == ["old-70-persistent-net.rules"]
    assert e2fs.read_file(raw, location, "/data.bin") == e2fs.read_file(base, location, "/data.bin")
    fsck = subprocess.run(["e2fsck", "-fn", f"{raw}?offset={location.offset}"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert hashlib.sha256(base.read_bytes()).hexdigest() == before, "the shared base must not change"
    assert list(work.iterdir()) == [delta.template], "per-node scratch files are removed"
    template = delta.template.read_bytes()
    with open(delta.template, "rb") as fh:
        for start, end in data_extents(fh.fileno()):
            assert start % 4096 == 0
            held = template[start:end]
            assert all(any(held[i:i + 4096]) for i in range(0, len(held), 4096)), "the template holds no zero block"


def _ext4_base(tmp_path: Path) -> tuple[Path, e2fs.ExtLocation, e2fs.GuestPlan]:
    """A small raw base with an ext4 root, where its filesystem is, and the edits it gets."""
    need("debugfs", "e2image")
    base = make_ext4_disk(tmp_path / "base.img", size=48 << 20, extra_data=1 << 20)
    location = e2fs.find_root_filesystem(base)
    return base, location, e2fs.plan_edits(base, location)


def _uncached_template(base: Path, location: e2fs.ExtLocation, plan: e2fs.GuestPlan, work: Path) -> bytes:
    """The template ``e2image`` makes for ``base`` now, with no cache involved."""
    work.mkdir()
    return e2fs.OverlayDelta(base, location, plan, work).template.read_bytes()


def _overlay_bytes(delta: e2fs.OverlayDelta, base: Path, out: Path, vcout: bytes) -> bytes:
    clusters = delta.clusters("node-1", vcout)
    write_overlay(out, backing_file=base, backing_format="raw", virtual_size=base.stat().st_size, data=clusters)
    return out.read_bytes()


def test_the_template_of_an_unchanged_base_is_made_once_and_gives_the_same_overlays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, location, plan = _ext4_base(tmp_path)
    vcout = b"<vc><key>ssh-ed25519 AAAA test</key></vc>\n"
    cache = tmp_path / "state" / "templates"
    for work in ("w0", "w1", "w2"):
        (tmp_path / work).mkdir()
    uncached = _overlay_bytes(e2fs.OverlayDelta(base, location, plan, tmp_path / "w0"), base, tmp_path / "0.qcow2", vcout)
    first = _overlay_bytes(e2fs.OverlayDelta(base, location, plan, tmp_path / "w1", cache=cache), base,
                           tmp_path / "1.qcow2", vcout)
    assert [p.name.endswith(".img") for p in cache.iterdir()] == [True]
    assert cache.stat().st_mode & 0o777 == 0o700

    def no_e2image(argv: list[str], *, what: str) -> str:
        raise AssertionError(f"e2image ran again: {argv}")

    monkeypatch.setattr(e2fs, "_run", no_e2image)
    second = _overlay_bytes(e2fs.OverlayDelta(base, location, plan, tmp_path / "w2", cache=cache), base,
                            tmp_path / "2.qcow2", vcout)
    assert uncached == first == second, "a cached template gives byte-identical overlays"


def test_a_base_changed_in_place_gets_a_new_template_and_its_own_overlay(tmp_path: Path) -> None:
    base, location, plan = _ext4_base(tmp_path)
    cache = tmp_path / "templates"
    (tmp_path / "w1").mkdir()
    e2fs.OverlayDelta(base, location, plan, tmp_path / "w1", cache=cache)
    old_key = e2fs.TemplateCache.key(base, location)
    subprocess.run(["debugfs", "-w", "-R", "mkdir /changed", f"{base}?offset={location.offset}"],
                   check=True, capture_output=True)
    assert e2fs.TemplateCache.key(base, location) != old_key
    (tmp_path / "w2").mkdir()
    delta = e2fs.OverlayDelta(base, location, plan, tmp_path / "w2", cache=cache)
    assert delta.template.read_bytes() == _uncached_template(base, location, plan, tmp_path / "w3")
    assert len(list(cache.glob("*.img"))) == 2, "the older entry is kept while a boot may still use it"


def test_a_link_planted_in_the_template_cache_is_never_followed(tmp_path: Path) -> None:
    base, location, plan = _ext4_base(tmp_path)
    cache = tmp_path / "templates"
    cache.mkdir(mode=0o700)
    outside = tmp_path / "secret"
    outside.write_bytes(b"not a template" * 100)
    (cache / f"{e2fs.TemplateCache.key(base, location)}.img").symlink_to(outside)
    (tmp_path / "w").mkdir()
    delta = e2fs.OverlayDelta(base, location, plan, tmp_path / "w", cache=cache)
    assert delta.template.read_bytes() == _uncached_template(base, location, plan, tmp_path / "w2")
    assert outside.read_bytes() == b"not a template" * 100, "the link's target is neither read nor written"


def test_stale_templates_of_a_base_and_leftover_temporaries_are_deleted(tmp_path: Path) -> None:
    import os
    import time

    base, location, plan = _ext4_base(tmp_path)
    cache = tmp_path / "templates"
    cache.mkdir(mode=0o700)
    key = e2fs.TemplateCache.key(base, location)
    prefix = key.split("-")[0]
    old = time.time() - 2 * e2fs.TemplateCache.STALE_SECONDS
    for name in (f"{prefix}-0000000000000000.img", ".tmp-killed.img", f"{prefix}-1111111111111111.img",
                 "ffffffffffffffff-0000000000000000.img"):
        (cache / name).write_bytes(b"x")
    for name in (f"{prefix}-0000000000000000.img", ".tmp-killed.img", "ffffffffffffffff-0000000000000000.img"):
        os.utime(cache / name, (old, old))
    (tmp_path / "w").mkdir()
    e2fs.OverlayDelta(base, location, plan, tmp_path / "w", cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([
        f"{key}.img", f"{prefix}-1111111111111111.img",  # recent: a running boot may still use it
        "ffffffffffffffff-0000000000000000.img",  # another base's
    ])


@pytest.mark.parametrize("block", [1024, 4096])
def test_a_nonzero_copy_reads_back_identical_with_every_zero_block_a_hole(tmp_path: Path, block: int) -> None:
    source = tmp_path / "source"
    layout = [b"\0" * 8192, b"a" * 100, b"\0" * (block * 3), b"\0" * 5 + b"b" + b"\0" * 20000, b"c" * block * 2]
    data = b"".join(layout)
    source.write_bytes(data)
    with open(source, "r+b") as fh:
        fh.truncate(len(data) + (1 << 20))  # a trailing hole
    target = tmp_path / "target"
    nonzero_copy(source, target, block=block)
    assert target.read_bytes() == source.read_bytes()
    copied = target.read_bytes()
    with open(target, "rb") as fh:
        extents = list(data_extents(fh.fileno()))
    held = sum(end - start for start, end in extents)
    assert held < len(data) // 2, extents
    for start, end in extents:
        assert any(copied[start:end])


def test_raw_copy_injection_replaces_an_existing_vcout(tmp_path: Path) -> None:
    need("debugfs")
    files = {"root/vc-out.xml": b"<old/>\n", "etc/hostname": b"x\n"}
    disk = make_ext4_disk(tmp_path / "d.img", size=16 << 20, files=files)
    location = e2fs.find_root_filesystem(disk)
    e2fs.inject_raw(disk, location, e2fs.plan_edits(disk, location), b"<new/>\n")
    assert e2fs.read_file(disk, location, "/root/vc-out.xml") == b"<new/>\n"


def test_image_without_ext_filesystem_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    with open(disk, "wb") as fh:
        fh.truncate(4 << 20)
    with pytest.raises(e2fs.InjectionUnsupported):
        e2fs.find_root_filesystem(disk)


def test_root_filesystem_is_the_ext_partition_holding_etc_not_an_ext_boot_partition(tmp_path: Path) -> None:
    need("debugfs")
    disk = make_partitioned_disk(tmp_path / "d.img", [
        ("ext4", {"vmlinuz": b"kernel\n"}),
        ("ext4", {"etc/hostname": b"node\n"}),
    ], part_size=16 << 20)
    location = e2fs.find_root_filesystem(disk)
    assert location.offset == PART_OFFSET + (16 << 20)
    assert e2fs.read_file(disk, location, "/etc/hostname") == b"node\n"


def test_ext_boot_partition_beside_a_non_ext_root_is_left_to_libguestfs(tmp_path: Path) -> None:
    need("debugfs", "mkfs.btrfs")
    disk = make_partitioned_disk(tmp_path / "d.img", [
        ("ext4", {"vmlinuz": b"kernel\n"}),
        ("btrfs", {"etc/hostname": b"node\n"}),
    ])
    with pytest.raises(e2fs.InjectionUnsupported, match="no ext2/3/4 partition holds /etc"):
        e2fs.find_root_filesystem(disk)


def test_an_image_name_with_a_question_mark_never_reaches_e2fsprogs(tmp_path: Path) -> None:
    base = make_ext4_disk(tmp_path / "root.img", size=48 << 20)
    named = tmp_path / "root.img?offset=0"  # e2fsprogs would open root.img: a file nothing checked
    named.write_bytes(b"")
    with pytest.raises(e2fs.InjectionUnsupported, match=r"a '\?' in the name"):
        e2fs.find_root_filesystem(named)
    with pytest.raises(e2fs.InjectionUnsupported, match=r"a '\?' in the name"):
        e2fs.read_file(named, e2fs.ExtLocation(offset=0, length=base.stat().st_size), "/etc/hostname")
