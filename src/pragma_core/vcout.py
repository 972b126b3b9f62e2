"""``vc-out.xml``: the network hand-off to the guest images (the contract with the images).

Every node boots with a ``/root/vc-out.xml`` (or cloud userdata) that its
boot-time configurator reads to set its hostname, interfaces, ``/etc/hosts``,
``resolv.conf`` and root's ``authorized_keys``. The **frontend** receives the
*cluster file*; each **compute** receives *its own file*. Two formats exist in
real images and the image decides which one it reads, so the site picks one
(``vcout_format`` in ``site_conf.conf``) and a cluster description may
override it (``<vc vcout-format="1">``); see :func:`choose_format`.

Both formats are rendered from the same :class:`~pragma_core.model.Allocation`
by :func:`render`. Inside the files nodes are named by
:attr:`~pragma_core.model.Node.hostname` (the frontend's short name,
``compute-<i>`` for computes), never by the driver's VM name. MAC addresses
are written in lower case whatever the driver returned (see below).

Which guest configurators read which format
===========================================

* **Format 2** -- written by upstream pragma_boot's kvm_rocks (2018). Read by
  the current Rocks ``rocks reconfigure`` (the "dynip" of Rocks 7 images:
  ``reconfigure compute=true`` reads only format 2, the frontend side falls
  back to format 1) and by ``vc-out-parser.py`` of pragmagrid/vc-out-parser
  (format 2 first, format 1 as a fallback), the configurator of the non-Rocks
  images. Choose it for any image made since 2017.
* **Format 1** -- written by the older fork of pragma_boot and by the legacy
  cloudstack driver. The only format read by the Rocks 6 ``rocks
  reconfigure`` and by the first ``vc-out-parse.py`` (both hard-code
  ``eth0``/``eth1`` and MTU 1500); ``vc-out-parser.py`` reads it too, taking
  ``mtu`` from any interface element that has one (1500 otherwise), hence the
  ``mtu`` on format 1's extra-network elements.

Every one of them finds a NIC by searching ``ip -o link`` output for the MAC
as written, case-sensitively, and Linux prints MACs in lower case: so MACs are
lower-cased before rendering. ``reconfigure`` takes the DNS domain from the
frontend's ``fqdn`` after its first dot, so a driver should give a dotted
FQDN (kvm_rocks's ``public_domain``).

Format 2 (default)
==================

Cluster file (frontend)::

    <?xml version="1.0" ?>
    <vc>
      <frontend fqdn="vc-c.sdsc.edu" gw="198.202.88.1" name="vc-c">
        <private ip="10.1.1.1" mac="72:77:6e:80:00:20" mtu="1500" netmask="255.255.0.0" subnet="10.1.0.0"/>
        <public ip="198.202.88.52" mac="72:77:6e:80:00:21" mtu="1500" netmask="255.255.255.0" subnet="198.202.88.0"/>
      </frontend>
      <compute count="1">
        <node cpus="2" gw="10.1.1.1" name="compute-0">
          <private ip="10.1.255.254" mac="72:77:6e:80:00:22" mtu="1500" netmask="255.255.0.0" subnet="10.1.0.0"/>
        </node>
      </compute>
      <network>
        <dns domain="" ip="8.8.8.8" search="local"/>
      </network>
      <key>ssh-rsa AAAAB3NzaFAKEKEY root@rocks-fe</key>
    </vc>

* ``<frontend fqdn gw name>``: ``fqdn`` is :attr:`Allocation.fqdn`, ``gw`` the
  frontend's :attr:`~pragma_core.model.Node.gateway` (the public gateway),
  ``name`` its hostname. One child per NIC, in the node's interface order,
  **named after the network** (``private``, ``public``, or an extra network
  such as ``openflow``), with ``ip mac mtu netmask subnet``: ``subnet`` is
  the network address, ``netmask`` dotted, ``mtu`` the network's.
* ``<compute count="N">`` holding one ``<node cpus gw name>`` per compute,
  with the same interface children (``gw`` is normally the frontend's private
  IP). A frontend-only cluster has ``<compute count="0"/>``.
* ``<network><dns domain="" ip="..." search="local"/></network>``: ``ip`` is
  the DNS servers, comma-separated.
* ``<key>``: the SSH public key text, surrounding whitespace stripped.

Compute file::

    <?xml version="1.0" ?>
    <vc>
      <frontend fqdn="vc-c.sdsc.edu"/>
      <compute gw="10.1.1.1" name="compute-0">
        <private ip="10.1.255.254" mac="72:77:6e:80:00:22" mtu="1500" netmask="255.255.0.0" subnet="10.1.0.0"/>
      </compute>
      <network>
        <dns domain="" ip="8.8.8.8" search="local"/>
      </network>
      <key>ssh-rsa AAAAB3NzaFAKEKEY root@rocks-fe</key>
    </vc>

Format 1 (older; see above for its readers)
===========================================

Cluster file (frontend)::

    <?xml version="1.0" ?>
    <vc>
      <frontend>
        <public fqdn="vc-c.sdsc.edu" gw="198.202.88.1" ip="198.202.88.52" mac="72:77:6e:80:00:21" name="vc-c" netmask="255.255.255.0"/>
        <private ip="10.1.1.1" mac="72:77:6e:80:00:20" netmask="255.255.0.0"/>
      </frontend>
      <compute count="1">
        <node cpus="2" ip="10.1.255.254" mac="72:77:6e:80:00:22" name="compute-0"/>
      </compute>
      <network>
        <dns domain="" ip="8.8.8.8" search="local"/>
      </network>
      <key>ssh-rsa AAAAB3NzaFAKEKEY root@rocks-fe</key>
    </vc>

Compute file::

    <?xml version="1.0" ?>
    <vc>
      <frontend>
        <public fqdn="vc-c.sdsc.edu"/>
      </frontend>
      <compute>
        <private fqdn="compute-0" gw="10.1.1.1" ip="10.1.255.254" mac="72:77:6e:80:00:22" netmask="255.255.0.0"/>
      </compute>
      <network>
        <dns domain="" ip="8.8.8.8" search="local"/>
      </network>
      <key>ssh-rsa AAAAB3NzaFAKEKEY root@rocks-fe</key>
    </vc>

What the format-1 configurators read, and must find: in the cluster file
``frontend/public@ip,@fqdn,@netmask,@gw,@mac,@name``,
``frontend/private@ip,@netmask,@mac``, ``compute/node@name,@ip,@cpus,@mac``;
in a compute file ``compute/private@ip,@fqdn,@netmask,@gw,@mac`` (``fqdn``
is the compute's hostname; the guest appends ``.local``) and
``frontend/public@fqdn`` (the frontend's name for ``/etc/hosts``); in both
``network/dns@ip`` and ``key``. The frontend's ``public`` comes first, then
``private``, so a configurator that walks ``<frontend>``'s children finds an
``ip netmask mac`` on each.

Extra networks in format 1 (``add-iface``), which the old format did not
know: the frontend gets one more ``<NET ip mac mtu netmask/>`` child after
``private``; a compute file one more sibling of ``<private>`` inside
``<compute>``; in the cluster file, a ``<node>`` whose compute has extra
networks also gets children ``<private ip mac netmask/>`` then
``<NET ip mac mtu netmask/>`` (``vc-out-parser.py`` takes a node's children,
when there are any, as its full interface list, so ``private`` must be among
them). ``mtu`` is the network's, as in format 2: without it a 9000-byte
network would be configured at 1500. Without extra networks the files are
exactly the classic format.

Serialization (both formats; the images' parsers never see a difference)
-------------------------------------------------------------------------
What ``minidom``'s ``toprettyxml(indent="  ")`` writes for the tree, with
attributes sorted by name (legacy pragma_boot ran on Python 2, which sorted
them): first line ``<?xml version="1.0" ?>``, two-space indentation, an
empty element as ``<x a="b"/>``, a text-only element on one line, UTF-8, a
final newline. The same allocation always gives the same bytes.

A value a format needs that the allocation lacks or gets wrong (no
gateway, no ``public`` NIC on the frontend for format 1, no ``private`` NIC
on a compute, no DNS server, no key, a NIC on a network the allocation does
not list or with an IP outside that network) is a
:class:`~pragma_core.errors.DriverError` naming the node; a bad format number
or a malformed element added by a hook is a
:class:`~pragma_core.errors.FormatError`.

Hook plugins may add to every file through
:func:`~pragma_core.hookspecs.pragma_vcout_element` before it is serialized.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .errors import DriverError, FormatError
from .model import Allocation, Interface, Network, Node
from .paths import safe_join

if TYPE_CHECKING:
    from .hooks import Hooks

__all__ = [
    "FORMATS",
    "FRONTEND_FILE",
    "choose_format",
    "file_name",
    "render",
    "serialize",
    "validate_format",
    "write",
]

#: The vc-out formats pragma renders.
FORMATS = (1, 2)
#: The file name of the cluster file (the frontend's), in the staging directory and in the guest.
FRONTEND_FILE = "vc-out.xml"

_XML_DECLARATION = '<?xml version="1.0" ?>'
_INDENT = "  "
# An XML name without namespaces, ASCII only: what a network or hook element may be called.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
# Characters XML 1.0 cannot carry at all.
_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
# The networks format 1 knew; any other is an extra network (add-iface, ENT).
_CLASSIC_NETWORKS = ("public", "private")


# --------------------------------------------------------------------------- format choice


def validate_format(value: Any, *, source: Path | str | None = None) -> int:
    """``value`` as a vc-out format number: 1 or 2, given as int or string.

    Anything else is a :class:`~pragma_core.errors.FormatError` naming
    ``source`` (the file that gave the value), e.g.
    ``cluster.xml: vc-out format must be 1 or 2, not '3'``.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip() in ("1", "2"):
        number = int(value.strip())
    if number not in FORMATS:
        raise FormatError(f"vc-out format must be 1 or 2, not {value!r}", path=source)
    return number


def choose_format(site_format: int, cluster_format: int | None) -> int:
    """The format to render: the cluster description's when it sets one, else the site's."""
    if cluster_format is not None:
        return validate_format(cluster_format)
    return validate_format(site_format)


# --------------------------------------------------------------------------- rendering


def render(allocation: Allocation, *, format: int = 2, hooks: Hooks | None = None) -> dict[str, bytes]:
    """Render the vc-out files of ``allocation`` in ``format`` (1 or 2).

    Returns ``{Node.name: bytes}``: the frontend's entry (the cluster file)
    first, then one per compute in allocation order. With ``hooks``
    (:class:`~pragma_core.hooks.Hooks`), ``pragma_vcout_element`` is called
    for each file with its ``<vc>`` root before serialization.
    """
    fmt = validate_format(format)
    allocation = _lower_case_macs(allocation)
    _check_allocation(allocation, fmt)
    builder = _Format1(allocation) if fmt == 1 else _Format2(allocation)
    roots = [(allocation.frontend, builder.cluster_file())]
    roots += [(node, builder.compute_file(node)) for node in allocation.computes]
    files: dict[str, bytes] = {}
    for node, root in roots:
        if hooks is not None:
            hooks.vcout_element(root, allocation, node, fmt)
        files[node.name] = serialize(root, what=f"vc-out of node {node.name}")
    return files


def _lower_case_macs(allocation: Allocation) -> Allocation:
    """``allocation`` with every MAC in lower case: guests match them against ``ip link`` output as written."""

    def node(each: Node) -> Node:
        nics = [attrs.evolve(nic, mac=nic.mac.lower()) if nic.mac else nic for nic in each.interfaces]
        return attrs.evolve(each, interfaces=nics)

    return attrs.evolve(allocation, frontend=node(allocation.frontend), computes=[node(c) for c in allocation.computes])


def _check_allocation(allocation: Allocation, fmt: int) -> None:
    """Everything the formats need from the driver, as one clear error each."""
    seen: dict[str, str] = {}
    hostnames: dict[str, str] = {}
    for node in allocation.nodes:
        if not node.name:
            raise DriverError(f"vc-out: a {node.role} node has no name")
        if node.name in seen:
            raise DriverError(f"vc-out: two nodes are named {node.name!r}")
        seen[node.name] = node.role
        if not node.hostname:
            raise DriverError(f"vc-out: node {node.name} has no hostname")
        if node.hostname in hostnames:
            raise DriverError(
                f"vc-out: nodes {hostnames[node.hostname]} and {node.name} have the same hostname {node.hostname!r}"
            )
        hostnames[node.hostname] = node.name
        if node.gateway is None:
            raise DriverError(f"vc-out: {node.role} {node.name} has no gateway")
        networks: set[str] = set()
        for nic in node.interfaces:
            if nic.network in networks:
                raise DriverError(f"vc-out: node {node.name} has two interfaces on network {nic.network!r}")
            networks.add(nic.network)
            if not _NAME.match(nic.network) or nic.network.lower().startswith("xml"):
                raise DriverError(
                    f"vc-out: node {node.name}: network name {nic.network!r} cannot be an XML element name"
                )
            if nic.ip not in _network_of(allocation, node, nic).subnet:
                raise DriverError(
                    f"vc-out: node {node.name}: IP {nic.ip} is outside the {nic.network} network "
                    f"{allocation.network(nic.network).subnet}"
                )
            if not _MAC.match(nic.mac or ""):
                raise DriverError(
                    f"vc-out: node {node.name}: MAC {nic.mac!r} on {nic.network} is not aa:bb:cc:dd:ee:ff"
                )
        if node.role == "compute" and "private" not in networks:
            raise DriverError(f"vc-out: compute {node.name} has no interface on the private network")
        if node.role == "compute" and node.cpus < 1:
            raise DriverError(f"vc-out: compute {node.name} has {node.cpus} CPUs")
    fe = allocation.frontend
    if fmt == 1:
        for needed in ("public", "private"):
            if fe.interface(needed) is None:
                raise DriverError(f"vc-out format 1 needs a {needed} interface on frontend {fe.name}; it has none")
    if not allocation.fqdn:
        raise DriverError(f"vc-out: the allocation of {allocation.cluster} has no frontend fqdn")
    if not allocation.dns:
        raise DriverError(f"vc-out: the allocation of {allocation.cluster} has no DNS server")
    for server in allocation.dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise DriverError(f"vc-out: DNS server {server!r} is not an IP address") from None
    if not allocation.key.strip():
        raise DriverError(f"vc-out: no SSH public key for {allocation.cluster}")
    for label, text in (("fqdn", allocation.fqdn), ("key", allocation.key)):
        if _INVALID_CHARS.search(text):
            raise DriverError(f"vc-out: the {label} contains characters XML cannot carry")
    for node in allocation.nodes:
        if _INVALID_CHARS.search(node.hostname):
            raise DriverError(f"vc-out: hostname of {node.name} contains characters XML cannot carry")


def _network_of(allocation: Allocation, node: Node, nic: Interface) -> Network:
    try:
        return allocation.network(nic.network)
    except KeyError:
        raise DriverError(
            f"vc-out: node {node.name} has an interface on network {nic.network!r}, which the allocation does not list"
        ) from None


def _nic(node: Node, network: str) -> Interface:
    nic = node.interface(network)
    if nic is None:
        raise DriverError(f"vc-out: {node.role} {node.name} has no interface on the {network} network")
    return nic


def _sub(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    return ET.SubElement(parent, tag, attrs)


class _Common:
    """What both formats share: the ``<network>`` and ``<key>`` tail."""

    def __init__(self, allocation: Allocation) -> None:
        self.allocation = allocation

    def tail(self, root: ET.Element) -> None:
        network = _sub(root, "network")
        _sub(network, "dns", domain="", ip=",".join(self.allocation.dns), search="local")
        ET.SubElement(root, "key").text = self.allocation.key.strip()

    def network(self, node: Node, nic: Interface) -> Network:
        return _network_of(self.allocation, node, nic)


class _Format2(_Common):
    def interfaces(self, parent: ET.Element, node: Node) -> None:
        for nic in node.interfaces:
            net = self.network(node, nic)
            _sub(
                parent,
                nic.network,
                ip=str(nic.ip),
                mac=nic.mac,
                mtu=str(net.mtu),
                netmask=str(net.subnet.netmask),
                subnet=str(net.subnet.network_address),
            )

    def cluster_file(self) -> ET.Element:
        alloc = self.allocation
        fe = alloc.frontend
        root = ET.Element("vc")
        frontend = _sub(root, "frontend", fqdn=alloc.fqdn, gw=str(fe.gateway), name=fe.hostname)
        self.interfaces(frontend, fe)
        compute = _sub(root, "compute", count=str(len(alloc.computes)))
        for node in alloc.computes:
            element = _sub(compute, "node", cpus=str(node.cpus), gw=str(node.gateway), name=node.hostname)
            self.interfaces(element, node)
        self.tail(root)
        return root

    def compute_file(self, node: Node) -> ET.Element:
        root = ET.Element("vc")
        _sub(root, "frontend", fqdn=self.allocation.fqdn)
        compute = _sub(root, "compute", gw=str(node.gateway), name=node.hostname)
        self.interfaces(compute, node)
        self.tail(root)
        return root


class _Format1(_Common):
    @staticmethod
    def extras(node: Node) -> list[Interface]:
        return [nic for nic in node.interfaces if nic.network not in _CLASSIC_NETWORKS]

    def short(self, parent: ET.Element, node: Node, nic: Interface) -> ET.Element:
        """``<NET ip mac netmask/>``: format 1's interface element, with ``mtu`` on an extra network."""
        net = self.network(node, nic)
        element = _sub(parent, nic.network, ip=str(nic.ip), mac=nic.mac, netmask=str(net.subnet.netmask))
        if nic.network not in _CLASSIC_NETWORKS:
            element.set("mtu", str(net.mtu))
        return element

    def cluster_file(self) -> ET.Element:
        alloc = self.allocation
        fe = alloc.frontend
        public = _nic(fe, "public")
        private = _nic(fe, "private")
        root = ET.Element("vc")
        frontend = _sub(root, "frontend")
        _sub(
            frontend,
            "public",
            fqdn=alloc.fqdn,
            gw=str(fe.gateway),
            ip=str(public.ip),
            mac=public.mac,
            name=fe.hostname,
            netmask=str(self.network(fe, public).subnet.netmask),
        )
        self.short(frontend, fe, private)
        for extra in self.extras(fe):
            self.short(frontend, fe, extra)
        compute = _sub(root, "compute", count=str(len(alloc.computes)))
        for node in alloc.computes:
            nic = _nic(node, "private")
            element = _sub(compute, "node", cpus=str(node.cpus), ip=str(nic.ip), mac=nic.mac, name=node.hostname)
            extras = self.extras(node)
            if extras:
                for each in (nic, *extras):
                    self.short(element, node, each)
        self.tail(root)
        return root

    def compute_file(self, node: Node) -> ET.Element:
        nic = _nic(node, "private")
        root = ET.Element("vc")
        _sub(_sub(root, "frontend"), "public", fqdn=self.allocation.fqdn)
        compute = _sub(root, "compute")
        _sub(
            compute,
            "private",
            fqdn=node.hostname,
            gw=str(node.gateway),
            ip=str(nic.ip),
            mac=nic.mac,
            netmask=str(self.network(node, nic).subnet.netmask),
        )
        for extra in self.extras(node):
            self.short(compute, node, extra)
        self.tail(root)
        return root


# --------------------------------------------------------------------------- serialization


def serialize(root: ET.Element, *, what: str = "vc-out") -> bytes:
    """The bytes of ``root`` as ``minidom.toprettyxml(indent="  ")`` writes it, attributes sorted.

    Written directly (not through minidom) so that the bytes do not depend on
    the Python version. Only elements, attributes and text are allowed: a
    comment, a processing instruction, a non-string tag or attribute, text
    mixed with child elements, or a character XML cannot carry is a
    :class:`~pragma_core.errors.FormatError` naming ``what``.
    """
    lines = [_XML_DECLARATION]
    _write_element(root, 0, lines, what)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _write_element(element: ET.Element, depth: int, lines: list[str], what: str) -> None:
    tag = element.tag
    if not isinstance(tag, str):
        raise FormatError(f"{what}: only elements may be added, not {tag!r}")
    if not _NAME.match(tag):
        raise FormatError(f"{what}: {tag!r} is not a valid element name")
    attributes = "".join(
        f' {name}="{_escape_attribute(value, name, tag, what)}"' for name, value in sorted(_attributes(element, what))
    )
    indent = _INDENT * depth
    children = list(element)
    text = element.text
    if text is not None and not isinstance(text, str):
        raise FormatError(f"{what}: text of <{tag}> is {type(text).__name__}, not a string")
    for child in children:
        if child.tail is not None and (not isinstance(child.tail, str) or child.tail.strip()):
            raise FormatError(f"{what}: text after <{child.tag}> inside <{tag}> (mixed content) is not allowed")
    if children:
        if text is not None and text.strip():
            raise FormatError(f"{what}: <{tag}> holds both text and elements (mixed content)")
        lines.append(f"{indent}<{tag}{attributes}>")
        for child in children:
            _write_element(child, depth + 1, lines, what)
        lines.append(f"{indent}</{tag}>")
    elif text:
        lines.append(f"{indent}<{tag}{attributes}>{_escape_text(text, tag, what)}</{tag}>")
    else:
        lines.append(f"{indent}<{tag}{attributes}/>")


def _attributes(element: ET.Element, what: str) -> Iterable[tuple[str, str]]:
    for name, value in element.attrib.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise FormatError(f"{what}: <{element.tag}> has an invalid attribute name {name!r}")
        if not isinstance(value, str):
            raise FormatError(
                f"{what}: attribute {name} of <{element.tag}> is {value!r} ({type(value).__name__}), not a string"
            )
        yield name, value


def _check_chars(value: str, where: str, what: str) -> None:
    if _INVALID_CHARS.search(value):
        raise FormatError(f"{what}: {where} contains characters XML cannot carry")


def _escape_text(value: str, tag: str, what: str) -> str:
    _check_chars(value, f"text of <{tag}>", what)
    # Like minidom of Python 2 (which legacy pragma_boot ran on) and 3.11: quotes too.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;").replace(">", "&gt;")


def _escape_attribute(value: str, name: str, tag: str, what: str) -> str:
    _check_chars(value, f"attribute {name} of <{tag}>", what)
    # minidom escapes & < > and "; newlines and tabs become character references
    # so that a parser gives back the same value (it would turn them into spaces).
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


# --------------------------------------------------------------------------- files


def file_name(node_name: str, *, frontend: bool) -> str:
    """The staging file name of a node's vc-out: ``vc-out.xml`` for the frontend, ``<name>.xml`` else."""
    return FRONTEND_FILE if frontend else f"{node_name}.xml"


def write(files: Mapping[str, bytes], directory: Path, *, frontend: str | None = None) -> dict[str, Path]:
    """Write rendered vc-out files into ``directory``; return ``{node name: path}``.

    The frontend's file (``frontend``, by default the first entry, which is
    where :func:`render` puts it) is written as ``vc-out.xml``, every other
    as ``<node name>.xml``. A node name that is not a plain file name (a
    ``/``, ``..``, a leading dot) or that would collide with ``vc-out.xml``
    is a :class:`~pragma_core.errors.FormatError`, and nothing is written.
    Every file is first written whole under a temporary name; only then are
    they renamed into place, so a failure while writing (a full disk) leaves
    none of them, not some.
    """
    directory = Path(directory)
    if not files:
        return {}
    frontend = next(iter(files)) if frontend is None else frontend
    if frontend not in files:
        raise FormatError(f"vc-out: frontend {frontend!r} is not among the files to write")
    targets: dict[str, Path] = {}
    for name in files:
        is_frontend = name == frontend
        if not is_frontend:
            if not name or name != os.path.basename(name) or name.startswith(".") or "\\" in name:
                raise FormatError(f"vc-out: node name {name!r} is not a safe file name")
            if file_name(name, frontend=False) == FRONTEND_FILE:
                raise FormatError(f"vc-out: node name {name!r} would overwrite the frontend's {FRONTEND_FILE}")
        target = safe_join(directory, file_name(name, frontend=is_frontend), what="vc-out file")
        targets[name] = target
    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []
    try:
        for name, target in targets.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
            written.append((tmp, target))
            with os.fdopen(fd, "wb") as stream:
                stream.write(files[name])
            os.chmod(tmp, 0o644)
        for tmp, target in written:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    return targets
