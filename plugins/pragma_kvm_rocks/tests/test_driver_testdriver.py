"""The driver against libvirt's test driver (``test:///<node file>``): fast, no daemon."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from pragma_core.errors import CapacityError, DriverError, NotFoundError
from pragma_core.model import BootRequest, MemorySpec
from pragma_core.testing import DriverContract, DriverHarness
from pragma_core.testing.contract import boot
from pragma_kvm_rocks import e2fs
from pragma_kvm_rocks.qcow2 import read_header

from conftest import ext4_cluster

pytest.importorskip("libvirt")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


class TestKvmRocksContract(DriverContract):
    """The core conformance kit, on a 16-CPU test-driver host."""

    @pytest.fixture
    def driver_harness(self, tmp_path: Path, make_driver) -> Iterator[DriverHarness]:
        driver = make_driver({"localhost": 16})
        cluster = ext4_cluster(tmp_path / "image")
        # the frontend takes 1 CPU of 16; no console log says PRAGMA-READY here, so wait_ready times out
        yield DriverHarness(
            driver=driver, cluster=cluster, max_cpus=15, key=KEY, required_settings=("public_ips", "vlans"), wait_timeout=0.5
        )
        # Closed here, not by the garbage collector: a libvirt connection closed in another test's
        # worker thread wipes that thread's libvirt error between a failed call and its libvirtError.
        driver.hosts.close()


def request(cpus: int, **kw) -> BootRequest:
    return BootRequest(image="demo", cpus=cpus, key=KEY, memory=kw.pop("memory", MemorySpec()), **kw)


def test_running_domains_and_reserved_cpus_reduce_capacity(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"h1": 8, "h2": 8}, running={"h1": {"busy": 4}},
                         extra="num_processors_reserved = 1\nfrontend_host = 'h2'\n")
    cluster = ext4_cluster(tmp_path / "image")
    # free: h1 = 8-1-4 = 3, h2 = 8-1-1(frontend) = 6 -> 9 in all
    with pytest.raises(CapacityError, match="10 CPUs requested, 9 available"):
        driver.allocate(request(10), cluster)
    allocation = driver.allocate(request(9), cluster)
    try:
        assert [(n.host, n.cpus) for n in allocation.computes] == [("h2", 6), ("h1", 3)]
        assert allocation.frontend.host == "h2"
    finally:
        driver.rollback(allocation)


def test_with_memory_allocation_ratio_host_memory_running_guests_and_reservations_bound_the_nodes(
    tmp_path: Path, make_driver
) -> None:
    """The hosts' memory is read from libvirt, running domains and earlier reservations hold theirs."""
    driver = make_driver({"h1": 8, "h2": 8}, running={"h1": {"busy": 1}}, memory_mib={"h1": 6144, "h2": 3072},
                         extra="max_cpus_per_node = 1\nmemory_allocation_ratio = 1\nmemory_reserved_mib = 512\n"
                               "frontend_host = 'h1'\n")
    cluster = ext4_cluster(tmp_path / "image")
    two_gib = BootRequest(image="demo", cpus=3, key=KEY, memory=MemorySpec(frontend_mib=2048, compute_mib=2048))
    # h1: 6144 - 512 - 512 (busy) - 2048 (frontend) = 3072 MiB: 1 compute; h2: 3072 - 512 = 2560 MiB: 1 compute
    with pytest.raises(CapacityError, match=r"3 CPUs requested, 2 available on 2 host\(s\); memory_allocation_ratio"
                                            r" leaves room for h1 1 node\(s\), h2 1 node\(s\) of 2048 MiB"):
        driver.allocate(two_gib, cluster)
    first = driver.allocate(attrs.evolve(two_gib, cpus=2), cluster)
    try:
        assert sorted(n.host for n in first.computes) == ["h1", "h2"]
        with pytest.raises(CapacityError, match="not enough memory for the frontend on h1"):
            driver.allocate(attrs.evolve(two_gib, cpus=0), cluster)  # the first cluster's reservation holds it
    finally:
        driver.rollback(first)


def test_reservations_of_earlier_allocations_count_against_capacity(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 8})
    cluster = ext4_cluster(tmp_path / "image")
    first = driver.allocate(request(5), cluster)  # 1 + 5 of 8
    try:
        with pytest.raises(CapacityError, match="2 CPUs requested, 1 available"):
            driver.allocate(request(2), cluster)
    finally:
        driver.rollback(first)


def test_max_cpus_per_node_and_legacy_names(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16}, extra="max_cpus_per_node = 4\nnode_naming = 'legacy'\n")
    cluster = ext4_cluster(tmp_path / "image")
    allocation = driver.allocate(request(10), cluster)
    try:
        assert [n.cpus for n in allocation.computes] == [4, 4, 2]
        name = allocation.cluster
        assert [n.name for n in allocation.computes] == [f"vm-{name}-0", f"vm-{name}-1", f"vm-{name}-2"]
        assert [n.hostname for n in allocation.computes] == ["compute-0", "compute-1", "compute-2"]
    finally:
        driver.rollback(allocation)


def test_allocation_follows_the_rocks_address_convention(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16})
    allocation = driver.allocate(request(2, memory=MemorySpec(frontend_mib=512, compute_mib=300)),
                                 ext4_cluster(tmp_path / "image"))
    try:
        fe = allocation.frontend
        assert str(fe.interface("private").ip) == "10.1.1.1"
        assert [str(n.interface("private").ip) for n in allocation.computes] == ["10.1.255.254"]
        assert str(fe.interface("public").ip) == "192.0.2.10"
        assert allocation.cluster == "vc-192-0-2-10"  # TEST-NET has no reverse name
        assert fe.gateway == ipaddress.IPv4Address("192.0.2.1")
        assert allocation.network("public").subnet == ipaddress.IPv4Network("192.0.2.0/24")
        assert allocation.vlan == 100 and allocation.dns == ("192.0.2.53",)
        assert (fe.memory_mib, allocation.computes[0].memory_mib) == (512, 300)
        assert all(nic.mac.startswith("72:77:6e:") for n in allocation.nodes for nic in n.interfaces)
    finally:
        driver.rollback(allocation)


def test_deploy_defines_domains_with_metadata_bridges_and_overlays(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16})
    cluster = ext4_cluster(tmp_path / "image")
    allocation, files = boot(driver, cluster, request(3))
    conn = driver.hosts.conn("localhost")
    fe_xml = conn.lookupByName(allocation.cluster).XMLDesc(0)
    assert "br-p100" in fe_xml and "br-pub" in fe_xml
    assert 'pragma:node' in fe_xml or "pragma-grid.github.io/pragma/1" in fe_xml
    (status,) = driver.list_clusters(allocation.cluster)
    assert [n.state for n in status.nodes] == ["running", "running"]
    assert status.public_ip == "192.0.2.10"
    for node in allocation.nodes:
        disk = tmp_path / "disks" / f"{node.name}.qcow2"
        header = read_header(disk)
        base = cluster.frontend.path if node.role == "frontend" else cluster.compute.path
        assert header["backing_file"] == str(base)
        raw = tmp_path / f"{node.name}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
        location = e2fs.find_root_filesystem(raw)
        assert e2fs.read_file(raw, location, "/root/vc-out.xml") == files[node.name]
        assert "old-ifcfg-eth0" in e2fs.list_directory(raw, location, "/etc/sysconfig/network-scripts")
    # the base images are untouched
    location = e2fs.find_root_filesystem(cluster.frontend.path)
    assert "ifcfg-eth0" in e2fs.list_directory(cluster.frontend.path, location, "/etc/sysconfig/network-scripts")


def test_copy_mode_writes_vcout_into_a_full_copy(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16}, extra="disk_mode = 'copy'\n")
    cluster = ext4_cluster(tmp_path / "image")
    allocation, files = boot(driver, cluster, request(1))
    for node in allocation.nodes:
        disk = tmp_path / "disks" / f"{node.name}.img"
        location = e2fs.find_root_filesystem(disk)
        assert e2fs.read_file(disk, location, "/root/vc-out.xml") == files[node.name]


def test_failed_deploy_rolls_back_everything(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16}, extra="vcout_injection = 'e2fs'\n")
    cluster = ext4_cluster(tmp_path / "image")
    # a compute image without a filesystem: the e2fs path must refuse it
    with open(cluster.compute.path, "wb") as fh:
        fh.truncate(8 << 20)
    with pytest.raises(DriverError, match="e2fsprogs"):
        boot(driver, cluster, request(2))
    assert driver.list_clusters() == []
    assert list((tmp_path / "disks").glob("*")) == [] if (tmp_path / "disks").exists() else True
    assert list((tmp_path / "state" / "clusters").glob("*.json")) == []
    assert [d.name() for d in driver.hosts.conn("localhost").listAllDomains()] == []


def test_add_iface_network_needs_configuration(tmp_path: Path, make_driver) -> None:
    from pragma_core.model import InterfaceRequest

    driver = make_driver({"localhost": 16}, extra="additional_interfaces = {'openflow': 'br-of'}\n")
    cluster = ext4_cluster(tmp_path / "image")
    with pytest.raises(DriverError, match="not in additional_interfaces"):
        driver.allocate(request(1, add_ifaces=[InterfaceRequest(network="ent")]), cluster)
    with pytest.raises(DriverError, match="needs a subnet"):
        driver.allocate(request(1, add_ifaces=[InterfaceRequest(network="openflow")]), cluster)
    cidr = ipaddress.IPv4Interface("10.102.0.10/24")
    allocation = driver.allocate(request(1, add_ifaces=[InterfaceRequest(network="openflow", cidr=cidr)]), cluster)
    try:
        assert str(allocation.frontend.interface("openflow").ip) == "10.102.0.10"
        assert str(allocation.computes[0].interface("openflow").ip) == "10.102.0.11"
    finally:
        driver.rollback(allocation)


def test_enable_ent_adds_the_ent_network(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16},
                         extra="ent = {'subnet_name': 'ent', 'interface_name': 'br-ent', 'subnet': '10.50.0.0/16'}\n")
    allocation, files = boot(driver, ext4_cluster(tmp_path / "image"), request(1, enable_ent=True))
    assert allocation.frontend.interface("ent") is not None
    xml = driver.hosts.conn("localhost").lookupByName(allocation.computes[0].name).XMLDesc(0)
    assert "br-ent" in xml


def test_shutdown_timeout_zero_forces_nodes_off_without_asking_the_guests(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 8}, extra="shutdown_timeout = 0\n")
    allocation, _files = boot(driver, ext4_cluster(tmp_path / "image"), request(2))

    def no_acpi(*_args, **_kw):
        raise AssertionError("shutdown_timeout = 0 must not send ACPI requests")

    driver._ask_shutdown = no_acpi  # type: ignore[method-assign]
    try:
        status = driver.shutdown(allocation.cluster)
        assert [n.state for n in status.nodes] == ["shutoff"] * len(allocation.nodes)
        driver.clean(allocation.cluster)
        assert driver.list_clusters() == []
    finally:
        driver.rollback(allocation)


def test_cluster_without_its_record_is_found_shut_down_and_cleaned_through_domain_metadata(
    tmp_path: Path, make_driver
) -> None:
    driver = make_driver({"localhost": 8}, extra="shutdown_timeout = 0\n")
    allocation, _files = boot(driver, ext4_cluster(tmp_path / "image"), request(2))
    try:
        # another machine's pragma (another state_dir) has no record of this cluster
        (driver.settings.state_dir / "clusters" / f"{allocation.cluster}.json").unlink()
        (status,) = driver.list_clusters(allocation.cluster)
        assert {n.name for n in status.nodes} == {n.name for n in allocation.nodes}
        assert {n.state for n in driver.shutdown(allocation.cluster).nodes} == {"shutoff"}
        driver.clean(allocation.cluster)
        assert driver.list_clusters() == []
        assert list(driver.settings.disk_directory.iterdir()) == []
    finally:
        driver.rollback(allocation)


def test_open_vswitch_private_network_tags_each_nic_with_the_cluster_vlan(tmp_path: Path, make_driver) -> None:
    import defusedxml.ElementTree as SafeET

    driver = make_driver({"localhost": 8}, extra='private_bridge = "ovs:br-int"\n')
    allocation, _files = boot(driver, ext4_cluster(tmp_path / "image"), request(2))
    try:
        xml = driver.hosts.conn("localhost").lookupByName(allocation.computes[0].name).XMLDesc(0)
        (nic,) = SafeET.fromstring(xml).iterfind("devices/interface")
        assert nic.find("source").get("bridge") == "br-int"
        assert nic.find("virtualport").get("type") == "openvswitch"
        assert nic.find("vlan/tag").get("id") == str(allocation.vlan)
    finally:
        driver.rollback(allocation)


def test_unknown_cluster_shutdown_and_clean_raise_not_found(make_driver) -> None:
    driver = make_driver({"localhost": 4})
    with pytest.raises(NotFoundError):
        driver.clean("nope")


_CONCURRENT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from conftest import settings_from, base_conf, ext4_cluster
from pragma_core.model import BootRequest
from pragma_kvm_rocks.driver import KvmRocksDriver
from pragma_core.testing.contract import staged_in_place
from pragma_core.clusterxml import parse_cluster_xml
root = Path(sys.argv[1])
settings = settings_from(base_conf(root, hosts_dir=root / "hosts"), root / f"kvm_rocks-{sys.argv[2]}.conf")
driver = KvmRocksDriver(settings)
cluster = staged_in_place(parse_cluster_xml(root / "image" / "demo.xml", "demo"))
a = driver.allocate(BootRequest(image="demo", cpus=2), cluster)
print(json.dumps({"cluster": a.cluster, "ip": str(a.public_ip), "vlan": a.vlan,
                  "names": [n.name for n in a.nodes],
                  "macs": [i.mac for n in a.nodes for i in n.interfaces]}))
"""


def test_concurrent_boots_in_separate_processes_never_share_ip_vlan_name_or_mac(tmp_path: Path, make_driver) -> None:
    make_driver({"localhost": 64})  # writes the host file
    ext4_cluster(tmp_path / "image", size=8 << 20)
    script = tmp_path / "alloc.py"
    script.write_text(_CONCURRENT)
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path), str(i), here],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for key in ("cluster", "ip", "vlan"):
        values = [r[key] for r in results]
        assert len(set(values)) == len(values), f"duplicate {key}: {values}"
    names = [n for r in results for n in r["names"]]
    macs = [m for r in results for m in r["macs"]]
    assert len(set(names)) == len(names)
    assert len(set(macs)) == len(macs)
    records = list((tmp_path / "state" / "clusters").glob("*.json"))
    assert len(records) == 6


def test_closing_the_driver_closes_its_libvirt_connections_and_it_reconnects_on_use(make_driver) -> None:
    driver = make_driver()
    assert driver.list_clusters() == []
    opened = list(driver.hosts._conns.values())
    assert opened and all(conn.isAlive() for conn in opened)
    driver.close()
    driver.close()  # idempotent
    assert driver.hosts._conns == {}
    assert driver.list_clusters() == []


def test_clean_never_removes_another_clusters_node_named_in_forged_metadata(tmp_path: Path, make_driver) -> None:
    from pragma_kvm_rocks.records import NAMESPACE

    driver = make_driver({"localhost": 8}, extra="shutdown_timeout = 0\n")
    allocation, _files = boot(driver, ext4_cluster(tmp_path / "image"), request(2))
    victim = allocation.computes[0]
    disks = sorted(p.name for p in driver.settings.disk_directory.iterdir())
    base = next((p for p in driver.settings.disk_directory.iterdir() if p.name.startswith("pragma-base")), None)
    # a domain whose pragma metadata (written wrong by another head) puts the victim node in cluster "vc-x"
    forged = (f'<domain type="test"><name>junk</name><memory>1024</memory><os><type>hvm</type></os>'
              f'<metadata><pragma:node xmlns:pragma="{NAMESPACE}" cluster="vc-x" name="{victim.name}" host="localhost"'
              f' role="compute" cpus="1" disk="{base or driver.settings.disk_directory / (victim.name + ".qcow2")}"/>'
              f"</metadata></domain>")
    conn = driver.hosts.conn("localhost")
    conn.defineXML(forged)
    try:
        driver.clean("vc-x", force=True)
        running = {d.name() for d in conn.listAllDomains()}
        assert {n.name for n in allocation.nodes} <= running, "the other cluster's domains are all still there"
        assert sorted(p.name for p in driver.settings.disk_directory.iterdir()) == disks, "and every file of it"
    finally:
        conn.lookupByName("junk").undefine()
        driver.rollback(allocation)


def test_clean_never_removes_a_domain_whose_own_metadata_names_another_cluster(tmp_path: Path, make_driver) -> None:
    from attrs import evolve

    driver = make_driver({"localhost": 8}, extra="shutdown_timeout = 0\n")
    allocation, _files = boot(driver, ext4_cluster(tmp_path / "image"), request(2))
    store = driver.store
    record = store.get(allocation.cluster)
    assert record is not None
    try:
        # a record for "vc-x" that (written wrong) lists a node named like vc-x's but on a domain of this cluster:
        # the domain's own metadata names this cluster, so cleaning vc-x leaves it and its disk alone
        fake = evolve(record, cluster="vc-x", nodes=tuple(evolve(n, cluster="vc-x") for n in record.nodes))
        store.put(fake)
        disks = sorted(p.name for p in driver.settings.disk_directory.iterdir())
        driver.clean("vc-x", force=True)
        running = {d.name() for d in driver.hosts.conn("localhost").listAllDomains()}
        assert {n.name for n in allocation.nodes} <= running
        assert sorted(p.name for p in driver.settings.disk_directory.iterdir()) == disks
    finally:
        driver.rollback(allocation)


def test_a_guests_failure_line_is_kept_to_a_few_hundred_bytes_whatever_it_writes() -> None:
    from pragma_kvm_rocks.console import MAX_FAILURE_BYTES, verdict

    flood = b"boot noise\n" * 1000 + b"PRAGMA-FAILED " + b"\x01" * (4 << 20)
    found = verdict(flood)
    assert found is not None and found.startswith("failed: PRAGMA-FAILED")
    assert len(found.encode()) <= len("failed: PRAGMA-FAILED") + MAX_FAILURE_BYTES
    assert verdict(b"x\r\nPRAGMA-READY\r\nPRAGMA-FAILED later") == "ready"


def test_a_record_naming_a_host_the_site_does_not_have_does_not_block_clean(tmp_path: Path, make_driver) -> None:
    from attrs import evolve

    driver = make_driver({"localhost": 8}, extra="shutdown_timeout = 0\n")
    allocation, _files = boot(driver, ext4_cluster(tmp_path / "image"), request(2))
    try:
        record = driver.store.get(allocation.cluster)
        assert record is not None
        stray = evolve(record.nodes[-1], name=f"{allocation.cluster}-compute-9", host="nohost")
        driver.store.put(evolve(record, nodes=(*record.nodes, stray)))
        driver.clean(allocation.cluster, force=True)
        assert driver.list_clusters() == [] and driver.store.get(allocation.cluster) is None
    finally:
        driver.rollback(allocation)
