"""The allocation policy (pragma_kvm_rocks.policy): pure, no libvirt, no files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import settings_from

from pragma_core.errors import CapacityError
from pragma_kvm_rocks.placement import HostCapacity
from pragma_kvm_rocks.policy import Sizes, Usage, derive_macs, mac_for, plan_cluster


def _settings(tmp_path: Path, extra: str = ""):
    return settings_from(
        'public_ips = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]\nvlans = range(100, 104)\n'
        'available_containers = ["h1", "h2", "h3"]\n' + extra, tmp_path / "kvm_rocks.conf")


def _usage(**kw) -> Usage:
    hosts = kw.pop("hosts", [HostCapacity(name=h, cpus=8) for h in ("h1", "h2", "h3")])
    return Usage(hosts=hosts, **kw)


def no_dns(_ip: str) -> None:
    return None


def test_macs_come_from_the_vlan_so_clusters_on_different_vlans_never_share_one() -> None:
    assert mac_for(100, 0) == "72:77:6e:06:40:00"
    assert mac_for(4094, 4095) == "72:77:6e:ff:ef:ff"
    every = {mac_for(vlan, i) for vlan in range(1, 4095, 97) for i in range(0, 4096, 131)}
    assert len(every) == len(range(1, 4095, 97)) * len(range(0, 4096, 131))


def test_a_mac_some_other_domain_uses_is_skipped() -> None:
    used = frozenset({mac_for(7, 1)})
    assert derive_macs(7, [2, 1], used) == ((mac_for(7, 0), mac_for(7, 2)), (mac_for(7, 3),))


def test_more_nics_than_twelve_bits_count_is_a_capacity_error() -> None:
    with pytest.raises(CapacityError, match="more than 4096 NICs"):
        derive_macs(7, [4097], frozenset())


def test_a_plan_takes_the_first_free_ip_and_vlan_and_names_from_them(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "max_cpus_per_node = 1\n")
    usage = _usage(public_ips=frozenset({"192.0.2.10"}), vlans=frozenset({100, 101}))
    plan = plan_cluster(cfg, usage, Sizes(cpus=3), no_dns)
    assert (plan.public_ip, plan.vlan, plan.cluster) == ("192.0.2.11", 102, "vc-192-0-2-11")
    assert [c.name for c in plan.computes] == [f"vc-192-0-2-11-compute-{i}" for i in range(3)]
    assert plan.fqdn == "vc-192-0-2-11.localdomain"
    assert [len(m) for m in plan.macs] == [2, 1, 1, 1]
    assert len({m for macs in plan.macs for m in macs}) == 5


def test_computes_spread_over_hosts_by_free_capacity_when_nodes_are_split(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "max_cpus_per_node = 1\nnum_processors_reserved = 2\n")
    usage = _usage(hosts=[HostCapacity(name="h1", cpus=8), HostCapacity(name="h2", cpus=8, used=3),
                          HostCapacity(name="h3", cpus=8)])
    plan = plan_cluster(cfg, usage, Sizes(cpus=7), no_dns)
    assert plan.frontend_host == "h1"
    # free after the frontend: h1 5, h2 3, h3 6 -> the most free first, until they are even
    counts = {h: sum(c.host == h for c in plan.computes) for h in ("h1", "h2", "h3")}
    assert counts == {"h1": 3, "h2": 1, "h3": 3}


def test_legacy_placement_packs_one_node_per_host_without_max_cpus_per_node(tmp_path: Path) -> None:
    plan = plan_cluster(_settings(tmp_path), _usage(), Sizes(cpus=10), no_dns)
    assert [(c.host, c.cpus) for c in plan.computes] == [("h2", 8), ("h3", 2)]
    spread = plan_cluster(_settings(tmp_path, "placement = 'spread'\n"), _usage(), Sizes(cpus=10), no_dns)
    assert sorted((c.host, c.cpus) for c in spread.computes) == [("h1", 3), ("h2", 4), ("h3", 3)]  # h1 runs the frontend


def test_hosts_that_do_not_answer_are_skipped_and_named_when_the_rest_has_no_room(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "max_cpus_per_node = 1\n")
    usage = _usage(hosts=[HostCapacity(name="h1", cpus=4), HostCapacity(name="h2", cpus=4)],
                   unreachable={"h3": "cannot connect to libvirt on h3: refused"})
    plan = plan_cluster(cfg, usage, Sizes(cpus=7), no_dns)
    assert {c.host for c in plan.computes} == {"h1", "h2"}
    with pytest.raises(CapacityError) as error:
        plan_cluster(cfg, usage, Sizes(cpus=8), no_dns)
    assert str(error.value) == ("not enough capacity: 8 CPUs requested, 7 available on 2 host(s);"
                                " skipped, not answering: h3 (cannot connect to libvirt on h3: refused)")


def test_the_frontend_moves_to_the_next_host_only_when_the_first_does_not_answer(tmp_path: Path) -> None:
    usage = _usage(hosts=[HostCapacity(name="h2", cpus=4), HostCapacity(name="h3", cpus=4)],
                   unreachable={"h1": "no answer within 10 s"})
    assert plan_cluster(_settings(tmp_path), usage, Sizes(cpus=1), no_dns).frontend_host == "h2"
    pinned = _settings(tmp_path, "frontend_host = 'h1'\n")
    with pytest.raises(CapacityError, match="frontend_host h1 does not answer: no answer within 10 s"):
        plan_cluster(pinned, usage, Sizes(cpus=1), no_dns)
    full = _usage(hosts=[HostCapacity(name="h1", cpus=4, used=4), HostCapacity(name="h2", cpus=4)])
    with pytest.raises(CapacityError, match="not enough capacity for the frontend on h1: it needs 1 CPUs, 0 available"):
        plan_cluster(_settings(tmp_path), full, Sizes(cpus=1), no_dns)


def test_a_name_in_use_is_refused_and_names_an_idle_holder(tmp_path: Path) -> None:
    usage = _usage(names=frozenset({"vc-192-0-2-10-compute-0"}), idle=("old",),
                   holders={"vc-192-0-2-10-compute-0": "old"})
    with pytest.raises(CapacityError) as error:
        plan_cluster(_settings(tmp_path), usage, Sizes(cpus=1), no_dns)
    assert str(error.value) == ("cluster name vc-192-0-2-10 (from 192.0.2.10) is already in use by another domain;"
                                " reserved, not running: old; pragma clean old")


def test_a_plan_for_a_thousand_vms_on_a_hundred_hosts_is_fast(tmp_path: Path) -> None:
    hosts = ", ".join(f'"h{i}"' for i in range(100))
    cfg = settings_from(f'public_ips = ["192.0.2.10"]\nvlans = [5]\navailable_containers = [{hosts}]\n'
                        "max_cpus_per_node = 1\ncpu_allocation_ratio = 4\n", tmp_path / "kvm_rocks.conf")
    usage = Usage(hosts=[HostCapacity(name=f"h{i}", cpus=16, used=10) for i in range(100)],
                  names=frozenset(f"vm{i}" for i in range(1000)), macs=frozenset(mac_for(4, i) for i in range(1000)))
    started = time.perf_counter()
    plan = plan_cluster(cfg, usage, Sizes(cpus=1000), no_dns)
    elapsed = time.perf_counter() - started
    assert len(plan.computes) == 1000 and len({c.host for c in plan.computes}) == 100
    assert elapsed < 5.0, f"planning took {elapsed:.2f} s"  # a bound that detects a runaway, not a benchmark


# --------------------------------------------------------------------------- memory (opt-in)


def _memory_hosts() -> list[HostCapacity]:
    return [HostCapacity(name="h1", cpus=8, memory_mib=8192), HostCapacity(name="h2", cpus=8, memory_mib=4096),
            HostCapacity(name="h3", cpus=8, memory_mib=2048, used_memory_mib=1024)]


def test_memory_is_not_counted_unless_memory_allocation_ratio_is_set(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "max_cpus_per_node = 1\n")
    plan = plan_cluster(cfg, _usage(hosts=_memory_hosts()), Sizes(cpus=12, frontend_memory_mib=4096,
                                                                     compute_memory_mib=4096), no_dns)
    assert len(plan.computes) == 12, "the legacy behaviour: CPUs alone decide"


def test_with_memory_allocation_ratio_a_host_takes_only_the_nodes_its_free_memory_holds(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "max_cpus_per_node = 1\nmemory_allocation_ratio = 1\nmemory_reserved_mib = 1024\n")
    sizes = Sizes(cpus=3, frontend_memory_mib=2048, compute_memory_mib=2048)
    plan = plan_cluster(cfg, _usage(hosts=_memory_hosts()), sizes, no_dns)
    # h1: (8192 - 1024) MiB less the frontend's 2048 = 2 computes; h2: 3072 MiB = 1; h3: 1024 - 1024 held = none
    assert plan.frontend_host == "h1"
    assert sorted(c.host for c in plan.computes) == ["h1", "h1", "h2"]
    with pytest.raises(CapacityError) as info:
        plan_cluster(cfg, _usage(hosts=_memory_hosts()), Sizes(cpus=4, frontend_memory_mib=2048,
                                                                compute_memory_mib=2048), no_dns)
    assert str(info.value) == ("not enough capacity: 4 CPUs requested, 3 available on 2 host(s); memory_allocation_ratio"
                               " leaves room for h1 2 node(s), h2 1 node(s), h3 0 node(s) of 2048 MiB")


def test_one_node_per_host_needs_room_for_one_node_in_memory(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "memory_allocation_ratio = 1.5\nmemory_reserved_mib = 0\n")
    sizes = Sizes(cpus=14, frontend_memory_mib=1024, compute_memory_mib=3000)
    plan = plan_cluster(cfg, _usage(hosts=_memory_hosts()), sizes, no_dns)
    # h3: 2048 * 1.5 - 1024 held = 2048 MiB: no room for a 3000 MiB node, so its 8 CPUs are not used
    assert {c.host: c.cpus for c in plan.computes} == {"h2": 8, "h1": 6}, "most free first, h3 left out"


def test_a_frontend_that_does_not_fit_its_hosts_memory_is_refused(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, "memory_allocation_ratio = 1\nfrontend_host = \"h3\"\n")
    with pytest.raises(CapacityError, match=r"^not enough memory for the frontend on h3: it needs 2048 MiB, 0 MiB"
                                            r" available \(memory_allocation_ratio 1, memory_reserved_mib 1024\)$"):
        plan_cluster(cfg, _usage(hosts=_memory_hosts()), Sizes(cpus=0, frontend_memory_mib=2048), no_dns)


def test_a_host_whose_guests_hold_more_memory_than_allowed_is_overcommitted(tmp_path: Path) -> None:
    from pragma_kvm_rocks.policy import overcommitted

    hosts = [HostCapacity(name="h1", cpus=8, memory_mib=8192, used_memory_mib=7500),
             HostCapacity(name="h2", cpus=8, memory_mib=8192, used_memory_mib=7000)]
    counted = _settings(tmp_path, "memory_allocation_ratio = 1\nmemory_reserved_mib = 1024\n")
    assert overcommitted(counted, _usage(hosts=hosts), ["h1", "h2"]) == ["h1"]
    assert overcommitted(_settings(tmp_path), _usage(hosts=hosts), ["h1", "h2"]) == []
