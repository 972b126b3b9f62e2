"""The domain model: frozen, keyword-only attrs value types.

These are the values that pass between core, repositories, drivers and hook
plugins. They are immutable; use :func:`attrs.evolve` to derive a changed copy.
New fields are always added with a default, so a plugin written against an
older core keeps working.

Overview::

    ClusterDescription          what a repository says a cluster is (cluster XML)
      NodeTemplate x2           frontend and compute: libvirt domain + one disk
        DiskImage               where the disk comes from (parts, processor, checksums)
    ResolvedCluster             a description resolved for a driver that needs no local files
      StagedCluster             the same, with ready local disk files (StagedImage)
    BootRequest                 what the user asked for (cpus, memory, key, add-iface)
    Allocation                  what the driver reserved: nodes, NICs, networks, DNS, key
      Node / Interface / Network
    ClusterStatus / NodeStatus  what ``list cluster`` shows
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs
from attrs import field, frozen

Role = Literal["frontend", "compute"]

#: Hash algorithms accepted for checksums, by their name in cluster XML.
CHECKSUM_ALGORITHMS = ("sha256", "md5")


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


def _tuple(value: Iterable[Any] | None) -> tuple[Any, ...]:
    return tuple(value or ())


def _lower(value: str) -> str:
    return str.lower(value)  # like str.lower itself: a TypeError for anything but a str


@frozen(kw_only=True)
class Checksum:
    """An expected digest: ``algorithm`` is ``sha256`` or ``md5``, ``hexdigest`` lower case."""

    algorithm: str = field(validator=attrs.validators.in_(CHECKSUM_ALGORITHMS))
    hexdigest: str = field(converter=_lower)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@frozen(kw_only=True)
class Part:
    """One file a disk image is made from, named relative to the cluster directory."""

    name: str
    checksum: Checksum | None = None
    size: int | None = None


@frozen(kw_only=True)
class DiskImage:
    """The disk of a node template, as the cluster description gives it.

    ``source`` is the image file name relative to the cluster directory (the
    ``<source file>``); ``format`` is the disk format the VM reads (``raw`` or
    ``qcow2``); ``processor`` names how the parts become the image (``raw``
    when the file is used as it is, ``gzip``, ``splited``, ``splited_gzip`` or
    one a plugin registers). ``checksum`` is of the final image, each part may
    carry its own.
    """

    source: str
    format: str = "raw"
    processor: str = "raw"
    parts: tuple[Part, ...] = field(default=(), converter=_tuple)
    checksum: Checksum | None = None


@frozen(kw_only=True)
class NodeTemplate:
    """The frontend or compute section of a cluster description.

    ``domain_xml`` is the libvirt ``<domain>`` element as text (drivers build
    their VMs from it, keeping its devices); ``vcpus`` and ``memory_mib`` are
    what it declares, ``None`` when it declares nothing.
    """

    role: Role
    domain_xml: str
    disk: DiskImage
    vcpus: int | None = None
    memory_mib: int | None = None


@frozen(kw_only=True)
class ClusterDescription:
    """A virtual cluster image as a repository describes it (the cluster XML).

    ``directory`` is the absolute directory of the XML file; every relative
    file name in it is resolved against that directory and may not leave it.
    ``compute`` is ``None`` for a frontend-only description: compute nodes then
    use the frontend template. ``vcout_format`` is the per-cluster override of
    the site's vc-out format, ``None`` when the description does not set one.
    """

    name: str
    path: Path
    directory: Path
    frontend: NodeTemplate
    compute: NodeTemplate | None = None
    arch: str = "x86_64"
    vcout_format: int | None = None

    @property
    def compute_template(self) -> NodeTemplate:
        """The template compute nodes are made from (the frontend's when none is given)."""
        return self.compute if self.compute is not None else self.frontend


@frozen(kw_only=True)
class StagedImage:
    """A disk image ready to boot: an absolute local path and what it is."""

    path: Path
    format: str = "raw"
    virtual_size: int | None = None
    backing_file: Path | None = None


@frozen(kw_only=True)
class ResolvedCluster:
    """A cluster description the repository resolved, its disk images not staged.

    What a driver whose images live in its engine (``uses_local_images =
    False``, e.g. CloudStack templates) is handed: it boots from the
    description alone. :class:`StagedCluster` is the same with local images.
    """

    description: ClusterDescription

    @property
    def name(self) -> str:
        """The image's name in the repository (``vc-name``)."""
        return self.description.name


@frozen(kw_only=True)
class StagedCluster(ResolvedCluster):
    """A cluster description whose images are ready on local disk."""

    frontend: StagedImage
    compute: StagedImage


@frozen(kw_only=True)
class MemorySpec:
    """Memory per node in MiB, from ``mem=N`` or ``mem=frontend:compute``."""

    frontend_mib: int | None = None
    compute_mib: int | None = None


@frozen(kw_only=True)
class InterfaceRequest:
    """One ``add-iface=net[:cidr]`` item: an extra network on every node.

    ``cidr`` is the subnet to use, its host part (when not zero) the first
    address to hand out.
    """

    network: str
    cidr: ipaddress.IPv4Interface | None = None


@frozen(kw_only=True)
class BootRequest:
    """What ``pragma boot`` was asked for, validated.

    ``image`` is the repository name of the cluster (``vc-name``); ``cpus`` the
    compute CPUs wanted (0: frontend only); ``key`` the SSH public key text.
    ``params`` keeps every ``key=value`` parameter as given, for plugins.
    """

    image: str
    cpus: int
    key: str = ""
    memory: MemorySpec = field(factory=MemorySpec)
    add_ifaces: tuple[InterfaceRequest, ...] = field(default=(), converter=_tuple)
    enable_ent: bool = False
    params: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)


@frozen(kw_only=True)
class Network:
    """A network the cluster's nodes sit on.

    ``name`` is what vc-out calls it (``private``, ``public`` or an extra
    network such as ``openflow``); ``subnet`` carries the netmask.
    """

    name: str
    subnet: ipaddress.IPv4Network
    mtu: int = 1500
    gateway: ipaddress.IPv4Address | None = None
    vlan: int | None = None


@frozen(kw_only=True)
class Interface:
    """A node's NIC on one network."""

    network: str
    ip: ipaddress.IPv4Address
    mac: str
    device: str | None = None


@frozen(kw_only=True)
class Node:
    """One VM of an allocation.

    ``name`` is the driver's name for the VM (libvirt domain, CloudStack VM);
    ``hostname`` is the name written into vc-out (the frontend's short name, or
    ``compute-<i>`` for computes); ``host`` is where it runs.
    """

    name: str
    hostname: str
    role: Role
    cpus: int
    memory_mib: int
    interfaces: tuple[Interface, ...] = field(default=(), converter=_tuple)
    gateway: ipaddress.IPv4Address | None = None
    host: str = ""

    def interface(self, network: str) -> Interface | None:
        """The NIC on ``network``, or ``None``."""
        for nic in self.interfaces:
            if nic.network == network:
                return nic
        return None


@frozen(kw_only=True)
class Allocation:
    """Everything a driver reserved for one cluster.

    ``cluster`` is the cluster's name (what ``list``, ``shutdown`` and
    ``clean`` take), usually the frontend's short name; ``fqdn`` the frontend's
    fully qualified name. ``networks`` lists each network any node has a NIC
    on. ``state`` is the driver's own bookkeeping between
    :meth:`~pragma_core.Driver.allocate`, :meth:`~pragma_core.Driver.deploy`
    and :meth:`~pragma_core.Driver.rollback` (engine ids, reserved
    resources): an instance of the driver's ``state_class`` (a frozen attrs
    class is best) that only the driver reads, through
    :meth:`Driver.state_of <pragma_core.Driver.state_of>`; core carries it
    untouched. ``extra`` is the older string-only form of the same, kept for
    drivers written against pragma 0.1.
    """

    cluster: str
    image: str
    fqdn: str
    frontend: Node
    computes: tuple[Node, ...] = field(default=(), converter=_tuple)
    networks: tuple[Network, ...] = field(default=(), converter=_tuple)
    dns: tuple[str, ...] = field(default=(), converter=_tuple)
    key: str = ""
    vlan: int | None = None
    extra: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    state: object = None

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The frontend followed by the computes."""
        return (self.frontend, *self.computes)

    def network(self, name: str) -> Network:
        """The network called ``name``; :class:`KeyError` when there is none."""
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    @property
    def public_ip(self) -> ipaddress.IPv4Address | None:
        nic = self.frontend.interface("public")
        return nic.ip if nic else None


@frozen(kw_only=True)
class NodeStatus:
    """One row of ``list cluster``."""

    name: str
    role: Role
    state: str
    host: str = ""
    cpus: int = 0
    memory_mib: int = 0
    public_ip: str | None = None
    private_ip: str | None = None


@frozen(kw_only=True)
class ClusterStatus:
    """A cluster as ``list cluster`` shows it: its frontend first, then computes."""

    name: str
    nodes: tuple[NodeStatus, ...] = field(default=(), converter=_tuple)
    public_ip: str | None = None

    @property
    def frontend(self) -> NodeStatus | None:
        return next((n for n in self.nodes if n.role == "frontend"), None)


class Readiness(enum.Enum):
    """Whether a node came up: what :meth:`Driver.wait_ready <pragma_core.Driver.wait_ready>` reports per node."""

    READY = "ready"
    #: the guest said it could not configure itself (e.g. ``PRAGMA-FAILED``)
    FAILED = "failed"
    #: the node does not run, so it cannot become ready
    STOPPED = "stopped"
    #: no verdict before the deadline
    TIMEOUT = "timeout"


@frozen(kw_only=True)
class NodeReadiness:
    """One node's readiness and, when it is not ready, why (``detail``)."""

    node: str
    state: Readiness
    detail: str = ""

    @property
    def ready(self) -> bool:
        return self.state is Readiness.READY


def _readiness_tuple(value: Iterable[NodeReadiness] | None) -> tuple[NodeReadiness, ...]:
    return tuple(value or ())


@frozen(kw_only=True)
class ClusterReadiness:
    """Every node's readiness, frontend first."""

    cluster: str
    nodes: tuple[NodeReadiness, ...] = field(default=(), converter=_readiness_tuple)

    @property
    def ready(self) -> bool:
        """Whether every node is ready."""
        return all(n.ready for n in self.nodes)

    @property
    def not_ready(self) -> tuple[str, ...]:
        """The names of the nodes that are not ready, sorted."""
        return tuple(sorted(n.node for n in self.nodes if not n.ready))

    @classmethod
    def from_mapping(cls, cluster: str, verdicts: Mapping[str, str]) -> ClusterReadiness:
        """Read the legacy form ``{node: "ready" | "<state>: <detail>"}`` of older drivers.

        A text whose state is not one of :class:`Readiness` counts as a timeout
        with the whole text as its detail.
        """
        nodes = []
        for node, text in verdicts.items():
            word, sep, detail = str(text).partition(": ")
            try:
                state = Readiness(word.strip())
            except ValueError:
                state, detail = Readiness.TIMEOUT, str(text)
            if state is Readiness.READY:
                detail = ""
            nodes.append(NodeReadiness(node=node, state=state, detail=detail if sep or state is not Readiness.READY else ""))
        return cls(cluster=cluster, nodes=tuple(nodes))


@frozen(kw_only=True)
class Booted:
    """What :meth:`Site.boot <pragma_core.Site.boot>` made: the allocation, the staged images, and
    readiness when waited for.

    ``staged`` is a :class:`StagedCluster`, or only the resolved description
    when the driver's images live in its engine (``Driver.uses_local_images``
    is ``False``).
    """

    allocation: Allocation
    staged: ResolvedCluster
    vcout_format: int
    readiness: ClusterReadiness | None = None

    @property
    def name(self) -> str:
        """The cluster's name: what :meth:`Site.clusters`, :meth:`Site.shutdown` and :meth:`Site.clean` take."""
        return self.allocation.cluster
