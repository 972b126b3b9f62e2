"""The demo site (examples/demo-site/make_site.py) holds one cluster per public IP: it lists as many VLANs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pragma_core.errors import CapacityError
from pragma_core.model import BootRequest
from pragma_kvm_rocks.driver import KvmRocksDriver

from conftest import ext4_cluster, host_file, settings_from

pytest.importorskip("libvirt")
MAKE_SITE = Path(__file__).resolve().parents[3] / "examples" / "demo-site" / "make_site.py"


def load_make_site():
    spec = importlib.util.spec_from_file_location("make_site", MAKE_SITE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_ip_of_the_demo_site_boots_a_cluster_before_capacity_runs_out(tmp_path: Path) -> None:
    site = load_make_site()
    text = site.kvm_rocks_conf(tmp_path / "disks", tmp_path / "state")
    host_file(tmp_path, "localhost", cpus=16)
    text += f'libvirt_uri = "test://{tmp_path}/{{host}}.xml"\n'  # libvirt's test driver instead of qemu:///system
    settings = settings_from(text, tmp_path / "kvm_rocks.conf")
    assert len(settings.vlans) == len(settings.public_ips) == len(site.PUBLIC_IPS)
    assert site.bridges() == [f"pgdemo{vlan}" for vlan in settings.vlans] + ["pgdemopub"]

    driver = KvmRocksDriver(settings, site=None)
    cluster = ext4_cluster(tmp_path / "image")
    request = BootRequest(image=site.IMAGE, cpus=2, key=site.DEMO_KEY)
    made = []
    try:
        for _ in site.PUBLIC_IPS:
            made.append(driver.allocate(request, cluster))
        assert [a.cluster for a in made] == ["vc-192-0-2-10", "vc-192-0-2-11", "vc-192-0-2-12"]
        assert all(a.fqdn == f"{a.cluster}.{site.PUBLIC_DOMAIN}" for a in made)
        with pytest.raises(CapacityError, match="no free public IP: all 3 in public_ips are in use"):
            driver.allocate(request, cluster)
    finally:
        for allocation in made:
            driver.rollback(allocation)
