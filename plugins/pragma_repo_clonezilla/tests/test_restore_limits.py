"""A hostile ISO cannot fill the head node's disk: ``max_disk_size`` and the last free GiB bound every restore.

The restore runs as root; an ISO from Drive may be a decompression bomb (a
few KB of concatenated bz2 streams that decompress to a GiB of non-zero
bytes), may declare a huge disk (its table, its parted dump, its ``.NNG``
name), or may carry a partclone header that lies about its device so
partclone writes past the disk it was given.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from czbuild import bz2_bomb, make_clonezilla_image, make_ext4, make_iso
from pragma_repo_clonezilla import restore
from pragma_repo_clonezilla.isofile import BadImageError
from pragma_repo_clonezilla.restore import DiskLimitError, restore_iso_to_raw
from pragma_repo_clonezilla.target import Target, cziso_restore, deliver

GIB = 1 << 30
MIB = 1 << 20


def _bomb_iso(tmp_path: Path, total: int, name: str = "bomb-frontend.iso") -> Path:
    """A restore ISO whose one dd partition (``total`` bytes) is concatenated bz2 streams of non-zero bytes."""
    image = make_clonezilla_image(tmp_path, "bomb", [{"size_mib": total // MIB, "stored": bz2_bomb(total), "compression": "bz2"}])
    iso = make_iso(image, tmp_path / name, image_name="bomb")
    assert iso.stat().st_size < 1 * MIB
    return iso


def _lying_partclone_iso(tmp_path: Path) -> Path:
    """A 1 MiB partition (disk: 2 MiB) whose partclone image claims a 1 MiB device but holds 8 MiB with ~6 MiB used."""
    fs = make_ext4(tmp_path, "big", {"random.bin": os.urandom(6 * MIB)}, size_mib=8)
    image = make_clonezilla_image(tmp_path, "liar", [{"size_mib": 1, "fs": fs, "device_size": MIB}])
    return make_iso(image, tmp_path / "liar-frontend.iso")


def _nothing_may_be_written(monkeypatch) -> None:
    """Fail the test if the restore gets as far as making its budget or decompressing anything."""

    def written(*args, **kwargs):
        raise AssertionError("the restore started writing")

    monkeypatch.setattr(restore, "_Budget", written)
    monkeypatch.setattr(restore, "open_decompressed", written)


def _one_line(info: pytest.ExceptionInfo, *words: str) -> str:
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def _left_behind(directory: Path, before: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - before


# ------------------------------------------------------------------ max_disk_size


def test_an_iso_declaring_a_disk_past_max_disk_size_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    iso = _bomb_iso(tmp_path, GIB)  # the audit's bomb: a table declaring a 1 GiB partition, a 1 GiB bz2 dd image
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _nothing_may_be_written(monkeypatch)
    with pytest.raises(DiskLimitError) as info:
        restore_iso_to_raw(iso, out_dir / "disk.raw", max_disk_size=512 * MIB, log_dir=out_dir)
    _one_line(info, "bomb-frontend.iso", "max_disk_size (536870912 bytes)", "refused")
    assert not any(out_dir.iterdir()), "a refused restore makes nothing"


def test_an_iso_whose_name_declares_a_disk_past_max_disk_size_is_refused_before_writing(isos, tmp_path: Path, monkeypatch) -> None:
    _nothing_may_be_written(monkeypatch)
    with pytest.raises(DiskLimitError) as info:
        restore_iso_to_raw(isos["frontend"], tmp_path / "disk.raw", max_disk_size=512 * MIB)  # its name says .1G
    _one_line(info, isos["frontend"].name, "max_disk_size (536870912 bytes)")
    assert not (tmp_path / "disk.raw").exists()


def test_a_restore_whose_data_grows_past_max_disk_size_is_stopped_and_removed(tmp_path: Path) -> None:
    iso = _lying_partclone_iso(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(BadImageError) as info:
        # The ISO declares a 2 MiB disk, within the limit; the partclone stream holds ~6 MiB.
        restore_iso_to_raw(iso, out_dir / "disk.raw", max_disk_size=4 * MIB, log_dir=out_dir)
    _one_line(info, "liar-frontend.iso", "max_disk_size (4194304 bytes)", "stopped")
    assert not any(out_dir.iterdir()), "the partial disk and partclone's log are removed"


def test_a_partclone_image_writing_past_the_end_of_its_disk_is_stopped_and_removed(tmp_path: Path) -> None:
    iso = _lying_partclone_iso(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(BadImageError) as info:
        restore_iso_to_raw(iso, out_dir / "disk.raw", log_dir=out_dir)  # default max_disk_size: 1 TiB
    _one_line(info, "liar-frontend.iso", "past the end of its 2097152-byte disk")
    assert not any(out_dir.iterdir())


def test_a_bomb_within_max_disk_size_restores_to_its_declared_disk_only(tmp_path: Path) -> None:
    iso = _bomb_iso(tmp_path, 32 * MIB)
    disk = tmp_path / "disk.raw"
    size = restore_iso_to_raw(iso, disk, max_disk_size=64 * MIB)
    assert size == disk.stat().st_size <= 64 * MIB
    assert disk.stat().st_blocks * 512 <= 33 * MIB


def test_the_cziso_path_refuses_an_iso_named_past_max_disk_size_without_running_cziso(tmp_path: Path) -> None:
    iso = tmp_path / "huge-frontend.2048G.iso"
    iso.write_bytes(b"not read")
    target = Target(url=f"file://{tmp_path}/huge.raw", kind="file", path=tmp_path / "huge.raw")
    with pytest.raises(DiskLimitError) as info:
        cziso_restore(tmp_path / "no-cziso", iso, target, size_setting=None, log_file=tmp_path / "r.log", max_disk_size=1 << 40)
    _one_line(info, iso.name, "max_disk_size (1099511627776 bytes)")
    assert not (tmp_path / "r.log").exists()


# ------------------------------------------------------------------ the last free GiB


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_restore_stops_before_taking_the_last_free_gib(tmp_path: Path, monkeypatch) -> None:
    iso = _bomb_iso(tmp_path, 256 * MIB)  # declares a sparse 257 MiB disk: fine; its 256 MiB of data are not
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    free = _free(out_dir)
    if free < 64 * MIB:
        pytest.skip("the test filesystem is nearly full already")
    # As if the filesystem were that full: 16 MiB above the reserve. Check every MiB (the real period, 256 MiB, is too slow here).
    monkeypatch.setattr(restore, "FREE_SPACE_RESERVE", free - 16 * MIB)
    monkeypatch.setattr(restore, "FREE_SPACE_CHECK_EVERY", MIB)
    with pytest.raises(DiskLimitError) as info:
        restore_iso_to_raw(iso, out_dir / "disk.raw", log_dir=out_dir)
    _one_line(info, "bomb-frontend.iso", "stopped", "free", "a restore leaves at least")
    assert not any(out_dir.iterdir()), "the partial disk is removed"


def test_a_restore_is_refused_when_its_filesystem_already_has_less_than_the_reserve_free(isos, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(restore, "FREE_SPACE_RESERVE", _free(tmp_path) + GIB)  # as if the filesystem were that full
    _nothing_may_be_written(monkeypatch)
    with pytest.raises(DiskLimitError) as info:
        restore_iso_to_raw(isos["compute"], tmp_path / "disk.raw")
    _one_line(info, isos["compute"].name, "refused", "a restore leaves at least")
    assert not (tmp_path / "disk.raw").exists()


def test_a_qcow2_copy_that_would_take_the_last_free_gib_is_not_made(isos, tmp_path: Path, monkeypatch) -> None:
    # A filesystem with 1 MiB above the reserve, whatever is written: the raw restore (tiny) fits, its qcow2 copy does not.
    monkeypatch.setattr(restore, "free_bytes", lambda where: restore.FREE_SPACE_RESERVE + MIB)
    repo = tmp_path / "repo"
    repo.mkdir()
    target = Target(url=f"file://{repo}/c.qcow2", kind="file", format="qcow2", path=repo / "c.qcow2")
    with pytest.raises(DiskLimitError) as info:
        deliver(isos["compute"], target, size_setting=None, work_dir=tmp_path / "work")
    _one_line(info, isos["compute"].name, "qcow2", "a restore leaves at least")
    assert not any(repo.iterdir()), "neither the raw scratch nor the qcow2 is left"
