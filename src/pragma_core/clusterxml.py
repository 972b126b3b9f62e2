"""The cluster description XML ("vc-in"): what a virtual cluster image is made of.

A description is a frontend and an optional compute section, each holding a
libvirt ``<domain>`` whose first disk names the image::

    <vc version="0.1" vcout-format="1">
      <virtualization engine="kvm" type="hvm" arch="x86_64"/>
      <frontend>
        <domain type="kvm">
          <memory unit="GiB">2</memory> <vcpu>1</vcpu>
          <devices>
            <disk type="file" device="disk">
              <driver name="qemu" type="raw"/>
              <source file="demo-frontend.img" sha256="..."/>
              <file type="splited_gzip">
                <part size="1048576" sha256="...">demo-frontend.img.gz.aa</part>
                <part>demo-frontend.img.gz.ab</part>
              </file>
            </disk>
          </devices>
        </domain>
      </frontend>
      <compute> ... </compute>
    </vc>

Rules (legacy behaviour kept where it was sound, see the behaviour reference §4):

* The root element's name is not checked (``<vc>`` by convention). Its child
  ``<virtualization arch>`` must say ``x86_64``. ``<frontend>`` is required,
  ``<compute>`` optional; each appears at most once and holds one ``<domain>``.
* The disk is the first ``domain/devices/disk`` whose ``device`` is ``disk``
  (cdroms and floppies are skipped). Its ``<driver type>`` is the image format,
  ``raw`` (default) or ``qcow2``. Its ``<source file>`` names the image relative
  to the XML's directory; an absolute name must lie inside that directory.
  ZFS disks (``<source volume pool host>``) and block devices are refused
  with a message: pragma stages file images only.
* ``<file type="...">`` (inside ``<disk>``, or as in legacy files anywhere in
  the node section; at most one) says how ``<part>`` files become the image:
  ``raw``, ``gzip``, ``splited``, ``splited_gzip`` or a processor a plugin
  registers (checked when staging). Every type but ``raw`` needs a part.
  Without ``<file>`` the image is used as it is (processor ``raw``).
* Checksums: ``sha256="hex"`` or ``md5="hex"`` on a ``<part>``, and on
  ``<file>`` or ``<source>`` for the final image (sha256 wins when both are
  given). ``size="bytes"`` on a ``<part>``.
* The vc-out format override is the root attribute ``vcout-format="1|2"``
  (primary form); a child ``<vcout format="1|2"/>`` is accepted too.
* ``NodeTemplate.domain_xml`` is the ``<domain>`` element as text, unchanged
  (kernel/initrd boot in ``<os>`` included). Namespace prefixes may be
  renamed (``ns0:``) by the serializer; the namespace URIs are kept.

Every problem is a :class:`~pragma_core.errors.FormatError` reading
``<file> line <n>: <problem>``. The file is parsed with :mod:`defusedxml`
with DTDs forbidden, so entity expansion (billion laughs), external entities
and network access are impossible.
"""

from __future__ import annotations

import os
import pyexpat
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from .errors import FormatError, RepositoryError
from .model import Checksum, ClusterDescription, DiskImage, NodeTemplate, Part, Role
from .paths import open_inside, safe_join

__all__ = [
    "DISK_FORMATS",
    "MAX_DESCRIPTION_BYTES",
    "SUPPORTED_ARCH",
    "VCOUT_FORMATS",
    "parse_cluster_xml",
    "replace_disk_source",
]

#: The only guest architecture pragma boots.
SUPPORTED_ARCH = "x86_64"
#: Disk formats a node image may have (``<driver type>``).
DISK_FORMATS = ("raw", "qcow2")
#: Values of the per-cluster vc-out format override.
VCOUT_FORMATS = (1, 2)
#: A description larger than this is refused before parsing (real ones are a few KiB).
MAX_DESCRIPTION_BYTES = 4 * 1024 * 1024
#: How deeply elements may nest (a libvirt domain is about 6 levels deep).
MAX_XML_DEPTH = 100
#: How many elements a description may hold (real ones: a few dozen).
MAX_XML_ELEMENTS = 100_000
#: Largest node a description may ask for: vCPUs and memory (more than any host has: libvirt
#: refuses the rest, but the numbers must stay numbers every layer can carry).
MAX_NODE_VCPUS = 4096
MAX_NODE_MEMORY_MIB = 64 << 20  # 64 TiB

_PROCESSOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")
_HEX_LENGTH = {"sha256": 64, "md5": 32}
_HEX = re.compile(r"[0-9a-fA-F]+")
_DIGITS = re.compile(r"[0-9]{1,18}")  # a whole number below 2**63: thousands of digits are refused, never converted


# --------------------------------------------------------------------------- parsing


class _TooLarge(Exception):
    """Raised from inside the parser when the document nests too deeply or has too many elements."""


class _LineRecordingBuilder:
    """An ElementTree parser target that remembers the line each element starts on,
    and stops the parse at :data:`MAX_XML_DEPTH` or :data:`MAX_XML_ELEMENTS`."""

    def __init__(self) -> None:
        self._builder = ET.TreeBuilder()
        self.lines: dict[ET.Element, int] = {}
        self.expat: pyexpat.XMLParserType | None = None
        self._depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self._depth += 1
        if self._depth > MAX_XML_DEPTH:
            raise _TooLarge(f"elements nest more than {MAX_XML_DEPTH} levels deep")
        if len(self.lines) >= MAX_XML_ELEMENTS:
            raise _TooLarge(f"more than {MAX_XML_ELEMENTS} elements")
        element = self._builder.start(tag, attrs)
        if self.expat is not None:
            self.lines[element] = self.expat.CurrentLineNumber
        return element

    def end(self, tag: str) -> ET.Element:
        self._depth -= 1
        return self._builder.end(tag)

    def data(self, data: str) -> None:
        self._builder.data(data)

    def close(self) -> ET.Element:
        return self._builder.close()


def _read(path: Path, root: Path | None = None) -> bytes:
    """The bytes of the description at ``path``: a regular file really inside ``root`` (default: its directory)."""
    try:
        with open_inside(root if root is not None else path.parent, path) as handle:
            data = handle.read(MAX_DESCRIPTION_BYTES + 1)
    except FileNotFoundError:
        raise RepositoryError(f"{path}: cluster description does not exist") from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read cluster description: {exc.strerror or exc}") from None
    if len(data) > MAX_DESCRIPTION_BYTES:
        raise FormatError(f"cluster description is larger than {MAX_DESCRIPTION_BYTES} bytes", path=path)
    return data


def _parse_bytes(data: bytes, path: Path | None) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Parse ``data`` safely; every failure is a one-line :class:`FormatError`.

    No DTD (so no entity), at most :data:`MAX_XML_DEPTH` levels and
    :data:`MAX_XML_ELEMENTS` elements; an encoding expat cannot read
    (``utf-7``, an unknown name) is refused.
    """
    builder = _LineRecordingBuilder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=True)
    builder.expat = parser.parser

    def where() -> int:
        return int(parser.parser.CurrentLineNumber)

    try:
        parser.feed(data)
        root = parser.close()
    except DTDForbidden as exc:
        raise FormatError(
            f"DTDs are not allowed in cluster descriptions (<!DOCTYPE {exc.name}>); "
            "remove the DOCTYPE and any entity declarations",
            path=path,
            line=where(),
        ) from None
    except EntitiesForbidden as exc:
        raise FormatError(
            f"entity declarations are not allowed in cluster descriptions (entity {exc.name!r})",
            path=path,
            line=where(),
        ) from None
    except ExternalReferenceForbidden as exc:
        raise FormatError(
            f"external entity references are not allowed in cluster descriptions ({exc.sysid!r})",
            path=path,
            line=where(),
        ) from None
    except ET.ParseError as exc:
        line, column = exc.position
        reason = pyexpat.ErrorString(exc.code) if exc.code else str(exc)
        raise FormatError(f"malformed XML: {reason} (column {column + 1})", path=path, line=line) from None
    except _TooLarge as exc:
        raise FormatError(f"cluster description is too large: {exc}", path=path, line=where()) from None
    except (LookupError, ValueError) as exc:  # mostly Python's codec lookup for the declared encoding
        if isinstance(exc, LookupError) or "encoding" in str(exc):
            raise FormatError(f"unsupported character encoding ({exc}); use UTF-8", path=path, line=where()) from None
        raise FormatError(f"malformed XML: {exc}", path=path, line=where()) from None
    return root, builder.lines


# --------------------------------------------------------------------------- helpers


def _first_disk(domain: ET.Element) -> ET.Element | None:
    """The node's image disk: the first ``devices/disk`` that is a disk (not a cdrom)."""
    for devices in domain.findall("devices"):
        for disk in devices.findall("disk"):
            if disk.get("device", "disk") == "disk":
                return disk
    return None


def _parse_memory_mib(amount: int, unit: str) -> int | None:
    """libvirt ``<memory>`` value in MiB, rounded up; ``None`` when ``unit`` is unknown.

    Units follow libvirt (case-insensitive): ``b``/``bytes``; ``k``, ``KiB``
    ... ``E``, ``EiB`` are powers of 1024; ``KB`` ... ``EB`` powers of 1000.
    """
    suffix = unit.strip().lower()
    if suffix in ("b", "byte", "bytes"):
        scale = 1
    else:
        if not suffix or suffix[0] not in "kmgtpe":
            return None
        rest = suffix[1:]
        if rest in ("", "ib"):
            base = 1024
        elif rest == "b":
            base = 1000
        else:
            return None
        scale = base ** ("kmgtpe".index(suffix[0]) + 1)
    value = amount * scale
    return -(-value // (1024 * 1024))


class _Reader:
    """Turns a parsed tree into a :class:`ClusterDescription`, with located errors."""

    def __init__(self, path: Path, name: str, lines: dict[ET.Element, int]) -> None:
        self.path = path
        self.directory = path.parent
        self.name = name
        self.lines = lines

    def error(self, message: str, element: ET.Element | None = None) -> FormatError:
        return FormatError(message, path=self.path, line=self.lines.get(element) if element is not None else None)

    def only_child(self, parent: ET.Element, tag: str, where: str, *, required: bool) -> ET.Element | None:
        found = parent.findall(tag)
        if len(found) > 1:
            raise self.error(f"more than one <{tag}> in {where}", found[1])
        if not found:
            if required:
                raise self.error(f"missing <{tag}> in {where}", parent)
            return None
        return found[0]

    def inside(self, name: str, element: ET.Element, what: str) -> str:
        """``name`` as a normalized path relative to the cluster directory."""
        try:
            absolute = safe_join(self.directory, name, what=what)
        except FormatError as exc:
            raise self.error(str(exc), element) from None
        return Path(os.path.relpath(absolute, self.directory)).as_posix()

    def checksum(self, element: ET.Element) -> Checksum | None:
        chosen: Checksum | None = None
        for algorithm in ("md5", "sha256"):  # sha256 last: it wins when both are given
            value = element.get(algorithm)
            if value is None:
                continue
            value = value.strip()
            length = _HEX_LENGTH[algorithm]
            if len(value) != length or not _HEX.fullmatch(value):
                raise self.error(
                    f"<{element.tag}> {algorithm} checksum {value!r} must be {length} hexadecimal digits",
                    element,
                )
            chosen = Checksum(algorithm=algorithm, hexdigest=value)
        return chosen

    def positive_int(self, element: ET.Element, what: str) -> int:
        text = (element.text or "").strip()
        if not _DIGITS.fullmatch(text) or int(text) <= 0:
            raise self.error(f"{what} must be a positive whole number, not {text!r}", element)
        return int(text)

    def describe(self, root: ET.Element) -> ClusterDescription:
        top = f"<{root.tag}>"
        virtualization = self.only_child(root, "virtualization", top, required=False)
        if virtualization is None:
            raise self.error(
                f'missing <virtualization arch="{SUPPORTED_ARCH}"/> in {top} (virtual image {self.name})', root
            )
        arch = virtualization.get("arch")
        if arch is None:
            raise self.error(
                f"<virtualization> has no arch attribute; virtual image {self.name} "
                f'must declare arch="{SUPPORTED_ARCH}"',
                virtualization,
            )
        if arch != SUPPORTED_ARCH:
            raise self.error(f"Unsupported VM architecture '{arch}' for virtual image {self.name}", virtualization)
        frontend = self.only_child(root, "frontend", top, required=True)
        compute = self.only_child(root, "compute", top, required=False)
        assert frontend is not None
        return ClusterDescription(
            name=self.name,
            path=self.path,
            directory=self.directory,
            frontend=self.node("frontend", frontend),
            compute=self.node("compute", compute) if compute is not None else None,
            arch=arch,
            vcout_format=self.vcout_format(root),
        )

    def vcout_format(self, root: ET.Element) -> int | None:
        given: list[tuple[str, ET.Element, str]] = []
        if root.get("vcout-format") is not None:
            given.append((root.get("vcout-format", ""), root, f"<{root.tag} vcout-format>"))
        for child in root.findall("vcout"):
            given.append((child.get("format", ""), child, "<vcout format>"))
        chosen: int | None = None
        for value, element, what in given:
            text = value.strip()
            if text not in {str(v) for v in VCOUT_FORMATS}:
                raise self.error(f"{what} must be one of {', '.join(map(str, VCOUT_FORMATS))}, not {value!r}", element)
            if chosen is not None and int(text) != chosen:
                raise self.error(f"conflicting vc-out formats {chosen} and {text}", element)
            chosen = int(text)
        return chosen

    def node(self, role: Role, section: ET.Element) -> NodeTemplate:
        domain = self.only_child(section, "domain", f"<{role}>", required=True)
        assert domain is not None
        disk = _first_disk(domain)
        if disk is None:
            raise self.error(f"<{role}> domain has no <devices>/<disk> for the node image", domain)
        image = self.disk(role, section, disk)

        vcpus = None
        vcpu = domain.find("vcpu")
        if vcpu is not None:
            vcpus = self.positive_int(vcpu, f"<{role}> <vcpu>")
            if vcpus > MAX_NODE_VCPUS:
                raise self.error(f"<{role}> <vcpu> asks for {vcpus} vCPUs, more than {MAX_NODE_VCPUS}", vcpu)
        memory_mib = None
        memory = domain.find("memory")
        if memory is not None:
            amount = self.positive_int(memory, f"<{role}> <memory>")
            unit = memory.get("unit", "KiB")
            memory_mib = _parse_memory_mib(amount, unit)
            if memory_mib is None:
                raise self.error(f"<{role}> <memory> has an unknown unit {unit!r}", memory)
            if memory_mib > MAX_NODE_MEMORY_MIB:
                raise self.error(f"<{role}> <memory> asks for more than {MAX_NODE_MEMORY_MIB >> 20} TiB", memory)

        tail, domain.tail = domain.tail, None
        domain_xml = ET.tostring(domain, encoding="unicode")
        domain.tail = tail
        return NodeTemplate(role=role, domain_xml=domain_xml, disk=image, vcpus=vcpus, memory_mib=memory_mib)

    def disk(self, role: Role, section: ET.Element, disk: ET.Element) -> DiskImage:
        driver = disk.find("driver")
        disk_format = driver.get("type", "raw") if driver is not None else "raw"
        if disk_format not in DISK_FORMATS:
            raise self.error(
                f"<{role}> disk format {disk_format!r} is not supported (use {' or '.join(DISK_FORMATS)})",
                driver,
            )

        source = disk.find("source")
        if source is None:
            raise self.error(f'<{role}> disk has no <source file="..."/>', disk)
        file_name = source.get("file")
        if file_name is None:
            if source.get("volume") is not None:
                raise self.error(
                    f"<{role}> disk is a ZFS volume (<source volume={source.get('volume')!r} "
                    f"pool={source.get('pool')!r}>); pragma stages file images only: "
                    'give a <source file="..."/> (the clonezilla repository with a file:// local_image_url)',
                    source,
                )
            raise self.error(f'<{role}> disk <source> has no file attribute (<source file="..."/>)', source)
        source_name = self.inside(file_name, source, "disk image")

        files = list(section.iter("file"))
        if len(files) > 1:
            raise self.error(f"more than one <file> in <{role}>", files[1])
        processor = "raw"
        parts: list[Part] = []
        checksum = self.checksum(source)
        if files:
            file_element = files[0]
            kind = file_element.get("type")
            if kind is None:
                raise self.error(
                    f"<file> in <{role}> has no type attribute "
                    "(raw, gzip, splited, splited_gzip or a processor a plugin registers)",
                    file_element,
                )
            if not _PROCESSOR_NAME.fullmatch(kind):
                raise self.error(f"<file> in <{role}> has an invalid type {kind!r}", file_element)
            processor = kind
            part_elements = file_element.findall("part") or list(section.iter("part"))
            parts = self.parts(part_elements)
            if not parts and processor != "raw":
                raise self.error(
                    f"Check <part> definition for disk image {file_name}: "
                    f'<file type="{kind}"> needs at least one <part>',
                    file_element,
                )
            image_checksum = self.checksum(file_element)
            if image_checksum is not None:
                if checksum is not None and checksum != image_checksum:
                    raise self.error(
                        f"<{role}> <source> and <file> give different checksums ({checksum} and {image_checksum})",
                        file_element,
                    )
                checksum = image_checksum
        return DiskImage(source=source_name, format=disk_format, processor=processor, parts=parts, checksum=checksum)

    def parts(self, elements: list[ET.Element]) -> list[Part]:
        parts: list[Part] = []
        seen: set[str] = set()
        for element in elements:
            text = (element.text or "").strip()
            if not text:
                raise self.error("empty <part>: give the part's file name", element)
            name = self.inside(text, element, "part")
            if name in seen:
                raise self.error(f"part {text!r} is listed twice", element)
            seen.add(name)
            size = None
            if element.get("size") is not None:
                raw_size = element.get("size", "").strip()
                if not _DIGITS.fullmatch(raw_size):
                    raise self.error(f"<part> size must be a number of bytes, not {raw_size!r}", element)
                size = int(raw_size)
            parts.append(Part(name=name, checksum=self.checksum(element), size=size))
        return parts


# --------------------------------------------------------------------------- public API


def parse_cluster_xml(path: Path, name: str, *, root: Path | None = None) -> ClusterDescription:
    """Parse the cluster description at ``path`` for image ``name``.

    ``name`` is the image's catalogue name (used in messages and kept as
    ``ClusterDescription.name``). Raises :class:`FormatError` naming the file
    (and line when known) for unsafe or malformed XML and every schema
    problem listed in this module's documentation, and
    :class:`RepositoryError` when the file is missing or unreadable, or is not
    a regular file really inside ``root`` (the repository directory; default:
    the description's own directory) -- a symbolic link leading out, a FIFO,
    a device or a directory.
    """
    path = Path(os.path.abspath(path))
    data = _read(path, root)
    element, lines = _parse_bytes(data, path)
    return _Reader(path, name, lines).describe(element)


def replace_disk_source(
    xml: str | bytes | os.PathLike[str],
    role: Literal["frontend", "compute"],
    *,
    source_file: str,
    format: str,
) -> bytes:
    """Rewrite the ``role`` node's disk to use the image ``source_file``; return the new XML.

    ``xml`` is a path (:class:`os.PathLike`) to a description, or its text
    (``str`` or ``bytes``). The node's disk (the element
    :func:`parse_cluster_xml` reads) becomes ``<disk type="file"
    device="disk">`` with exactly one ``<driver name="qemu" type=format/>``,
    one ``<source file=source_file/>`` and ``<target dev="vda"
    bus="virtio"/>``, in that order, before its other children; every old
    ``<driver>``, ``<source>`` and ``<target>`` of that disk, and every
    ``<file>`` and ``<part>`` of the node section are removed, so the result
    describes a ready image used as it is. ``source_file`` is relative to the
    description's directory and may not leave it. The output is UTF-8 with an
    XML declaration, indented; other sections are untouched.
    """
    if role not in ("frontend", "compute"):
        raise ValueError(f"role must be 'frontend' or 'compute', not {role!r}")
    if format not in DISK_FORMATS:
        raise ValueError(f"format must be one of {DISK_FORMATS}, not {format!r}")
    path: Path | None = None
    if isinstance(xml, os.PathLike):
        path = Path(os.path.abspath(xml))
        data = _read(path)
    else:
        data = xml.encode("utf-8") if isinstance(xml, str) else bytes(xml)
    root, lines = _parse_bytes(data, path)
    reader = _Reader(path or Path("<cluster description>"), "", lines)

    if path is not None:
        new_source = reader.inside(source_file, root, "disk image")
    else:
        normal = os.path.normpath(source_file) if source_file else ""
        if not normal or "\x00" in normal or os.path.isabs(normal) or normal in (".", "..") or normal.startswith("../"):
            raise FormatError(f"disk image {source_file!r} must be a file name inside the cluster directory")
        new_source = Path(normal).as_posix()

    section = reader.only_child(root, role, f"<{root.tag}>", required=True)
    assert section is not None
    domain = reader.only_child(section, "domain", f"<{role}>", required=True)
    assert domain is not None
    disk = _first_disk(domain)
    if disk is None:
        raise reader.error(f"<{role}> domain has no <devices>/<disk> for the node image", domain)

    for child in list(disk):
        if child.tag in ("driver", "source", "target"):
            disk.remove(child)
    for parent in list(section.iter()):
        for child in list(parent):
            if child.tag in ("file", "part"):
                parent.remove(child)
    disk.attrib.clear()
    disk.set("type", "file")
    disk.set("device", "disk")
    disk.insert(0, ET.Element("driver", {"name": "qemu", "type": format}))
    disk.insert(1, ET.Element("source", {"file": new_source}))
    disk.insert(2, ET.Element("target", {"dev": "vda", "bus": "virtio"}))
    ET.indent(root, space="  ")
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"
