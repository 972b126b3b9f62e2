"""Build a node's libvirt ``<domain>`` from the cluster description's template.

The template (``NodeTemplate.domain_xml``) keeps its devices (consoles,
graphics, cdroms, controllers...) and its ``<os>`` section; pragma sets what
belongs to the node: name, type, vCPUs, memory, the one disk, the NICs, the
CPU model and the metadata. Kernel, initrd and dtb paths in ``<os>`` are
resolved against the cluster directory and must be regular files really
inside it (a symbolic link leading out, a device or a FIFO is refused). With
``console_log``, the first serial port (added as a ``pty`` when the template
has none) logs everything the guest prints to that file (``<log
append="off"/>``: each start begins a new file), written by libvirt's
virtlogd.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import defusedxml.ElementTree as SafeET
from attrs import frozen

from pragma_core import FormatError
from pragma_core.pluginkit import safe_join, stat_inside

from .records import NAMESPACE, PREFIX, NodeRecord
from .settings import bridge_name, is_ovs

ET.register_namespace(PREFIX, NAMESPACE)


@frozen(kw_only=True)
class Nic:
    """One NIC to attach: MAC, the bridge setting (``br{vlan}`` or ``ovs:NAME``) and its VLAN."""

    mac: str
    bridge: str
    vlan: int | None = None


def build_domain_xml(
    template: str,
    *,
    name: str,
    domain_type: str,
    vcpus: int,
    memory_mib: int,
    disk: Path,
    disk_format: str,
    nics: Sequence[Nic],
    record: NodeRecord,
    cluster_dir: Path,
    cpu_model: str | None = None,
    console_log: Path | str | None = None,
    boot_paths: Mapping[str, str] | None = None,
) -> str:
    """The ``<domain>`` XML for one node.

    ``boot_paths`` maps ``kernel``, ``initrd``, ``dtb`` to where the node's
    host finds them (a copy in diskdir, a volume of the host's pool); by
    default, the file in the cluster directory itself.
    """
    root = _parse(template)
    _confine(root)
    _identity(root, name=name, domain_type=domain_type, vcpus=vcpus, memory_mib=memory_mib)
    _boot(root, boot_files(template, cluster_dir), boot_paths or {})
    if domain_type == "kvm" and cpu_model:
        _cpu(root, cpu_model)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    for emulator in devices.findall("emulator"):
        devices.remove(emulator)  # the template's path is of the machine it was made on
    target = _remove_disks(devices)
    model, rom = _remove_nics(devices)
    disk_el = ET.Element("disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk_el, "driver", {"name": "qemu", "type": disk_format, "discard": "unmap"})
    ET.SubElement(disk_el, "source", {"file": str(disk)})
    ET.SubElement(disk_el, "target", target)
    devices.insert(0, disk_el)
    for position, nic in enumerate(nics, start=1):
        devices.insert(position, _interface(nic, model, rom))
    if console_log is not None:
        _log_console(devices, str(console_log))
    metadata = ET.Element("metadata")
    metadata.append(record.to_element())
    root.insert(list(root).index(root.find("name")) + 1, metadata)  # type: ignore[arg-type]
    return ET.tostring(root, encoding="unicode")


def _identity(root: ET.Element, *, name: str, domain_type: str, vcpus: int, memory_mib: int) -> None:
    """Set what belongs to the node (type, name, vCPUs, memory); drop the template's uuid, cpu, metadata."""
    root.set("type", domain_type)
    for tag in ("uuid", "currentMemory", "cpu", "metadata"):
        for child in root.findall(tag):
            root.remove(child)
    _text(root, "name", name, first=True)
    vcpu = _text(root, "vcpu", str(vcpus))
    vcpu.attrib.pop("current", None)
    memory = _text(root, "memory", str(memory_mib))
    memory.attrib.clear()
    memory.set("unit", "MiB")


def _boot(root: ET.Element, found: Mapping[str, Path], boot_paths: Mapping[str, str]) -> None:
    """Point ``<os>``'s kernel, initrd and dtb at where the host has them (default: the checked file)."""
    os_el = root.find("os")
    if os_el is None:
        os_el = ET.SubElement(root, "os")
        ET.SubElement(os_el, "type", {"arch": "x86_64"}).text = "hvm"
    for tag, path in found.items():
        element = os_el.find(tag)
        assert element is not None
        element.text = boot_paths.get(tag, str(path))


def _cpu(root: ET.Element, cpu_model: str) -> None:
    if cpu_model in ("host-model", "host-passthrough"):
        ET.SubElement(root, "cpu", {"mode": cpu_model})
    else:
        cpu = ET.SubElement(root, "cpu", {"mode": "custom", "match": "exact", "check": "none"})
        ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = cpu_model


def _remove_disks(devices: ET.Element) -> dict[str, str]:
    """Remove the template's disks; the target (dev, bus) of its disk, ``vda``/virtio by default."""
    target = {"dev": "vda", "bus": "virtio"}
    for old in devices.findall("disk"):
        if old.get("device", "disk") == "disk":
            tgt = old.find("target")
            if tgt is not None and tgt.get("dev"):
                target = {"dev": tgt.get("dev", "vda"), "bus": tgt.get("bus", "virtio")}
            devices.remove(old)
    return target


#: What a template's ``<interface><rom .../>`` may say: turn the NIC's boot ROM off (no PXE). A ROM
#: ``file`` is never taken from a template: QEMU would load any file of the host into the guest.
_ROM_VALUES = {"enabled": ("yes", "no"), "bar": ("on", "off")}


def _remove_nics(devices: ET.Element) -> tuple[str, dict[str, str]]:
    """Remove the template's NICs; their model (virtio by default) and ROM switches (``enabled``, ``bar``)."""
    model = "virtio"
    rom: dict[str, str] = {}
    for old in devices.findall("interface"):
        m = old.find("model")
        if m is not None and m.get("type"):
            model = m.get("type", model)
        r = old.find("rom")
        if r is not None:
            rom = {key: r.get(key, "") for key in _ROM_VALUES if r.get(key) in _ROM_VALUES[key]}
        devices.remove(old)
    return model, rom


def _interface(nic: Nic, model: str, rom: Mapping[str, str] | None = None) -> ET.Element:
    iface = ET.Element("interface", {"type": "bridge"})
    ET.SubElement(iface, "mac", {"address": nic.mac})
    ET.SubElement(iface, "source", {"bridge": bridge_name(nic.bridge, nic.vlan)})
    if is_ovs(nic.bridge):
        ET.SubElement(iface, "virtualport", {"type": "openvswitch"})
        if nic.vlan is not None and "{vlan}" not in nic.bridge:
            vlan = ET.SubElement(iface, "vlan")
            ET.SubElement(vlan, "tag", {"id": str(nic.vlan)})
    ET.SubElement(iface, "model", {"type": model})
    if rom:
        ET.SubElement(iface, "rom", dict(rom))
    return iface


def _log_console(devices: ET.Element, path: str) -> None:
    """Log the first serial port (a pty one added when there is none) to ``path``, a new file at each start."""
    serial = devices.find("serial")
    if serial is None:
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        ET.SubElement(serial, "target", {"port": "0"})
    for old in serial.findall("log"):
        serial.remove(old)
    serial.insert(0, ET.Element("log", {"file": path, "append": "off"}))


# --------------------------------------------------------------------------- what a template may ask of the host

#: ``<domain>`` children a template may hold, each at most once (libvirt reads every copy of
#: ``<devices>`` or ``<os>``: a second one would escape these checks). Everything else is refused:
#: among them ``<seclabel>`` (confinement off), ``<qemu:commandline>`` (any QEMU argument),
#: ``<sysinfo>`` fw_cfg files, ``<memoryBacking>`` files, ``<bootloader>`` (a host program),
#: ``<idmap>``, ``<resource>``, and the host tuning ``<cputune>`` (real-time scheduling),
#: ``<numatune>``, ``<memtune>``, ``<blkiotune>``, ``<iothreads>``.
_TOP = frozenset({
    "name", "uuid", "genid", "title", "description", "metadata", "memory", "currentMemory", "maxMemory", "vcpu",
    "vcpus", "os", "features", "cpu", "clock", "on_poweroff", "on_reboot", "on_crash", "pm", "devices",
})
#: ``<os>`` children (``<loader>``, ``<nvram>``, ``<acpi>`` tables name host files: refused).
_OS = frozenset({"type", "boot", "bootmenu", "smbios", "bios", "kernel", "initrd", "dtb", "cmdline"})
#: Devices a template may keep (its disks and NICs are replaced). Refused: ``<hostdev>``,
#: ``<filesystem>``, ``<redirdev>``, ``<smartcard>``, ``<shmem>``, ``<tpm>``, ``<lease>``, ...
_DEVICES = frozenset({
    "emulator", "disk", "interface", "controller", "input", "graphics", "video", "sound", "audio", "memballoon",
    "rng", "serial", "console", "parallel", "channel", "watchdog", "panic", "hub", "vsock", "iommu",
})
#: Character devices that reach nothing of the host but a pty or the display.
_CHAR_TYPES = frozenset({"pty", "spicevmc", "spiceport", "qemu-vdagent", "null", "vc"})
#: Attributes that name a host path, wherever they appear (``xauth``: SDL's X authority file).
_PATH_ATTRIBUTES = frozenset({"file", "path", "dir", "socket", "rendernode", "evdev", "dev", "xauth"})
_RNG_BACKENDS = frozenset({"/dev/random", "/dev/urandom", "/dev/hwrng"})
#: Removable drives a template may keep: empty (no ``<source>``: no host file, volume or network disk).
_DRIVES = frozenset({"cdrom", "floppy"})
#: Displays: served by QEMU on the host, on the address qemu.conf sets (``listen`` is dropped).
_GRAPHICS = frozenset({"vnc", "spice", "egl-headless", "dbus"})
#: What a crash or a watchdog may do: no memory dump written on the host.
_DUMPS = frozenset({"coredump-destroy", "coredump-restart", "dump"})


def _confine(root: ET.Element) -> None:
    """Refuse what would let a template reach the host: files, devices, sockets, QEMU arguments, confinement off.

    A cluster description comes from a repository, which pragma does not
    trust; libvirt runs what the domain XML says with root's help (it even
    relabels named files for QEMU). So the template keeps only what touches
    the guest alone. One :class:`FormatError` names the first thing refused.
    """
    seen: set[str] = set()
    for child in root:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag not in _TOP:
            _refuse(f"<{_local(tag)}>", "not something a domain template may set")
        if tag in seen:
            _refuse(f"a second <{tag}>", "libvirt would read both, and only the first is checked")
        seen.add(tag)
    if (root.findtext("on_crash") or "").strip() in _DUMPS:
        _refuse("<on_crash> " + (root.findtext("on_crash") or "").strip(), "it writes the guest's memory on the host")
    os_el = root.find("os")
    for child in os_el if os_el is not None else ():
        if child.tag not in _OS:
            _refuse(f"<os><{child.tag}>", "it names host files")
        if child.tag == "smbios" and child.get("mode") not in (None, "emulate"):
            _refuse(f"<os><smbios mode={child.get('mode')!r}>", "it shows the host's identity to the guest")
    devices = root.find("devices")
    for device in devices if devices is not None else ():
        _confine_device(device)


def _confine_device(device: ET.Element) -> None:
    kind = device.tag
    if kind not in _DEVICES:
        _refuse(f"<{kind}>", "a device that reaches the host")
    if kind in ("emulator", "interface") or (kind == "disk" and device.get("device", "disk") == "disk"):
        return  # replaced by pragma's own
    if kind == "disk":
        drive = device.get("device")
        if drive not in _DRIVES or device.get("type", "file") != "file" or device.find("source") is not None \
                or device.find("auth") is not None:
            _refuse(f"<disk device={drive!r} type={device.get('type')!r}>",
                    "only an empty cdrom or floppy drive (no source: no host file, volume or network disk)")
    if kind in ("serial", "console", "parallel", "channel") and device.get("type", "pty") == "pty":
        _forget_pty(device)  # what libvirt fills in for a running domain (a template dumped from one has it)
    if kind in ("serial", "console", "parallel", "channel") and device.get("type", "pty") not in _CHAR_TYPES:
        if not (kind == "channel" and device.get("type") == "unix" and not _names_host_path(device)):
            _refuse(f"<{kind} type={device.get('type')!r}>", "only pty, spice and null character devices")
    if kind == "watchdog" and device.get("action") in _DUMPS:
        _refuse("<watchdog action='dump'>", "it writes the guest's memory on the host")
    if kind == "rng":
        for backend in device.iter("backend"):
            model = backend.get("model", "random")
            if model == "egd" or (model == "random" and (backend.text or "").strip() not in _RNG_BACKENDS | {""}):
                _refuse("<rng><backend>", f"only {', '.join(sorted(_RNG_BACKENDS))} or builtin")
    if _names_host_path(device):
        _refuse(f"<{kind}>", "it names a host path")
    if kind == "graphics":
        if device.get("type") not in _GRAPHICS:
            _refuse(f"<graphics type={device.get('type')!r}>", f"only {', '.join(sorted(_GRAPHICS))}")
        device.attrib.pop("listen", None)  # the host's qemu.conf decides (127.0.0.1 unless the site says otherwise)
        for listen in device.findall("listen"):
            device.remove(listen)


def _forget_pty(device: ET.Element) -> None:
    """Drop a pty's ``<source path>`` and ``tty``: libvirt allocates the pty at each start."""
    device.attrib.pop("tty", None)
    for source in device.findall("source"):
        device.remove(source)


def _names_host_path(element: ET.Element) -> bool:
    return any(key in _PATH_ATTRIBUTES and not (node.tag == "target" or node.tag == "boot")
               for node in element.iter() for key in node.attrib)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if tag else "?"


def _refuse(what: str, why: str) -> NoReturn:
    raise FormatError(f"domain template: {what} is not allowed ({why})")


def check_template(template: str) -> None:
    """Refuse a template that asks anything of the host (see :func:`build_domain_xml`); before anything is made."""
    _confine(_parse(template))


def _parse(template: str) -> ET.Element:
    try:
        root = SafeET.fromstring(template)
    except ET.ParseError as exc:
        raise FormatError(f"domain XML of the cluster description is invalid: {exc}") from None
    if root.tag != "domain":
        raise FormatError(f"expected a <domain> element, found <{root.tag}>")
    return root


def boot_files(template: str, cluster_dir: Path) -> dict[str, Path]:
    """The template's ``<os>`` kernel, initrd and dtb, each a regular file really inside ``cluster_dir``."""
    os_el = _parse(template).find("os")
    out: dict[str, Path] = {}
    for tag in ("kernel", "initrd", "dtb"):
        element = os_el.find(tag) if os_el is not None else None
        if element is not None and (element.text or "").strip():
            path = safe_join(cluster_dir, element.text.strip(), what=f"<os><{tag}>")
            try:
                stat_inside(cluster_dir, path)  # libvirt hands it to qemu as root: a regular file really inside
            except OSError as exc:
                raise FormatError(f"<os><{tag}> {path}: {exc.strerror or exc}") from None
            out[tag] = path
    return out


def _text(root: ET.Element, tag: str, value: str, *, first: bool = False) -> ET.Element:
    element = root.find(tag)
    if element is None:
        element = ET.Element(tag)
        if first:
            root.insert(0, element)
        else:
            root.append(element)
    element.text = value
    return element
