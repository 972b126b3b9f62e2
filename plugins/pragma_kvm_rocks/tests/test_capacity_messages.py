"""Running out of public IPs or VLANs says which one ran out and how many kvm_rocks.conf lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from pragma_core.errors import CapacityError
from pragma_core.model import BootRequest

from conftest import ext4_cluster

pytest.importorskip("libvirt")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


def exhaust(driver, cluster, count: int) -> tuple[list, CapacityError]:
    """Allocate ``count`` clusters, then one more: the allocations made and the error of the last."""
    made = [driver.allocate(BootRequest(image="demo", cpus=1, key=KEY), cluster) for _ in range(count)]
    with pytest.raises(CapacityError) as info:
        driver.allocate(BootRequest(image="demo", cpus=1, key=KEY), cluster)
    return made, info.value


def test_fewer_vlans_than_public_ips_names_the_vlans_and_the_free_public_ips(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16}, extra="vlans = [100, 101]\n")
    made, error = exhaust(driver, ext4_cluster(tmp_path / "image"), 2)
    try:
        assert str(error).startswith("no free VLAN: all 2 in vlans are in use while 6 of the 8 public_ips are free")
        assert "kvm_rocks.conf" in str(error)
    finally:
        for allocation in made:
            driver.rollback(allocation)


def test_fewer_public_ips_than_vlans_names_the_public_ips(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 16}, extra='public_ips = ["192.0.2.10"]\n')
    made, error = exhaust(driver, ext4_cluster(tmp_path / "image"), 1)
    try:
        assert str(error).startswith("no free public IP: all 1 in public_ips are in use")
        assert "kvm_rocks.conf" in str(error)
    finally:
        for allocation in made:
            driver.rollback(allocation)
