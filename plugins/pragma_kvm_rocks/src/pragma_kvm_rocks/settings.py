"""``kvm_rocks.conf``: the driver's settings, validated when core reads the file.

Core builds :class:`KvmRocksSettings` with :func:`pragma_core.config.build_settings`,
so a bad value is reported as ``kvm_rocks.conf line 12: vlans: ...``. Every key is
documented in the plugin's README; the legacy keys keep their meaning (reference
§2.5), with ``netmask`` and ``gw`` now actually used for the public network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
from attrs import frozen

from pragma_core.pluginkit import (
    choice,
    int_between,
    number_between,
    optional,
    setting,
    to_int,
    to_ipv4_address,
    to_ipv4_list,
    to_ipv4_network,
    to_non_negative_int,
    to_optional_path,
    to_path,
    to_positive_int,
    to_positive_seconds,
    to_seconds,
    to_str_list,
)

#: Where allocation records and locks live when ``state_dir`` is not set.
DEFAULT_STATE_DIR = Path("/var/lib/pragma/kvm_rocks")
#: Where node disks go when ``diskdir`` is empty (the libvirt default pool).
DEFAULT_DISKDIR = Path("/var/lib/libvirt/images")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_OVS = "ovs:"
_mtu = int_between(68, 65535)


def _netmask(value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{value}")
    except (ValueError, TypeError):
        raise ValueError(f"must be a netmask such as 255.255.255.0 or a prefix length, not {value!r}") from None
    return str(value)


def _vlan(value: Any) -> int:
    number = to_int(value)
    if not 1 <= number <= 4094:
        raise ValueError(f"VLAN id {number} is outside 1-4094")
    return number


def _vlans(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = to_str_list(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, set)):
        raise ValueError(f"must be a list of VLAN ids such as range(2, 100), not {value!r}")
    return tuple(dict.fromkeys(_vlan(item) for item in value))


def _cpus_limit(value: Any) -> int | None:
    """``None``, ``""`` and ``0`` mean no limit."""
    return optional(to_non_negative_int)(value) or None


def _containers(value: Any) -> tuple[str, ...]:
    names = to_str_list(value)
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name")
    return tuple(dict.fromkeys(names))


def _bridge(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a bridge name (template with {{vlan}}) or ovs:NAME, not {value!r}")
    value = value.strip()
    name = value[len(_OVS) :] if value.startswith(_OVS) else value
    try:
        sample = name.format(vlan=4094)
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{value!r}: only {{vlan}} may be used in the template") from None
    if not _NAME.fullmatch(sample) or len(sample) > 15:
        raise ValueError(f"{value!r} does not give a valid interface name (at most 15 characters)")
    return value


@frozen(kw_only=True)
class ExtraNetwork:
    """A network ``add-iface=`` (or ENT) may name: the bridge its NICs join and its subnet."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network | None = None
    mtu: int = 1500


def _extra_networks(value: Any) -> Mapping[str, ExtraNetwork]:
    if value in (None, ""):
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ValueError("must be a dict of network name to bridge, e.g. {'openflow': 'br-of'}")
    out = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in ("private", "public"):
            raise ValueError(f"network name {name!r} is not allowed")
        if isinstance(spec, ExtraNetwork):
            out[name] = spec
        elif isinstance(spec, str):
            out[name] = ExtraNetwork(name=name, bridge=_bridge(spec))
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"bridge", "subnet", "mtu"}
            if unknown:
                raise ValueError(f"{name}: unknown keys {sorted(unknown)} (bridge, subnet, mtu)")
            out[name] = ExtraNetwork(
                name=name,
                bridge=_bridge(spec.get("bridge", name)),
                subnet=optional(to_ipv4_network)(spec.get("subnet")),
                mtu=_mtu(spec.get("mtu", 1500)),
            )
        else:
            raise ValueError(f"{name}: must be a bridge name or a dict with bridge/subnet/mtu")
    return MappingProxyType(out)


def _ent(value: Any) -> Mapping[str, str]:
    if value is None or value == "" or value == {}:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("must be a dict such as {'subnet_name': 'ent', 'interface_name': 'br-ent'}")
    if "subnet_name" not in value:
        raise ValueError("needs 'subnet_name'")
    unknown = set(value) - {"subnet_name", "interface_name", "subnet"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (subnet_name, interface_name, subnet)")
    if "subnet" in value:
        to_ipv4_network(value["subnet"])
    if "interface_name" in value:
        _bridge(value["interface_name"])
    return MappingProxyType(dict(value))


def _directories(value: Any) -> tuple[Path, ...]:
    paths = tuple(dict.fromkeys(Path(item) for item in to_str_list(value)))
    for path in paths:
        if not path.is_absolute():
            raise ValueError(f"{str(path)!r} is not an absolute directory")
    return paths


def _pool_name(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > 64:
        raise ValueError(f"must be a libvirt storage pool name (letters, digits, . _ -), not {value!r}")
    return value


def _uri_template(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a libvirt URI such as qemu+ssh://{{host}}/system, not {value!r}")
    try:
        value.format(host="h")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{value!r}: only {{host}} may be used in the template") from None
    return value


@frozen(kw_only=True)
class KvmRocksSettings:
    """Settings of the ``kvm_rocks`` driver (``kvm_rocks.conf`` or ``kvm_rocks.toml``)."""

    # ---- legacy keys (reference §2.5)
    public_ips: tuple[str, ...] = setting(to_ipv4_list, help="addresses handed to frontends")
    vlans: tuple[int, ...] = setting(_vlans, help="VLAN ids of private networks, e.g. range(2, 100)")
    dns: tuple[str, ...] = setting(to_ipv4_list, default=("8.8.8.8",), help="DNS servers of the nodes")
    netmask: str | None = setting(_netmask, default=None, help="netmask of the public network")
    gw: ipaddress.IPv4Address | None = setting(optional(to_ipv4_address), default=None, help="public gateway")
    diskdir: Path | None = setting(to_optional_path, default=None, help="where node disks are written")
    available_containers: tuple[str, ...] = setting(_containers, default=(), help="hosts for compute VMs")
    num_processors_reserved: int = setting(to_non_negative_int, default=0, help="CPUs kept free on each host")
    additional_interfaces: Mapping[str, ExtraNetwork] = setting(_extra_networks, factory=dict)
    ent: Mapping[str, str] = setting(_ent, factory=dict, help="PRAGMA-ENT network")
    # ---- new keys
    libvirt_uri: str = setting(_uri_template, default="qemu:///system", help="libvirt URI template with {host}")
    frontend_host: str | None = setting(default=None, help="host of the frontend VM")
    private_bridge: str = setting(_bridge, default="brvlan{vlan}")
    public_bridge: str | None = setting(optional(_bridge), default="br0")
    domain_type: str = setting(choice("auto", "kvm", "qemu"), default="auto")
    cpu_model: str = setting(default="pentium3")
    disk_mode: str = setting(choice("overlay", "copy"), default="overlay")
    vcout_injection: str = setting(choice("auto", "e2fs", "guestfish", "none"), default="auto")
    max_parallel: int = setting(to_positive_int, default=4, help="nodes created at once")
    cpu_allocation_ratio: float = setting(number_between(0, 64, above=True), default=1.0)
    memory_allocation_ratio: float = setting(
        number_between(0, 64), default=0.0,
        help="guest memory a host may hold, as a multiple of its memory less memory_reserved_mib; 0: not counted")
    memory_reserved_mib: int = setting(to_non_negative_int, default=1024,
                                       help="host memory kept for the host itself (with memory_allocation_ratio)")
    max_cpus_per_node: int | None = setting(_cpus_limit, default=None, help="0: no limit")
    private_network: ipaddress.IPv4Network = setting(to_ipv4_network, default="10.1.0.0/16")
    state_dir: Path = setting(to_path, default=DEFAULT_STATE_DIR, help="allocation records and locks")
    shutdown_timeout: float = setting(to_seconds, default=120.0, help="seconds before a node is powered off")
    node_naming: str = setting(choice("compute", "legacy"), default="compute")
    default_memory_mib: int = setting(to_positive_int, default=2048)
    public_domain: str = setting(default="localdomain", help="domain of the frontend's name when its public IP has no reverse DNS")
    # ---- several hosts (README "Several hosts")
    disk_storage: str = setting(choice("shared", "pool"), default="shared",
                                help="shared: diskdir is one directory on the head and every host; pool: each host's own")
    storage_pool: str | None = setting(_pool_name, default=None, help="libvirt pool of disk_storage = pool")
    shared_dirs: tuple[Path, ...] = setting(_directories, default=(),
                                            help="directories every host sees at the head's path (besides diskdir)")
    claim_hosts: tuple[str, ...] = setting(_containers, default=(), help="hosts holding the cluster reservations")
    placement: str = setting(choice("auto", "pack", "spread"), default="auto", help="how computes go over hosts")
    connect_timeout: float = setting(to_positive_seconds, default=10.0, help="seconds to open a libvirt connection")
    keepalive_interval: float = setting(to_seconds, default=5.0, help="seconds between keepalives; 0: none")
    keepalive_count: int = setting(to_positive_int, default=3, help="keepalives unanswered before a host is dead")

    @public_ips.validator
    def _some_ips(self, attribute: attrs.Attribute, value: tuple) -> None:
        if not value:
            raise ValueError("public_ips: must list at least one address")

    @vlans.validator
    def _some_vlans(self, attribute: attrs.Attribute, value: tuple) -> None:
        if not value:
            raise ValueError("vlans: must list at least one VLAN id")

    @private_network.validator
    def _private_size(self, attribute: attrs.Attribute, value: ipaddress.IPv4Network) -> None:
        if value.prefixlen > 30:
            raise ValueError("private_network: needs at least a /30")

    @cpu_model.validator
    def _cpu_model(self, attribute: attrs.Attribute, value: str) -> None:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+|host-model|host-passthrough", value):
            raise ValueError(f"cpu_model: {value!r} is not a libvirt CPU model name")

    @public_domain.validator
    def _public_domain(self, attribute: attrs.Attribute, value: str) -> None:
        label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        if not (isinstance(value, str) and re.fullmatch(rf"{label}(\.{label})*", value)):
            raise ValueError(f"public_domain: {value!r} is not a DNS domain such as example.org")

    @frontend_host.validator
    def _frontend_host(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None and not (isinstance(value, str) and _NAME.fullmatch(value)):
            raise ValueError(f"frontend_host: {value!r} is not a host name")

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts compute VMs may run on: ``available_containers``, or this machine alone."""
        return self.available_containers or ("localhost",)

    @property
    def frontend(self) -> str:
        """The host the frontend VM runs on (``frontend_host``, else the first host)."""
        return self.frontend_host or self.hosts[0]

    @property
    def all_hosts(self) -> tuple[str, ...]:
        """Every host pragma talks to: the frontend's and the compute hosts."""
        return tuple(dict.fromkeys((self.frontend, *self.hosts)))

    @property
    def claim_group(self) -> tuple[str, ...]:
        """The hosts that hold cluster reservations (``claim_hosts``, else the first three of the sorted hosts)."""
        return self.claim_hosts or tuple(sorted(self.all_hosts)[:3])

    @property
    def placement_strategy(self) -> str:
        """``pack`` or ``spread`` (``auto``: spread when ``max_cpus_per_node`` is set, else the legacy pack)."""
        if self.placement != "auto":
            return self.placement
        return "spread" if self.max_cpus_per_node else "pack"

    @property
    def pool_name(self) -> str:
        """The libvirt storage pool of ``disk_storage = pool``: ``storage_pool``, else one named after diskdir."""
        if self.storage_pool:
            return self.storage_pool
        import hashlib

        return "pragma-" + hashlib.sha256(str(self.disk_directory).encode()).hexdigest()[:8]

    def uri_for(self, host: str) -> str:
        """The libvirt URI of ``host``."""
        return self.libvirt_uri.format(host=host)

    @property
    def disk_directory(self) -> Path:
        """Where node disks are written (``diskdir``, or the libvirt default)."""
        return self.diskdir or DEFAULT_DISKDIR

    def extra_network(self, name: str) -> ExtraNetwork | None:
        """The ``add-iface``-able network ``name`` (``additional_interfaces``), or ``None``."""
        return self.additional_interfaces.get(name)

    def ent_network(self) -> ExtraNetwork | None:
        """The PRAGMA-ENT network of ``enable-ent=true``, or ``None`` when ``ent`` is not set."""
        if not self.ent:
            return None
        name = self.ent["subnet_name"]
        known = self.additional_interfaces.get(name)
        subnet = self.ent.get("subnet")
        bridge = self.ent.get("interface_name")
        if known is not None:
            return attrs.evolve(
                known,
                bridge=bridge or known.bridge,
                subnet=to_ipv4_network(subnet) if subnet else known.subnet,
            )
        return ExtraNetwork(name=name, bridge=bridge or name, subnet=to_ipv4_network(subnet) if subnet else None)


def is_ovs(bridge: str) -> bool:
    """Whether a bridge setting names an Open vSwitch bridge (``ovs:NAME``)."""
    return bridge.startswith(_OVS)


def bridge_name(bridge: str, vlan: int | None) -> str:
    """The host bridge a NIC joins, with ``{vlan}`` filled in and any ``ovs:`` prefix removed."""
    name = bridge[len(_OVS) :] if is_ovs(bridge) else bridge
    return name.format(vlan=vlan if vlan is not None else 0)

