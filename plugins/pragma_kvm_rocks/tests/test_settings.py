"""kvm_rocks.conf: legacy files stay valid, bad values name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pragma_core.errors import ConfigError
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
