"""The multi-host lab (``scripts/lab-hosts``): separate daemons, a real transport, real guests, nothing left.

Each lab host is a network + mount + UTS namespace running its own libvirtd
and virtlogd, reached from this (head) namespace at ``qemu+tcp://<ip>/system``.
Needs root, iproute2, util-linux, libvirt-daemon and libvirt-python
(``scripts/setup``); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from labhosts import Lab, LabHost, lab_hosts, lab_script, lab_up, require_lab, unique_name  # noqa: F401

from pragma_kvm_rocks.hosts import local_kvm_usable

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab(lab_hosts) -> Lab:  # noqa: F811 - the fixture imported above
    """Three hosts shared by the read-mostly tests of this module."""
    return lab_hosts(3)


def _guest_xml(name: str, *, bridges: list[str]) -> str:
    """A no-OS guest (SeaBIOS finds nothing to boot and waits): enough to prove QEMU runs on a host."""
    kvm = local_kvm_usable()
    cpu = "<cpu mode='custom' match='exact'><model fallback='forbid'>pentium3</model></cpu>" if kvm else ""
    nics = "".join(f"<interface type='bridge'><source bridge='{b}'/><model type='virtio'/></interface>"
                   for b in bridges)
    return (f"<domain type='{'kvm' if kvm else 'qemu'}'><name>{name}</name><memory unit='MiB'>32</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}"
            f"<devices>{nics}<serial type='pty'/></devices></domain>")


def _mount_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def _listening(pid: int, ip: str, port: int) -> bool:
    """Whether a TCP socket listens on ``ip:port`` in the network namespace of process ``pid``."""
    wanted = f"{int.from_bytes(bytes(map(int, ip.split('.'))), 'little'):08X}:{port:04X}"
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A = LISTEN
            return True
    return False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _ping(host: LabHost, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", host.netns, "busybox", "ping", "-c", "1", "-W", "2", address],
                          capture_output=True, check=False).returncode == 0


def test_each_host_runs_its_own_libvirtd_with_its_own_state(lab: Lab) -> None:
    import libvirt

    conns = [lab.connect(host) for host in lab.hosts]
    name = f"lab-only-on-h1-{uuid.uuid4().hex[:6]}"
    try:
        assert [c.getHostname() for c in conns] == [h.name for h in lab.hosts]
        host_uuids = {SafeET.fromstring(c.getCapabilities()).findtext("host/uuid") for c in conns}
        assert len(host_uuids) == 3
        pids = [host.daemon_pid("libvirtd") for host in lab.hosts]
        namespaces = {_mount_ns(pid) for pid in pids}
        assert len(namespaces) == 3 and _mount_ns(os.getpid()) not in namespaces

        conns[0].defineXML(_guest_xml(name, bridges=[]))
        try:
            assert conns[0].lookupByName(name).name() == name
            for other in conns[1:]:
                with pytest.raises(libvirt.libvirtError) as missing:
                    other.lookupByName(name)
                assert missing.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
            # the definition is in host 1's own /etc/libvirt, nowhere else
            assert (lab.hosts[0].state_dir / "etc" / "qemu" / f"{name}.xml").is_file()
            assert not any((h.state_dir / "etc" / "qemu" / f"{name}.xml").exists() for h in lab.hosts[1:])
            assert not Path("/etc/libvirt/qemu", f"{name}.xml").exists()
        finally:
            conns[0].lookupByName(name).undefine()
    finally:
        for conn in conns:
            conn.close()


def test_hosts_are_reached_over_tcp_at_their_own_address_not_a_socket_of_the_head(lab: Lab) -> None:
    head_addresses = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True,
                                               check=True).stdout)
    mine = {a["local"] for link in head_addresses for a in link.get("addr_info", [])}
    assert lab.head_ip in mine
    for host in lab.hosts:
        assert host.uri == f"qemu+tcp://{host.ip}/system"
        assert host.ip not in mine, "the host's address belongs to its own namespace, not to the head"
        pid = host.daemon_pid("libvirtd")
        assert _listening(pid, host.ip, 16509), "libvirtd listens on the host's address in the host's namespace"
        assert not _listening(os.getpid(), host.ip, 16509)
        conn = lab.connect(host)
        try:
            assert conn.getURI() == host.uri
        finally:
            conn.close()
    assert lab.conf["libvirt_uri"] == "qemu+tcp://{host}/system"
    assert lab.conf["available_containers"] == [h.ip for h in lab.hosts]
    assert 'libvirt_uri = "qemu+tcp://{host}/system"' in lab.conf_lines
    assert f'diskdir = "{lab.shared_dir}"' in lab.conf_lines


def _host_sees(host: LabHost, path: Path) -> bool:
    """Whether ``path`` exists in the mount namespace of ``host``'s libvirtd (what its QEMUs see)."""
    return subprocess.run(["nsenter", "--target", str(host.daemon_pid()), "--mount", "--", "ls", "-d", str(path)],
                          capture_output=True, check=False).returncode == 0


def test_hosts_share_only_the_shared_disk_directory_with_the_head(lab: Lab) -> None:
    marker = f"seen-{uuid.uuid4().hex[:6]}"
    shared, head = lab.shared_dir / marker, lab.head_dir / marker
    shared.write_text("shared\n")
    head.write_text("head only\n")
    try:
        for host in lab.hosts:
            assert _host_sees(host, shared), "the shared diskdir is at the same path on every host"
            assert not _host_sees(host, head), "the head's own directory is not on the hosts"
            others = [h for h in lab.hosts if h is not host]
            assert not any(_host_sees(host, h.state_dir / "etc" / "libvirtd.conf") for h in others)
            assert _host_sees(host, Path("/etc/libvirt/libvirtd.conf"))
    finally:
        shared.unlink()
        head.unlink()


def test_a_guest_starts_on_a_lab_host_with_its_qemu_and_taps_inside_that_host(lab: Lab) -> None:
    host = lab.hosts[1]
    vlan_bridge = f"brvlan{lab.vlans[0]}"
    conn = lab.connect(host)
    name = f"lab-guest-{uuid.uuid4().hex[:6]}"
    dom = conn.defineXML(_guest_xml(name, bridges=["br0", vlan_bridge]))
    try:
        dom.create()
        assert dom.isActive()
        qemus = host.pids().get("qemu-system-x86", [])
        assert len(qemus) == 1, "the guest's QEMU runs in the host's network namespace"
        # started by the host's libvirtd, whose /run is the host's own
        pidfile = host.state_dir / "run" / "libvirt" / "qemu" / f"{name}.pid"
        assert pidfile.read_text().strip() == str(qemus[0])
        assert not lab.hosts[0].pids().get("qemu-system-x86")
        taps = [t.get("dev") for t in SafeET.fromstring(dom.XMLDesc()).iterfind("devices/interface/target")]
        assert len(taps) == 2
        assert [link["ifname"] for link in host.links("br0")] == ["eth0", taps[0]]
        assert [link["ifname"] for link in host.links(vlan_bridge)] == [f"vx{lab.vlans[0]}", taps[1]]
        # QEMU's log is written by the host's own virtlogd into the host's /var/log/libvirt
        assert (host.state_dir / "log" / "qemu" / f"{name}.log").is_file()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


def test_a_private_vlan_spans_hosts_and_vlans_stay_apart(lab: Lab) -> None:
    """Each host's ``brvlan<V>`` reaches the other hosts' ``brvlan<V>`` (VXLAN VNI V), never another VLAN's."""
    first, second = lab.vlans[0], lab.vlans[1]
    plan = [(lab.hosts[0], f"brvlan{first}", "192.168.251.1"), (lab.hosts[2], f"brvlan{first}", "192.168.251.3"),
            (lab.hosts[1], f"brvlan{second}", "192.168.251.2")]
    try:
        for host, bridge, address in plan:
            # answer ARP only on the interface holding the address (a guest would be a machine of its own)
            subprocess.run(["ip", "netns", "exec", host.netns, "busybox", "sysctl", "-w",
                            "net.ipv4.conf.all.arp_ignore=1"], capture_output=True, check=True)
            subprocess.run(["ip", "-n", host.netns, "addr", "add", f"{address}/24", "dev", bridge], check=True)
        assert _ping(lab.hosts[0], "192.168.251.3"), f"VLAN {first} joins host 1 and host 3"
        assert not _ping(lab.hosts[0], "192.168.251.2"), f"VLAN {second} of host 2 is not on VLAN {first}"
    finally:
        for host, bridge, address in plan:
            subprocess.run(["ip", "-n", host.netns, "addr", "del", f"{address}/24", "dev", bridge], check=False)


def test_up_is_idempotent_grows_shrinks_and_restarts_a_dead_daemon(lab_hosts) -> None:  # noqa: F811
    lab = lab_hosts(2)
    again = lab.up(2)
    assert again.conf == lab.conf and again.subnet == lab.subnet
    old_pid = lab.hosts[1].daemon_pid("libvirtd")
    lab.hosts[1].kill_daemon("libvirtd")
    code, status = lab.status()
    assert code == 1
    assert [row["answers"] for row in status["status"]] == [True, False]

    grown = lab.up(3)
    assert [h.ip for h in grown.hosts[:2]] == [h.ip for h in lab.hosts]
    new_pid = grown.hosts[1].daemon_pid("libvirtd")
    assert new_pid != old_pid
    # the restarted daemon joined the host's namespaces, next to the virtlogd that survived
    assert _mount_ns(new_pid) == _mount_ns(grown.hosts[1].daemon_pid("virtlogd"))
    assert lab.status()[0] == 0
    assert len(grown.conf["available_containers"]) == 3

    shrunk = lab.up(2)
    assert len(shrunk.hosts) == 2
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert grown.hosts[2].netns not in names


def test_down_leaves_no_namespace_process_link_directory_or_record(lab_hosts) -> None:  # noqa: F811
    lab = lab_hosts(2)
    conn = lab.connect(lab.hosts[0])
    dom = conn.defineXML(_guest_xml(f"lab-left-running-{uuid.uuid4().hex[:6]}", bridges=["br0"]))
    dom.create()
    conn.close()
    pids = [pid for host in lab.hosts for found in host.pids().values() for pid in found]
    assert len(pids) == 5  # 2 x (libvirtd, virtlogd) + the running guest's QEMU

    started = time.monotonic()
    assert "removed" in lab.down().stderr
    assert time.monotonic() - started < 120, "down hung"

    assert not [p for p in pids if _alive(p)]
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab.name not in spaces
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    assert not [link["ifname"] for link in links if link["ifname"].startswith(lab.name)]
    assert not lab.dir.exists()
    assert lab_script("status", "--name", lab.name, check=False).returncode == 3
    assert "was not up" in lab.down().stderr, "a second down is harmless"


def test_bad_arguments_are_one_line_errors_that_make_nothing() -> None:
    require_lab()
    name = unique_name()
    for args, message in [
        (["up", "0", "--name", name], "between 1 and 40 hosts"),
        (["up", "1", "--name", name, "--subnet", "10.250.0.0/25"], "needs at least a /24"),
        (["up", "1", "--name", name, "--vlans", "5000"], "ids 1-4094"),
        (["up", "1", "--name", "Bad/Name"], "--name"),
    ]:
        proc = lab_script(*args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert name not in spaces and not Path("/var/lib/pragma-lab", name).exists()
