"""What pragma remembers about a cluster, in two places that agree.

* **Domain metadata**: every node's libvirt domain carries a
  ``<pragma:node>`` element in :data:`NAMESPACE`, so ``list cluster``,
  ``shutdown`` and ``clean`` work from any later process and any machine that
  can reach the hosts, even without the state directory.
* **Allocation records**: ``<state_dir>/clusters/<cluster>.json``, written
  under the allocation lock when :meth:`~pragma_kvm_rocks.driver.KvmRocksDriver.allocate`
  reserves a cluster, before any domain exists. Concurrent boots see each
  other's reservations there; ``clean`` and ``rollback`` delete the record.

A record file is read at most :data:`MAX_RECORD_BYTES`; one that is not what
pragma writes (not JSON, a wrong shape, a cluster or node name that
:func:`pragma_core.vcdb.is_valid_name` refuses, a file name that is not its
cluster's) is a :class:`~pragma_core.errors.DriverError` naming the file. A
cluster name is checked the same way before it becomes a file name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
from attrs import field, frozen

from pragma_core import DriverError
from pragma_core.pluginkit import invalid_name, is_valid_name, to_tuple

#: XML namespace of pragma's domain metadata.
NAMESPACE = "https://pragma-grid.github.io/pragma/1"
#: Prefix used for it in domain XML.
PREFIX = "pragma"
#: An allocation record larger than this is refused (one takes a few KiB).
MAX_RECORD_BYTES = 4 * 1024 * 1024
# What reading a damaged record can raise: JSON and UTF-8 errors are ValueErrors; a wrong
# shape gives KeyError, TypeError or AttributeError; absurd nesting RecursionError; inf as an
# integer OverflowError.
_DAMAGED = (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError)


@frozen(kw_only=True)
class NicRecord:
    """One NIC of a node: network name, IP and MAC."""

    network: str
    ip: str
    mac: str


@frozen(kw_only=True)
class NodeRecord:
    """One node of a cluster as pragma recorded it."""

    cluster: str
    name: str
    hostname: str
    role: str
    host: str
    cpus: int
    memory_mib: int
    disk: str = ""
    image: str = ""
    vlan: int | None = None
    public_ip: str | None = None
    nics: tuple[NicRecord, ...] = field(default=(), converter=to_tuple)
    #: The allocation that made the node (``""``: made by a pragma before allocation ids).
    allocation: str = ""

    def ip(self, network: str) -> str | None:
        return next((n.ip for n in self.nics if n.network == network), None)

    def to_element(self) -> ET.Element:
        """The ``<pragma:node>`` element for domain metadata."""
        attrs_ = {
            "cluster": self.cluster,
            "name": self.name,
            "hostname": self.hostname,
            "role": self.role,
            "host": self.host,
            "cpus": str(self.cpus),
            "memory-mib": str(self.memory_mib),
            "disk": self.disk,
            "image": self.image,
        }
        if self.vlan is not None:
            attrs_["vlan"] = str(self.vlan)
        if self.public_ip:
            attrs_["public-ip"] = self.public_ip
        if self.allocation:
            attrs_["allocation"] = self.allocation
        node = ET.Element(f"{{{NAMESPACE}}}node", attrs_)
        for nic in self.nics:
            ET.SubElement(node, f"{{{NAMESPACE}}}nic", {"network": nic.network, "ip": nic.ip, "mac": nic.mac})
        return node

    @classmethod
    def from_element(cls, node: ET.Element) -> NodeRecord:
        """Read a ``<pragma:node>`` element (namespaced or not, as libvirt returns it)."""

        def local(tag: str) -> str:
            return tag.rsplit("}", 1)[-1]

        if local(node.tag) != "node":
            raise ValueError("not a pragma node element")
        get = node.attrib.get
        vlan = get("vlan")
        return cls(
            cluster=get("cluster", ""),
            name=get("name", ""),
            hostname=get("hostname", ""),
            role=get("role", "compute"),
            host=get("host", ""),
            cpus=int(get("cpus", "0")),
            memory_mib=int(get("memory-mib", "0")),
            disk=get("disk", ""),
            image=get("image", ""),
            vlan=int(vlan) if vlan else None,
            public_ip=get("public-ip"),
            allocation=get("allocation", ""),
            nics=tuple(
                NicRecord(network=n.get("network", ""), ip=n.get("ip", ""), mac=n.get("mac", ""))
                for n in node
                if local(n.tag) == "nic"
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("cluster", "name", "hostname", "role", "host", "cpus", "memory_mib")}
        out.update(disk=self.disk, image=self.image, vlan=self.vlan, public_ip=self.public_ip)
        if self.allocation:
            out["allocation"] = self.allocation
        out["nics"] = [{"network": n.network, "ip": n.ip, "mac": n.mac} for n in self.nics]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRecord:
        nics = tuple(NicRecord(**n) for n in data.get("nics", ()))
        return cls(**{k: v for k, v in data.items() if k != "nics"}, nics=nics)


def parse_metadata(text: str) -> NodeRecord | None:
    """The node record in ``dom.metadata(...)`` text, or ``None`` when it is not pragma's."""
    try:
        return NodeRecord.from_element(SafeET.fromstring(text))
    except (ET.ParseError, ValueError, TypeError):
        return None


@frozen(kw_only=True)
class ClusterRecord:
    """A reserved cluster: its nodes and the shared resources it holds."""

    cluster: str
    image: str
    fqdn: str
    vlan: int
    public_ip: str
    nodes: tuple[NodeRecord, ...] = field(converter=to_tuple)
    owner_pid: int = 0
    #: Unique id of the allocation (the UUID of its claim domains); ``""`` in records of older pragmas.
    allocation: str = ""
    #: The head node that made it: ``<hostname>:<state_dir>``.
    head: str = ""
    #: When it was made (seconds since the epoch).
    created: float = 0.0
    #: ``shared`` or ``pool`` (kvm_rocks.conf ``disk_storage``): where its disks are.
    storage: str = "shared"
    #: Base images (and kernels) it uses in diskdir or the hosts' pools: ``host/name`` (shared: ``/name``).
    bases: tuple[str, ...] = field(default=(), converter=to_tuple)

    @property
    def names(self) -> frozenset[str]:
        """The cluster name and every node name: the domain names it holds."""
        return frozenset({self.cluster, *(n.name for n in self.nodes)})

    @property
    def macs(self) -> frozenset[str]:
        return frozenset(nic.mac for n in self.nodes for nic in n.nics)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cluster": self.cluster,
            "image": self.image,
            "fqdn": self.fqdn,
            "vlan": self.vlan,
            "public_ip": self.public_ip,
            "owner_pid": self.owner_pid,
            "nodes": [n.as_dict() for n in self.nodes],
        }
        if self.allocation:
            out.update(allocation=self.allocation, head=self.head, created=self.created, storage=self.storage,
                       bases=list(self.bases))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterRecord:
        return cls(
            cluster=data["cluster"],
            image=data.get("image", ""),
            fqdn=data.get("fqdn", data["cluster"]),
            vlan=int(data["vlan"]),
            public_ip=str(ipaddress.IPv4Address(data["public_ip"])),
            nodes=tuple(NodeRecord.from_dict(n) for n in data.get("nodes", ())),
            owner_pid=int(data.get("owner_pid", 0)),
            allocation=str(data.get("allocation", "")),
            head=str(data.get("head", "")),
            created=float(data.get("created", 0.0)),
            storage=str(data.get("storage", "shared")),
            bases=tuple(str(b) for b in data.get("bases", ())),
        )


class RecordStore:
    """Allocation records in ``<state_dir>/clusters``; callers hold the allocation lock to write."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "clusters"

    def path(self, cluster: str) -> Path:
        """The record file of ``cluster`` (a :class:`DriverError` for a name that is not valid)."""
        if not is_valid_name(cluster):
            raise DriverError(invalid_name(cluster, "cluster name"))
        return self.directory / f"{cluster}.json"

    def all(self) -> Iterator[ClusterRecord]:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                yield _load(path)
            except FileNotFoundError:
                continue  # deleted since the listing: a clean in another process
            except OSError as exc:
                raise DriverError(f"{path}: unreadable allocation record ({exc.strerror or exc})") from None

    def get(self, cluster: str) -> ClusterRecord | None:
        path = self.path(cluster)
        try:
            return _load(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(f"{path}: unreadable allocation record ({exc.strerror or exc})") from None

    def put(self, record: ClusterRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(record.cluster)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record.as_dict(), indent=1, sort_keys=True))
        os.replace(tmp, path)

    def delete(self, cluster: str) -> None:
        self.path(cluster).unlink(missing_ok=True)


def _load(path: Path) -> ClusterRecord:
    """The record in ``path``; OSError as raised, a damaged record a :class:`DriverError`."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_RECORD_BYTES + 1)
    try:
        record = parse_record(data)
        if record.cluster != path.stem:
            raise ValueError(f"it names cluster {record.cluster!r}")
    except _DAMAGED as exc:
        raise DriverError(f"{path}: unreadable allocation record ({_reason(exc)}); remove it if no cluster uses it") from None
    return record


def parse_record(data: bytes | str) -> ClusterRecord:
    """A record from its JSON (a file, or a claim's metadata on a host): checked, or a ValueError-like error.

    Raises one of the errors in ``DAMAGED`` for anything that is not what
    pragma writes: too large, not JSON, a wrong shape, an invalid name.
    """
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    record = ClusterRecord.from_dict(json.loads(data))
    for name, what in [(record.cluster, "cluster name"), *((n.name, "node name") for n in record.nodes)]:
        if not is_valid_name(name):
            raise ValueError(invalid_name(name, what))
    return record


#: What reading a damaged record raises (see :func:`parse_record`).
DAMAGED = _DAMAGED


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, KeyError):
        return f"missing {exc}"
    return str(exc) or type(exc).__name__
