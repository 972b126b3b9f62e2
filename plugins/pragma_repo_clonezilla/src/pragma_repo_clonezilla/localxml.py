"""``<cluster>-local.xml``: the downloaded description with its disks pointing at the restored images.

The old disk children are replaced, not appended to (legacy bug B35), by
:func:`pragma_core.clusterxml.replace_disk_source` for file images and by
:func:`replace_disk_volume` for ZFS volumes; the file is written (atomically)
only when its bytes change (legacy bug B32 rewrote it on every sync).
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from pragma_core import FormatError, RepositoryError
from pragma_core.pluginkit import (
    MAX_DESCRIPTION_BYTES,
    open_inside,
    replace_disk_source,
)

from .target import Target

Role = Literal["frontend", "compute"]


def local_xml_path(xml_path: Path) -> Path:
    """``biolinux.xml`` -> ``biolinux-local.xml`` (only the final suffix is replaced)."""
    stem = xml_path.name[: -len(".xml")] if xml_path.name.lower().endswith(".xml") else xml_path.name
    return xml_path.with_name(f"{stem}-local.xml")


def replace_disk_volume(xml: bytes, role: Role, target: Target, *, label: str) -> bytes:
    """Point the ``role`` node's first disk at a ZFS volume (``<source volume pool host>``), legacy style."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(xml, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise FormatError(f"not a valid cluster description: {exc}", path=label) from None
    section = root.find(role)
    disk = None
    if section is not None:
        disk = next((d for d in section.iterfind("domain/devices/disk") if d.get("device", "disk") == "disk"), None)
    if disk is None:
        raise FormatError(f"<{role}> has no domain/devices/disk for the node image", path=label)
    for child in list(disk):
        if child.tag in ("driver", "source", "target", "file"):
            disk.remove(child)
    disk.attrib.clear()
    disk.set("type", "volume")
    disk.set("device", "disk")
    disk.insert(0, ET.Element("driver", {"name": "qemu", "type": "raw"}))
    disk.insert(1, ET.Element("source", {"volume": target.volume, "pool": target.pool, "host": target.host}))
    disk.insert(2, ET.Element("target", {"dev": "vda", "bus": "virtio"}))
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _read_local(path: Path, root: Path) -> bytes:
    """A downloaded or written description: a regular file really inside ``root``, bounded in size."""
    try:
        with open_inside(root, path) as handle:
            data = handle.read(MAX_DESCRIPTION_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read cluster description: {exc.strerror or exc}") from None
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise FormatError(f"cluster description is larger than {MAX_DESCRIPTION_BYTES} bytes", path=path)
    return data


def render_local_xml(source: Path, images: dict[Role, Target], cluster_dir: Path) -> bytes:
    """The ``-local.xml`` bytes for the description at ``source`` and the restored ``images``."""
    data: bytes | None = None
    for role in ("frontend", "compute"):
        target = images.get(role)  # type: ignore[call-overload]
        if target is None:
            continue
        xml: bytes | Path = source if data is None else data
        if target.kind == "file":
            assert target.path is not None
            relative = os.path.relpath(target.path, cluster_dir)
            data = replace_disk_source(xml, role, source_file=relative, format=target.format)  # type: ignore[arg-type]
        else:
            raw = _read_local(source, cluster_dir) if data is None else data
            data = replace_disk_volume(raw, role, target, label=str(source))  # type: ignore[arg-type]
    if data is None:
        data = _read_local(source, cluster_dir)
    return data


def write_if_changed(path: Path, data: bytes) -> bool:
    """Atomically write ``data`` to ``path`` unless it already holds exactly that; whether it wrote."""
    try:
        if _read_local(path, path.parent) == data:
            return False
    except FileNotFoundError:
        pass
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
