"""Restoring real Clonezilla images from restore ISOs, without a VM."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import COMPUTE_FILES, FRONTEND_FILES
from czbuild import check_ext4, make_clonezilla_image, make_ext4, make_iso, make_plain_iso, partition_table, run
from pragma_repo_clonezilla.isofile import BadImageError
from pragma_repo_clonezilla.restore import restore_iso_to_raw, split_iso_name


def test_iso_name_gives_image_name_and_size_without_cutting_at_the_first_dot() -> None:
    assert split_iso_name("clonezilla-live-biolinux-frontend.40G.iso") == ("clonezilla-live-biolinux-frontend", 40 << 30)
    assert split_iso_name("centos-7.9-frontend.iso") == ("centos-7.9-frontend", None)


def test_restored_frontend_has_table_boot_code_swap_and_a_clean_ext4_with_the_files(isos, tmp_path: Path) -> None:
    disk = tmp_path / "front.raw"
    size = restore_iso_to_raw(isos["frontend"], disk)
    assert size == disk.stat().st_size == 1 << 30  # from ".1G" in the ISO name
    assert disk.stat().st_blocks * 512 < 32 << 20, "the disk must be sparse"
    table = partition_table(disk)
    assert [(p["start"], p["size"]) for p in table] == [(2048, 9 * 2048), (2048 + 9 * 2048, 2 * 2048)]
    with open(disk, "rb") as handle:
        assert handle.read(19).endswith(b"PRAGMA-BOOT-CODE")
    check_ext4(disk, 0, tmp_path, FRONTEND_FILES)
    swap = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(table[1]["start"] * 512), str(disk)],
                          capture_output=True, text=True).stdout
    assert "TYPE=swap" in swap and "0b0e6d34-5a7e-4c1e-9d2a-3b6f2f1e4c11" in swap


def test_gpt_xz_image_without_size_in_name_gets_a_disk_holding_its_table(isos, tmp_path: Path) -> None:
    disk = tmp_path / "comp.raw"
    size = restore_iso_to_raw(isos["compute"], disk)
    table = partition_table(disk)
    assert size >= (table[-1]["start"] + table[-1]["size"] + 33) * 512
    assert size % (1 << 20) == 0
    check_ext4(disk, 0, tmp_path, COMPUTE_FILES)


def test_size_setting_enlarges_the_disk(isos, tmp_path: Path) -> None:
    disk = tmp_path / "big.raw"
    assert restore_iso_to_raw(isos["compute"], disk, size_setting=64 << 20) == 64 << 20
    check_ext4(disk, 0, tmp_path, COMPUTE_FILES)


@pytest.mark.parametrize("compression", ["bz2", "uncomp"])
def test_bz2_and_uncompressed_partition_images_restore(compression: str, tmp_path: Path) -> None:
    files = {"data.bin": os.urandom(5000)}
    fs = make_ext4(tmp_path, "fs", files)
    image = make_clonezilla_image(tmp_path, "img", [{"size_mib": 8, "fs": fs, "compression": compression}])
    iso = make_iso(image, tmp_path / "img-frontend.iso")
    restore_iso_to_raw(iso, tmp_path / "out.raw")
    check_ext4(tmp_path / "out.raw", 0, tmp_path, files)


def test_dd_image_is_written_sparse_at_its_partition_offset(tmp_path: Path) -> None:
    payload = os.urandom(4096) + bytes(2 << 20) + b"tail-marker"
    image = make_clonezilla_image(tmp_path, "dd", [{"size_mib": 4, "dd": payload}])
    iso = make_iso(image, tmp_path / "dd-frontend.iso")
    disk = tmp_path / "dd.raw"
    restore_iso_to_raw(iso, disk)
    with open(disk, "rb") as handle:
        handle.seek(2048 * 512)
        assert handle.read(len(payload)) == payload
    assert disk.stat().st_blocks * 512 < 1 << 20


# ------------------------------------------------------------------ bad input


def _broken_image(tmp_path: Path, mutate) -> Path:
    fs = make_ext4(tmp_path, "fs", {"a": os.urandom(300_000)})
    image = make_clonezilla_image(tmp_path, "bad", [{"size_mib": 8, "fs": fs}], piece=100_000)
    mutate(image)
    return make_iso(image, tmp_path / "bad-frontend.iso")


def _restore_fails(iso: Path, tmp_path: Path, *words: str) -> str:
    out = tmp_path / "out.raw"
    with pytest.raises(BadImageError) as info:
        restore_iso_to_raw(iso, out)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert not out.exists(), "a failed restore must not leave its output"
    return message


def test_a_file_that_is_not_an_iso_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "x-frontend.iso"
    fake.write_bytes(b"<html>quota</html>" * 100)
    _restore_fails(fake, tmp_path, "not an ISO 9660 image")


def test_an_iso_without_home_partimag_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme").write_text("hi")
    _restore_fails(make_plain_iso(tmp_path / "d", tmp_path / "p-frontend.iso"), tmp_path, "/home/partimag")


def test_a_truncated_piece_is_refused(tmp_path: Path) -> None:
    def cut(image: Path) -> None:
        piece = sorted(image.glob("*.gz.a?"))[-1]
        piece.write_bytes(piece.read_bytes()[: piece.stat().st_size // 2])

    _restore_fails(_broken_image(tmp_path, cut), tmp_path, "truncated")


def test_a_missing_piece_is_named(tmp_path: Path) -> None:
    def drop(image: Path) -> None:
        assert len(list(image.glob("*.gz.a?"))) >= 3
        (image / "vda1.ext4-ptcl-img.gz.ab").unlink()

    _restore_fails(_broken_image(tmp_path, drop), tmp_path, ".ab", "missing")


def test_an_unknown_filesystem_is_named(tmp_path: Path) -> None:
    def rename(image: Path) -> None:
        for piece in image.glob("vda1.ext4-*"):
            piece.rename(image / piece.name.replace(".ext4-", ".nosuchfs-"))

    _restore_fails(_broken_image(tmp_path, rename), tmp_path, "unknown filesystem", "nosuchfs")


@pytest.mark.parametrize(("suffix", "words"), [("zz9", ("unknown compression", "zz9")), ("lz4", ("not supported",))])
def test_an_unknown_or_unsupported_compression_is_named(suffix: str, words, tmp_path: Path) -> None:
    def rename(image: Path) -> None:
        for piece in image.glob("vda1.*"):
            piece.rename(image / piece.name.replace(".gz.", f".{suffix}."))

    _restore_fails(_broken_image(tmp_path, rename), tmp_path, *words)


def test_a_truncated_iso_download_is_refused(isos, tmp_path: Path) -> None:
    iso = tmp_path / "cut-frontend.iso"
    data = isos["frontend"].read_bytes()
    iso.write_bytes(data[: len(data) // 3])
    _restore_fails(iso, tmp_path)


def test_an_iso_that_is_a_link_leading_out_of_its_directory_is_refused_unread(isos, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    link = downloads / "clonezilla-live-demo-frontend.1G.iso"
    link.symlink_to(isos["frontend"])  # a real, valid ISO -- but not in the download directory
    _restore_fails(link, tmp_path, "cannot open the ISO")


def test_an_iso_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x-frontend.iso"
    os.mkfifo(fifo)
    _restore_fails(fifo, tmp_path, "cannot open the ISO")


# ------------------------------------------------------------------ a hostile ISO


def test_a_malformed_iso_that_trips_pycdlib_is_a_bad_image_naming_it(isos, tmp_path: Path) -> None:
    from czbuild import joliet_file_as_directory

    iso = tmp_path / "hostile-frontend.iso"
    iso.write_bytes(joliet_file_as_directory(isos["frontend"].read_bytes(), "clonezilla-img"))
    with pytest.raises(BadImageError, match=r"^hostile-frontend\.iso: unreadable ISO 9660 image \(KeyError: \d+\)$"):
        restore_iso_to_raw(iso, tmp_path / "out.raw")
    assert not (tmp_path / "out.raw").exists()


@pytest.mark.parametrize(
    "error",
    [
        KeyError(33),
        AttributeError("'NoneType' object has no attribute 'extent_location'"),
        UnicodeDecodeError("utf-16-be", b"\xd8\x00", 0, 2, "unexpected end of data"),
        IndexError("list index out of range"),
        struct.error("unpack requires a buffer of 33 bytes"),
        TypeError("unsupported operand"),
        RecursionError("maximum recursion depth exceeded"),
    ],
    ids=lambda error: type(error).__name__,
)
@pytest.mark.parametrize("where", ["open_fp", "walk", "get_file_byte_extents"])
def test_any_error_of_pycdlib_on_a_hostile_iso_is_a_bad_image(isos, tmp_path: Path, monkeypatch, error, where) -> None:
    import pycdlib

    def hostile(*args, **kwargs):
        raise error

    monkeypatch.setattr(pycdlib.PyCdlib, where, hostile)
    with pytest.raises(BadImageError) as info:
        restore_iso_to_raw(isos["frontend"], tmp_path / "out.raw")
    message = str(info.value)
    assert message.startswith(f"{isos['frontend'].name}: ") and "\n" not in message
    assert f"unreadable ISO 9660 image ({type(error).__name__}" in message


def _endless_boot_catalog(tmp_path: Path, tail: int) -> Path:
    """An ISO whose El Torito boot catalog never ends: after its first two entries, 32-byte section
    entries run on to the end of the file, ``tail`` bytes of them past the ISO's own data. pycdlib
    reads on, sector after sector, keeping one object per entry."""
    content = tmp_path / "content"
    content.mkdir()
    (content / "boot.img").write_bytes(bytes(2048))
    iso = tmp_path / "endless-frontend.iso"
    run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-b", "boot.img", "-no-emul-boot", "-boot-load-size", "4",
        "-c", "boot.cat", "-o", iso, content)
    data = bytearray(iso.read_bytes())
    assert data[17 * 2048 + 1: 17 * 2048 + 6] == b"CD001" and data[17 * 2048] == 0, "sector 17 is the boot record"
    catalog = struct.unpack_from("<I", data, 17 * 2048 + 0x47)[0] * 2048
    entry = b"\x88" + bytes(31)
    body = entry * ((len(data) - catalog - 64) // 32)
    data[catalog + 64: catalog + 64 + len(body)] = body
    iso.write_bytes(bytes(data[: catalog + 64 + len(body)]) + entry * (tail // 32))
    return iso


def test_an_iso_whose_metadata_never_ends_is_refused_once_its_read_budget_is_spent(tmp_path: Path, monkeypatch) -> None:
    from pragma_repo_clonezilla import isofile

    monkeypatch.setattr(isofile, "PARSE_MAX_BYTES", 1 << 20)
    iso = _endless_boot_catalog(tmp_path, tail=4 << 20)
    with pytest.raises(BadImageError) as info:
        restore_iso_to_raw(iso, tmp_path / "out.raw")
    assert str(info.value) == "endless-frontend.iso: its metadata takes more than 1 MiB to read (a hostile or broken ISO)"
    assert not (tmp_path / "out.raw").exists()


def test_an_iso_whose_metadata_takes_too_long_to_parse_is_refused(isos, tmp_path: Path, monkeypatch) -> None:
    from pragma_repo_clonezilla import isofile

    monkeypatch.setattr(isofile, "PARSE_SECONDS", 0.0)
    with pytest.raises(BadImageError, match=r": its metadata takes more than 0 s to read \(a hostile or broken ISO\)$"):
        restore_iso_to_raw(isos["frontend"], tmp_path / "out.raw")


def test_a_real_clonezilla_iso_parses_well_within_the_budget(isos) -> None:
    from pragma_repo_clonezilla import isofile

    class Counting(isofile._Budget):
        spent = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            Counting.spent += len(data)
            return data

    original = isofile._Budget
    isofile._Budget = Counting  # type: ignore[misc]
    try:
        with isofile.IsoFile(isos["frontend"]):
            pass
    finally:
        isofile._Budget = original  # type: ignore[misc]
    assert 0 < Counting.spent < isofile.PARSE_MAX_BYTES // 64
