"""kvm_rocks.conf: legacy files stay valid, bad values name file, line and key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pragma_core.errors import ConfigError
from pragma_core.testing.configkit import FORMATS, load_driver_settings
from pragma_kvm_rocks.driver import KvmRocksDriver
from pragma_kvm_rocks.settings import KvmRocksSettings

from conftest import settings_from

LEGACY = """\
public_ips = ['198.202.88.50', '198.202.88.51']
netmask = '255.255.255.0'
gw = '198.202.88.1'
dns = '8.8.8.8'
vlans = range(2, 100)
diskdir = ""
available_containers = "vm-container-0-0 vm-container-0-1"
num_processors_reserved = 2
additional_interfaces = {'openflow': 'br-of',}
ent = {'subnet_name': 'ent', 'interface_name': 'br-ent'}
"""


def test_legacy_template_is_accepted_with_documented_defaults(tmp_path: Path) -> None:
    s = settings_from(LEGACY, tmp_path / "kvm_rocks.conf")
    assert s.vlans[0] == 2 and s.vlans[-1] == 99
    assert s.hosts == ("vm-container-0-0", "vm-container-0-1")
    assert s.uri_for("vm-container-0-1") == "qemu:///system"
    assert s.disk_mode == "overlay" and s.domain_type == "auto" and s.cpu_allocation_ratio == 1.0
    assert str(s.private_network) == "10.1.0.0/16"
    assert s.extra_network("openflow").bridge == "br-of"
    assert s.ent_network().bridge == "br-ent"
    assert KvmRocksDriver.config_class is KvmRocksSettings


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ("vlans = [0]", "vlans", "outside 1-4094"),
        ("public_ips = ['300.1.1.1']", "public_ips", "must be a list of IPv4 addresses, '300.1.1.1' is not one"),
        ("disk_mode = 'thin'", "disk_mode", "overlay, copy"),
        ("private_bridge = 'br-{vlan}-{x}'", "private_bridge", "only {vlan}"),
        ("cpu_allocation_ratio = 0", "cpu_allocation_ratio", "above 0"),
    ],
)
def test_bad_value_names_file_line_and_key(tmp_path: Path, line: str, key: str, problem: str) -> None:
    text = "public_ips = ['192.0.2.1']\nvlans = [5]\n" + line + "\n"
    with pytest.raises(ConfigError) as info:
        settings_from(text, tmp_path / "kvm_rocks.conf")
    message = str(info.value)
    assert "kvm_rocks.conf" in message and f"{key}:" in message and problem in message
    if key not in ("public_ips", "vlans"):
        assert "line 3" in message


# --------------------------------------------------------------------------- one settings path

REQUIRED = {"public_ips": ["192.0.2.1"], "vlans": [5]}

#: key -> (spellings written into kvm_rocks.conf / kvm_rocks.toml, the one value they all mean)
SPELLINGS = {
    "shutdown_timeout": ([120, 120.0, "120", " 120 ", "120.0", "1.2e2"], 120.0),
    "max_parallel": ([8, 8.0, "8", " 8 "], 8),
    "num_processors_reserved": ([0, 0.0, "0", "+0"], 0),
    "default_memory_mib": ([4096, "4096", 4096.0], 4096),
    "max_cpus_per_node": ([0, "0", 0.0, ""], None),
    "cpu_allocation_ratio": ([2, 2.0, "2", "2.0", " 2 "], 2.0),
    "public_ips": ([["192.0.2.1", "192.0.2.2"], "192.0.2.1 192.0.2.2", "192.0.2.1, 192.0.2.2"], ("192.0.2.1", "192.0.2.2")),
    "dns": (["8.8.4.4", ["8.8.4.4"], " 8.8.4.4 "], ("8.8.4.4",)),
    "vlans": ([[5, 6], ["5", "6"], [5.0, 6.0], "5 6", "5, 6"], (5, 6)),
    "private_network": (["10.2.0.0/16", " 10.2.0.0/16", "10.2.0.0/255.255.0.0"], ipaddress.IPv4Network("10.2.0.0/16")),
    "gw": (["192.0.2.1", " 192.0.2.1 "], ipaddress.IPv4Address("192.0.2.1")),
    "disk_mode": (["copy", "Copy", " COPY "], "copy"),
    "available_containers": ([["vm-0-0", "vm-0-1"], "vm-0-0 vm-0-1", "vm-0-0,vm-0-1"], ("vm-0-0", "vm-0-1")),
}


@pytest.mark.parametrize(
    ("key", "spelling", "fmt", "expected"),
    [
        pytest.param(key, spelling, fmt, expected, id=f"{key}-{fmt}-{i}")
        for key, (spellings, expected) in SPELLINGS.items()
        for fmt in FORMATS
        for i, spelling in enumerate(spellings)
    ],
)
def test_every_spelling_of_a_value_gives_the_same_setting(tmp_path: Path, key: str, spelling, fmt: str, expected) -> None:
    settings = load_driver_settings(KvmRocksSettings, tmp_path, {**REQUIRED, key: spelling}, fmt=fmt, name="kvm_rocks")
    assert getattr(settings, key) == expected


def test_shutdown_timeout_as_a_string_is_the_same_as_the_number(tmp_path: Path) -> None:
    text = settings_from('public_ips = ["192.0.2.1"]\nvlans = [5]\nshutdown_timeout = "120"\n', tmp_path / "kvm_rocks.conf")
    assert text.shutdown_timeout == settings_from(
        'public_ips = ["192.0.2.1"]\nvlans = [5]\nshutdown_timeout = 120\n', tmp_path / "kvm_rocks.conf"
    ).shutdown_timeout == 120.0


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("shutdown_timeout", "2m", "must be a number of seconds"),
        ("shutdown_timeout", -1, "at least 0 seconds"),
        ("shutdown_timeout", float("inf"), "must be a number of seconds"),
        ("shutdown_timeout", 10**9, "at most 31536000 seconds"),
        ("max_parallel", 0, "at least 1"),
        ("max_parallel", True, "whole number"),
        ("max_parallel", "2.5", "whole number"),
        ("num_processors_reserved", "-1", "at least 0"),
        ("cpu_allocation_ratio", "0", "above 0"),
        ("cpu_allocation_ratio", float("nan"), "must be a number"),
        ("dns", "8.8.8.8 dns.google", "'dns.google' is not one"),
        ("vlans", "0", "outside 1-4094"),
        ("node_naming", "fancy", "must be one of compute, legacy"),
        ("private_network", "10.1.0.1/16", "IPv4 network"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_value_is_one_error_naming_file_line_and_key(tmp_path: Path, key: str, value, problem: str, fmt: str) -> None:
    with pytest.raises(ConfigError) as info:
        rest = {k: v for k, v in REQUIRED.items() if k != key}
        load_driver_settings(KvmRocksSettings, tmp_path, {key: value, **rest}, fmt=fmt, name="kvm_rocks")
    message = str(info.value)
    line = 2 if fmt == "conf" else 1
    assert message.startswith(f"{tmp_path / ('kvm_rocks.' + fmt)} line {line}: {key}: "), message
    assert problem in message
