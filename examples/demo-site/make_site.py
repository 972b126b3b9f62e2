#!/usr/bin/env python3
"""Build the demo site: a local repository holding the tiny PRAGMA image, on kvm_rocks.

    python3 examples/demo-site/make_site.py [ROOT]      (default /var/lib/pragma-demo)

Writes ``ROOT/etc/site_conf.conf`` and ``ROOT/etc/kvm_rocks.conf``, builds (or
reuses) the image of ``examples/image-builder`` into ``ROOT/repo``, makes the
two Linux bridges the demo cluster's networks run on, and an SSH key for the
demo. Idempotent. Needs root (bridges, libvirt) -- as the demo itself does.

Everything lives under one directory that libvirt's QEMU user can enter
(``/var/lib/...``), because node disks are overlays backed by the repository's
image.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDER = HERE.parent / "image-builder" / "build_image.py"
PRIVATE_BRIDGE = "pgdemo{vlan}"
PUBLIC_BRIDGE = "pgdemopub"
VLAN = 100
DEMO_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlbW9kZW1vZGVtb2RlbW9kZW1vZGVtb2RlbW9kZW1v demo@pragma"


def bridge(name: str) -> None:
    """Create and bring up a Linux bridge (nothing when it exists)."""
    if not Path("/sys/class/net", name).exists():
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="/var/lib/pragma-demo", type=Path)
    opts = parser.parse_args()
    root: Path = opts.root.absolute()
    etc, repo, tmp, log, disks, state = (root / d for d in ("etc", "repo", "tmp", "log", "disks", "state"))
    for directory in (root, etc, repo, tmp, log, disks, state):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)

    subprocess.run([sys.executable, str(BUILDER), "--output", str(repo), "--reuse"], check=True)

    (etc / "site_conf.conf").write_text(
        "# pragma demo site (written by examples/demo-site/make_site.py)\n"
        'site_ve_driver = "kvm_rocks"\n'
        f'temp_directory = "{tmp}"\n'
        f'log_directory = "{log}"\n'
        f'repository_settings = {{"repository_class": "local", "repository_dir": "{repo}"}}\n'
        "vcout_format = 2\n"
    )
    (etc / "kvm_rocks.conf").write_text(
        "# kvm_rocks on this one machine: local libvirtd, bridges made by make_site.py\n"
        'public_ips = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]\n'
        'netmask = "255.255.255.0"\n'
        'gw = "192.0.2.1"\n'
        'dns = "192.0.2.53"\n'
        f"vlans = [{VLAN}, {VLAN + 1}]\n"
        f'diskdir = "{disks}"\n'
        f'state_dir = "{state}"\n'
        'libvirt_uri = "qemu:///system"\n'
        f'private_bridge = "{PRIVATE_BRIDGE}"\n'
        f'public_bridge = "{PUBLIC_BRIDGE}"\n'
        '# the tiny image\'s 64-bit kernel needs TCG on these machines (see MACHINE-NOTES)\n'
        'domain_type = "qemu"\n'
        "cpu_allocation_ratio = 4\n"
        "max_cpus_per_node = 1\n"
        "shutdown_timeout = 30\n"
    )
    for vlan in (VLAN, VLAN + 1):
        bridge(PRIVATE_BRIDGE.format(vlan=vlan))
    bridge(PUBLIC_BRIDGE)
    key = root / "id_demo.pub"
    if not key.exists():
        key.write_text(DEMO_KEY + "\n")
    print(f"demo site ready: --conf {etc}  key={key}")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("make_site.py: run as root (it makes bridges and libvirt disks)")
    sys.exit(main())
