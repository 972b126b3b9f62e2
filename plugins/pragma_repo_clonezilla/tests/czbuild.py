"""Build real Clonezilla images and restore ISOs for the tests (mkfs.ext4 -d, partclone, sfdisk, xorriso)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import subprocess
import zlib
from pathlib import Path

SECTOR = 512
COMPRESSORS = {
    "gz": lambda data: gzip.compress(data, compresslevel=1),
    "bz2": lambda data: bz2.compress(data, compresslevel=1),
    "xz": lambda data: lzma.compress(data, preset=0),
    "uncomp": lambda data: data,
}


def run(*argv: str | Path, stdin: bytes | None = None) -> bytes:
    return subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, check=True).stdout


def make_ext4(work: Path, name: str, files: dict[str, bytes], size_mib: int = 8) -> Path:
    """An ext4 filesystem image holding ``files`` (made with ``mkfs.ext4 -d``)."""
    src = work / f"{name}-src"
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    image = work / f"{name}.fs"
    with open(image, "wb") as handle:
        handle.truncate(size_mib << 20)
    run("mkfs.ext4", "-q", "-F", "-d", src, image)
    return image


def partclone_image(fs: Path, work: Path) -> bytes:
    """``partclone.ext4 -c -s fs -o -`` (with a log file, as Clonezilla does)."""
    return run("partclone.ext4", "-c", "-s", fs, "-o", "-", "-L", work / f"{fs.name}.clone.log", "-q", "-f", "0")


def with_device_size(image: bytes, device_size: int) -> bytes:
    """A partclone (v2) image whose header claims a device of ``device_size`` bytes, its header CRC fixed.

    partclone checks only that claim against the target: the blocks are still
    written where they belong, past the claimed end -- a hostile image.
    """
    assert image.startswith(b"partclone-image") and image[30:34] == b"0002", "not a partclone v2 image"
    data = bytearray(image)
    struct.pack_into("<Q", data, 52, device_size)  # fs_info.device_size
    struct.pack_into("<I", data, 106, zlib.crc32(bytes(data[:106])) ^ 0xFFFFFFFF)  # partclone's CRC-32: no final xor
    return bytes(data)


def bz2_bomb(total: int, byte: bytes = b"\xa5", stream: int = 1 << 20) -> bytes:
    """Concatenated bzip2 streams that decompress to ``total`` bytes of ``byte`` (not zeros: they are really written)."""
    assert total % stream == 0
    return bz2.compress(byte * stream, compresslevel=9) * (total // stream)


def split_pieces(data: bytes, piece: int) -> list[tuple[str, bytes]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)] or [b""]
    return [(letters[i // 26] + letters[i % 26], chunk) for i, chunk in enumerate(chunks)]


def make_clonezilla_image(
    work: Path,
    name: str,
    partitions: list[dict],
    *,
    label: str = "dos",
    disk: str = "vda",
    piece: int = 256 * 1024,
) -> Path:
    """A Clonezilla image directory for a disk with ``partitions``.

    Each partition dict has ``size_mib`` and one of: ``fs`` (a filesystem
    image to save with partclone), ``dd`` (bytes for a dd image) or
    ``swap=True``; optional ``compression`` (gz, bz2, xz, uncomp);
    optional ``stored``: the compressed bytes to store as they are (a
    hostile stream; ``dd`` is then ignored); optional ``device_size``: the
    device size the partclone header claims (see :func:`with_device_size`).
    """
    directory = work / name
    directory.mkdir(parents=True)
    scratch = work / f"{name}.scratch-disk"
    start = 2048
    layout = []
    for part in partitions:
        sectors = part["size_mib"] * (1 << 20) // SECTOR
        layout.append((start, sectors, part))
        start += sectors
    total = (start + 2048) * SECTOR
    with open(scratch, "wb") as handle:
        handle.truncate(total)
    lines = [f"label: {label}", "unit: sectors", ""]
    for i, (first, sectors, part) in enumerate(layout, 1):
        kind = "82" if part.get("swap") else "83"
        if label == "gpt":
            kind = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" if part.get("swap") else "0FC63DAF-8483-4772-8E47-3D69D8477DE4"
        lines.append(f"/dev/{disk}{i} : start={first}, size={sectors}, type={kind}")
    run("sfdisk", "-q", scratch, stdin="\n".join(lines).encode() + b"\n")
    dump = run("sfdisk", "-d", scratch).decode().replace(str(scratch), f"/dev/{disk}")
    (directory / f"{disk}-pt.sf").write_text(dump)
    with open(scratch, "rb") as handle:
        mbr = handle.read(512)
    (directory / f"{disk}-mbr").write_bytes(b"\xfa\xeb\x63PRAGMA-BOOT-CODE" + mbr[18:])
    (directory / "disk").write_text(f"{disk}\n")
    saved = []
    for i, (_, _, part) in enumerate(layout, 1):
        device = f"{disk}{i}"
        comp = part.get("compression", "gz")
        if part.get("swap"):
            (directory / f"swappt-{device}.info").write_text('UUID="0b0e6d34-5a7e-4c1e-9d2a-3b6f2f1e4c11"\nLABEL="swapper"\n')
            continue
        if "fs" in part:
            stream = partclone_image(part["fs"], work)
            if "device_size" in part:
                stream = with_device_size(stream, part["device_size"])
            base = f"{device}.ext4-ptcl-img.{comp}"
        else:
            stream = part.get("dd", b"")
            base = f"{device}.dd-img.{comp}"
        stored = part["stored"] if "stored" in part else COMPRESSORS[comp](stream)
        for suffix, chunk in split_pieces(stored, piece):
            (directory / f"{base}.{suffix}").write_bytes(chunk)
        saved.append(device)
    (directory / "parts").write_text(" ".join(saved) + "\n")
    (directory / "clonezilla-img").write_text("This is a Clonezilla image\n")
    scratch.unlink()
    return directory


def make_iso(image_dir: Path, iso: Path, *, image_name: str | None = None) -> Path:
    """Pack ``image_dir`` as ``/home/partimag/<name>`` into an ISO with xorriso."""
    name = image_name or image_dir.name
    run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-graft-points", "-V", "CZRESTORE",
        "-o", iso, f"/home/partimag/{name}={image_dir}")
    return iso


def make_plain_iso(directory: Path, iso: Path) -> Path:
    """An ISO of ``directory`` with no Clonezilla image in it."""
    run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", iso, directory)
    return iso


def joliet_file_as_directory(iso: bytes, name: str) -> bytes:
    """``iso`` with the Joliet record of file ``name`` flagged as a directory.

    pycdlib then looks for a directory at that file's extent and fails with a
    bare ``KeyError`` -- a hostile ISO in two bits.
    """
    wanted = name.encode("utf-16-be")
    at = iso.find(bytes([len(wanted)]) + wanted)
    assert at > 0, f"no Joliet record for {name}"
    record = at - 32  # the name's length is byte 32 of a directory record; the flags, byte 25
    data = bytearray(iso)
    data[record + 25] |= 0x02
    return bytes(data)


def read_range(path: Path, offset: int, length: int, dest: Path) -> Path:
    """Copy bytes [offset, offset+length) of ``path`` to ``dest`` (sparse)."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        src.seek(offset)
        left = length
        while left:
            block = src.read(min(left, 1 << 20))
            if not block:
                break
            if block.count(0) == len(block):
                out.seek(len(block), os.SEEK_CUR)
            else:
                out.write(block)
            left -= len(block)
        out.truncate(length)
    return dest


def partition_table(disk: Path) -> list[dict]:
    import json

    return json.loads(run("sfdisk", "--json", disk))["partitiontable"]["partitions"]


def check_ext4(disk: Path, part_index: int, work: Path, expected: dict[str, bytes]) -> None:
    """e2fsck -fn on partition ``part_index`` of ``disk`` passes and every file reads back identically."""
    entry = partition_table(disk)[part_index]
    extracted = read_range(disk, entry["start"] * SECTOR, entry["size"] * SECTOR, work / f"check-{disk.name}-{part_index}.fs")
    result = subprocess.run(["e2fsck", "-fn", str(extracted)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for rel, data in expected.items():
        got = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(extracted)], capture_output=True, check=True).stdout
        assert got == data, f"/{rel} differs after restore"
    extracted.unlink()
