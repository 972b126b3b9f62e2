#!/usr/bin/env python3
"""Boot a virtual cluster, wait for it, list it, then shut it down and clean it -- through pragma_core.Site.

A small tool written only against pragma's public API (``import pragma_core``),
the way a site's own scripts (health checks, CI jobs, course set-up) would use
it::

    python3 pragma_roundtrip.py IMAGE [CPUS] [--conf DIR] [--wait SECONDS] [--keep]

It prints one line per step and exits 0 when the cluster booted, every node
was ready (with ``--wait``) and it was removed again (unless ``--keep``);
1 with the library's one-line message otherwise. A cluster it booted is
always removed on the way out, even when waiting failed or it was
interrupted, unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import sys

import pragma_core


def roundtrip(site: pragma_core.Site, image: str, cpus: int, *, wait: float | None, keep: bool, key: str | None = None) -> bool:
    """Boot ``image`` on ``site``; print what happens; return whether every node was ready."""
    booted = site.boot(image, cpus, key=key, wait=wait)
    name = booted.name
    try:
        print(f"booted {name}: frontend {booted.allocation.frontend.name}, {len(booted.allocation.computes)} compute node(s)")
        ready = True
        if booted.readiness is not None:
            ready = booted.readiness.ready
            for node in booted.readiness.nodes:
                print(f"  {node.node}: {node.state.value}" + (f" ({node.detail})" if node.detail else ""))
        for cluster in site.clusters(name):
            for status in cluster.nodes:
                print(f"  {status.role:8} {status.name:20} {status.state:10} {status.private_ip or '-'}")
        return ready
    finally:
        if not keep:
            site.shutdown(name)
            site.clean(name)
            print(f"removed {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("cpus", nargs="?", type=int, default=0)
    parser.add_argument("--conf", help="site configuration directory (default: $PRAGMA_CONF_DIR, then /opt/pragma_boot/etc)")
    parser.add_argument("--key", help="SSH public key file (default: ~/.ssh)")
    parser.add_argument("--wait", type=float, help="wait up to this many seconds for every node to be ready")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)
    try:
        with pragma_core.Site.open(args.conf) as site:
            ready = roundtrip(site, args.image, args.cpus, wait=args.wait, keep=args.keep, key=args.key)
    except pragma_core.PragmaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
