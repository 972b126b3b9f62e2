"""kvm_rocks against kcli and bare libvirt-python, side by side on the real libvirtd.

    python benchmarks/bench_kcli.py [--rounds 5] [--reliability 20] [--nodes 8] [--skip-kcli]

Needs root and a running ``qemu:///system`` (``scripts/setup`` starts one). In
one run, on one 1 GiB qcow2 base image with no OS (guests sit in their BIOS),
every tool boots the same ``--nodes`` VMs -- 1 vCPU, 256 MiB, CPU model
``pentium3``, a thin qcow2 overlay disk, NICs on Linux bridges -- and tears
them down again:

* **pragma**: ``pragma boot bench N-1`` (1 frontend + N-1 computes, the
  ``kvm_rocks`` driver with ``max_parallel = 8``; the image is already in the
  local repository, so staging is a cache hit), then ``pragma shutdown`` +
  ``pragma clean`` (``shutdown_timeout = 0``: the guests have no OS to obey an
  ACPI request, and kcli and the floor power off too). Timed as a user runs
  them: each command is a new ``pragma`` process.
* **kcli** (PyPI ``kcli``, in a virtualenv of its own): ``kcli create plan`` of
  N VMs, serial and threaded (``-t``), then ``kcli delete plan``.
* **bare**: libvirt-python, overlay + define + start with 4 threads; destroy +
  undefine in parallel. The floor.

Tools run interleaved, a round at a time (warm-up round first, untimed), and
the medians of ``--rounds`` rounds are compared. Then ``--reliability``
consecutive boot/teardown rounds per tool count failures: a non-zero exit, a
VM not running after boot, or anything left behind after teardown (domain,
disk, pool volume, allocation record). The kcli and bare sides live in
:mod:`peers`; this file holds the pragma side and the report. See
``benchmarks/README-kcli.md`` for results and what was changed because of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from peers import Check, Run  # noqa: E402

#: The ``pragma`` script of this interpreter (.venv/bin/pragma; never another install's, nor a version
#: manager's shim on PATH, which costs its own start-up), else this interpreter running the command module.
_SCRIPT = Path(sys.executable).with_name("pragma")
PRAGMA = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "pragma_core.cli"]
PUBLIC_IP = "198.51.100.77"
CLUSTER = "vc-" + PUBLIC_IP.replace(".", "-")
VLAN = 3777
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJlbmNoYmVuY2hiZW5jaGJlbmNoYmVuY2hiZW5jaGJlbmNo bench@pragma"
CLUSTER_XML = """<vc version="0.1">
  <virtualization engine="kvm" type="hvm" arch="x86_64"/>
  <frontend>{domain}</frontend>
  <compute>{domain}</compute>
</vc>
"""
DOMAIN = """
    <domain type="kvm">
      <name>bench</name>
      <memory unit="MiB">{memory}</memory>
      <vcpu>1</vcpu>
      <devices>
        <disk type="file" device="disk">
          <driver name="qemu" type="qcow2"/>
          <source file="base.qcow2"/>
          <target dev="vda" bus="virtio"/>
        </disk>
      </devices>
    </domain>
  """


# --------------------------------------------------------------------------- the pragma side


@dataclass(frozen=True, kw_only=True)
class PragmaSite:
    """A site of its own for the benchmark: configuration, repository, disks, state."""

    root: Path
    nodes: int

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def disks(self) -> Path:
        return self.root / "disks"

    @property
    def records(self) -> Path:
        return self.root / "state" / "clusters"

    def pragma(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one ``pragma`` command on this site, as an administrator would."""
        argv = [*PRAGMA, "--conf", str(self.etc), *args]
        # as installed at a site: Python's bytecode cache in use (kcli's virtualenv has its own)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return subprocess.run(argv, capture_output=True, text=True, check=False, env=env)


def make_pragma_site(root: Path, base: Path, *, prefix: str, nodes: int, kind: str) -> PragmaSite:
    """Write the site: local repository holding ``base`` (linked, untimed) and a kvm_rocks.conf."""
    site = PragmaSite(root=root, nodes=nodes)
    for sub in ("etc", "repo/bench", "disks", "state", "tmp", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for directory in (root, root / "repo", root / "repo/bench", root / "disks"):
        directory.chmod(0o755)
    image = root / "repo/bench/base.qcow2"
    if not image.exists():
        try:
            os.link(base, image)
        except OSError:
            shutil.copy2(base, image)
    (root / "repo/vcdb.txt").write_text("bench,bench/bench.xml\n")
    domain = DOMAIN.format(memory=peers.MEMORY_MIB)
    (root / "repo/bench/bench.xml").write_text(CLUSTER_XML.format(domain=domain))
    (root / "key.pub").write_text(KEY + "\n")
    (site.etc / "site_conf.conf").write_text(
        'site_ve_driver = "kvm_rocks"\n'
        f'temp_directory = "{root / "tmp"}"\n'
        f'log_directory = "{root / "log"}"\n'
        f'repository_settings = {{"repository_class": "local", "repository_dir": "{root / "repo"}"}}\n'
    )
    (site.etc / "kvm_rocks.conf").write_text(
        f'public_ips = ["{PUBLIC_IP}"]\n'
        'netmask = "255.255.255.0"\n'
        'gw = "198.51.100.1"\n'
        'dns = "198.51.100.53"\n'
        f"vlans = [{VLAN}]\n"
        f'diskdir = "{site.disks}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'private_bridge = "{private_bridge(prefix)}"\n'
        f'public_bridge = "{public_bridge(prefix)}"\n'
        f'domain_type = "{kind}"\n'
        f'cpu_model = "{peers.CPU_MODEL}"\n'
        '# the base image has no filesystem to write vc-out into\n'
        'vcout_injection = "none"\n'
        "max_parallel = 8\n"
        "max_cpus_per_node = 1\n"
        "num_processors_reserved = 0\n"
        "cpu_allocation_ratio = 16\n"
        "shutdown_timeout = 0\n"
    )
    return site


def private_bridge(prefix: str) -> str:
    """The private bridge template of the benchmark site (``{vlan}`` filled in by kvm_rocks)."""
    return f"{prefix[:6]}v{{vlan}}"


def public_bridge(prefix: str) -> str:
    return f"{prefix[:6]}pub"


def pragma_names(site: PragmaSite) -> list[str]:
    """The domain names kvm_rocks gives the benchmark cluster (its naming is deterministic)."""
    return [CLUSTER] + [f"{CLUSTER}-compute-{i}" for i in range(site.nodes - 1)]


def pragma_boot(site: PragmaSite) -> Run:
    """Time ``pragma boot bench N-1``; not ok on a non-zero exit or a node not running."""
    start = time.perf_counter()
    proc = site.pragma("boot", "bench", str(site.nodes - 1), f"key={site.root / 'key.pub'}")
    seconds = time.perf_counter() - start
    check = pragma_check(site)
    problems = [f"exit {proc.returncode}: {proc.stderr.strip()}"] if proc.returncode else []
    if check.running < site.nodes:
        problems.append(f"{site.nodes - check.running} of {site.nodes} VMs not running")
    return Run(tool="pragma", action="boot", seconds=seconds, ok=not problems, failure="; ".join(problems))


def pragma_teardown(site: PragmaSite) -> Run:
    """Time ``pragma shutdown`` + ``pragma clean``; not ok on a failure or anything left behind."""
    start = time.perf_counter()
    down = site.pragma("shutdown", CLUSTER)
    clean = site.pragma("clean", CLUSTER) if down.returncode == 0 else down
    seconds = time.perf_counter() - start
    problems = [f"{what} exit {p.returncode}: {p.stderr.strip()}"
                for what, p in (("shutdown", down), ("clean", clean)) if p.returncode]
    left = pragma_check(site).leftovers
    if left:
        problems.append("left behind: " + ", ".join(left))
    return Run(tool="pragma", action="teardown", seconds=seconds, ok=not problems, failure="; ".join(problems))


def pragma_check(site: PragmaSite) -> Check:
    """Running benchmark nodes; leftovers = domains, node disks and allocation records."""
    names = pragma_names(site)
    conn = peers.connect()
    try:
        running = peers.domains_running(conn, names)
        left = [f"domain {n}" for n in peers.domains_defined(conn, names)]
    finally:
        conn.close()
    left += [f"file {p.name}" for p in sorted(site.disks.iterdir())]
    if site.records.is_dir():
        left += [f"record {p.name}" for p in sorted(site.records.iterdir())]
    return Check(running=running, leftovers=tuple(left))


def reset_pragma(site: PragmaSite) -> None:
    """Remove whatever a failed round left (untimed): the cluster through pragma, then by hand."""
    site.pragma("shutdown", CLUSTER)
    site.pragma("clean", CLUSTER)
    conn = peers.connect()
    try:
        for name in pragma_names(site):
            peers.remove_domain(conn, name)
    finally:
        conn.close()
    for path in site.disks.iterdir():
        path.unlink()
    if site.records.is_dir():
        for path in site.records.iterdir():
            path.unlink()


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, kw_only=True)
class Tool:
    """One contender: how it boots, tears down and recovers (after a failed round)."""

    name: str
    boot: Callable[[], Run]
    teardown: Callable[[], Run]
    reset: Callable[[], None]


def one_round(tool: Tool) -> tuple[Run, Run]:
    """Boot and tear down once; on any failure reset, so the next round starts clean."""
    booted = tool.boot()
    down = tool.teardown()
    if not (booted.ok and down.ok):
        tool.reset()
    return booted, down


def median(runs: Sequence[Run]) -> float:
    return statistics.median(r.seconds for r in runs)


def report(tools: Sequence[Tool], timed: dict[str, list[tuple[Run, Run]]],
           reliability: dict[str, list[tuple[Run, Run]]], nodes: int, rounds: int) -> None:
    print(f"\n{nodes} VMs, 1 GiB qcow2 base, medians of {rounds} round(s)")
    print(f"{'tool':15} {'boot':>8} {'teardown':>9}   failures in timed rounds")
    for tool in tools:
        pairs = timed[tool.name]
        failed = [r for pair in pairs for r in pair if not r.ok]
        print(f"{tool.name:15} {median([b for b, _ in pairs]):7.2f}s {median([d for _, d in pairs]):8.2f}s"
              f"   {len(failed)}")
    med = {t.name: (median([b for b, _ in timed[t.name]]), median([d for _, d in timed[t.name]])) for t in tools}
    print()
    print(f"boot      pragma/bare          {med['pragma'][0] / med['bare'][0]:5.2f}x   (target <= 1.2)")
    if "kcli-threaded" in med:
        print(f"boot      kcli-threaded/pragma {med['kcli-threaded'][0] / med['pragma'][0]:5.2f}x   (target >= 1.8)")
        print(f"boot      kcli-serial/pragma   {med['kcli-serial'][0] / med['pragma'][0]:5.2f}x")
    print(f"teardown  pragma/bare          {med['pragma'][1] / med['bare'][1]:5.2f}x   (target <= 1.2)")
    if "kcli-threaded" in med:
        kcli_delete = median([d for name in ("kcli-serial", "kcli-threaded") for _, d in timed[name]])
        print(f"teardown  kcli/pragma          {kcli_delete / med['pragma'][1]:5.2f}x   (target >= 2.5)")
    if reliability:
        print()
        print("reliability: consecutive boot/teardown rounds, failures per tool")
        for name, pairs in reliability.items():
            failures = [r for pair in pairs for r in pair if not r.ok]
            clean = sum(1 for booted, down in pairs if booted.ok and down.ok)
            print(f"  {name:15} {clean:3d}/{len(pairs)} clean rounds, {len(failures)} failure(s)")
            for run in failures[:3]:
                print(f"      {run.action}: {run.failure[:160]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per tool (medians)")
    parser.add_argument("--reliability", type=int, default=20, help="consecutive rounds per tool to count failures")
    parser.add_argument("--nodes", type=int, default=8, help="VMs per boot (pragma: 1 frontend + N-1 computes)")
    parser.add_argument("--skip-kcli", action="store_true", help="pragma and the bare floor only")
    parser.add_argument("--prefix", default="pbench", help="name prefix of domains, bridges, pool, work directory")
    parser.add_argument("--venv", type=Path, default=peers.ROOT / "kcli-venv", help="kcli's virtualenv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if os.geteuid() != 0:
        print("bench_kcli: run as root (bridges, qemu:///system)", file=sys.stderr)
        return 2

    kind = peers.virt_type()
    workdir = peers.ROOT / args.prefix
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    base = peers.make_base_image(workdir / "base.qcow2") if not (workdir / "base.qcow2").exists() \
        else workdir / "base.qcow2"
    bridges = [f"{args.prefix[:9]}br", private_bridge(args.prefix).format(vlan=VLAN), public_bridge(args.prefix)]
    for bridge in bridges:
        peers.delete_bridge(bridge)
        peers.create_bridge(bridge)
    site = make_pragma_site(workdir / "pragma", base, prefix=args.prefix, nodes=args.nodes, kind=kind)
    bare_names = [f"{args.prefix}-b{i}" for i in range(args.nodes)]
    kcli_names = [f"{args.prefix}-k{i}" for i in range(args.nodes)]
    tools = [
        Tool(name="pragma", boot=lambda: pragma_boot(site), teardown=lambda: pragma_teardown(site),
             reset=lambda: reset_pragma(site)),
        Tool(name="bare",
             boot=lambda: peers.bare_boot(peers.URI, base, bare_names, workdir / "bare", bridges[0], threads=4,
                                          kind=kind),
             teardown=lambda: peers.bare_teardown(peers.URI, bare_names, workdir / "bare", threads=8),
             reset=lambda: peers.bare_teardown(peers.URI, bare_names, workdir / "bare")),
    ]
    kenv = None
    if not args.skip_kcli:
        kcli = peers.ensure_kcli(args.venv)
        print(f"kcli {peers.kcli_version(kcli)}")
        kenv = peers.setup_kcli(workdir / "kcli", kcli, base, prefix=args.prefix, bridge=bridges[0], kind=kind)
        for threaded in (False, True):
            tools.append(Tool(
                name="kcli-threaded" if threaded else "kcli-serial",
                boot=lambda threaded=threaded: peers.kcli_boot(kenv, kcli_names, threaded=threaded),
                teardown=lambda: peers.kcli_delete(kenv, kcli_names),
                reset=lambda: peers.reset_kcli(kenv, kcli_names),
            ))
    print(f"virt type {kind}; {args.nodes} VMs per boot; {len(tools)} tools; "
          f"{args.rounds} timed + {args.reliability} reliability round(s)", flush=True)
    timed: dict[str, list[tuple[Run, Run]]] = {t.name: [] for t in tools}
    reliability: dict[str, list[tuple[Run, Run]]] = {}
    try:
        for tool in tools:  # warm-up: page cache, first QEMU start, kcli's first run
            one_round(tool)
        for index in range(args.rounds):
            for tool in tools[index % len(tools):] + tools[: index % len(tools)]:
                pair = one_round(tool)
                timed[tool.name].append(pair)
                print(f"round {index + 1} {tool.name:14} boot {pair[0].seconds:5.2f}s teardown {pair[1].seconds:5.2f}s"
                      + ("" if pair[0].ok and pair[1].ok else f"  FAILED {pair[0].failure or pair[1].failure}"),
                      flush=True)
        for tool in tools:
            if tool.name == "kcli-serial" or not args.reliability:
                continue
            reliability[tool.name] = []
            for index in range(args.reliability):
                pair = one_round(tool)
                reliability[tool.name].append(pair)
                if not (pair[0].ok and pair[1].ok):
                    print(f"reliability {tool.name} round {index + 1}: "
                          f"FAILED {pair[0].failure or pair[1].failure}", flush=True)
            print(f"reliability {tool.name}: {args.reliability} rounds done", flush=True)
    finally:
        reset_pragma(site)
        peers.bare_teardown(peers.URI, bare_names, workdir / "bare")
        if kenv is not None:
            peers.teardown_kcli(kenv, kcli_names)
        for bridge in bridges:
            peers.delete_bridge(bridge)
    report(tools, timed, reliability, args.nodes, args.rounds)
    print(json.dumps({t.name: {"boot": median([b for b, _ in timed[t.name]]),
                               "teardown": median([d for _, d in timed[t.name]])} for t in tools}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
