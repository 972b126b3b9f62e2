#!/usr/bin/env python3
"""Build (or remove) the demo site: a local repository holding the tiny PRAGMA image, on kvm_rocks.

    .venv/bin/python examples/demo-site/make_site.py [ROOT]          (default /var/lib/pragma-demo)
    .venv/bin/python examples/demo-site/make_site.py --down [ROOT]   remove the bridges and ROOT

Writes ``ROOT/etc/site_conf.conf`` and ``ROOT/etc/kvm_rocks.conf``, builds (or
reuses) the image of ``examples/image-builder`` into ``ROOT/repo``, makes the
Linux bridges the demo clusters' networks run on (one private bridge per VLAN,
one public bridge), and an SSH key for the demo. Idempotent. Needs root
(bridges, libvirt) -- as the demo itself does.

The site has as many VLANs as public IPs (each cluster takes one of each), so
it holds ``len(PUBLIC_IPS)`` clusters at once. ``--down`` removes what this
script made -- the bridges and ROOT -- after the demo's clusters are cleaned
(``scripts/demo --down`` does both); it refuses a ROOT that it did not write.

Everything lives under one directory that libvirt's QEMU user can enter
(``/var/lib/...``), because node disks are overlays backed by the repository's
image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDER = HERE.parent / "image-builder" / "build_image.py"
DEFAULT_ROOT = Path("/var/lib/pragma-demo")
#: The image the demo boots (the image builder's default name).
IMAGE = "pragma-tiny"
PRIVATE_BRIDGE = "pgdemo{vlan}"
PUBLIC_BRIDGE = "pgdemopub"
PUBLIC_IPS = ("192.0.2.10", "192.0.2.11", "192.0.2.12")
#: One VLAN per public IP: a cluster takes one of each.
VLANS = tuple(100 + i for i in range(len(PUBLIC_IPS)))
PUBLIC_DOMAIN = "pragma-demo.test"
#: First line of the demo's site_conf.conf: how --down recognises a ROOT this script wrote.
MARKER = "# pragma demo site (written by examples/demo-site/make_site.py)"
DEMO_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlbW9kZW1vZGVtb2RlbW9kZW1vZGVtb2RlbW9kZW1v demo@pragma"


def bridges() -> list[str]:
    """Every bridge the demo site uses: one private bridge per VLAN, then the public one."""
    return [PRIVATE_BRIDGE.format(vlan=vlan) for vlan in VLANS] + [PUBLIC_BRIDGE]


def bridge(name: str) -> None:
    """Create and bring up a Linux bridge (nothing when it exists)."""
    if not Path("/sys/class/net", name).exists():
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def site_conf(tmp: Path, log: Path, repo: Path) -> str:
    """The demo's ``site_conf.conf``."""
    return (
        f"{MARKER}\n"
        'site_ve_driver = "kvm_rocks"\n'
        f'temp_directory = "{tmp}"\n'
        f'log_directory = "{log}"\n'
        f'repository_settings = {{"repository_class": "local", "repository_dir": "{repo}"}}\n'
        "vcout_format = 2\n"
    )


def kvm_rocks_conf(disks: Path, state: Path) -> str:
    """The demo's ``kvm_rocks.conf``: this machine's libvirtd, the bridges made here."""
    return (
        "# kvm_rocks on this one machine: local libvirtd, bridges made by make_site.py\n"
        f"public_ips = {list(PUBLIC_IPS)!r}\n"
        "# as many VLANs as public IPs: each cluster takes one of each\n"
        f"vlans = {list(VLANS)!r}\n"
        'netmask = "255.255.255.0"\n'
        'gw = "192.0.2.1"\n'
        'dns = "192.0.2.53"\n'
        "# TEST-NET addresses have no reverse DNS: the frontends are vc-192-0-2-N.<public_domain>\n"
        f'public_domain = "{PUBLIC_DOMAIN}"\n'
        f'diskdir = "{disks}"\n'
        f'state_dir = "{state}"\n'
        'libvirt_uri = "qemu:///system"\n'
        f'private_bridge = "{PRIVATE_BRIDGE}"\n'
        f'public_bridge = "{PUBLIC_BRIDGE}"\n'
        "# the tiny image's 64-bit kernel needs TCG on these machines (see MACHINE-NOTES)\n"
        'domain_type = "qemu"\n'
        "cpu_allocation_ratio = 4\n"
        "max_cpus_per_node = 1\n"
        "shutdown_timeout = 30\n"
    )


def up(root: Path) -> int:
    """Build the site under ``root`` (idempotent)."""
    etc, repo, tmp, log, disks, state = (root / d for d in ("etc", "repo", "tmp", "log", "disks", "state"))
    for directory in (root, etc, repo, tmp, log, disks, state):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)

    subprocess.run([sys.executable, str(BUILDER), "--output", str(repo), "--name", IMAGE, "--reuse"], check=True)
    (etc / "site_conf.conf").write_text(site_conf(tmp, log, repo))
    (etc / "kvm_rocks.conf").write_text(kvm_rocks_conf(disks, state))
    for name in bridges():
        bridge(name)
    key = root / "id_demo.pub"
    if not key.exists():
        key.write_text(DEMO_KEY + "\n")
    print(f"demo site ready: --conf {etc}  image {IMAGE}  key={key}  bridges {' '.join(bridges())}")
    return 0


def down(root: Path) -> int:
    """Remove the demo's bridges and ``root`` (only a ``root`` this script wrote)."""
    conf = root / "etc" / "site_conf.conf"
    if root.exists():
        try:
            first = conf.read_text().splitlines()[0]
        except (OSError, IndexError):
            first = ""
        if first != MARKER:
            print(f"make_site.py: {root} is not a demo site ({conf} was not written by make_site.py); left alone",
                  file=sys.stderr)
            return 1
    for name in bridges():
        if Path("/sys/class/net", name).exists():
            subprocess.run(["ip", "link", "del", name], check=True)
            print(f"removed bridge {name}")
    if root.exists():
        shutil.rmtree(root)
        print(f"removed {root}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default=DEFAULT_ROOT, type=Path)
    parser.add_argument("--down", action="store_true", help="remove the demo site's bridges and ROOT")
    opts = parser.parse_args()
    root: Path = opts.root.absolute()
    return down(root) if opts.down else up(root)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("make_site.py: run as root (it makes bridges and libvirt disks)")
    sys.exit(main())
