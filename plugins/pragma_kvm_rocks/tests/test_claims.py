"""Several head nodes on the same hosts: claims on the hosts (libvirt's test driver, one world shared by the heads).

Each head has its own state_dir (its own lock and records); they share the
hosts' libvirt, so only the claims there keep them apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from conftest import base_conf, ext4_cluster, host_file, settings_from

from pragma_core.errors import CapacityError, DriverError
from pragma_core.model import Allocation, BootRequest
from pragma_core.testing.contract import boot
from pragma_kvm_rocks.claims import claim_name, claim_xml, clashes
from pragma_kvm_rocks.driver import KvmRocksDriver
from pragma_kvm_rocks.hosts import Hosts

libvirt = pytest.importorskip("libvirt")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"
HOSTS = {"h1": 64, "h2": 64, "h3": 64}


class Site:
    """Hosts (test-driver node files) and heads on them, all sharing one connection per host."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        (root / "hosts").mkdir()
        for name, cpus in HOSTS.items():
            host_file(root / "hosts", name, cpus=cpus)
        self.extra = extra
        self.shared: Hosts | None = None
        self.cluster = ext4_cluster(root / "image", size=8 << 20)

    def head(self, name: str, extra: str = "") -> KvmRocksDriver:
        conf = base_conf(self.root, hosts_dir=self.root / "hosts", containers=list(HOSTS), extra=self.extra + extra)
        conf = conf.replace(f'state_dir = "{self.root / "state"}"', f'state_dir = "{self.root / name}-state"')
        driver = KvmRocksDriver(settings_from(conf, self.root / f"{name}.conf"), hosts=self.shared)
        self.shared = driver.hosts
        return driver

    def domains(self, host: str) -> list[str]:
        assert self.shared is not None
        return sorted(d.name() for d in self.shared.conn(host).listAllDomains())


def request(cpus: int = 2) -> BootRequest:
    return BootRequest(image="demo", cpus=cpus, key=KEY)


def _resources(allocation) -> tuple[str, int, set[str], set[str]]:  # noqa: ANN001
    return (str(allocation.public_ip), allocation.vlan, {n.name for n in allocation.nodes},
            {i.mac for n in allocation.nodes for i in n.interfaces})


def test_a_second_head_sees_the_first_heads_claim_and_takes_other_resources(tmp_path: Path) -> None:
    site = Site(tmp_path)
    first, second = site.head("a"), site.head("b")
    one = first.allocate(request(), site.cluster)
    assert second.store.get(one.cluster) is None, "the second head has no record of it"
    two = second.allocate(request(), site.cluster)
    ip1, vlan1, names1, macs1 = _resources(one)
    ip2, vlan2, names2, macs2 = _resources(two)
    assert ip1 != ip2 and vlan1 != vlan2 and not names1 & names2 and not macs1 & macs2
    # the claim is on every claim host (h1..h3 here), as a domain never started
    for host in HOSTS:
        assert claim_name(one.cluster) in site.domains(host)
    # the second head lists the first head's cluster from its claim, and may clean it
    (status,) = second.list_clusters(one.cluster)
    assert {n.state for n in status.nodes} == {"reserved"}
    second.clean(one.cluster)
    assert not any(claim_name(one.cluster) in site.domains(h) for h in HOSTS)
    second.rollback(two)
    assert all(site.domains(h) == [] for h in HOSTS)


def _race(heads: list[KvmRocksDriver], allocate: Callable[[KvmRocksDriver], Allocation]
          ) -> tuple[list[Allocation], list[BaseException]]:
    """Run ``allocate`` for every head in its own thread, all released at once: what succeeded, what failed."""
    results: list[Allocation | BaseException] = []
    barrier = threading.Barrier(len(heads))

    def run(head: KvmRocksDriver) -> None:
        barrier.wait()
        try:
            results.append(allocate(head))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            results.append(exc)

    threads = [threading.Thread(target=run, args=(head,)) for head in heads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return ([r for r in results if not isinstance(r, BaseException)],
            [r for r in results if isinstance(r, BaseException)])


def test_heads_allocating_at_once_never_share_an_ip_vlan_name_or_mac(tmp_path: Path) -> None:
    site = Site(tmp_path)
    heads = [site.head(f"h{i}") for i in range(4)]
    twice = [head for head in heads for _ in range(2)]
    allocations, errors = _race(twice, lambda head: head.allocate(request(1), site.cluster))
    # 8 public IPs and 10 VLANs: every allocation succeeds, and none shares anything
    assert not errors, errors
    assert len(allocations) == 8
    for i, a in enumerate(allocations):
        for b in allocations[i + 1:]:
            ra, rb = _resources(a), _resources(b)
            assert ra[0] != rb[0] and ra[1] != rb[1] and not ra[2] & rb[2] and not ra[3] & rb[3]


def test_a_rollback_removes_only_what_its_own_allocation_made(tmp_path: Path) -> None:
    site = Site(tmp_path)
    first, second = site.head("a"), site.head("b")
    one, _files = boot(first, site.cluster, request())
    two = second.allocate(request(), site.cluster)
    # the second head's allocation, pointed at the first head's cluster (as a name clash would have it)
    forged = attrs.evolve(two, cluster=one.cluster)
    second.rollback(forged)
    (status,) = first.list_clusters(one.cluster)
    assert {n.state for n in status.nodes} == {"running"}
    assert claim_name(one.cluster) in site.domains("h1")
    assert all((tmp_path / "disks" / f"{n.name}.qcow2").exists() for n in one.nodes)
    second.rollback(two)
    first.rollback(one)
    assert all(site.domains(h) == [] for h in HOSTS)


def test_a_boot_needs_a_majority_of_the_claim_hosts(tmp_path: Path) -> None:
    site = Site(tmp_path)
    head = site.head("a")
    (tmp_path / "hosts" / "h3.xml").unlink()  # h3's libvirt is gone: a new connection fails
    allocation = head.allocate(request(), site.cluster)
    assert {n.host for n in allocation.nodes} <= {"h1", "h2"}, "h3 is skipped"
    head.rollback(allocation)
    (tmp_path / "hosts" / "h2.xml").unlink()
    other = site.head("b", extra="max_cpus_per_node = 1\n")  # a fresh head: h2 and h3 fail to connect
    other.hosts = Hosts({h: other.settings.uri_for(h) for h in HOSTS}, keepalive_interval=0)
    other.claims.hosts = other.hosts
    with pytest.raises(DriverError, match=r"1 of the 3 claim hosts answer, 2 needed \(claim_hosts: h1, h2, h3\)"):
        other.allocate(request(1), site.cluster)
    assert list((tmp_path / "b-state" / "clusters").glob("*.json")) == []


def test_a_stale_claim_copy_is_ignored_replaced_and_listed_as_an_orphan(tmp_path: Path) -> None:
    site = Site(tmp_path)
    head = site.head("a")
    one = head.allocate(request(), site.cluster)
    record = head.store.get(one.cluster)
    assert record is not None
    head.rollback(one)
    # h3 was down when the cluster went: its copy of the claim stayed
    assert site.shared is not None
    site.shared.conn("h3").defineXML(claim_xml(record))
    found = head.orphans()
    assert [(o.kind, o.host, o.name) for o in found] == [("claim", "h3", claim_name(one.cluster))]
    again = head.allocate(request(), site.cluster)
    assert (again.cluster, again.vlan) == (one.cluster, one.vlan), "the stale copy holds nothing"
    h3 = site.shared.conn("h3").lookupByName(claim_name(again.cluster))
    assert h3.UUIDString() == again.state.allocation_id, "and it was replaced by the new claim"
    head.rollback(again)
    assert all(site.domains(h) == [] for h in HOSTS)


def test_clashes_name_every_shared_resource(tmp_path: Path) -> None:
    site = Site(tmp_path)
    head = site.head("a")
    one = head.allocate(request(), site.cluster)
    mine = head.store.get(one.cluster)
    assert mine is not None
    other = attrs.evolve(mine, allocation="00000000-0000-4000-8000-000000000000", cluster="x", nodes=mine.nodes[1:])
    found = clashes(mine, other)
    assert found[0].startswith("name ") and f"public IP {mine.public_ip}" in found and f"VLAN {mine.vlan}" in found
    assert found[-1].startswith("MAC ")
    head.rollback(one)


def test_other_heads_claims_count_against_capacity(tmp_path: Path) -> None:
    site = Site(tmp_path)
    first, second = site.head("a"), site.head("b")
    big = first.allocate(request(62), site.cluster)  # its frontend on h1, its one compute (62 CPUs) on h2
    # of 192 CPUs: 1 + 62 reserved by the first head, 1 for the second head's frontend
    with pytest.raises(CapacityError, match="130 CPUs requested, 128 available on 3 host"):
        second.allocate(request(130), site.cluster)
    first.rollback(big)


def test_heads_with_their_own_addresses_allocating_at_once_never_overcommit_a_host(tmp_path: Path) -> None:
    """Heads whose public IPs and VLANs differ never clash on those: only the CPUs they claim keep them apart."""
    site = Site(tmp_path)
    heads = []
    for i in range(4):
        head = site.head(f"own{i}")
        own = attrs.evolve(head.settings, public_ips=(f"198.51.100.{10 + i}",), vlans=(200 + i,))
        heads.append(KvmRocksDriver(own, hosts=site.shared))
    # 61 of the 192 CPUs each: three fit, not four
    allocations, errors = _race(heads, lambda head: head.allocate(request(60), site.cluster))
    assert all(isinstance(e, CapacityError) for e in errors), errors
    assert len(allocations) == 3 and len(errors) == 1, [str(e) for e in errors]
    per_host: dict[str, int] = {}
    for allocation in allocations:
        for node in allocation.nodes:
            per_host[node.host] = per_host.get(node.host, 0) + node.cpus
    assert all(used <= HOSTS[host] for host, used in per_host.items()), per_host
