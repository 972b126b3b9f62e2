"""vc-out.xml: both formats byte-stable, readable by the guest configurators, and checked.

Golden files live in ``tests/golden/vcout/<scenario>.format<N>.<node name>.xml``.
Regenerate them only deliberately: ``PRAGMA_REGEN_GOLDEN=1 python -m pytest tests/test_vcout.py``,
then review the diff.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import attrs
import defusedxml.ElementTree as SafeET
import defusedxml.minidom
import pytest

from pragma_core import hookimpl
from pragma_core.hooks import HookManager, Hooks
from pragma_core.addressing import parse_cidr, plan_addresses
from pragma_core.errors import DriverError, FormatError
from pragma_core.model import Allocation, Interface, Network, Node
from pragma_core.vcout import FRONTEND_FILE, choose_format, render, serialize, validate_format, write

A = IPv4Address
GOLDEN = Path(__file__).parent / "golden" / "vcout"
REGEN = os.environ.get("PRAGMA_REGEN_GOLDEN") == "1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


# --------------------------------------------------------------------------- allocations


def mac(cluster: int, index: int) -> str:
    return f"52:54:00:00:{cluster:02x}:{index:02x}"


def build_allocation(
    *,
    serial: int,
    name: str,
    fqdn: str,
    public_ip: str,
    public_net: str,
    private_net: str,
    cpus: list[int],
    extra: tuple[str, str, int] | None = None,
    dns: tuple[str, ...] = ("8.8.8.8",),
    key: str = KEY,
) -> Allocation:
    """An allocation like a driver makes: private addresses from plan_addresses, computes gw = frontend private IP.

    ``extra`` is ``(network, cidr, mtu)`` of an ``add-iface=network:cidr``.
    """
    public = Network(name="public", subnet=IPv4Network(public_net), gateway=next(IPv4Network(public_net).hosts()))
    private = Network(name="private", subnet=IPv4Network(private_net), vlan=serial)
    networks = [private, public]
    plan = plan_addresses(private.subnet, len(cpus))
    extra_plan = None
    if extra is not None:
        subnet, start = parse_cidr(extra[1])
        networks.append(Network(name=extra[0], subnet=subnet, mtu=extra[2]))
        extra_plan = plan_addresses(subnet, len(cpus), start=start)
    counter = iter(range(256))
    fe_nics = [
        Interface(network="private", ip=plan.frontend, mac=mac(serial, next(counter))),
        Interface(network="public", ip=A(public_ip), mac=mac(serial, next(counter))),
    ]
    if extra_plan is not None:
        fe_nics.append(Interface(network=extra[0], ip=extra_plan.frontend, mac=mac(serial, next(counter))))
    frontend = Node(
        name=name, hostname=name, role="frontend", cpus=1, memory_mib=2048, interfaces=fe_nics, gateway=public.gateway
    )
    computes = []
    for i, count in enumerate(cpus):
        nics = [Interface(network="private", ip=plan.computes[i], mac=mac(serial, next(counter)))]
        if extra_plan is not None:
            nics.append(Interface(network=extra[0], ip=extra_plan.computes[i], mac=mac(serial, next(counter))))
        computes.append(
            Node(
                name=f"vm-{name}-{i}",
                hostname=f"compute-{i}",
                role="compute",
                cpus=count,
                memory_mib=2048,
                interfaces=nics,
                gateway=plan.frontend,
            )
        )
    return Allocation(
        cluster=name,
        image="rocks-basic",
        fqdn=fqdn,
        frontend=frontend,
        computes=computes,
        networks=networks,
        dns=dns,
        key=key + "\n",
        vlan=serial,
    )


def frontend_only() -> Allocation:
    return build_allocation(
        serial=1,
        name="vc-a",
        fqdn="vc-a.example.org",
        public_ip="192.0.2.10",
        public_net="192.0.2.0/24",
        private_net="10.1.0.0/16",
        cpus=[],
    )


def one_plus_three() -> Allocation:
    return build_allocation(
        serial=2,
        name="vc-c",
        fqdn="vc-c.sdsc.edu",
        public_ip="198.202.88.52",
        public_net="198.202.88.0/24",
        private_net="10.1.0.0/16",
        cpus=[2, 14, 8],
        dns=("8.8.8.8", "8.8.4.4"),
    )


def extra_network() -> Allocation:
    return build_allocation(
        serial=3,
        name="vc-e",
        fqdn="vc-e.example.org",
        public_ip="192.0.2.20",
        public_net="192.0.2.0/24",
        private_net="10.0.5.0/24",
        cpus=[4, 4],
        extra=("openflow", "10.102.0.10/24", 9000),
    )


SCENARIOS: dict[str, Callable[[], Allocation]] = {
    "frontend_only": frontend_only,
    "one_plus_three": one_plus_three,
    "extra_network": extra_network,
}


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendering_matches_the_golden_files_byte_for_byte(scenario: str, fmt: int) -> None:
    allocation = SCENARIOS[scenario]()
    files = render(allocation, format=fmt)
    prefix = f"{scenario}.format{fmt}."
    if REGEN:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for stale in GOLDEN.glob(prefix + "*.xml"):
            stale.unlink()
        for name, data in files.items():
            (GOLDEN / f"{prefix}{name}.xml").write_bytes(data)
    on_disk = {p.name[len(prefix) : -len(".xml")]: p.read_bytes() for p in GOLDEN.glob(prefix + "*.xml")}
    assert set(on_disk) == {n.name for n in allocation.nodes}, "golden files missing or stale"
    for name, data in files.items():
        assert data == on_disk[name], f"{prefix}{name}.xml differs (regenerate with PRAGMA_REGEN_GOLDEN=1 and review)"


def test_the_frontend_file_comes_first_and_every_node_gets_one() -> None:
    allocation = one_plus_three()
    files = render(allocation)
    assert list(files) == ["vc-c", "vm-vc-c-0", "vm-vc-c-1", "vm-vc-c-2"]


def test_a_frontend_only_cluster_has_an_empty_compute_element_in_both_formats() -> None:
    for fmt in (1, 2):
        data = render(frontend_only(), format=fmt)["vc-a"]
        assert b'\n  <compute count="0"/>\n' in data


def test_format_2_reproduces_the_reference_example_exactly() -> None:
    private = Network(name="private", subnet=IPv4Network("10.1.0.0/16"))
    public = Network(name="public", subnet=IPv4Network("198.202.88.0/24"))
    frontend = Node(
        name="vc-c",
        hostname="vc-c",
        role="frontend",
        cpus=1,
        memory_mib=1024,
        gateway=A("198.202.88.1"),
        interfaces=[
            Interface(network="private", ip=A("10.1.1.1"), mac="72:77:6e:80:00:20"),
            Interface(network="public", ip=A("198.202.88.52"), mac="72:77:6e:80:00:21"),
        ],
    )
    computes = [
        Node(
            name=f"vm-vc-c-{i}",
            hostname=f"compute-{i}",
            role="compute",
            cpus=cpus,
            memory_mib=1024,
            gateway=A("10.1.1.1"),
            interfaces=[Interface(network="private", ip=A(ip), mac=m)],
        )
        for i, (cpus, ip, m) in enumerate(
            [(2, "10.1.255.254", "72:77:6e:80:00:22"), (14, "10.1.255.253", "72:77:6e:80:00:23")]
        )
    ]
    allocation = Allocation(
        cluster="vc-c",
        image="x",
        fqdn="vc-c.sdsc.edu",
        frontend=frontend,
        computes=computes,
        networks=[private, public],
        dns=["8.8.8.8"],
        key="ssh-rsa AAAAB3NzaFAKEKEY root@rocks-fe\n\n",
    )
    files = render(allocation, format=2)
    assert (
        files["vc-c"].decode()
        == """\
<?xml version="1.0" ?>
<vc>
  <frontend fqdn="vc-c.sdsc.edu" gw="198.202.88.1" name="vc-c">
    <private ip="10.1.1.1" mac="72:77:6e:80:00:20" mtu="1500" netmask="255.255.0.0" subnet="10.1.0.0"/>
    <public ip="198.202.88.52" mac="72:77:6e:80:00:21" mtu="1500" netmask="255.255.255.0" subnet="198.202.88.0"/>
  </frontend>
  <compute count="2">
    <node cpus="2" gw="10.1.1.1" name="compute-0">
      <private ip="10.1.255.254" mac="72:77:6e:80:00:22" mtu="1500" netmask="255.255.0.0" subnet="10.1.0.0"/>
    </node>
    <node cpus="14" gw="10.1.1.1" name="compute-1">
      <private ip="10.1.255.253" mac="72:77:6e:80:00:23" mtu="1500" netmask="255.255.0.0" subnet="10.1.0.0"/>
    </node>
  </compute>
  <network>
    <dns domain="" ip="8.8.8.8" search="local"/>
  </network>
  <key>ssh-rsa AAAAB3NzaFAKEKEY root@rocks-fe</key>
</vc>
"""
    )
    assert (
        files["vm-vc-c-0"].decode()
        == """\
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
"""
    )


def minidom_pretty(data: bytes) -> bytes:
    """What legacy pragma_boot did: ElementTree text reparsed by minidom, ``toprettyxml(indent="  ")``."""
    root = SafeET.fromstring(data)
    for element in root.iter():
        if len(element) and element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None
    return defusedxml.minidom.parseString(ET.tostring(root)).toprettyxml(indent="  ").encode()


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_serialization_is_what_minidom_writes_with_sorted_attributes(scenario: str, fmt: int) -> None:
    for name, data in render(SCENARIOS[scenario](), format=fmt).items():
        assert data.startswith(b'<?xml version="1.0" ?>\n<vc>\n  <')
        assert data.endswith(b"</vc>\n")
        assert data == minidom_pretty(data), name
        for element in SafeET.fromstring(data).iter():
            assert list(element.attrib) == sorted(element.attrib)


def test_special_characters_are_escaped_like_legacy_minidom_and_round_trip() -> None:
    key = 'ssh-ed25519 AAAA "quoted" <angle> & José@host'
    allocation = attrs.evolve(one_plus_three(), key=key, fqdn="a&b<c>\"d'.example")
    for fmt in (1, 2):
        files = render(allocation, format=fmt)
        data = files["vc-c"]
        assert b"<key>ssh-ed25519 AAAA &quot;quoted&quot; &lt;angle&gt; &amp; Jos\xc3\xa9@host</key>" in data
        assert b'fqdn="a&amp;b&lt;c&gt;&quot;d\'.example"' in data
        root = SafeET.fromstring(data)
        assert root.findtext("key") == key
        assert "José".encode() in data
        fqdn = root.find("frontend").get("fqdn") if fmt == 2 else root.find("frontend/public").get("fqdn")
        assert fqdn == allocation.fqdn


def test_rendering_twice_gives_the_same_bytes() -> None:
    assert render(extra_network(), format=1) == render(extra_network(), format=1)
    assert render(extra_network(), format=2) == render(extra_network(), format=2)


# --------------------------------------------------------------------------- what the guests read


def network_of(ip: str, netmask: str) -> IPv4Network:
    return IPv4Network(f"{ip}/{netmask}", strict=False)


def check_format_1(allocation: Allocation, files: dict[str, bytes]) -> None:
    """Read the files the way the format-1 configurators do (Rocks 6 ``reconfigure``, ``vc-out-parse.py``)."""
    cluster = SafeET.fromstring(files[allocation.frontend.name])
    fe = allocation.frontend
    public = cluster.find("frontend/public")
    private = cluster.find("frontend/private")
    assert public is not None and private is not None
    assert public.attrib["ip"] == str(fe.interface("public").ip)
    assert public.attrib["fqdn"] == allocation.fqdn
    assert public.attrib["name"] == fe.hostname
    assert public.attrib["gw"] == str(fe.gateway)
    assert public.attrib["mac"] == fe.interface("public").mac
    assert A(public.attrib["ip"]) in network_of(public.attrib["ip"], public.attrib["netmask"])
    assert network_of(public.attrib["ip"], public.attrib["netmask"]) == allocation.network("public").subnet
    assert private.attrib["ip"] == str(fe.interface("private").ip)
    assert private.attrib["mac"] == fe.interface("private").mac
    private_net = network_of(private.attrib["ip"], private.attrib["netmask"])
    assert private_net == allocation.network("private").subnet
    # a configurator walking <frontend> finds ip, netmask and mac on every child, and an extra network's mtu
    for child in cluster.find("frontend"):
        assert {"ip", "netmask", "mac"} <= set(child.attrib)
        if child.tag not in ("public", "private"):
            assert child.attrib["mtu"] == str(allocation.network(child.tag).mtu)
    nodes = cluster.findall("compute/node")
    assert cluster.find("compute").attrib["count"] == str(len(allocation.computes))
    assert [(n.attrib["name"], int(n.attrib["cpus"])) for n in nodes] == [
        (c.hostname, c.cpus) for c in allocation.computes
    ]
    for element, node in zip(nodes, allocation.computes, strict=True):
        assert element.attrib["ip"] == str(node.interface("private").ip)
        assert element.attrib["mac"] == node.interface("private").mac
        assert A(element.attrib["ip"]) in private_net
        # vc-out-parse.py takes a node's children, when there are any, as its interfaces
        if len(element):
            assert element.find("private").attrib["ip"] == element.attrib["ip"]
    for root in [SafeET.fromstring(files[n.name]) for n in allocation.nodes]:
        assert root.find("network/dns").attrib["ip"].split(",") == list(allocation.dns)
        assert root.findall("key")[0].text.strip() == allocation.key.strip()
    for node in allocation.computes:
        root = SafeET.fromstring(files[node.name])
        mine = root.findall("compute/private")[0]
        assert mine.attrib["ip"] == str(node.interface("private").ip)
        assert mine.attrib["fqdn"] == node.hostname
        assert mine.attrib["mac"] == node.interface("private").mac
        assert mine.attrib["gw"] == private.attrib["ip"], "the frontend's private IP is the computes' gateway"
        assert network_of(mine.attrib["ip"], mine.attrib["netmask"]) == private_net
        assert root.findall("frontend/public")[0].attrib["fqdn"] == allocation.fqdn
    # the frontend file has no compute/private, which is how the configurator tells them apart
    assert cluster.findall("compute/private") == []


def check_format_2(allocation: Allocation, files: dict[str, bytes]) -> None:
    """Read the files the way the format-2 configurators do."""
    cluster = SafeET.fromstring(files[allocation.frontend.name])
    fe = allocation.frontend
    frontend = cluster.find("frontend")
    assert frontend.attrib == {"fqdn": allocation.fqdn, "gw": str(fe.gateway), "name": fe.hostname}

    def check_interfaces(element: ET.Element, node: Node) -> None:
        assert [c.tag for c in element] == [nic.network for nic in node.interfaces]
        for child, nic in zip(element, node.interfaces, strict=True):
            net = allocation.network(nic.network)
            assert child.attrib == {
                "ip": str(nic.ip),
                "mac": nic.mac,
                "mtu": str(net.mtu),
                "netmask": str(net.subnet.netmask),
                "subnet": str(net.subnet.network_address),
            }
            assert A(child.attrib["ip"]) in IPv4Network(f"{child.attrib['subnet']}/{child.attrib['netmask']}")

    check_interfaces(frontend, fe)
    fe_private = frontend.find("private").attrib["ip"]
    assert cluster.find("compute").attrib == {"count": str(len(allocation.computes))}
    nodes = cluster.findall("compute/node")
    assert [(n.attrib["name"], int(n.attrib["cpus"])) for n in nodes] == [
        (c.hostname, c.cpus) for c in allocation.computes
    ]
    for element, node in zip(nodes, allocation.computes, strict=True):
        assert element.attrib["gw"] == fe_private
        check_interfaces(element, node)
    for node in allocation.computes:
        root = SafeET.fromstring(files[node.name])
        assert root.find("frontend").attrib == {"fqdn": allocation.fqdn}
        compute = root.find("compute")
        assert compute.attrib == {"gw": fe_private, "name": node.hostname}
        check_interfaces(compute, node)
    for root in [SafeET.fromstring(files[n.name]) for n in allocation.nodes]:
        assert root.find("network/dns").attrib == {"domain": "", "ip": ",".join(allocation.dns), "search": "local"}
        assert root.findtext("key") == KEY


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_format_1_gives_the_guest_configurators_every_attribute_they_read(scenario: str) -> None:
    allocation = SCENARIOS[scenario]()
    check_format_1(allocation, render(allocation, format=1))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_format_2_gives_the_guest_configurators_every_attribute_they_read(scenario: str) -> None:
    allocation = SCENARIOS[scenario]()
    check_format_2(allocation, render(allocation, format=2))


def test_format_1_lists_extra_networks_on_the_frontend_and_in_each_compute_file() -> None:
    allocation = extra_network()
    files = render(allocation, format=1)
    cluster = SafeET.fromstring(files["vc-e"])
    assert [c.tag for c in cluster.find("frontend")] == ["public", "private", "openflow"]
    assert cluster.find("frontend/openflow").attrib == {
        "ip": "10.102.0.10",
        "mac": mac(3, 2),
        "mtu": "9000",
        "netmask": "255.255.255.0",
    }
    first = cluster.find("compute/node")
    assert [c.tag for c in first] == ["private", "openflow"]
    assert first.find("openflow").attrib["ip"] == "10.102.0.11"
    compute = SafeET.fromstring(files["vm-vc-e-1"]).find("compute")
    assert [c.tag for c in compute] == ["private", "openflow"]
    assert compute.find("openflow").attrib["ip"] == "10.102.0.12"


def test_format_1_extra_network_elements_carry_the_network_mtu_and_classic_ones_do_not() -> None:
    files = render(extra_network(), format=1)
    for name, data in files.items():
        for element in SafeET.fromstring(data).iter():
            if element.tag == "openflow":
                assert element.get("mtu") == "9000", name
            elif element.tag in ("public", "private"):
                assert "mtu" not in element.attrib, f"{name}: the classic format 1 elements stay as they were"


def with_letter_macs(allocation: Allocation, case: Callable[[str], str]) -> Allocation:
    """``allocation`` with MACs that hold hex letters (``72:77:6e:ab:cd:NN``), passed through ``case``."""
    counter = iter(range(256))

    def renumber(node: Node) -> Node:
        nics = [attrs.evolve(n, mac=case(f"72:77:6e:ab:cd:{next(counter):02x}")) for n in node.interfaces]
        return attrs.evolve(node, interfaces=nics)

    frontend = renumber(allocation.frontend)
    return attrs.evolve(allocation, frontend=frontend, computes=[renumber(c) for c in allocation.computes])


@pytest.mark.parametrize("fmt", [1, 2])
def test_mac_addresses_from_the_driver_are_written_in_lower_case(fmt: int) -> None:
    shouting = with_letter_macs(extra_network(), str.upper)
    assert shouting.frontend.interfaces[0].mac == "72:77:6E:AB:CD:00"
    files = render(shouting, format=fmt)
    macs = [e.get("mac") for data in files.values() for e in SafeET.fromstring(data).iter() if e.get("mac")]
    assert "72:77:6e:ab:cd:00" in macs and all(m == m.lower() for m in macs)
    assert files == render(with_letter_macs(extra_network(), str.lower), format=fmt)


def test_format_1_nodes_without_extra_networks_have_no_children() -> None:
    cluster = SafeET.fromstring(render(one_plus_three(), format=1)["vc-c"])
    assert all(len(node) == 0 for node in cluster.findall("compute/node"))


# --------------------------------------------------------------------------- missing values


def evolve_frontend(allocation: Allocation, **changes: object) -> Allocation:
    return attrs.evolve(allocation, frontend=attrs.evolve(allocation.frontend, **changes))


def evolve_compute(allocation: Allocation, index: int, **changes: object) -> Allocation:
    computes = list(allocation.computes)
    computes[index] = attrs.evolve(computes[index], **changes)
    return attrs.evolve(allocation, computes=computes)


@pytest.mark.parametrize("fmt", [1, 2])
def test_a_frontend_without_gateway_is_a_driver_error_not_a_type_error(fmt: int) -> None:
    with pytest.raises(DriverError, match="frontend vc-c has no gateway"):
        render(evolve_frontend(one_plus_three(), gateway=None), format=fmt)


@pytest.mark.parametrize("fmt", [1, 2])
def test_a_compute_without_gateway_is_a_driver_error(fmt: int) -> None:
    with pytest.raises(DriverError, match="compute vm-vc-c-1 has no gateway"):
        render(evolve_compute(one_plus_three(), 1, gateway=None), format=fmt)


def test_format_1_needs_a_public_interface_on_the_frontend() -> None:
    allocation = one_plus_three()
    private_only = evolve_frontend(allocation, interfaces=[allocation.frontend.interface("private")])
    with pytest.raises(DriverError, match="format 1 needs a public interface on frontend vc-c"):
        render(private_only, format=1)
    # format 2 names whatever interfaces the frontend has
    root = SafeET.fromstring(render(private_only, format=2)["vc-c"])
    assert [c.tag for c in root.find("frontend")] == ["private"]


def test_a_compute_without_a_private_interface_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="compute vm-vc-c-0 has no interface on the private network"):
        render(evolve_compute(one_plus_three(), 0, interfaces=[]), format=2)


def test_an_interface_on_an_unlisted_network_is_a_driver_error() -> None:
    allocation = one_plus_three()
    nic = Interface(network="storage", ip=A("10.9.0.1"), mac="52:54:00:aa:bb:cc")
    with pytest.raises(DriverError, match="network 'storage', which the allocation does not list"):
        render(evolve_frontend(allocation, interfaces=[*allocation.frontend.interfaces, nic]))


def test_two_interfaces_on_one_network_are_a_driver_error() -> None:
    allocation = one_plus_three()
    nic = allocation.computes[0].interfaces[0]
    with pytest.raises(DriverError, match="two interfaces on network 'private'"):
        render(evolve_compute(allocation, 0, interfaces=[nic, attrs.evolve(nic, mac="52:54:00:aa:bb:cc")]))


def test_a_network_name_that_cannot_be_an_element_is_a_driver_error() -> None:
    allocation = attrs.evolve(
        one_plus_three(),
        networks=[*one_plus_three().networks, Network(name="bad name", subnet=IPv4Network("10.9.0.0/24"))],
    )
    nic = Interface(network="bad name", ip=A("10.9.0.1"), mac="52:54:00:aa:bb:cc")
    with pytest.raises(DriverError, match="cannot be an XML element name"):
        render(evolve_frontend(allocation, interfaces=[*allocation.frontend.interfaces, nic]))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"dns": ()}, "no DNS server"),
        ({"dns": ("dns.example.org",)}, "not an IP address"),
        ({"key": " \n"}, "no SSH public key"),
        ({"key": "ssh-rsa AAAA\x00"}, "characters XML cannot carry"),
        ({"fqdn": ""}, "no frontend fqdn"),
    ],
)
def test_missing_or_unusable_allocation_values_are_driver_errors(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(DriverError, match=problem):
        render(attrs.evolve(one_plus_three(), **changes))


def test_an_ip_outside_its_network_is_a_driver_error() -> None:
    allocation = one_plus_three()
    nic = attrs.evolve(allocation.computes[2].interfaces[0], ip=A("10.2.0.5"))
    with pytest.raises(DriverError, match="vm-vc-c-2: IP 10.2.0.5 is outside the private network 10.1.0.0/16"):
        render(evolve_compute(allocation, 2, interfaces=[nic]), format=1)


def test_a_malformed_mac_is_a_driver_error() -> None:
    allocation = one_plus_three()
    nic = attrs.evolve(allocation.computes[0].interfaces[0], mac="")
    with pytest.raises(DriverError, match="MAC '' on private"):
        render(evolve_compute(allocation, 0, interfaces=[nic]))


def test_duplicate_hostnames_are_a_driver_error() -> None:
    with pytest.raises(DriverError, match="same hostname 'compute-0'"):
        render(evolve_compute(one_plus_three(), 1, hostname="compute-0"))


def test_several_dns_servers_are_comma_separated() -> None:
    root = SafeET.fromstring(render(one_plus_three(), format=1)["vm-vc-c-0"])
    assert root.find("network/dns").attrib["ip"] == "8.8.8.8,8.8.4.4"


# --------------------------------------------------------------------------- hooks


class AddsEnt:
    """A hook plugin adding an element with unsorted attributes to every file."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    @hookimpl
    def pragma_vcout_element(self, root: ET.Element, allocation: Allocation, node: Node, format: int) -> None:
        self.calls.append((node.name, format, root.tag))
        ET.SubElement(root, "ent", {"zone": "b", "enabled": "yes", "node": node.hostname})


def plugin_hooks(*plugins: object) -> Hooks:
    pm = HookManager()
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return Hooks(pm)


@pytest.mark.parametrize("fmt", [1, 2])
def test_hooks_add_elements_to_every_file_serialized_with_sorted_attributes(fmt: int) -> None:
    plugin = AddsEnt()
    allocation = one_plus_three()
    files = render(allocation, format=fmt, hooks=plugin_hooks(plugin))
    assert plugin.calls == [(n.name, fmt, "vc") for n in allocation.nodes]
    for node in allocation.nodes:
        data = files[node.name]
        assert f'  <ent enabled="yes" node="{node.hostname}" zone="b"/>\n</vc>\n'.encode() in data
        assert data == minidom_pretty(data)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda root: root.set("count", 3), "attribute count of <vc> is 3 \\(int\\), not a string"),
        (lambda root: root.append(ET.Comment("hello")), "only elements may be added"),
        (lambda root: ET.SubElement(root, "bad tag"), "not a valid element name"),
        (lambda root: setattr(root.find("network"), "text", "words"), "mixed content"),
        (lambda root: setattr(root.find("network"), "tail", "words"), "mixed content"),
        (lambda root: ET.SubElement(root, "note").set("text", "bell\x07"), "characters XML cannot carry"),
    ],
)
def test_a_hook_that_makes_an_invalid_tree_gives_a_format_error_naming_the_node(
    mutate: Callable[[ET.Element], object], problem: str
) -> None:
    class Bad:
        @hookimpl
        def pragma_vcout_element(self, root: ET.Element) -> None:
            mutate(root)

    with pytest.raises(FormatError, match=problem) as info:
        render(one_plus_three(), hooks=plugin_hooks(Bad()))
    assert "vc-out of node vc-c" in str(info.value)


def test_newlines_in_hook_attributes_survive_a_parse() -> None:
    root = ET.Element("vc")
    ET.SubElement(root, "note", {"text": "a\nb\tc"})
    assert SafeET.fromstring(serialize(root)).find("note").get("text") == "a\nb\tc"


# --------------------------------------------------------------------------- format choice


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (2, 2), ("1", 1), (" 2 ", 2)])
def test_validate_format_accepts_1_and_2_as_int_or_text(value: object, expected: int) -> None:
    assert validate_format(value, source=None) == expected


@pytest.mark.parametrize("value", [0, 3, "3", "two", "", None, True, 1.0, "1.0"])
def test_validate_format_refuses_anything_else_naming_the_source(value: object) -> None:
    with pytest.raises(FormatError, match="vc-out format must be 1 or 2") as info:
        validate_format(value, source=Path("/repo/vc/cluster.xml"))
    assert str(info.value).startswith("/repo/vc/cluster.xml: ")


def test_render_refuses_an_unknown_format() -> None:
    with pytest.raises(FormatError, match="must be 1 or 2, not 3"):
        render(one_plus_three(), format=3)


def test_the_cluster_description_overrides_the_site_format() -> None:
    assert choose_format(2, 1) == 1
    assert choose_format(1, 2) == 2
    assert choose_format(1, None) == 1
    assert choose_format(2, None) == 2
    with pytest.raises(FormatError):
        choose_format(2, 5)


# --------------------------------------------------------------------------- writing


def test_write_puts_the_cluster_file_in_vc_out_xml_and_each_compute_in_its_own(tmp_path: Path) -> None:
    files = render(one_plus_three(), format=1)
    paths = write(files, tmp_path / "staging")
    assert paths == {
        "vc-c": tmp_path / "staging" / FRONTEND_FILE,
        "vm-vc-c-0": tmp_path / "staging" / "vm-vc-c-0.xml",
        "vm-vc-c-1": tmp_path / "staging" / "vm-vc-c-1.xml",
        "vm-vc-c-2": tmp_path / "staging" / "vm-vc-c-2.xml",
    }
    for name, path in paths.items():
        assert path.read_bytes() == files[name]
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == sorted(p.name for p in paths.values())


def test_write_takes_the_frontend_by_name_when_given(tmp_path: Path) -> None:
    paths = write({"b": b"compute", "a": b"frontend"}, tmp_path, frontend="a")
    assert paths == {"b": tmp_path / "b.xml", "a": tmp_path / FRONTEND_FILE}
    assert (tmp_path / FRONTEND_FILE).read_bytes() == b"frontend"


@pytest.mark.parametrize("name", ["../escape", "sub/dir", ".hidden", "..", "vc-out", ""])
def test_write_refuses_unsafe_node_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(FormatError):
        write({"fe": b"x", "ok": b"y", name: b"z"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / FRONTEND_FILE).write_bytes(b"old")
    write({"fe": b"new"}, tmp_path)
    assert (tmp_path / FRONTEND_FILE).read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == [FRONTEND_FILE]


def test_write_that_fails_part_way_leaves_no_file_new_or_replaced(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / FRONTEND_FILE).write_bytes(b"old")
    real_fdopen, opened = os.fdopen, []

    def disk_full_on_the_third(fd: int, *args: object, **kwargs: object):
        opened.append(fd)
        if len(opened) == 3:
            os.close(fd)
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", disk_full_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        write({"fe": b"new", "c0": b"a", "c1": b"b", "c2": b"c"}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [FRONTEND_FILE]
    assert (tmp_path / FRONTEND_FILE).read_bytes() == b"old"
