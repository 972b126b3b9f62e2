"""``<cluster>-local.xml``: the downloaded description with its disks pointing at the restored images.

The old disk children are replaced, not appended to (legacy bug B35), by
:func:`pragma_core.clusterxml.replace_disk_source` for file images and by
:func:`replace_disk_volume` for ZFS volumes; the file is written (atomically)
only when its bytes change (legacy bug B32 rewrote it on every sync).

Where it goes (:func:`local_xml_location`): beside the downloaded description
(``<cluster>/<name>-local.xml``) when the images are in the cluster's
directory, or ZFS volumes. When ``local_image_url`` puts the file images
elsewhere in the repository -- ``file://$repository_dir/$imagename.raw``, the
original README's form, keeps them in the repository root -- it goes beside
them as ``<cluster>-local.xml``, so that each ``<source file>`` is a plain name
in the description's own directory, as pragma requires. Such a description
may then only name the images restored for it: a ``<frontend>`` or
``<compute>`` without an ISO of its own, or an ``<os>`` kernel, initrd or dtb,
would name other files of that directory, and is refused.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from pragma_core import ConfigError, FormatError, RepositoryError
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


def local_xml_location(xml_path: Path, images: dict[Role, Target], cluster: str) -> Path:
    """Where the ``-local.xml`` of the description at ``xml_path`` goes, given its restored ``images``.

    Beside the description (:func:`local_xml_path`) when every file image is
    inside the description's directory; else ``<images' directory>/<cluster>-local.xml``,
    which needs every file image in that one directory (else a
    :class:`~pragma_core.errors.ConfigError`).
    """
    home = Path(os.path.abspath(xml_path.parent))
    places = {target.path.parent for target in images.values() if target.kind == "file" and target.path is not None}
    if all(home == place or home in place.parents for place in places):
        return local_xml_path(xml_path)
    if len(places) > 1:
        listed = ", ".join(sorted(str(p) for p in places))
        raise ConfigError(
            f"local_image_url: the images of {cluster} must share one directory when outside it (got {listed})",
            key="repository_settings",
        )
    return places.pop() / f"{cluster}-local.xml"


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


def render_local_xml(source: Path, images: dict[Role, Target], directory: Path) -> bytes:
    """The ``-local.xml`` bytes for the description at ``source`` and the restored ``images``.

    ``directory`` is where the result is written (:func:`local_xml_location`);
    file images are named relative to it. Outside ``source``'s own directory
    the result may name nothing but ``images`` (see the module documentation).
    """
    moved = Path(os.path.abspath(directory)) != Path(os.path.abspath(source.parent))
    data: bytes | None = None
    for role in ("frontend", "compute"):
        target = images.get(role)  # type: ignore[call-overload]
        if target is None:
            continue
        # A path lets core check the name against the description's own directory; bytes, lexically.
        xml: bytes | Path = data if data is not None else _read_local(source, source.parent) if moved else source
        if target.kind == "file":
            assert target.path is not None
            relative = os.path.relpath(target.path, directory)
            data = replace_disk_source(xml, role, source_file=relative, format=target.format)  # type: ignore[arg-type]
        else:
            raw = _read_local(source, source.parent) if data is None else data
            data = replace_disk_volume(raw, role, target, label=str(source))  # type: ignore[arg-type]
    if data is None:
        data = _read_local(source, source.parent)
    if moved:
        _names_only(data, images, label=str(source))
    return data


def _names_only(xml: bytes, images: dict[Role, Target], *, label: str) -> None:
    """Refuse a moved description that would name files other than its restored images."""
    from defusedxml.ElementTree import fromstring

    root = fromstring(xml, forbid_dtd=True)
    for role in ("frontend", "compute"):
        section = root.find(role)
        if section is None:
            continue
        if role not in images:
            raise FormatError(
                f"<{role}> has no {role} ISO: with local_image_url outside the cluster directory"
                " every section needs its own restored image",
                path=label,
            )
        for tag in ("kernel", "initrd", "dtb"):
            if (section.findtext(f"domain/os/{tag}") or "").strip():
                raise FormatError(
                    f"<{role}> boots an <os><{tag}> file: not allowed with local_image_url outside the"
                    " cluster directory",
                    path=label,
                )


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
