"""Disk images from a repository, checked before any tool opens them.

A qcow2 image names its *backing file* in its header, and qemu, libvirt and
libguestfs open whatever that name says: ``json:{...}``, ``nbd:host:port``,
``http://...``, ``/etc/shadow``. So before ``qemu-img`` (or libvirt, or
guestfish) sees a repository's image, :func:`check_image` reads the qcow2
headers itself and walks the whole chain:

* every file of the chain is opened with :func:`pragma_core.paths.open_inside`
  under ``root`` (the cluster directory): a regular file really inside it,
  never a device, FIFO, directory or symbolic link leading out, never empty;
* a backing file name must be a plain relative file name (:func:`backing_name_problem`):
  no protocol (``name:`` before the first ``/``), no absolute path, no ``..``
  component, no control character. It is resolved, as qemu does, against the
  directory of the image that names it;
* every image with a backing file says the backing file's format (qcow2
  header extension ``0xe2792aca``), and that format is ``raw`` or ``qcow2``:
  without it qemu would *probe* the file, and a probed format such as vmdk
  names further files of its own;
* an external data file (extension ``0x44415441``, incompatible feature bit
  2) is refused: it is one more name qemu would open;
* the chain is at most :data:`MAX_CHAIN_DEPTH` images and has no loop.

Only then, when ``qemu_img`` is asked for and installed, each qcow2 level is
given to ``qemu-img info -U -f qcow2`` through the descriptor that was
checked (``/dev/fd/N``: the very file, not a name that could be swapped), and
without ``--backing-chain``: qemu-img then opens no backing file at all.

Formats: a cluster description may say only ``raw`` or ``qcow2``
(:data:`pragma_core.clusterxml.DISK_FORMATS`); :data:`IMAGE_FORMATS` here is
the same pair, and anything else (vmdk descriptors name extents anywhere,
other formats have their own external references) is refused.

Users: the staging engine (:func:`pragma_core.staging.inspect_image`) for
every image it hands out, and drivers before they build node disks on a base
image (the kvm_rocks plugin's :mod:`pragma_kvm_rocks.disks`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import attrs
from attrs import frozen

from .errors import StagingError
from .paths import UnsafeFileError, is_inside, open_inside

__all__ = [
    "IMAGE_FORMATS",
    "MAX_CHAIN_DEPTH",
    "CheckedImage",
    "ImageLevel",
    "Qcow2Header",
    "backing_name_problem",
    "check_image",
    "read_qcow2_header",
]

#: Disk image formats pragma accepts (a backing file's format included).
IMAGE_FORMATS = ("raw", "qcow2")
#: The most images one backing chain may hold (the image itself included).
MAX_CHAIN_DEPTH = 16
#: qemu's own limit on a backing file name (bytes).
MAX_BACKING_NAME = 1023
#: Seconds ``qemu-img info`` may take on one image.
QEMU_IMG_TIMEOUT = 60

QCOW2_MAGIC = b"QFI\xfb"
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
INCOMPAT_DATA_FILE = 1 << 2
_V2_HEADER = 72
_V3_HEADER = 104
_MIN_CLUSTER_BITS, _MAX_CLUSTER_BITS = 9, 21


@frozen(kw_only=True)
class Qcow2Header:
    """What pragma reads from a qcow2 header: enough to follow and judge its references."""

    version: int
    cluster_bits: int
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    incompatible_features: int


@frozen(kw_only=True)
class ImageLevel:
    """One file of a backing chain: where it is, its format and the size the guest sees."""

    path: Path
    format: str
    virtual_size: int
    backing_name: str | None = None


@frozen(kw_only=True)
class CheckedImage:
    """An image whose whole chain passed :func:`check_image`; ``chain[0]`` is the image itself."""

    path: Path
    format: str
    virtual_size: int
    backing_file: Path | None
    chain: tuple[ImageLevel, ...]


def _text(raw: bytes) -> str:
    return os.fsdecode(raw)


def _shown(name: str) -> str:
    """A name as it may appear in a one-line message (control characters escaped)."""
    return name if name.isprintable() else repr(name)


def read_qcow2_header(stream: BinaryIO, label: str | os.PathLike[str]) -> Qcow2Header:
    """Parse the qcow2 header (and its extensions) at the start of ``stream``.

    Reads at most one cluster (2 MiB at the very most). Raises
    :class:`StagingError` naming ``label`` for a file that is not a qcow2
    image or whose header is inconsistent; judging what it names is
    :func:`check_image`'s job.
    """
    stream.seek(0)
    head = stream.read(_V3_HEADER)
    if len(head) < _V2_HEADER or head[:4] != QCOW2_MAGIC:
        raise StagingError(f"{label}: not a qcow2 image (bad magic)")
    version, backing_offset, backing_size, cluster_bits, virtual_size = struct.unpack_from(">IQIIQ", head, 4)
    if version not in (2, 3):
        raise StagingError(f"{label}: not a usable qcow2 image (version {version})")
    if not _MIN_CLUSTER_BITS <= cluster_bits <= _MAX_CLUSTER_BITS:
        raise StagingError(f"{label}: not a usable qcow2 image (cluster_bits {cluster_bits})")
    cluster_size = 1 << cluster_bits
    incompatible = 0
    header_length = _V2_HEADER
    if version == 3:
        if len(head) < _V3_HEADER:
            raise StagingError(f"{label}: not a usable qcow2 image (truncated header)")
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        (header_length,) = struct.unpack_from(">I", head, 100)
        if header_length < _V3_HEADER or header_length > cluster_size or header_length % 8:
            raise StagingError(f"{label}: not a usable qcow2 image (header length {header_length})")
    stream.seek(0)
    first = stream.read(cluster_size)

    backing: str | None = None
    if backing_offset:
        if backing_size > MAX_BACKING_NAME:
            raise StagingError(f"{label}: backing file name is longer than {MAX_BACKING_NAME} bytes")
        end = backing_offset + backing_size
        if backing_offset < header_length or end > len(first):
            raise StagingError(f"{label}: not a usable qcow2 image (backing file name outside the header cluster)")
        backing = _text(first[backing_offset:end])
    ext_end = backing_offset if backing_offset else len(first)
    backing_format, data_file = _extensions(first, header_length, ext_end, label)
    return Qcow2Header(
        version=version,
        cluster_bits=cluster_bits,
        virtual_size=virtual_size,
        backing_file=backing,
        backing_format=backing_format,
        data_file=data_file,
        incompatible_features=incompatible,
    )


def _extensions(first: bytes, start: int, end: int, label: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """The backing format and external data file named by the header extensions in ``first[start:end]``."""
    backing_format: str | None = None
    data_file: str | None = None
    offset = start
    while offset + 8 <= end:
        kind, length = struct.unpack_from(">II", first, offset)
        if kind == EXT_END:
            break
        data_start = offset + 8
        if data_start + length > end:
            raise StagingError(f"{label}: not a usable qcow2 image (header extension {kind:#x} overruns the header)")
        data = first[data_start : data_start + length]
        if kind == EXT_BACKING_FORMAT:
            backing_format = _text(data)
        elif kind == EXT_DATA_FILE:
            data_file = _text(data) or "(unnamed)"
        offset = data_start + length + (-length % 8)
    return backing_format, data_file


def backing_name_problem(name: str) -> str | None:
    """Why ``name`` may not be a backing file name, or ``None`` when it is a plain relative file name.

    Refused: an empty name, control characters, a protocol or pseudo-protocol
    (``json:``, ``nbd:``, ``http://``, ``file:`` -- anything with a ``:``
    before the first ``/``, as qemu and libvirt read it), an absolute path
    and a ``..`` component.
    """
    if not name:
        return "is empty"
    if any(not ch.isprintable() for ch in name):
        return "contains control characters"
    first_component = name.split("/", 1)[0]
    if ":" in first_component:
        protocol = first_component.split(":", 1)[0]
        return f"names a protocol ({protocol}:)"
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "has a '..' component"
    return None


def _backing_path(level: Path, name: str, root: Path) -> Path:
    """The path qemu would open for ``level``'s backing file ``name``, once the name is allowed."""
    problem = backing_name_problem(name)
    if problem == "is an absolute path":
        where = os.path.normpath(name)
        if not (is_inside(where, str(root)) or is_inside(where, os.path.realpath(root))):
            raise StagingError(f"{level}: backing file {_shown(name)} is outside the cluster directory {root}")
    if problem is not None:
        raise StagingError(
            f"{level}: backing file {_shown(name)} {problem}; only a plain file name relative to the image is allowed"
        )
    return Path(os.path.normpath(os.path.join(level.parent, name)))


def _open_level(root: Path, path: Path, *, referrer: Path | None, name: str) -> BinaryIO:
    """Open one file of the chain under ``root``; every refusal is one line naming the file at fault."""
    try:
        return open_inside(root, path)
    except FileNotFoundError:
        if referrer is not None:
            raise StagingError(f"{referrer}: backing file {_shown(name)} not found ({path})") from None
        raise StagingError(f"{path}: image not found") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if referrer is None:
            what = "" if isinstance(exc, UnsafeFileError) else "cannot read image: "
            raise StagingError(f"{path}: {what}{reason}") from None
        if exc.errno == errno.EXDEV:
            raise StagingError(
                f"{referrer}: backing file {_shown(name)} is outside the cluster directory {root} ({path} {reason})"
            ) from None
        raise StagingError(f"{referrer}: backing file {_shown(name)}: {path} {reason}") from None


def check_image(path: Path, fmt: str, *, root: Path, qemu_img: bool = False) -> CheckedImage:
    """Check the image at ``path`` (format ``fmt``) and its whole backing chain under ``root``.

    The whole chain is read and judged by this function alone (see the
    module documentation for the rules) before any tool sees a file of it.
    With ``qemu_img=True`` and ``qemu-img`` installed, each qcow2 level is
    then also opened by ``qemu-img info`` (through the checked descriptor,
    never its backing files) to catch what the header alone does not show.
    Raises :class:`StagingError` with one line naming the file at fault.
    """
    path = Path(os.path.abspath(path))
    root = Path(os.path.abspath(root))
    with contextlib.ExitStack() as opened:
        levels = _walk_chain(path, fmt, root, opened)
        program = shutil.which("qemu-img") if qemu_img else None
        if program is not None:
            levels = [
                (attrs.evolve(level, virtual_size=_qemu_img_info(program, stream.fileno(), level.path)), stream)
                if level.format == "qcow2"
                else (level, stream)
                for level, stream in levels
            ]
    chain = tuple(level for level, _ in levels)
    return CheckedImage(
        path=path,
        format=fmt,
        virtual_size=chain[0].virtual_size,
        backing_file=chain[1].path if len(chain) > 1 else None,
        chain=chain,
    )


def _walk_chain(
    path: Path, fmt: str, root: Path, opened: contextlib.ExitStack
) -> list[tuple[ImageLevel, BinaryIO]]:
    """Open and judge every file of the chain (kept open in ``opened``), top first."""
    levels: list[tuple[ImageLevel, BinaryIO]] = []
    seen: set[tuple[int, int]] = set()
    current, current_fmt = path, fmt
    referrer: Path | None = None
    name = ""
    while True:
        if current_fmt not in IMAGE_FORMATS:
            raise StagingError(
                f"{referrer or current}: format {_shown(current_fmt)} is not allowed (only {' or '.join(IMAGE_FORMATS)})"
            )
        if len(levels) >= MAX_CHAIN_DEPTH:
            raise StagingError(f"{path}: backing chain is longer than {MAX_CHAIN_DEPTH} images")
        stream = opened.enter_context(_open_level(root, current, referrer=referrer, name=name))
        st = os.fstat(stream.fileno())
        if (st.st_dev, st.st_ino) in seen:
            raise StagingError(f"{referrer}: backing chain loops back to {current}")
        seen.add((st.st_dev, st.st_ino))
        if st.st_size == 0:
            raise StagingError(f"{current}: image is empty (0 bytes)")
        if current_fmt == "raw":
            levels.append((ImageLevel(path=current, format="raw", virtual_size=st.st_size), stream))
            return levels
        header = _qcow2_level(stream, current)
        levels.append(
            (
                ImageLevel(path=current, format="qcow2", virtual_size=header.virtual_size, backing_name=header.backing_file),
                stream,
            )
        )
        if header.backing_file is None:
            return levels
        name = header.backing_file
        referrer, current, current_fmt = current, _backing_path(current, name, root), _backing_format(current, header)


def _qcow2_level(stream: BinaryIO, path: Path) -> Qcow2Header:
    """The header of one qcow2 level, refused when it names an external data file."""
    header = read_qcow2_header(stream, path)
    if header.data_file is not None or header.incompatible_features & INCOMPAT_DATA_FILE:
        raise StagingError(
            f"{path}: has an external data file ({_shown(header.data_file or 'unnamed')}); "
            "pragma does not use qcow2 images with external data files"
        )
    return header


def _backing_format(path: Path, header: Qcow2Header) -> str:
    """The format ``path`` records for its backing file: required, and raw or qcow2."""
    name = _shown(header.backing_file or "")
    if header.backing_format is None:
        raise StagingError(
            f"{path}: backing file {name} has no backing format (qemu would probe it); "
            f"record it with 'qemu-img rebase -u -F raw|qcow2 -b {name} {path}'"
        )
    if header.backing_format not in IMAGE_FORMATS:
        raise StagingError(
            f"{path}: backing format {_shown(header.backing_format)} of {name} is not allowed "
            f"(only {' or '.join(IMAGE_FORMATS)})"
        )
    return header.backing_format


def _qemu_img_info(program: str, fd: int, label: Path) -> int:
    """``qemu-img info`` of the qcow2 open on ``fd`` (never its backing files); its virtual size."""
    from .http import Deadline
    from .tools import run_tool

    argv = [program, "info", "--output=json", "-U", "-f", "qcow2", f"/dev/fd/{fd}"]
    done = run_tool(argv, what=f"{label}: qemu-img info", deadline=Deadline(QEMU_IMG_TIMEOUT), error=StagingError,
                    pass_fds=(fd,), max_output=1 << 20)
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise StagingError(f"{label}: not a usable qcow2 image: {reason.replace(f'/dev/fd/{fd}', str(label))}")
    try:
        info = json.loads(done.stdout)
        return int(info["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StagingError(f"{label}: unexpected qemu-img info output: {exc}") from None
