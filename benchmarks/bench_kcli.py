"""kvm_rocks against a tight libvirt floor and kcli, side by side on the real libvirtd.

    python benchmarks/bench_kcli.py [--rounds 7] [--kcli-rounds 3] [--reliability 20]
                                    [--kcli-reliability 2] [--nodes 8] [--skip-kcli] [--no-loose] [--keep]

Needs root and a running ``qemu:///system`` (``scripts/setup`` starts one).
Every tool boots the same ``--nodes`` VMs from the same base -- a 1 GiB raw
disk with an ext4 root partition holding ``/etc`` and ``/root`` (no OS: its
boot sector halts the guest, idle as a booted OS would be; NIC boot ROMs off) -- 1 vCPU, 256 MiB, CPU model ``pentium3``, a thin
qcow2 overlay disk, NICs on Linux bridges, and tears them down again:

* **pragma**: ``pragma boot bench N-1`` (1 frontend + N-1 computes, the
  ``kvm_rocks`` driver, ``max_parallel = 8``, the image already staged in
  the local repository), **with vc-out injected** into every node's overlay
  (``vcout_injection = "e2fs"``: the real boot, not ``none``). Teardown:
  ``pragma clean --force`` when ``pragma clean help`` lists it, else
  ``pragma shutdown`` + ``pragma clean`` (``shutdown_timeout = 0``). Each
  command is a new process, timed as an administrator runs it (the installed
  ``pragma`` script, bytecode cache in use). From the boot's log file
  (``logfile=``, stage timings at INFO) the run also reports the start-up
  (process start to the first stage), each stage (``deploy`` is the
  in-process work: disks, define, start) and what follows them; after each
  boot ``pragma list cluster`` is timed too (not part of boot or teardown).
* **floor (tight)**: what a careful libvirt-python script does at best, with
  pragma's domain XML (built by :func:`pragma_kvm_rocks.domainxml.build_domain_xml`
  from the same template) and the same base: overlays written in-process,
  8 threads over several connections, every VM started paused, then all
  resumed; destroy + undefine in the same way. No vc-out. It also measures
  the CPU time of one QEMU launch (the physical limit: launch CPU x nodes /
  cores).
* **floor (loose)**, an extra row: the former floor -- a ``qemu-img``
  process per VM, 4 threads on one connection, VMs running at once.
* **kcli** (PyPI ``kcli``, in a virtualenv of its own): ``kcli create plan``
  of N VMs, serial and threaded (``-t``), then ``kcli delete plan``. kcli
  creates its overlays with ``backing_fmt=qcow2`` whatever the base, so it
  gets the same disk converted to qcow2 (untimed).

Tools run interleaved, a round at a time, after one untimed warm-up round
(kcli: one for both modes; none for the loose floor). Medians are over the rounds that succeeded; a
failed round (non-zero exit, a VM lost or not running, anything left
behind) is excluded and counted. kcli runs in the first ``--kcli-rounds``
rounds only. Then ``--reliability`` consecutive boot/teardown rounds of
pragma (kcli threaded: ``--kcli-reliability``) count failures. With the
defaults the run takes about 8 minutes on the 2-core machine when it is
quiet, more under load (kcli's serial plan is the most load-sensitive). The
machine's load (load averages, busiest processes, CPU busy share) is
recorded before and after. See ``benchmarks/README-kcli.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
from peers import Check, FloorVM, Run


def installed_script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment, not a version manager's shim on PATH.

    A shim (pyenv's ``shims/``) is a shell script that runs the version
    manager before Python: it costs its own start-up, which no installed
    site pays.
    """
    import sysconfig

    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    return found or name


PRAGMA = installed_script("pragma")
PUBLIC_IP = "198.51.100.77"
CLUSTER = "vc-" + PUBLIC_IP.replace(".", "-")
VLAN = 3777
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJlbmNoYmVuY2hiZW5jaGJlbmNoYmVuY2hiZW5jaGJlbmNo bench@pragma"
BASE_NAME = "base.img"
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
          <driver name="qemu" type="raw"/>
          <source file="{base}"/>
          <target dev="vda" bus="virtio"/>
        </disk>
        <interface type="bridge"><model type="virtio"/><rom enabled="no"/></interface>
      </devices>
    </domain>
  """
#: A line of pragma's log file: ``2026-05-09 13:11:39,123 - logger - LEVEL - message``.
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - \S+ - \w+ - (.*)$")
_STAGE_DONE = re.compile(r"^stage (\w+) done in ([0-9.]+) s$")
_DISKS_READY = re.compile(r"^cluster \S+: \d+ disk\(s\) ready in ([0-9.]+) s$")
STAGES = ("resolve", "stage", "allocate", "render", "deploy")


# --------------------------------------------------------------------------- the pragma side


@dataclass(frozen=True, kw_only=True)
class Timed:
    """One pragma command: its process, wall seconds, and the wall-clock time it was spawned."""

    proc: subprocess.CompletedProcess[str]
    seconds: float
    spawned: float


@dataclass(frozen=True, kw_only=True)
class PragmaSite:
    """A site of its own for the benchmark: configuration, repository, disks, state, logs."""

    root: Path
    nodes: int
    #: How teardown removes the cluster: ``("clean", "--force")``, ``("clean", "force=true")`` or ``()``
    #: for ``shutdown`` + ``clean``.
    force: tuple[str, ...] = ()
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def disks(self) -> Path:
        return self.root / "disks"

    @property
    def records(self) -> Path:
        return self.root / "state" / "clusters"

    @property
    def cluster_dir(self) -> Path:
        return self.root / "repo" / "bench"

    def pragma(self, *args: str) -> Timed:
        """Run one ``pragma`` command on this site, as an administrator would, and time it."""
        argv = [PRAGMA, "--conf", str(self.etc), *args]
        # as installed at a site: Python's bytecode cache in use (kcli's virtualenv has its own)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        spawned = time.time()
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        return Timed(proc=proc, seconds=time.perf_counter() - start, spawned=spawned)

    def next_log(self) -> Path:
        self.counter[0] += 1
        return self.root / "log" / f"boot-{self.counter[0]:03d}.log"


def teardown_mode(etc: Path) -> tuple[str, ...]:
    """How ``pragma clean`` forces: ``--force`` or ``force=`` if its help lists one, else ``()``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([PRAGMA, "--conf", str(etc), "clean", "help"], capture_output=True, text=True,
                         check=False, env=env).stdout
    if "--force" in out:
        return ("--force",)
    if "force=" in out or re.search(r"^\s*force\b", out, re.MULTILINE):
        return ("force=true",)
    return ()


def make_pragma_site(root: Path, base: Path, *, prefix: str, nodes: int, kind: str) -> PragmaSite:
    """Write the site: local repository holding ``base`` (linked, untimed) and a kvm_rocks.conf."""
    for sub in ("etc", "repo/bench", "disks", "state", "tmp", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for directory in (root, root / "repo", root / "repo/bench", root / "disks"):
        directory.chmod(0o755)
    image = root / "repo/bench" / BASE_NAME
    image.unlink(missing_ok=True)
    try:
        os.link(base, image)
    except OSError:
        shutil.copy2(base, image)
    (root / "repo/vcdb.txt").write_text("bench,bench/bench.xml\n")
    (root / "repo/bench/bench.xml").write_text(CLUSTER_XML.format(domain=domain_template()))
    (root / "key.pub").write_text(KEY + "\n")
    etc = root / "etc"
    (etc / "site_conf.conf").write_text(
        'site_ve_driver = "kvm_rocks"\n'
        f'temp_directory = "{root / "tmp"}"\n'
        f'log_directory = "{root / "log"}"\n'
        f'repository_settings = {{"repository_class": "local", "repository_dir": "{root / "repo"}"}}\n'
    )
    (etc / "kvm_rocks.conf").write_text(
        f'public_ips = ["{PUBLIC_IP}"]\n'
        'netmask = "255.255.255.0"\n'
        'gw = "198.51.100.1"\n'
        'dns = "198.51.100.53"\n'
        f"vlans = [{VLAN}]\n"
        f'diskdir = "{root / "disks"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'private_bridge = "{private_bridge(prefix)}"\n'
        f'public_bridge = "{public_bridge(prefix)}"\n'
        f'domain_type = "{kind}"\n'
        f'cpu_model = "{peers.CPU_MODEL}"\n'
        '# the real boot: vc-out written into every node disk (e2fsprogs fast path, raw base, ext4 root)\n'
        'vcout_injection = "e2fs"\n'
        "max_parallel = 8\n"
        "max_cpus_per_node = 1\n"
        "num_processors_reserved = 0\n"
        "cpu_allocation_ratio = 16\n"
        "shutdown_timeout = 0\n"
    )
    return PragmaSite(root=root, nodes=nodes, force=teardown_mode(etc))


def domain_template() -> str:
    return DOMAIN.format(memory=peers.MEMORY_MIB, base=BASE_NAME)


def private_bridge(prefix: str) -> str:
    """The private bridge template of the benchmark site (``{vlan}`` filled in by kvm_rocks)."""
    return f"{prefix[:6]}v{{vlan}}"


def public_bridge(prefix: str) -> str:
    return f"{prefix[:6]}pub"


def pragma_names(site: PragmaSite) -> list[str]:
    """The domain names kvm_rocks gives the benchmark cluster (its naming is deterministic)."""
    return [CLUSTER] + [f"{CLUSTER}-compute-{i}" for i in range(site.nodes - 1)]


def parse_boot_log(path: Path, spawned: float, wall: float) -> dict[str, float]:
    """Stage timings of one boot from its log file: ``startup``, each stage, ``stages``, ``disks``, ``after``.

    ``startup`` is from the process's spawn to the start of the first stage
    (the end of ``resolve`` minus its duration): interpreter, imports,
    configuration, plugin loading, driver and repository. ``after`` is what
    the command spent after its last stage (printing the cluster, exit).
    Log times have millisecond resolution.
    """
    metrics: dict[str, float] = {}
    first_end: float | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return metrics
    for line in lines:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
        message = match.group(3)
        if done := _STAGE_DONE.match(message):
            metrics[done.group(1)] = float(done.group(2))
            if done.group(1) == "resolve":
                first_end = stamp
        elif disks := _DISKS_READY.match(message):
            metrics["disks"] = float(disks.group(1))
    if first_end is not None and "resolve" in metrics:
        metrics["startup"] = max(0.0, first_end - metrics["resolve"] - spawned)
    metrics["stages"] = sum(metrics.get(stage, 0.0) for stage in STAGES)
    if "startup" in metrics:
        metrics["after"] = max(0.0, wall - metrics["startup"] - metrics["stages"])
    return metrics


def pragma_boot(site: PragmaSite) -> Run:
    """Time ``pragma boot bench N-1``; not ok on a non-zero exit or a node not running.

    ``metrics``: the boot's stage timings (:func:`parse_boot_log`) and, when
    it succeeded, ``list_cluster``: one ``pragma list cluster`` afterwards.
    """
    logfile = site.next_log()
    run = site.pragma("boot", "bench", str(site.nodes - 1), f"key={site.root / 'key.pub'}", f"logfile={logfile}")
    check = pragma_check(site)
    problems = [f"exit {run.proc.returncode}: {run.proc.stderr.strip()}"] if run.proc.returncode else []
    if check.running < site.nodes:
        problems.append(f"{site.nodes - check.running} of {site.nodes} VMs not running")
    metrics = parse_boot_log(logfile, run.spawned, run.seconds)
    if not problems:
        listing = site.pragma("list", "cluster")
        if listing.proc.returncode == 0:
            metrics["list_cluster"] = listing.seconds
    return Run(tool="pragma", action="boot", seconds=run.seconds, ok=not problems, failure="; ".join(problems),
               metrics=metrics)


def teardown_commands(site: PragmaSite) -> list[tuple[str, ...]]:
    """The commands of one teardown: ``clean --force`` in one process, or ``shutdown`` then ``clean``."""
    if site.force == ("--force",):
        return [("clean", "--force", CLUSTER)]
    if site.force:
        return [("clean", CLUSTER, *site.force)]
    return [("shutdown", CLUSTER), ("clean", CLUSTER)]


def pragma_teardown(site: PragmaSite) -> Run:
    """Time the teardown commands; not ok on a failure or anything left behind."""
    seconds = 0.0
    problems: list[str] = []
    for command in teardown_commands(site):
        run = site.pragma(*command)
        seconds += run.seconds
        if run.proc.returncode:
            problems.append(f"{command[0]} exit {run.proc.returncode}: {run.proc.stderr.strip()}")
            break
    left = pragma_check(site).leftovers
    if left:
        problems.append("left behind: " + ", ".join(left))
    return Run(tool="pragma", action="teardown", seconds=seconds, ok=not problems, failure="; ".join(problems))


def pragma_check(site: PragmaSite) -> Check:
    """Running benchmark nodes; leftovers = domains, node disks, console logs and allocation records."""
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
    for command in teardown_commands(site):
        site.pragma(*command)
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


# --------------------------------------------------------------------------- the tight floor's VMs


def floor_vms(site: PragmaSite, names: Sequence[str], diskdir: Path, *, prefix: str, kind: str) -> list[FloorVM]:
    """The floor's VMs in pragma's shape: its template through its XML builder, same bridges and metadata.

    The first is a frontend (private and public NIC), the others computes
    (private NIC); each has a console log, as pragma's nodes do.
    """
    from pragma_kvm_rocks.domainxml import Nic, build_domain_xml
    from pragma_kvm_rocks.records import NodeRecord

    vms = []
    for index, name in enumerate(names):
        role = "frontend" if index == 0 else "compute"
        disk = diskdir / f"{name}.qcow2"
        console = diskdir / f"{name}.console.log"
        nics = [Nic(mac=f"52:54:00:be:{VLAN % 256:02x}:{2 * index:02x}", bridge=private_bridge(prefix), vlan=VLAN)]
        if role == "frontend":
            nics.append(Nic(mac=f"52:54:00:be:{VLAN % 256:02x}:{2 * index + 1:02x}", bridge=public_bridge(prefix)))
        record = NodeRecord(cluster=f"{prefix}-floor", name=name, hostname=name, role=role, host="localhost",
                            cpus=1, memory_mib=peers.MEMORY_MIB, disk=str(disk), image="bench", vlan=VLAN)
        xml = build_domain_xml(domain_template(), name=name, domain_type=kind, vcpus=1,
                               memory_mib=peers.MEMORY_MIB, disk=disk, disk_format="qcow2", nics=nics,
                               record=record, cluster_dir=site.cluster_dir, cpu_model=peers.CPU_MODEL,
                               console_log=console)
        vms.append(FloorVM(name=name, xml=xml, disk=disk, console_log=console))
    return vms


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, kw_only=True)
class Tool:
    """One contender: how it boots, tears down and recovers (after a failed round)."""

    name: str
    boot: Callable[[], Run]
    teardown: Callable[[], Run]
    reset: Callable[[], None]
    rounds: int


def one_round(tool: Tool) -> tuple[Run, Run]:
    """Boot and tear down once; on any failure reset, so the next round starts clean."""
    booted = tool.boot()
    down = tool.teardown()
    if not (booted.ok and down.ok):
        tool.reset()
    return booted, down


def ok_pairs(pairs: Sequence[tuple[Run, Run]]) -> list[tuple[Run, Run]]:
    """The rounds whose boot and teardown both succeeded: only they enter the medians."""
    return [pair for pair in pairs if pair[0].ok and pair[1].ok]


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Medians of one tool over its successful rounds."""

    boot: float
    teardown: float
    ok: int
    rounds: int


def summarize(pairs: Sequence[tuple[Run, Run]]) -> Summary:
    good = ok_pairs(pairs)
    return Summary(boot=med([b.seconds for b, _ in good]), teardown=med([d.seconds for _, d in good]),
                   ok=len(good), rounds=len(pairs))


def metric(pairs: Sequence[tuple[Run, Run]], name: str, *, action: int = 0) -> float:
    """Median of one metric over the successful rounds (``action`` 0: boot, 1: teardown)."""
    return med([pair[action].metrics[name] for pair in ok_pairs(pairs) if name in pair[action].metrics])


LABELS = {"pragma": "pragma", "floor": "floor (tight)", "loose": "floor (loose, extra)",
          "kcli-serial": "kcli serial", "kcli-threaded": "kcli threaded"}


def ratio_line(label: str, top: float, bottom: float, note: str = "") -> str:
    value = top / bottom if bottom and not (math.isnan(bottom) or math.isnan(top)) else float("nan")
    return f"{label:34} {value:5.2f}x   {note}".rstrip()


def report(tools: Sequence[Tool], timed: dict[str, list[tuple[Run, Run]]],
           reliability: dict[str, list[tuple[Run, Run]]], *, nodes: int, cores: int, site: PragmaSite,
           before: peers.LoadSample, after: peers.LoadSample, own_cpu: float, elapsed: float) -> dict[str, object]:
    """Print the report; return its numbers (printed as JSON by :func:`main`)."""
    summaries = {t.name: summarize(timed[t.name]) for t in tools}
    print(f"\n{nodes} VMs, 1 GiB raw base with an ext4 root; medians over the rounds that succeeded")
    print(f"{'tool':22} {'boot':>7} {'teardown':>9}   ok rounds")
    for tool in tools:
        s = summaries[tool.name]
        print(f"{LABELS[tool.name]:22} {s.boot:6.2f}s {s.teardown:8.2f}s   {s.ok}/{s.rounds}")
    pragma, floor = summaries["pragma"], summaries["floor"]
    p = timed["pragma"]
    stage_text = ", ".join(f"{stage} {metric(p, stage):.2f}" for stage in STAGES)
    print()
    print(f"pragma boot, inside (medians): start-up {metric(p, 'startup'):.2f} s (process start to the first stage), "
          f"stages {metric(p, 'stages'):.2f} s ({stage_text}; disks with vc-out {metric(p, 'disks'):.2f}), "
          f"after the stages {metric(p, 'after'):.2f} s")
    list_cluster = metric(p, "list_cluster")
    print(f"pragma list cluster ({nodes} nodes): {list_cluster:.2f} s   (target <= 0.25)")
    teardown = " + ".join("pragma " + " ".join(c) for c in teardown_commands(site)).replace(CLUSTER, "NAME")
    print(f"pragma teardown: {teardown}")
    print()
    print(ratio_line("boot      pragma/floor", pragma.boot, floor.boot, "(target <= 1.2)"))
    print(ratio_line("boot      pragma deploy stage/floor", metric(p, "deploy"), floor.boot,
                     "(the in-process part of the boot)"))
    print(ratio_line("teardown  pragma/floor", pragma.teardown, floor.teardown, "(target <= 1.3)"))
    if "loose" in summaries:
        print(ratio_line("boot      loose floor/tight floor", summaries["loose"].boot, floor.boot))
        print(ratio_line("teardown  loose floor/tight floor", summaries["loose"].teardown, floor.teardown))
    if "kcli-threaded" in summaries:
        kcli_t, kcli_s = summaries["kcli-threaded"], summaries["kcli-serial"]
        print(ratio_line("boot      kcli-threaded/pragma", kcli_t.boot, pragma.boot, "(target >= 1.8)"))
        print(ratio_line("boot      kcli-serial/pragma", kcli_s.boot, pragma.boot))
        deletes = [d.seconds for name in ("kcli-serial", "kcli-threaded") for _, d in ok_pairs(timed[name])]
        print(ratio_line("teardown  kcli/pragma", med(deletes), pragma.teardown, "(target >= 2.5)"))
    f = timed["floor"]
    qemu, daemon = metric(f, "qemu_cpu"), metric(f, "libvirtd_cpu")
    limit = (qemu + daemon) * nodes / cores
    print()
    print(f"physical limit: one QEMU launch costs {qemu:.2f} CPU-s in QEMU (paused) + {daemon:.2f} CPU-s in libvirtd "
          f"(all its clients) = {qemu + daemon:.2f} CPU-s; x {nodes} nodes / {cores} cores = {limit:.2f} s. "
          f"Tight floor boot {floor.boot:.2f} s = {floor.boot / limit if limit else float('nan'):.2f}x it, "
          f"pragma {pragma.boot / limit if limit else float('nan'):.2f}x it.")
    busy = (after.busy - before.busy) / (after.total - before.total) if after.total > before.total else float("nan")
    print(f"machine: before: {peers.describe_load(before)}")
    print(f"         after:  {peers.describe_load(after)}")
    print(f"         CPU busy during the run {busy:.0%} of {cores} cores; this benchmark's own processes "
          f"(pragma, kcli, the floor's Python; not QEMU or libvirtd) used {own_cpu:.0f} CPU-s of "
          f"{elapsed * cores:.0f} in {elapsed:.0f} s")
    if reliability:
        print()
        print("reliability: consecutive boot/teardown rounds, failures per tool")
        for name, pairs in reliability.items():
            failures = [r for pair in pairs for r in pair if not r.ok]
            print(f"  {LABELS[name]:22} {len(ok_pairs(pairs)):3d}/{len(pairs)} clean rounds, {len(failures)} failure(s)")
            for run in failures[:3]:
                print(f"      {run.action}: {run.failure[:160]}")
    return {
        "medians": {name: {"boot": s.boot, "teardown": s.teardown, "ok": s.ok, "rounds": s.rounds}
                    for name, s in summaries.items()},
        "pragma_inside": {key: metric(p, key) for key in ("startup", *STAGES, "disks", "stages", "after")},
        "list_cluster": list_cluster,
        "launch_cpu": {"qemu": qemu, "libvirtd": daemon, "limit": limit},
        "load": {"before": before.loadavg, "after": after.loadavg, "busy": busy},
        "reliability": {name: len(ok_pairs(pairs)) for name, pairs in reliability.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of pragma and the floors (medians)")
    parser.add_argument("--kcli-rounds", type=int, default=3, help="timed rounds of each kcli mode (<= --rounds)")
    parser.add_argument("--reliability", type=int, default=20, help="consecutive pragma rounds to count failures")
    parser.add_argument("--kcli-reliability", type=int, default=2, help="consecutive kcli threaded rounds")
    parser.add_argument("--nodes", type=int, default=8, help="VMs per boot (pragma: 1 frontend + N-1 computes)")
    parser.add_argument("--skip-kcli", action="store_true", help="pragma and the floors only")
    parser.add_argument("--no-loose", action="store_true", help="leave out the loose floor's extra row")
    parser.add_argument("--prefix", default="pbench", help="name prefix of domains, bridges, pool, work directory")
    parser.add_argument("--venv", type=Path, default=peers.ROOT / "kcli-venv", help="kcli's virtualenv")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (base image, logs) afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if os.geteuid() != 0:
        print("bench_kcli: run as root (bridges, qemu:///system)", file=sys.stderr)
        return 2

    began = time.monotonic()
    before = peers.load_sample()
    print(f"pragma {PRAGMA}; {peers.describe_load(before)}", flush=True)
    kind = peers.virt_type()
    cores = os.cpu_count() or 1
    workdir = peers.ROOT / args.prefix
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    base = workdir / BASE_NAME
    if not base.exists() or not peers.has_halt_boot_code(base):
        peers.make_ext4_base(base)
    bridges = [f"{args.prefix[:9]}br", private_bridge(args.prefix).format(vlan=VLAN), public_bridge(args.prefix)]
    for bridge in bridges:
        peers.delete_bridge(bridge)
        peers.create_bridge(bridge)
    site = make_pragma_site(workdir / "pragma", base, prefix=args.prefix, nodes=args.nodes, kind=kind)
    floor = floor_vms(site, [f"{args.prefix}-f{i}" for i in range(args.nodes)], workdir / "floor",
                      prefix=args.prefix, kind=kind)
    loose_names = [f"{args.prefix}-b{i}" for i in range(args.nodes)]
    kcli_names = [f"{args.prefix}-k{i}" for i in range(args.nodes)]
    tools = [
        Tool(name="pragma", boot=lambda: pragma_boot(site), teardown=lambda: pragma_teardown(site),
             reset=lambda: reset_pragma(site), rounds=args.rounds),
        Tool(name="floor", boot=lambda: peers.tight_boot(peers.URI, base, "raw", floor),
             teardown=lambda: peers.tight_teardown(peers.URI, floor),
             reset=lambda: peers.reset_tight(peers.URI, floor), rounds=args.rounds),
    ]
    if not args.no_loose:
        tools.append(Tool(
            name="loose",
            boot=lambda: peers.bare_boot(peers.URI, base, loose_names, workdir / "bare", bridges[0], threads=4,
                                         kind=kind, base_format="raw"),
            teardown=lambda: peers.bare_teardown(peers.URI, loose_names, workdir / "bare", threads=8),
            reset=lambda: peers.bare_teardown(peers.URI, loose_names, workdir / "bare"), rounds=args.rounds))
    kenv = None
    if not args.skip_kcli:
        kcli = peers.ensure_kcli(args.venv)
        print(f"kcli {peers.kcli_version(kcli)}")
        # kcli makes its overlays with backing_fmt=qcow2 whatever the base: give it the same disk as qcow2 (untimed)
        kbase = workdir / "base.qcow2"
        if not kbase.exists():
            peers.qcow2_copy(base, kbase)
        kenv = peers.setup_kcli(workdir / "kcli", kcli, kbase, prefix=args.prefix, bridge=bridges[0], kind=kind)
        for threaded in (False, True):
            tools.append(Tool(
                name="kcli-threaded" if threaded else "kcli-serial",
                boot=lambda threaded=threaded: peers.kcli_boot(kenv, kcli_names, threaded=threaded),
                teardown=lambda: peers.kcli_delete(kenv, kcli_names),
                reset=lambda: peers.reset_kcli(kenv, kcli_names),
                rounds=min(args.kcli_rounds, args.rounds),
            ))
    teardown = " + ".join(" ".join(c) for c in teardown_commands(site)).replace(CLUSTER, "NAME")
    print(f"virt type {kind}; {args.nodes} VMs per boot; {len(tools)} tools; {args.rounds} timed rounds "
          f"(kcli {min(args.kcli_rounds, args.rounds)}) + {args.reliability} pragma reliability rounds "
          f"(kcli threaded {args.kcli_reliability}); pragma teardown: {teardown}", flush=True)
    timed: dict[str, list[tuple[Run, Run]]] = {t.name: [] for t in tools}
    reliability: dict[str, list[tuple[Run, Run]]] = {}
    stopped = ""  # why the run ended early (libvirtd gone...): what was measured is still reported
    try:
        for tool in tools:  # warm-up: page cache, first QEMU start, kcli's first run (one for both modes)
            if tool.name not in ("kcli-threaded", "loose"):
                one_round(tool)
        print(f"warm-up done at {time.monotonic() - began:.0f} s", flush=True)
        for index in range(args.rounds):
            for tool in tools[index % len(tools):] + tools[: index % len(tools)]:
                if index >= tool.rounds:
                    continue
                pair = one_round(tool)
                timed[tool.name].append(pair)
                extra = ""
                if tool.name == "pragma" and "startup" in pair[0].metrics:
                    m = pair[0].metrics
                    extra = (f"  (start-up {m['startup']:.2f}, deploy {m.get('deploy', float('nan')):.2f}, "
                             f"list cluster {m.get('list_cluster', float('nan')):.2f})")
                elif tool.name == "floor" and "qemu_cpu" in pair[0].metrics:
                    extra = f"  (launch CPU {pair[0].metrics['qemu_cpu']:.2f} + {pair[0].metrics['libvirtd_cpu']:.2f})"
                print(f"round {index + 1} {tool.name:14} boot {pair[0].seconds:5.2f}s teardown {pair[1].seconds:5.2f}s"
                      + extra + ("" if pair[0].ok and pair[1].ok
                                 else f"  FAILED {pair[0].failure or pair[1].failure}"), flush=True)
        print(f"timed rounds done at {time.monotonic() - began:.0f} s", flush=True)
        counts = {"pragma": args.reliability, "kcli-threaded": args.kcli_reliability}
        for tool in tools:
            if not counts.get(tool.name):
                continue
            reliability[tool.name] = []
            for index in range(counts[tool.name]):
                pair = one_round(tool)
                reliability[tool.name].append(pair)
                if not (pair[0].ok and pair[1].ok):
                    print(f"reliability {tool.name} round {index + 1}: "
                          f"FAILED {pair[0].failure or pair[1].failure}", flush=True)
            print(f"reliability {tool.name}: {counts[tool.name]} rounds done at {time.monotonic() - began:.0f} s",
                  flush=True)
    except Exception as exc:  # noqa: BLE001 - the rounds measured so far are still reported below
        stopped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"STOPPED EARLY at {time.monotonic() - began:.0f} s: {stopped}", flush=True)
    finally:
        cleanups = [lambda: reset_pragma(site), lambda: peers.reset_tight(peers.URI, floor),
                    lambda: peers.bare_teardown(peers.URI, loose_names, workdir / "bare")]
        if kenv is not None:
            cleanups.append(lambda: peers.teardown_kcli(kenv, kcli_names))
        cleanups += [functools.partial(peers.delete_bridge, bridge) for bridge in bridges]
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - every other clean-up still runs
                print(f"clean-up failed: {type(exc).__name__}: {exc}", flush=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    after = peers.load_sample()
    own = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own_cpu = sum(r.ru_utime + r.ru_stime for r in own)
    numbers = report(tools, timed, reliability, nodes=args.nodes, cores=cores, site=site, before=before,
                     after=after, own_cpu=own_cpu, elapsed=time.monotonic() - began)
    print(f"\nwhole run {time.monotonic() - began:.0f} s" + (f"; stopped early: {stopped}" if stopped else ""))
    print(json.dumps({**numbers, "stopped": stopped} if stopped else numbers))
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
