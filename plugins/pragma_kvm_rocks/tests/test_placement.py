"""Placement of compute CPUs on hosts: pure functions, and the legacy bugs B10-B13 fixed."""

from __future__ import annotations

import pytest

from pragma_core.errors import CapacityError
from pragma_kvm_rocks.placement import HostCapacity, Placement, free_capacity, place


def test_legacy_example_fills_the_most_free_host_first_and_gives_only_what_is_needed() -> None:
    # reference §7.2.3 step 3.7: 16/8/16 CPUs, 2 reserved, 10 in use on the first -> 4/6/14
    hosts = [
        HostCapacity(name="vm-container-0-0", cpus=16, used=10),
        HostCapacity(name="vm-container-0-1", cpus=8),
        HostCapacity(name="vm-container-0-2", cpus=16),
    ]
    free = free_capacity(hosts, reserved=2)
    assert free == {"vm-container-0-0": 4, "vm-container-0-1": 6, "vm-container-0-2": 14}
    assert place(16, free) == [Placement(host="vm-container-0-2", cpus=14), Placement(host="vm-container-0-1", cpus=2)]


def test_b11_total_counts_cpus_given_not_host_capacity() -> None:
    # Legacy added the whole 14 for host a, so a request of 20 "fit" with a=14, b=6 of 6
    # but a request of 21 would stop after b too; here every CPU asked for is placed exactly.
    nodes = place(20, {"a": 14, "b": 6, "c": 4})
    assert sum(n.cpus for n in nodes) == 20
    assert [(n.host, n.cpus) for n in nodes] == [("a", 14), ("b", 6)]


def test_b11_hosts_with_no_free_cpus_are_skipped() -> None:
    hosts = [HostCapacity(name="full", cpus=4, used=9), HostCapacity(name="idle", cpus=4)]
    free = free_capacity(hosts, reserved=0)
    assert free == {"idle": 4}
    assert place(3, free) == [Placement(host="idle", cpus=3)]


def test_b10_available_containers_is_an_exact_name_filter() -> None:
    hosts = [HostCapacity(name="vm-container-0-1", cpus=4), HostCapacity(name="vm-container-0-10", cpus=32)]
    assert free_capacity(hosts, allowed=["vm-container-0-1"]) == {"vm-container-0-1": 4}
    assert free_capacity(hosts, allowed=["vm-container-0-1", "not-a-host"]) == {"vm-container-0-1": 4}


def test_b12_any_host_name_works_and_ties_go_by_name() -> None:
    nodes = place(6, {"zeta": 3, "alpha": 3, "kvm.example.org": 1})
    assert [n.host for n in nodes] == ["alpha", "zeta"]


def test_b13_not_enough_capacity_raises_with_the_numbers() -> None:
    with pytest.raises(CapacityError, match=r"17 CPUs requested, 16 available on 2 host"):
        place(17, {"a": 8, "b": 8, "c": 0})


def test_zero_cpus_gives_a_frontend_only_cluster() -> None:
    assert place(0, {}) == []


def test_max_cpus_per_node_splits_a_hosts_share() -> None:
    nodes = place(14, {"a": 10, "b": 8}, max_cpus_per_node=4)
    assert [(n.host, n.cpus) for n in nodes] == [("a", 4), ("a", 4), ("a", 2), ("b", 4)]


def test_allocation_ratio_allows_bounded_overcommit_and_never_more() -> None:
    host = HostCapacity(name="h", cpus=8, used=12)
    assert host.free(ratio=2.0) == 4
    assert host.free(ratio=1.0) == 0
    assert HostCapacity(name="h", cpus=8).free(reserved=2, ratio=1.5) == 9
