"""Tests' handle on ``scripts/lab-hosts``: a lab of libvirt hosts on this machine (see the plugin README).

:func:`lab_up` runs the real script (``up N --json``) and returns a :class:`Lab`
describing the hosts (namespace, address, ``qemu+tcp://`` URI, state
directory) and the kvm_rocks.conf settings that use them; :meth:`Lab.down`
removes everything. The ``lab_hosts`` fixture hands out labs with unique
names and subnets and downs them whatever the test did::

    from labhosts import lab_hosts  # noqa: F401 (a fixture)

    def test_x(lab_hosts):
        lab = lab_hosts(3)
        conn = lab.connect(lab.hosts[0])

Needs root, iproute2, util-linux (``unshare``, ``nsenter``), libvirtd and
virtlogd (Debian ``libvirt-daemon``), ``virsh`` and libvirt-python: without
them :func:`require_lab` skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "lab-hosts"
#: A generous bound that detects a hang of ``up`` / ``down`` (they take seconds).
SCRIPT_TIMEOUT = 180


@dataclass(frozen=True)
class LabHost:
    """One lab host as ``lab-hosts --json`` describes it."""

    index: int
    name: str
    netns: str
    ip: str
    uri: str
    state_dir: Path
    socket: Path

    def pids(self) -> dict[str, list[int]]:
        """Processes in the host's network namespace by command name (``libvirtd``, ``qemu-system-x86``...)."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False)
        found: dict[str, list[int]] = {}
        for pid in (int(p) for p in out.stdout.split() if p.isdigit()):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            found.setdefault(comm, []).append(pid)
        return found

    def daemon_pid(self, daemon: str = "libvirtd") -> int:
        """The PID of the host's ``libvirtd`` (or ``virtlogd``); fails the test when it does not run."""
        pids = self.pids().get(daemon, [])
        assert len(pids) == 1, f"{self.name}: expected one {daemon}, found {pids}"
        return pids[0]

    def kill_daemon(self, daemon: str = "libvirtd", sig: int = signal.SIGKILL) -> None:
        """Fault injection: kill the host's daemon (its QEMUs keep running); ``lab.up`` restarts it."""
        pid = self.daemon_pid(daemon)
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill_all(self) -> None:
        """Fault injection: the host dies -- every process of its namespace (daemons, QEMUs) is killed.

        ``lab.up`` starts its daemons again; its domains' definitions survive (a host's disk does).
        """
        for _ in range(50):
            pids = [pid for group in self.pids().values() for pid in group]
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: processes survive SIGKILL: {self.pids()}")

    def links(self, master: str | None = None) -> list[dict[str, Any]]:
        """``ip -j link`` inside the host (only the ports of bridge ``master`` when given)."""
        argv = ["ip", "-n", self.netns, "-j", "link", "show", *(("master", master) if master else ())]
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout or "[]")


@dataclass
class Lab:
    """A running lab: what ``lab-hosts up --json`` printed."""

    name: str
    dir: Path
    subnet: str
    head_ip: str
    bridge: str
    shared_dir: Path
    #: The head's own directory (repository, staging, state_dir): the hosts do not see it.
    head_dir: Path
    vlans: list[int]
    hosts: list[LabHost]
    conf: dict[str, Any]
    conf_lines: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lab:
        hosts = [
            LabHost(index=h["index"], name=h["name"], netns=h["netns"], ip=h["ip"], uri=h["uri"],
                    state_dir=Path(h["state_dir"]), socket=Path(h["socket"]))
            for h in data["hosts"]
        ]
        return cls(name=data["name"], dir=Path(data["dir"]), subnet=data["subnet"], head_ip=data["head_ip"],
                   bridge=data["bridge"], shared_dir=Path(data["shared_dir"]), head_dir=Path(data["head_dir"]),
                   vlans=list(data["vlans"]),
                   hosts=hosts, conf=data["conf"], conf_lines=data["conf_lines"])

    def up(self, count: int) -> Lab:
        """Run ``up`` again (grow, shrink, repair); returns the new description."""
        return lab_up(count, name=self.name)

    def down(self) -> subprocess.CompletedProcess[str]:
        return lab_script("down", "--name", self.name)

    def status(self) -> tuple[int, dict[str, Any]]:
        """``status --json``: its exit status (0 = every host answers) and what it printed."""
        proc = lab_script("status", "--name", self.name, "--json", check=False)
        return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {})

    def connect(self, host: LabHost) -> Any:
        """A libvirt connection to ``host`` over its ``qemu+tcp://`` URI (the caller closes it)."""
        import libvirt

        return libvirt.open(host.uri)

    def kvm_rocks_conf(self, extra: str = "") -> str:
        """A complete kvm_rocks.conf: the lab's lines, then ``extra`` (later keys win)."""
        return self.conf_lines + extra


def lab_script(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/lab-hosts ARGS``; with ``check`` a failure fails the test with its stderr."""
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"lab-hosts {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def lab_up(count: int, *, name: str, vlans: str | None = None) -> Lab:
    """``lab-hosts up COUNT --name NAME --json``, parsed."""
    args = ["up", str(count), "--name", name, "--json", *(("--vlans", vlans) if vlans else ())]
    return Lab.from_json(json.loads(lab_script(*args).stdout))


def unique_name() -> str:
    """A lab name no other test run on this machine uses (``t`` + 5 hex digits)."""
    return "t" + uuid.uuid4().hex[:5]


def require_lab() -> None:
    """Skip unless this machine can run a lab: root, the tools, libvirt-python."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, mounts, daemons)")
    missing = [t for t in ("ip", "bridge", "unshare", "nsenter", "mount", "libvirtd", "virtlogd", "virsh")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"the lab needs {', '.join(missing)} (Debian iproute2, util-linux, libvirt-daemon,"
                    " libvirt-clients; scripts/setup)")
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)


@pytest.fixture(scope="module")
def lab_hosts() -> Iterator[Callable[..., Lab]]:
    """Factory ``lab_hosts(count, vlans=None) -> Lab``; every lab it made is downed at the end of the module."""
    require_lab()
    names: list[str] = []

    def make(count: int, *, vlans: str | None = None) -> Lab:
        name = unique_name()
        names.append(name)
        return lab_up(count, name=name, vlans=vlans)

    try:
        yield make
    finally:
        failed = [proc for proc in (lab_script("down", "--name", name, check=False) for name in names)
                  if proc.returncode != 0]
        if failed:
            pytest.fail("lab-hosts down failed: " + "; ".join(proc.stderr.strip() for proc in failed))
