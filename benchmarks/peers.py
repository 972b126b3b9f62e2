"""The peers pragma's libvirt driver is measured against: kcli and bare libvirt-python.

Both sides boot the same VM shape on the real daemon (``qemu:///system``):
1 vCPU, 256 MiB, ``type='kvm'`` (``qemu`` when libvirt's QEMU user cannot open
``/dev/kvm``), CPU model ``pentium3`` (``host-model`` aborts QEMU here), one
virtio disk that is a thin qcow2 overlay of a shared base, one NIC on a plain
Linux bridge. The base has no OS: guests sit in the BIOS.

- kcli (PyPI ``kcli``) runs from a virtualenv of its own, with a HOME of its
  own (``<workdir>/home/.kcli/config.yml``) so the user's ``~/.kcli`` is
  untouched, and a transient libvirt ``dir`` pool of its own under
  ``/var/lib/pragma-bench`` (libvirt-qemu must be able to read the base). A plan
  VM's ``image:`` names a *volume* of an active pool, so the base is linked
  into the pool, untimed.
- kcli attaches a NIC to a host bridge only if libvirt's interface driver lists
  the bridge as *active*, i.e. its operstate is ``up``: an empty bridge stays
  ``unknown``/inactive and kcli answers "Invalid network". :func:`create_bridge`
  therefore plugs one end of a veth pair into the bridge.
- The bare floor: per VM, ``qemu-img create -b BASE`` overlay, ``defineXML``,
  ``create()`` in a thread pool sharing one connection.

Every timed function returns a :class:`Run` (seconds, ok, failure) and never
raises for a failed or lost VM, so a benchmark can count failures per tool.
Smoke run (root, libvirtd running): ``python benchmarks/peers.py --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import venv as venv_module
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    import libvirt

log = logging.getLogger("peers")

URI = "qemu:///system"
ROOT = Path("/var/lib/pragma-bench")
GIB = 1 << 30
MEMORY_MIB = 256
CPU_MODEL = "pentium3"
#: Output lines of kcli that tell of a failed or degraded VM creation.
KCLI_TROUBLE = re.compile(
    r"not deployed|not created|asynchronous jobs|don't have image|Invalid network|Traceback|Error|failed|Hit ",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, kw_only=True)
class Run:
    """One timed action of one tool: how long it took and whether all went well."""

    tool: str
    action: str
    seconds: float
    ok: bool
    failure: str = ""
    #: Degradations that did not lose a VM (e.g. kcli's pool-refresh warnings).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Check:
    """State after an action: running domains among the names, and what is left behind."""

    running: int
    leftovers: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class KcliEnv:
    """Everything a kcli call needs: executable, HOME, pool, image volume, plan file."""

    kcli: Path
    home: Path
    plandir: Path
    pool: str
    pooldir: Path
    image: str
    disk_gib: int
    bridge: str
    virt_type: str
    plan: str
    uri: str = URI
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The environment of every kcli call: the dedicated HOME."""
        return {**os.environ, "HOME": str(self.home), **self.extra_env}


# --------------------------------------------------------------------------- helpers


def _run(argv: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell), raising with its output on a non-zero exit."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def connect(uri: str = URI) -> libvirt.virConnect:
    """An open libvirt connection with libvirt's own stderr printing silenced."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(uri)


def virt_type() -> str:
    """``kvm`` if QEMU run by libvirt (as libvirt-qemu) can open /dev/kvm, else ``qemu``."""
    from pragma_kvm_rocks.hosts import local_kvm_usable

    return "kvm" if local_kvm_usable() else "qemu"


# --------------------------------------------------------------------------- kcli install


def ensure_kcli(venv: Path) -> Path:
    """A virtualenv at ``venv`` with kcli and libvirt-python; returns its ``kcli``.

    Idempotent: when both already import, nothing is installed (about 0.1 s).
    libvirt-python builds from source (Debian libvirt-dev and pkg-config).
    """
    python, kcli = venv / "bin/python", venv / "bin/kcli"
    if kcli.exists() and python.exists():
        probe = subprocess.run([str(python), "-c", "import kvirt, libvirt"], capture_output=True, check=False)
        if probe.returncode == 0:
            return kcli
    log.info("creating kcli virtualenv in %s", venv)
    venv_module.EnvBuilder(with_pip=True, clear=False).create(venv)
    _run([python, "-m", "pip", "install", "--quiet", "kcli", "libvirt-python"])
    return kcli


def kcli_version(kcli: Path) -> str:
    """The installed kcli distribution version (e.g. ``99.0.202610251748``) and its ``kcli version`` line."""
    python = kcli.parent / "python"
    dist = _run([python, "-c", "import importlib.metadata as m; print(m.version('kcli'))"]).stdout.strip()
    home = Path("/tmp") / f"helperK-kcli-version-{os.getpid()}"
    home.mkdir(exist_ok=True)
    try:
        line = _run([kcli, "version"], env={**os.environ, "HOME": str(home)}).stdout.strip()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return f"{dist} ({_ANSI.sub('', line)})"


# --------------------------------------------------------------------------- shared fixtures


def make_base_image(path: Path, size: int = GIB, data_mib: int = 16) -> Path:
    """A qcow2 base of ``size`` bytes with ``data_mib`` MiB of data written at its start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
    if data_mib:
        _run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data_mib}M", path])
    return path


def _veth_names(bridge: str) -> tuple[str, str]:
    stem = bridge[:12]
    return f"{stem}v0", f"{stem}v1"


def create_bridge(name: str, timeout: float = 15.0) -> None:
    """A Linux bridge ``name`` whose operstate is ``up`` (one veth end plugged in).

    libvirt's udev interface backend lists a bridge as active only when its
    operstate is ``up``, and kcli only attaches NICs to active bridges.
    """
    inner, outer = _veth_names(name)
    _run(["ip", "link", "add", name, "type", "bridge", "forward_delay", "0"])
    _run(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
    _run(["ip", "link", "set", inner, "master", name])
    for dev in (name, inner, outer):
        _run(["ip", "link", "set", dev, "up"])
    state = Path("/sys/class/net") / name / "operstate"
    deadline = time.monotonic() + timeout
    while state.read_text().strip() != "up":
        if time.monotonic() > deadline:
            raise RuntimeError(f"bridge {name} did not come up")
        time.sleep(0.1)


def delete_bridge(name: str) -> None:
    """Remove the bridge and its veth pair, if present."""
    for dev in (_veth_names(name)[0], name):
        if Path("/sys/class/net", dev).exists():
            subprocess.run(["ip", "link", "del", dev], capture_output=True, check=False)


def domains_running(conn: libvirt.virConnect, names: Sequence[str]) -> int:
    """How many of ``names`` are defined and running."""
    wanted = set(names)
    return sum(1 for dom in conn.listAllDomains() if dom.name() in wanted and dom.isActive())


def domains_defined(conn: libvirt.virConnect, names: Sequence[str]) -> list[str]:
    """Which of ``names`` are defined (running or not)."""
    wanted = set(names)
    return sorted(dom.name() for dom in conn.listAllDomains() if dom.name() in wanted)


def remove_domain(conn: libvirt.virConnect, name: str) -> None:
    """Destroy (if running) and undefine domain ``name``; nothing if it does not exist."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


# --------------------------------------------------------------------------- kcli side


def setup_kcli(workdir: Path, kcli: Path, base: Path, *, prefix: str, bridge: str, uri: str = URI,
               kind: str | None = None) -> KcliEnv:
    """Write kcli's config in ``workdir/home``, start a pool of its own, put ``base`` in it (untimed).

    ``workdir`` must be readable by libvirt-qemu (e.g. under /var/lib/pragma-bench).
    """
    home, plandir, pooldir = workdir / "home", workdir / "plan", workdir / "pool"
    for d in (home / ".kcli", plandir, pooldir):
        d.mkdir(parents=True, exist_ok=True)
    for d in (workdir, pooldir):
        d.chmod(0o755)
    pool, image = f"{prefix}-pool", f"{prefix}-base.qcow2"
    target = pooldir / image
    if not target.exists():
        try:
            os.link(base, target)
        except OSError:
            shutil.copy2(base, target)
    client = f"{prefix}-local"
    config = {"default": {"client": client}, client: {"type": "kvm", "host": "127.0.0.1", "url": uri, "pool": pool}}
    (home / ".kcli/config.yml").write_text(json.dumps(config, indent=1) + "\n")
    conn = connect(uri)
    try:
        if pool not in conn.listStoragePools():
            xml = f"<pool type='dir'><name>{escape(pool)}</name><target><path>{escape(str(pooldir))}</path></target></pool>"
            conn.storagePoolCreateXML(xml, 0)
    finally:
        conn.close()
    size = int(json.loads(_run(["qemu-img", "info", "--output=json", base]).stdout)["virtual-size"])
    return KcliEnv(kcli=kcli, home=home, plandir=plandir, pool=pool, pooldir=pooldir, image=image,
                   disk_gib=max(1, -(-size // GIB)), bridge=bridge, virt_type=kind or virt_type(),
                   plan=f"{prefix}-plan", uri=uri)


def write_plan(env: KcliEnv, names: Sequence[str]) -> Path:
    """The plan file: one VM entry per name, all of the benchmark's shape (JSON is valid YAML)."""
    vm = {
        "image": env.image, "numcpus": 1, "memory": MEMORY_MIB, "cpumodel": CPU_MODEL, "virttype": env.virt_type,
        "nested": False, "cloudinit": False, "vnc": False, "disks": [env.disk_gib], "nets": [env.bridge],
    }
    path = env.plandir / "plan.yml"
    path.write_text(json.dumps({name: vm for name in names}, indent=1) + "\n")
    return path


def _kcli(env: KcliEnv, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run([str(env.kcli), *args], capture_output=True, text=True, env=env.env(),
                          cwd=env.plandir, check=False)
    return time.perf_counter() - start, proc


def _trouble(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """kcli's trouble lines, distinct, the decisive ones (a VM not deployed) before warnings."""
    text = _ANSI.sub("", proc.stdout + "\n" + proc.stderr).replace("Hit ", "\nHit ")
    lines = list(dict.fromkeys(line.strip() for line in text.splitlines() if KCLI_TROUBLE.search(line)))
    return sorted(lines, key=lambda line: line.startswith("Hit "))


def kcli_boot(env: KcliEnv, names: Sequence[str], *, threaded: bool = False) -> Run:
    """Time ``kcli create plan -f plan.yml [-t] PLAN``; not ok if it fails or any VM is not running."""
    plan = write_plan(env, names)
    args = ["create", "plan", "-f", str(plan), *(["-t"] if threaded else []), env.plan]
    seconds, proc = _kcli(env, *args)
    trouble = _trouble(proc)
    conn = connect(env.uri)
    try:
        running = domains_running(conn, names)
    finally:
        conn.close()
    problems = []
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}")
    if running < len(names):
        problems.append(f"{len(names) - running} of {len(names)} VMs not running")
    if problems:
        problems += trouble[:6]
    return Run(tool="kcli-threaded" if threaded else "kcli", action="boot", seconds=seconds, ok=not problems,
               failure="; ".join(problems), notes=tuple(trouble))


def kcli_delete(env: KcliEnv, names: Sequence[str] = ()) -> Run:
    """Time ``kcli delete plan --yes PLAN``; not ok if it fails or leaves anything of ``names`` behind."""
    seconds, proc = _kcli(env, "delete", "plan", "--yes", env.plan)
    left = kcli_check(env, names).leftovers
    problems = [f"exit {proc.returncode}"] if proc.returncode != 0 else []
    if left:
        problems.append("left behind: " + ", ".join(left))
    if problems:
        problems += _trouble(proc)[:6]
    return Run(tool="kcli", action="delete", seconds=seconds, ok=not problems, failure="; ".join(problems))


def kcli_check(env: KcliEnv, names: Sequence[str]) -> Check:
    """Running domains among ``names``; leftovers = defined domains, pool volumes and pool files except the base."""
    conn = connect(env.uri)
    try:
        running = domains_running(conn, names)
        left = [f"domain {n}" for n in domains_defined(conn, names)]
        pool = conn.storagePoolLookupByName(env.pool)
        pool.refresh(0)
        left += [f"volume {v}" for v in sorted(pool.listVolumes()) if v != env.image]
    finally:
        conn.close()
    files = {p.name for p in env.pooldir.iterdir()} - {env.image}
    left += [f"file {f}" for f in sorted(files) if f"volume {f}" not in left]
    return Check(running=running, leftovers=tuple(left))


def reset_kcli(env: KcliEnv, names: Sequence[str]) -> None:
    """Remove our domains and every pool volume but the base (untimed), e.g. after a lost VM."""
    import libvirt

    conn = connect(env.uri)
    try:
        for name in names:
            remove_domain(conn, name)
        pool = conn.storagePoolLookupByName(env.pool)
        pool.refresh(0)
        for vol in pool.listAllVolumes():
            if vol.name() != env.image:
                try:
                    vol.delete(0)
                except libvirt.libvirtError as exc:
                    log.warning("cannot delete volume %s: %s", vol.name(), exc)
    finally:
        conn.close()


def teardown_kcli(env: KcliEnv, names: Sequence[str]) -> None:
    """Remove what a failed kcli run may have left: our domains, the pool, its directory (untimed)."""
    import libvirt

    conn = connect(env.uri)
    try:
        for name in names:
            remove_domain(conn, name)
        try:
            conn.storagePoolLookupByName(env.pool).destroy()
        except libvirt.libvirtError:
            pass
    finally:
        conn.close()
    shutil.rmtree(env.pooldir, ignore_errors=True)


# --------------------------------------------------------------------------- bare libvirt-python side


def bare_domain_xml(name: str, disk: Path, bridge: str, kind: str) -> str:
    """The benchmark's VM shape as libvirt XML: 1 vCPU, 256 MiB, pentium3, virtio overlay disk, bridged NIC."""
    return f"""<domain type={quoteattr(kind)}>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>{CPU_MODEL}</model></cpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge={quoteattr(bridge)}/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
  </devices>
</domain>"""


def _parallel(items: Sequence[str], threads: int, work: Callable[[str], None]) -> list[str]:
    """Run ``work(item)`` over a pool; the failures as ``item: error`` strings."""
    failures: list[str] = []

    def guarded(item: str) -> None:
        try:
            work(item)
        except Exception as exc:  # noqa: BLE001 - reported, counted by the benchmark
            failures.append(f"{item}: {exc}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(guarded, items))
    return failures


def bare_boot(uri: str, base: Path, names: Sequence[str], diskdir: Path, bridge: str, threads: int = 4,
              kind: str | None = None) -> Run:
    """Time overlay + defineXML + create() per VM over ``threads`` threads sharing one connection."""
    kind = kind or virt_type()
    diskdir.mkdir(parents=True, exist_ok=True)
    diskdir.chmod(0o755)
    conn = connect(uri)
    try:
        def boot(name: str) -> None:
            disk = diskdir / f"{name}.qcow2"
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", disk])
            conn.defineXML(bare_domain_xml(name, disk, bridge, kind)).create()

        start = time.perf_counter()
        failures = _parallel(names, threads, boot)
        seconds = time.perf_counter() - start
        running = domains_running(conn, names)
    finally:
        conn.close()
    if running < len(names):
        failures.insert(0, f"{len(names) - running} of {len(names)} VMs not running")
    return Run(tool="bare", action="boot", seconds=seconds, ok=not failures, failure="; ".join(failures))


def bare_teardown(uri: str, names: Sequence[str], diskdir: Path, threads: int = 8) -> Run:
    """Time destroy + undefine + overlay removal of every VM, ``threads`` at a time."""
    conn = connect(uri)
    try:
        def teardown(name: str) -> None:
            remove_domain(conn, name)
            (diskdir / f"{name}.qcow2").unlink(missing_ok=True)

        start = time.perf_counter()
        failures = _parallel(names, threads, teardown)
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    left = bare_check(uri, names, diskdir).leftovers
    if left:
        failures.append("left behind: " + ", ".join(left))
    return Run(tool="bare", action="teardown", seconds=seconds, ok=not failures, failure="; ".join(failures))


def bare_check(uri: str, names: Sequence[str], diskdir: Path) -> Check:
    """Running domains among ``names``; leftovers = defined domains and overlay files."""
    conn = connect(uri)
    try:
        running = domains_running(conn, names)
        left = [f"domain {n}" for n in domains_defined(conn, names)]
    finally:
        conn.close()
    left += [f"file {n}.qcow2" for n in names if (diskdir / f"{n}.qcow2").exists()]
    return Check(running=running, leftovers=tuple(left))


# --------------------------------------------------------------------------- smoke run


def _show(run: Run, check: Check | None = None) -> None:
    status = "ok" if run.ok else f"FAILED: {run.failure}"
    extra = f", running {check.running}" if check else ""
    if check and run.action != "boot":
        extra += f", leftovers {list(check.leftovers)}"
    notes = f" [{len(run.notes)} warning lines: {run.notes[0]}]" if run.ok and run.notes else ""
    print(f"{run.tool:14} {run.action:8} {run.seconds:6.2f} s  {status}{extra}{notes}", flush=True)


def smoke(prefix: str, count: int, rounds: int, venv: Path) -> None:
    """``rounds`` x (kcli serial, kcli threaded, bare) boot and teardown of ``count`` VMs, then medians."""
    kcli = ensure_kcli(venv)
    print(f"kcli {kcli_version(kcli)}; virt type {virt_type()}", flush=True)
    workdir = ROOT / prefix
    bridge = f"{prefix}br"[:15]
    base = make_base_image(workdir / "base.qcow2")
    create_bridge(bridge)
    env = setup_kcli(workdir, kcli, base, prefix=prefix, bridge=bridge)
    knames = [f"{prefix}-k{i}" for i in range(count)]
    bnames = [f"{prefix}-b{i}" for i in range(count)]
    runs: list[Run] = []
    try:
        for _ in range(rounds):
            for threaded in (False, True):
                runs.append(kcli_boot(env, knames, threaded=threaded))
                _show(runs[-1], kcli_check(env, knames))
                runs.append(kcli_delete(env, knames))
                _show(runs[-1], kcli_check(env, knames))
                reset_kcli(env, knames)  # after a lost VM, the next round must start clean
            runs.append(bare_boot(URI, env.pooldir / env.image, bnames, workdir / "bare", bridge, threads=4))
            _show(runs[-1], bare_check(URI, bnames, workdir / "bare"))
            runs.append(bare_teardown(URI, bnames, workdir / "bare", threads=8))
            _show(runs[-1], bare_check(URI, bnames, workdir / "bare"))
    finally:
        teardown_kcli(env, knames)
        bare_teardown(URI, bnames, workdir / "bare")
        delete_bridge(bridge)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmedians over {rounds} round(s), {count} VMs:")
    keys = sorted({(r.tool, r.action) for r in runs})
    for tool, action in keys:
        sel = [r for r in runs if (r.tool, r.action) == (tool, action)]
        fails = sum(not r.ok for r in sel)
        med = statistics.median(r.seconds for r in sel)
        print(f"  {tool:14} {action:8} {med:6.2f} s   failures {fails}/{len(sel)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="pbench", help="name prefix of domains, bridge, pool, workdir")
    parser.add_argument("--count", type=int, default=8, help="VMs per boot")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--venv", type=Path, default=ROOT / "kcli-venv", help="kcli's virtualenv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    smoke(args.prefix, args.count, args.rounds, args.venv)


if __name__ == "__main__":
    main(sys.argv[1:])
