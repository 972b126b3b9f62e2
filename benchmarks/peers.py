"""The peers pragma's libvirt driver is measured against: kcli and bare libvirt-python.

Both sides boot the same VM shape on the real daemon (``qemu:///system``):
1 vCPU, 256 MiB, ``type='kvm'`` (``qemu`` when libvirt's QEMU user cannot open
``/dev/kvm``), CPU model ``pentium3`` (``host-model`` aborts QEMU here), one
virtio disk that is a thin qcow2 overlay of a shared base, one NIC on a plain
Linux bridge. The base has no OS: its boot sector halts the guest (NIC boot ROMs off).

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
- The tight floor (:func:`tight_boot`, :func:`tight_teardown`): what a
  careful libvirt-python script does at best -- per VM a qcow2 overlay
  written in this process (:func:`pragma_kvm_rocks.qcow2.write_overlay`),
  ``defineXML`` and a start with the vCPUs paused, 8 threads over several
  connections (libvirtd serves at most 5 calls of one connection at once,
  ``max_client_requests``), then every VM resumed; teardown the same way
  (destroy, undefine, files removed). It also measures the CPU time one
  QEMU launch costs (QEMU while paused, libvirtd during the launches).
- The loose floor (:func:`bare_boot`, :func:`bare_teardown`), kept as an
  extra row: per VM a ``qemu-img create -b BASE`` process, ``defineXML``,
  ``create()`` (running at once) in a thread pool sharing one connection.

The base every tool boots (:func:`make_ext4_base`) is a raw disk with an MBR
and one ext4 partition holding ``/etc`` and ``/root``, so pragma's vc-out
injection does its real work (the e2fsprogs fast path); the guests have no OS:
the BIOS boots the disk's boot sector, which halts the CPU (an idle guest; the
NICs' boot ROMs are off, as their PXE code would keep the BIOS busy).

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
from collections.abc import Callable, Mapping, Sequence
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
    #: Named measurements of the run besides ``seconds`` (pragma's stage times, CPU per QEMU launch...).
    metrics: Mapping[str, float] = field(default_factory=dict)


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


#: Files of the base's root filesystem: the ones vc-out injection moves aside or writes next to.
GUEST_FILES = {
    "etc/hostname": b"bench\n",
    "etc/fstab": b"/dev/vda1 / ext4 defaults 0 1\n",
    "etc/udev/rules.d/70-persistent-net.rules": b"# eth0 of the machine the image was made on\n",
    "etc/sysconfig/network-scripts/ifcfg-eth0": b"DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n",
    "root/.profile": b"# root\n",
}
#: Where the root partition starts in the base disk (sector 2048).
PART_OFFSET = 1 << 20
#: The base's MBR boot code: ``cli; hlt; jmp $-1``. The BIOS boots it and the guest halts,
#: idle as a booted OS would be. (Without it -- or with a NIC boot ROM, whose PXE code keeps
#: the BIOS busy: the VMs here turn theirs off -- each guest spins at full speed in its
#: firmware, and 8 of them keep 2 cores busy during every measurement made while they run.)
HALT_BOOT_CODE = b"\xfa\xf4\xeb\xfd"


def has_halt_boot_code(path: Path) -> bool:
    """Whether the disk ``path`` boots into :data:`HALT_BOOT_CODE` (a base made before it does not)."""
    with open(path, "rb") as fh:
        return fh.read(len(HALT_BOOT_CODE)) == HALT_BOOT_CODE


def make_ext4_base(path: Path, size: int = GIB, data_mib: int = 16) -> Path:
    """A raw disk of ``size`` bytes: an MBR that halts the guest, one ext4 partition at 1 MiB holding :data:`GUEST_FILES`.

    ``data_mib`` MiB of pseudo-random data go into ``/data.bin``, so the base
    is not only metadata. Built without root: ``mkfs.ext4 -d`` into a file,
    ``sfdisk`` on the disk file, the filesystem's data extents copied in.
    """
    from pragma_kvm_rocks.sparse import data_extents

    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.parent / f".{path.name}.tree"
    fs = path.parent / f".{path.name}.fs"
    shutil.rmtree(work, ignore_errors=True)
    try:
        for name, data in GUEST_FILES.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        (work / "data.bin").write_bytes(os.urandom(data_mib << 20))
        with open(path, "wb") as fh:
            fh.truncate(size)
        _run(["sfdisk", "-q", path], input=f"label: dos\nstart={PART_OFFSET // 512}, type=83\n")
        with open(path, "r+b") as fh:  # boot code before the partition table (sfdisk signed the sector 0x55AA)
            fh.write(HALT_BOOT_CODE)
        with open(fs, "wb") as fh:
            fh.truncate(size - PART_OFFSET)
        _run(["mkfs.ext4", "-q", "-F", "-L", "bench-root", "-E", "root_owner=0:0", "-d", work, fs])
        with open(fs, "rb") as src, open(path, "r+b") as dst:
            for start, end in data_extents(src.fileno()):
                src.seek(start)
                dst.seek(PART_OFFSET + start)
                while start < end:
                    chunk = src.read(min(end - start, 8 << 20))
                    dst.write(chunk)
                    start += len(chunk)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        fs.unlink(missing_ok=True)
    return path


def qcow2_copy(source: Path, target: Path, source_format: str = "raw") -> Path:
    """``target``: the disk ``source`` converted to a standalone qcow2 (same guest bytes)."""
    _run(["qemu-img", "convert", "-q", "-f", source_format, "-O", "qcow2", source, target])
    return target


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
    pool, image = f"{prefix}-pool", f"{prefix}-base{base.suffix}"
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
      <rom enabled='no'/>
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
              kind: str | None = None, base_format: str = "qcow2") -> Run:
    """The loose floor: ``qemu-img create`` overlay + defineXML + create() per VM, ``threads`` sharing one connection."""
    kind = kind or virt_type()
    diskdir.mkdir(parents=True, exist_ok=True)
    diskdir.chmod(0o755)
    conn = connect(uri)
    try:
        def boot(name: str) -> None:
            disk = diskdir / f"{name}.qcow2"
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, disk])
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


# --------------------------------------------------------------------------- the tight floor

#: Threads of the tight floor, and how many of them share one libvirt connection
#: (libvirtd serves at most 5 calls of one client connection at once).
TIGHT_THREADS = 8
PER_CONNECTION = 4
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used; 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def libvirtd_pid() -> int | None:
    """The pid of the ``qemu:///system`` daemon (``/run/libvirtd.pid``), if readable."""
    return _pid_file(Path("/run/libvirtd.pid"))


def qemu_pid(name: str) -> int | None:
    """The pid of domain ``name``'s QEMU, from libvirt's pid file."""
    return _pid_file(Path("/run/libvirt/qemu") / f"{name}.pid")


@dataclass(frozen=True, kw_only=True)
class FloorVM:
    """One VM of the tight floor: name, domain XML (pragma's shape) and overlay path."""

    name: str
    xml: str
    disk: Path
    console_log: Path | None = None


def _connections(uri: str, threads: int) -> list[libvirt.virConnect]:
    return [connect(uri) for _ in range(max(1, -(-threads // PER_CONNECTION)))]


def _indexed(vms: Sequence[FloorVM], threads: int, work: Callable[[int, FloorVM], None]) -> list[str]:
    """``work(index, vm)`` for every VM over ``threads`` threads; the failures as ``name: error``."""
    failures: list[str] = []

    def guarded(item: tuple[int, FloorVM]) -> None:
        try:
            work(*item)
        except Exception as exc:  # noqa: BLE001 - reported, counted by the benchmark
            failures.append(f"{item[1].name}: {exc}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(guarded, list(enumerate(vms))))
    return failures


def tight_boot(uri: str, base: Path, base_format: str, vms: Sequence[FloorVM], *,
               threads: int = TIGHT_THREADS) -> Run:
    """The tight floor's boot: in-process overlay, defineXML, start paused (``threads`` threads over
    several connections), then resume every VM.

    The connections are opened inside the timed section (pragma opens its own
    too). Between the paused starts and the resumes the QEMU processes' CPU
    time is read -- a paused QEMU has spent only its launch -- and so is
    libvirtd's since the timed section began; that reading (a few ms) is
    left out of ``seconds``. ``metrics``: ``qemu_cpu`` and ``libvirtd_cpu``
    per launch, ``start`` (seconds until every VM was launched paused).
    """
    import libvirt
    from pragma_kvm_rocks.qcow2 import write_overlay

    virtual_size = base.stat().st_size if base_format == "raw" else \
        int(json.loads(_run(["qemu-img", "info", "--output=json", base]).stdout)["virtual-size"])
    for vm in vms:
        vm.disk.parent.mkdir(parents=True, exist_ok=True)
    daemon = libvirtd_pid()
    daemon_before = process_cpu(daemon) if daemon else 0.0
    domains: dict[str, libvirt.virDomain] = {}
    start = time.perf_counter()
    conns = _connections(uri, threads)
    try:
        def launch(index: int, vm: FloorVM) -> None:
            write_overlay(vm.disk, backing_file=base, backing_format=base_format, virtual_size=virtual_size)
            dom = conns[index % len(conns)].defineXML(vm.xml)
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            domains[vm.name] = dom

        failures = _indexed(vms, threads, launch)
        probe = time.perf_counter()
        launched = probe - start
        pids = [qemu_pid(vm.name) for vm in vms if vm.name in domains]
        qemu_cpu = [process_cpu(pid) for pid in pids if pid]
        daemon_cpu = (process_cpu(daemon) - daemon_before) if daemon else 0.0
        probe = time.perf_counter() - probe
        failures += _indexed([vm for vm in vms if vm.name in domains], threads,
                             lambda _i, vm: domains[vm.name].resume())
        seconds = time.perf_counter() - start - probe
    finally:
        for conn in conns:
            conn.close()
    check = tight_check(uri, vms)
    if check.running < len(vms):
        failures.insert(0, f"{len(vms) - check.running} of {len(vms)} VMs not running")
    metrics = {"start": launched}
    if qemu_cpu:
        metrics["qemu_cpu"] = sum(qemu_cpu) / len(qemu_cpu)
        metrics["libvirtd_cpu"] = daemon_cpu / len(qemu_cpu)
    return Run(tool="floor", action="boot", seconds=seconds, ok=not failures, failure="; ".join(failures),
               metrics=metrics)


def tight_teardown(uri: str, vms: Sequence[FloorVM], *, threads: int = TIGHT_THREADS) -> Run:
    """The tight floor's teardown: destroy + undefine + files removed, ``threads`` threads over several connections."""
    start = time.perf_counter()
    conns = _connections(uri, threads)
    try:
        def down(index: int, vm: FloorVM) -> None:
            remove_domain(conns[index % len(conns)], vm.name)
            vm.disk.unlink(missing_ok=True)
            if vm.console_log is not None:
                vm.console_log.unlink(missing_ok=True)

        failures = _indexed(vms, threads, down)
        seconds = time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()
    left = tight_check(uri, vms).leftovers
    if left:
        failures.append("left behind: " + ", ".join(left))
    return Run(tool="floor", action="teardown", seconds=seconds, ok=not failures, failure="; ".join(failures))


def tight_check(uri: str, vms: Sequence[FloorVM]) -> Check:
    """Running floor VMs; leftovers = defined domains, overlays and console logs."""
    conn = connect(uri)
    try:
        names = [vm.name for vm in vms]
        running = domains_running(conn, names)
        left = [f"domain {n}" for n in domains_defined(conn, names)]
    finally:
        conn.close()
    for vm in vms:
        left += [f"file {p.name}" for p in (vm.disk, vm.console_log) if p is not None and p.exists()]
    return Check(running=running, leftovers=tuple(left))


def reset_tight(uri: str, vms: Sequence[FloorVM]) -> None:
    """Remove whatever a failed floor round left (untimed)."""
    conn = connect(uri)
    try:
        for vm in vms:
            remove_domain(conn, vm.name)
    finally:
        conn.close()
    for vm in vms:
        for path in (vm.disk, vm.console_log):
            if path is not None:
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- machine load


@dataclass(frozen=True, kw_only=True)
class LoadSample:
    """The machine's load at one moment: load averages, CPU counters, the busiest processes over a second."""

    loadavg: tuple[float, float, float]
    busy: float  # CPU-seconds spent (all cores, not idle/iowait) since boot
    total: float  # CPU-seconds elapsed (all cores) since boot
    top: tuple[tuple[str, float], ...]  # (command, share of one CPU) over the sampling second


def _cpu_counters() -> tuple[float, float]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / _TICK, sum(fields) / _TICK


def _all_process_cpu() -> dict[int, tuple[str, float]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            found[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def load_sample(window: float = 1.0, top: int = 6) -> LoadSample:
    """Load averages now, and the processes that used the most CPU during the next ``window`` seconds."""
    loadavg = tuple(float(v) for v in Path("/proc/loadavg").read_text().split()[:3])
    before = _all_process_cpu()
    busy, total = _cpu_counters()
    time.sleep(window)
    after = _all_process_cpu()
    used: dict[str, float] = {}
    for pid, (comm, cpu) in after.items():
        delta = cpu - before.get(pid, (comm, 0.0))[1] if pid in before else 0.0
        if delta > 0:
            used[comm] = used.get(comm, 0.0) + delta / window
    ranked = tuple(sorted(used.items(), key=lambda item: -item[1])[:top])
    return LoadSample(loadavg=loadavg, busy=busy, total=total, top=ranked)  # type: ignore[arg-type]


def describe_load(sample: LoadSample) -> str:
    """One line: load averages and the busiest processes (share of one CPU)."""
    top = ", ".join(f"{comm} {share:.0%}" for comm, share in sample.top) or "nothing"
    return f"load average {sample.loadavg[0]:.2f} {sample.loadavg[1]:.2f} {sample.loadavg[2]:.2f}; busiest: {top}"


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
