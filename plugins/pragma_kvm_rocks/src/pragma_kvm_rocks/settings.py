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
from attrs import field, frozen

from pragma_core.config import to_int, to_optional_path, to_path, to_str_list

#: Where allocation records and locks live when ``state_dir`` is not set.
DEFAULT_STATE_DIR = Path("/var/lib/pragma/kvm_rocks")
#: Where node disks go when ``diskdir`` is empty (the libvirt default pool).
DEFAULT_DISKDIR = Path("/var/lib/libvirt/images")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_OVS = "ovs:"


def _ipv4_list(value: Any) -> tuple[ipaddress.IPv4Address, ...]:
    items = to_str_list(value)
    out = []
    for item in items:
        try:
            out.append(ipaddress.IPv4Address(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 address") from None
    if len(set(out)) != len(out):
        raise ValueError("lists an address twice")
    return tuple(out)


def _optional_ipv4(value: Any) -> ipaddress.IPv4Address | None:
    if value in (None, ""):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise ValueError(f"must be an IPv4 address, not {value!r}") from None


def _netmask(value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{value}")
    except (ValueError, TypeError):
        raise ValueError(f"must be a netmask such as 255.255.255.0 or a prefix length, not {value!r}") from None
    return str(value)


def _network(value: Any) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value)
    except (ValueError, TypeError):
        raise ValueError(f"must be an IPv4 network such as 10.1.0.0/16, not {value!r}") from None


def _vlans(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, set)):
        raise ValueError(f"must be a list of VLAN ids such as range(2, 100), not {value!r}")
    out = []
    for item in value:
        number = to_int(item)
        if not 1 <= number <= 4094:
            raise ValueError(f"VLAN id {number} is outside 1-4094")
        out.append(number)
    return tuple(dict.fromkeys(out))


def _containers(value: Any) -> tuple[str, ...]:
    names = to_str_list(value)
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name")
    return tuple(dict.fromkeys(names))


def _bridge(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a bridge name (template with {{vlan}}) or ovs:NAME, not {value!r}")
    name = value[len(_OVS) :] if value.startswith(_OVS) else value
    try:
        sample = name.format(vlan=4094)
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{value!r}: only {{vlan}} may be used in the template") from None
    if not _NAME.fullmatch(sample) or len(sample) > 15:
        raise ValueError(f"{value!r} does not give a valid interface name (at most 15 characters)")
    return value


def _optional_bridge(value: Any) -> str | None:
    return None if value in (None, "") else _bridge(value)


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
        if isinstance(spec, str):
            out[name] = ExtraNetwork(name=name, bridge=_bridge(spec))
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"bridge", "subnet", "mtu"}
            if unknown:
                raise ValueError(f"{name}: unknown keys {sorted(unknown)} (bridge, subnet, mtu)")
            subnet = spec.get("subnet")
            out[name] = ExtraNetwork(
                name=name,
                bridge=_bridge(spec.get("bridge", name)),
                subnet=_network(subnet) if subnet else None,
                mtu=to_int(spec.get("mtu", 1500)),
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
        _network(value["subnet"])
    if "interface_name" in value:
        _bridge(value["interface_name"])
    return MappingProxyType(dict(value))


def _choice(*allowed: str) -> Any:
    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return convert


def _positive_int(value: Any) -> int:
    number = to_int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, not {number}")
    return number


def _optional_positive_int(value: Any) -> int | None:
    return None if value in (None, "", 0) else _positive_int(value)


def _non_negative_int(value: Any) -> int:
    number = to_int(value)
    if number < 0:
        raise ValueError(f"must not be negative, not {number}")
    return number


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number, not {value!r}") from None
    if not 0 < number <= 64:
        raise ValueError(f"must be above 0 and at most 64, not {value!r}")
    return number


def _seconds(value: Any) -> float:
    number = _ratio(value) if not isinstance(value, (int, float)) or isinstance(value, bool) else float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _uri_template(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a libvirt URI such as qemu+ssh://{{host}}/system, not {value!r}")
    try:
        value.format(host="h")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{value!r}: only {{host}} may be used in the template") from None
    return value


def _dns(value: Any) -> tuple[str, ...]:
    return tuple(str(a) for a in _ipv4_list(value))


@frozen(kw_only=True)
class KvmRocksSettings:
    """Settings of the ``kvm_rocks`` driver (``kvm_rocks.conf`` or ``kvm_rocks.toml``)."""

    # ---- legacy keys (reference §2.5)
    public_ips: tuple[ipaddress.IPv4Address, ...] = field(converter=_ipv4_list)
    vlans: tuple[int, ...] = field(converter=_vlans)
    dns: tuple[str, ...] = field(default=("8.8.8.8",), converter=_dns)
    netmask: str | None = field(default=None, converter=_netmask)
    gw: ipaddress.IPv4Address | None = field(default=None, converter=_optional_ipv4)
    diskdir: Path | None = field(default=None, converter=to_optional_path)
    available_containers: tuple[str, ...] = field(default=(), converter=_containers)
    num_processors_reserved: int = field(default=0, converter=_non_negative_int)
    additional_interfaces: Mapping[str, ExtraNetwork] = field(factory=dict, converter=_extra_networks)
    ent: Mapping[str, str] = field(factory=dict, converter=_ent)
    # ---- new keys
    libvirt_uri: str = field(default="qemu:///system", converter=_uri_template)
    frontend_host: str | None = field(default=None)
    private_bridge: str = field(default="brvlan{vlan}", converter=_bridge)
    public_bridge: str | None = field(default="br0", converter=_optional_bridge)
    domain_type: str = field(default="auto", converter=_choice("auto", "kvm", "qemu"))
    cpu_model: str = field(default="pentium3")
    disk_mode: str = field(default="overlay", converter=_choice("overlay", "copy"))
    vcout_injection: str = field(default="auto", converter=_choice("auto", "e2fs", "guestfish", "none"))
    max_parallel: int = field(default=4, converter=_positive_int)
    cpu_allocation_ratio: float = field(default=1.0, converter=_ratio)
    max_cpus_per_node: int | None = field(default=None, converter=_optional_positive_int)
    private_network: ipaddress.IPv4Network = field(default="10.1.0.0/16", converter=_network)
    state_dir: Path = field(default=DEFAULT_STATE_DIR, converter=to_path)
    shutdown_timeout: float = field(default=120.0, converter=_seconds)
    node_naming: str = field(default="compute", converter=_choice("compute", "legacy"))
    default_memory_mib: int = field(default=2048, converter=_positive_int)
    public_domain: str = field(default="localdomain")

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
                subnet=_network(subnet) if subnet else known.subnet,
            )
        return ExtraNetwork(name=name, bridge=bridge or name, subnet=_network(subnet) if subnet else None)


def is_ovs(bridge: str) -> bool:
    """Whether a bridge setting names an Open vSwitch bridge (``ovs:NAME``)."""
    return bridge.startswith(_OVS)


def bridge_name(bridge: str, vlan: int | None) -> str:
    """The host bridge a NIC joins, with ``{vlan}`` filled in and any ``ovs:`` prefix removed."""
    name = bridge[len(_OVS) :] if is_ovs(bridge) else bridge
    return name.format(vlan=vlan if vlan is not None else 0)

