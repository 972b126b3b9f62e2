"""The frontend's FQDN in vc-out is never dotless: reverse DNS when it has a dotted name, else ``public_domain``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pragma_core.errors import ConfigError
from pragma_core.model import BootRequest
from pragma_kvm_rocks.driver import qualified_name

from conftest import ext4_cluster, settings_from

pytest.importorskip("libvirt")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


@pytest.mark.parametrize(
    ("name", "domain", "fqdn"),
    [
        ("vc-192-0-2-10", "localdomain", "vc-192-0-2-10.localdomain"),
        ("vc-192-0-2-10", "cluster.example.org", "vc-192-0-2-10.cluster.example.org"),
        ("rocks-52", "example.org", "rocks-52.example.org"),
        ("rocks-52.sdsc.edu", "example.org", "rocks-52.sdsc.edu"),
        ("rocks-52.sdsc.edu.", "example.org", "rocks-52.sdsc.edu"),
    ],
)
def test_a_dotless_name_takes_the_public_domain_and_a_dotted_one_is_kept(name: str, domain: str, fqdn: str) -> None:
    assert qualified_name(name, domain) == fqdn


def allocate_fqdn(make_driver, tmp_path: Path, extra: str = "") -> tuple[str, str]:
    driver = make_driver({"localhost": 4}, extra=extra)
    allocation = driver.allocate(BootRequest(image="demo", cpus=1, key=KEY), ext4_cluster(tmp_path / "image"))
    try:
        return allocation.cluster, allocation.fqdn
    finally:
        driver.rollback(allocation)


def test_without_reverse_dns_the_fqdn_is_the_cluster_name_in_public_domain(tmp_path: Path, make_driver, monkeypatch) -> None:
    def no_name(ip: str) -> tuple[str, list[str], list[str]]:
        raise socket.herror(1, "Unknown host")

    monkeypatch.setattr(socket, "gethostbyaddr", no_name)
    assert allocate_fqdn(make_driver, tmp_path) == ("vc-192-0-2-10", "vc-192-0-2-10.localdomain")
    assert allocate_fqdn(make_driver, tmp_path, "public_domain = 'vc.example.org'\n") == (
        "vc-192-0-2-10",
        "vc-192-0-2-10.vc.example.org",
    )


def test_a_dotless_reverse_name_gets_the_public_domain_and_a_dotted_one_is_used_as_it_is(
    tmp_path: Path, make_driver, monkeypatch
) -> None:
    answers = {"192.0.2.10": "rocks-52"}
    monkeypatch.setattr(socket, "gethostbyaddr", lambda ip: (answers[ip], [], [ip]))
    extra = "public_domain = 'example.org'\n"
    assert allocate_fqdn(make_driver, tmp_path, extra) == ("rocks-52", "rocks-52.example.org")
    answers["192.0.2.10"] = "rocks-52.sdsc.edu"
    assert allocate_fqdn(make_driver, tmp_path, extra) == ("rocks-52", "rocks-52.sdsc.edu")


@pytest.mark.parametrize("value", ["", "bad domain", "-x.org", "a..b", ".example.org", "example.org.", "x" * 64 + ".org", 7, None])
def test_a_public_domain_that_is_not_a_dns_domain_names_the_file_line_and_key(tmp_path: Path, value: object) -> None:
    text = f"public_ips = ['192.0.2.1']\nvlans = [5]\npublic_domain = {value!r}\n"
    with pytest.raises(ConfigError, match=r"kvm_rocks.conf line 3: public_domain: .* is not a DNS domain"):
        settings_from(text, tmp_path / "kvm_rocks.conf")
