"""The layout of a Clonezilla (partclone) disk image directory, as found in a restore ISO.

A saved disk ``vda`` lives in ``/home/partimag/<image>/``:

``disk`` / ``parts``
    the disk and the partitions that were saved (``vda``, ``vda1 vda2``);
``vda-pt.sf``
    the partition table as ``sfdisk -d`` printed it;
``vda-pt.parted``
    ``parted -s /dev/vda unit s print`` (gives the disk size in sectors);
``vda-mbr``, ``vda-hidden-data-after-mbr``
    the first sector (boot code) and the gap before the first partition;
``vda1.ext4-ptcl-img.gz.aa``, ``.ab``, ...
    a partclone image of ``vda1`` (filesystem ``ext4``), compressed with
    ``gz`` and split; ``vda2.dd-img.xz.aa`` or ``vda2.dd-ptcl-img.gz.aa`` for
    a partition copied with dd or partclone.dd;
``swappt-vda5.info``
    ``UUID="..."`` and ``LABEL="..."`` of a swap partition (not imaged).

This module only reads names and small text files; :mod:`.restore` writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from attrs import frozen

from .isofile import BadImageError

PARTIMAG = "/home/partimag"
#: Compression suffixes Clonezilla writes, and what we call them.
COMPRESSIONS = {
    "gz": "gzip",
    "bz2": "bzip2",
    "xz": "xz",
    "lzma": "lzma",
    "zst": "zstd",
    "zstd": "zstd",
    "uncomp": "none",
    "lz4": "lz4",
    "lzo": "lzo",
    "lzip": "lzip",
    "lz": "lzip",
}

_PIECE = re.compile(
    r"(?P<dev>[A-Za-z0-9_-]+)\."
    r"(?:(?P<fs>[A-Za-z0-9+]+)-ptcl-img|(?P<dd>dd)-img)"
    r"\.(?P<comp>[A-Za-z0-9]+)"
    r"(?:\.(?P<piece>[a-z]{2,}))?"
)
_SF_LINE = re.compile(r"(?P<dev>\S+)\s*:\s*(?P<fields>.*)")
_PARTED_DISK = re.compile(r"^Disk\s+\S+:\s*(\d+)s\s*$", re.MULTILINE)
_SWAP_FIELD = re.compile(r'(UUID|LABEL)="([^"]*)"')


@frozen(kw_only=True)
class Partition:
    """One partition of the saved table (sectors of ``sector_size`` bytes)."""

    device: str
    start: int
    size: int
    type: str = ""


@frozen(kw_only=True)
class PartitionTable:
    """A parsed ``sfdisk -d`` dump."""

    label: str
    sector_size: int
    partitions: tuple[Partition, ...]
    last_lba: int | None
    text: str

    @property
    def end_bytes(self) -> int:
        """Where the last partition ends, in bytes."""
        return max((p.start + p.size for p in self.partitions), default=0) * self.sector_size

    def find(self, device: str) -> Partition | None:
        return next((p for p in self.partitions if p.device == device), None)

    def for_sfdisk(self) -> bytes:
        """The dump to feed ``sfdisk`` for a disk of any size.

        ``device:`` names the original device and ``last-lba:`` pins GPT's
        end to the original disk; both are dropped so sfdisk fits the table
        (and GPT's backup header) to the new disk.
        """
        kept = [
            line
            for line in self.text.splitlines()
            if not re.match(r"\s*(device|last-lba)\s*:", line)
        ]
        return ("\n".join(kept) + "\n").encode()


@frozen(kw_only=True)
class PartitionImage:
    """The image of one partition: ``pieces`` are file names in order (``.aa``, ``.ab`` ...)."""

    device: str
    filesystem: str  # "dd" for raw copies
    compression: str  # a value of COMPRESSIONS
    pieces: tuple[str, ...]


@frozen(kw_only=True)
class ClonezillaImage:
    """Everything needed to rebuild the disk, with paths inside the ISO."""

    name: str
    directory: str
    disk: str
    table: PartitionTable
    partitions: tuple[PartitionImage, ...]
    swaps: tuple[tuple[str, str, str], ...]  # (device, uuid, label)
    mbr: str | None
    hidden_after_mbr: str | None
    disk_sectors: int | None  # from the parted dump

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"


def _device_name(device: str) -> str:
    name = device.removeprefix("/dev/")
    return name.replace("/", "-")


def parse_sfdisk_dump(text: str, label: str) -> PartitionTable:
    """Parse a ``sfdisk -d`` dump; a :class:`BadImageError` naming ``label`` when it is not one."""
    header: dict[str, str] = {}
    partitions: list[Partition] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SF_LINE.fullmatch(line)
        if match and "=" in match.group("fields") and match.group("dev").startswith("/"):
            fields: dict[str, str] = {}
            for item in match.group("fields").split(","):
                key, _, value = item.partition("=")
                fields[key.strip()] = value.strip()
            try:
                partitions.append(
                    Partition(
                        device=_device_name(match.group("dev")),
                        start=int(fields["start"]),
                        size=int(fields["size"]),
                        type=fields.get("type", ""),
                    )
                )
            except (KeyError, ValueError):
                raise BadImageError(f"{label} line {number}: partition without a numeric start and size") from None
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise BadImageError(f"{label} line {number}: not an sfdisk dump line: {line[:60]!r}")
        header[key.strip()] = value.strip()
    if header.get("label") not in ("dos", "gpt"):
        raise BadImageError(f"{label}: unknown partition table label {header.get('label')!r} (dos or gpt)")
    if header.get("unit", "sectors") != "sectors":
        raise BadImageError(f"{label}: unit {header['unit']!r} is not supported (sectors)")
    try:
        sector_size = int(header.get("sector-size", "512"))
        last_lba = int(header["last-lba"]) if "last-lba" in header else None
    except ValueError:
        raise BadImageError(f"{label}: sector-size and last-lba must be numbers") from None
    if sector_size not in (512, 1024, 2048, 4096):
        raise BadImageError(f"{label}: unusual sector size {sector_size}")
    return PartitionTable(
        label=header["label"], sector_size=sector_size, partitions=tuple(partitions), last_lba=last_lba, text=text
    )


def _split_suffixes(count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [letters[i // 26] + letters[i % 26] for i in range(count)]


def read_image(
    directory: str,
    files: list[str],
    read: Callable[[str], bytes],
    *,
    label: str,
) -> ClonezillaImage:
    """Read the image in ISO directory ``directory`` holding ``files``; ``read`` returns a small file's bytes."""
    name = directory.rstrip("/").rsplit("/", 1)[-1]
    where = f"{label}: {directory}"
    tables = sorted(f[: -len("-pt.sf")] for f in files if f.endswith("-pt.sf"))
    if not tables:
        raise BadImageError(f"{where}: no <disk>-pt.sf partition table dump (not a Clonezilla disk image)")
    disks = tables
    if "disk" in files:
        listed = read(f"{directory}/disk").decode(errors="replace").split()
        disks = [d for d in listed if d in tables] or tables
    if len(disks) != 1:
        raise BadImageError(f"{where}: the image holds {len(disks)} disks ({', '.join(disks)}); one is supported")
    disk = disks[0]
    try:
        table_text = read(f"{directory}/{disk}-pt.sf").decode()
    except UnicodeDecodeError:
        raise BadImageError(f"{where}/{disk}-pt.sf: not text") from None
    table = parse_sfdisk_dump(table_text, f"{label}: {disk}-pt.sf")
    if any(f.startswith("lvm_") for f in files):
        raise BadImageError(f"{where}: LVM volume images are not supported")

    grouped: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for file in files:
        match = _PIECE.fullmatch(file)
        if not match:
            continue
        fs = "dd" if match.group("dd") else match.group("fs")
        key = (match.group("dev"), fs, match.group("comp"))
        grouped.setdefault(key, []).append((match.group("piece") or "", file))
    images: list[PartitionImage] = []
    seen: set[str] = set()
    for (device, fs, comp), pieces in sorted(grouped.items()):
        if device in seen:
            raise BadImageError(f"{where}: more than one image of partition {device}")
        seen.add(device)
        if comp not in COMPRESSIONS:
            raise BadImageError(f"{where}: {pieces[0][1]}: unknown compression {comp!r}")
        pieces.sort(key=lambda p: (len(p[0]), p[0]))
        suffixes = [p[0] for p in pieces]
        if suffixes != [""] and all(len(s) == 2 for s in suffixes) and suffixes != _split_suffixes(len(suffixes)):
            missing = next(e for e, s in zip(_split_suffixes(len(suffixes) + 1), suffixes + [""]) if e != s)
            raise BadImageError(f"{where}: piece .{missing} of the {device} image is missing")
        if table.find(device) is None:
            raise BadImageError(f"{where}: image of {device}, which is not in {disk}-pt.sf")
        images.append(PartitionImage(device=device, filesystem=fs, compression=COMPRESSIONS[comp], pieces=tuple(p[1] for p in pieces)))

    swaps: list[tuple[str, str, str]] = []
    for file in files:
        if file.startswith("swappt-") and file.endswith(".info"):
            device = file[len("swappt-") : -len(".info")]
            if table.find(device) is None:
                continue
            values = dict(_SWAP_FIELD.findall(read(f"{directory}/{file}").decode(errors="replace")))
            swaps.append((device, values.get("UUID", ""), values.get("LABEL", "")))

    disk_sectors = None
    if f"{disk}-pt.parted" in files:
        match = _PARTED_DISK.search(read(f"{directory}/{disk}-pt.parted").decode(errors="replace"))
        if match:
            disk_sectors = int(match.group(1))

    if not images:
        raise BadImageError(f"{where}: no partition images (*-ptcl-img.* or *.dd-img.*)")
    return ClonezillaImage(
        name=name,
        directory=directory,
        disk=disk,
        table=table,
        partitions=tuple(images),
        swaps=tuple(swaps),
        mbr=f"{disk}-mbr" if f"{disk}-mbr" in files else None,
        hidden_after_mbr=f"{disk}-hidden-data-after-mbr" if f"{disk}-hidden-data-after-mbr" in files else None,
        disk_sectors=disk_sectors,
    )
