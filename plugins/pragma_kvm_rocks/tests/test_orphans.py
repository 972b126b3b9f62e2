"""``pragma list orphans`` / ``remove orphans``: what crashed runs left, and nothing of a live cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ext4_cluster

from pragma_core.model import BootRequest
from pragma_core.testing import make_site
from pragma_core.testing.contract import boot
from pragma_kvm_rocks import commands
from pragma_kvm_rocks.claims import claim_name
from pragma_kvm_rocks.records import NodeRecord

libvirt = pytest.importorskip("libvirt")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


def _crash_leftovers(driver, cluster):  # noqa: ANN001, ANN202
    """A cluster whose record and claim are gone (cleaned by another head while a host was down): its
    domains, disks and console logs are left; and a reservation whose claim is gone: its record is left."""
    gone, _files = boot(driver, cluster, BootRequest(image="demo", cpus=2, key=KEY))
    driver.store.delete(gone.cluster)
    driver.claims.withdraw(gone.cluster, gone.state.allocation_id)
    for node in gone.nodes:
        driver.storage.diskdir.joinpath(f"{node.name}.console.log").write_text("boot\n")
        driver.storage.diskdir.joinpath(f"{node.name}.console.log.0").write_text("boot\n")  # virtlogd rotated it
    stale = driver.allocate(BootRequest(image="demo", cpus=1, key=KEY), cluster)
    driver.claims.withdraw(stale.cluster, stale.state.allocation_id)
    return gone, stale


def test_orphans_are_what_no_live_cluster_holds_and_remove_takes_only_them(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"h1": 8, "h2": 8}, extra="max_cpus_per_node = 1\n")
    cluster = ext4_cluster(tmp_path / "image", size=8 << 20)
    live, _files = boot(driver, cluster, BootRequest(image="demo", cpus=2, key=KEY))
    gone, stale = _crash_leftovers(driver, cluster)
    diskdir = driver.storage.diskdir
    (diskdir / "pragma-base-0123456789abcdef.img").write_bytes(b"x")  # a copy for boots long gone
    (diskdir / "someone-elses.qcow2").write_bytes(b"x")  # not pragma's: never listed

    found = {(o.kind, o.host, o.name) for o in driver.orphans()}
    expected = {("domain", n.host, n.name) for n in gone.nodes}
    expected |= {("disk", "", f"{n.name}.qcow2") for n in gone.nodes}
    expected |= {("disk", "", f"{n.name}.console.log") for n in gone.nodes}
    expected |= {("disk", "", f"{n.name}.console.log.0") for n in gone.nodes}
    expected |= {("record", "", f"{stale.cluster}.json"), ("base", "", "pragma-base-0123456789abcdef.img")}
    assert found == expected
    assert not any(live.cluster in name for _k, _h, name in found)

    removed, failures = driver.remove_orphans()
    assert failures == [] and {(o.kind, o.host, o.name) for o in removed} == expected
    assert driver.orphans() == []
    assert (diskdir / "someone-elses.qcow2").exists()
    (status,) = driver.list_clusters()
    assert status.name == live.cluster and {n.state for n in status.nodes} == {"running"}
    driver.rollback(live)


def test_a_domain_of_a_pragma_without_allocation_ids_is_never_an_orphan(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 8})
    record = NodeRecord(cluster="old", name="old", hostname="old", role="frontend", host="localhost", cpus=1,
                        memory_mib=64)
    import xml.etree.ElementTree as ET

    xml = ("<domain type='qemu'><name>old</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           f"<os><type>hvm</type></os><metadata>{ET.tostring(record.to_element(), encoding='unicode')}</metadata>"
           "</domain>")
    driver.hosts.conn("localhost").defineXML(xml)
    assert driver.orphans() == []
    assert [c.name for c in driver.list_clusters()] == ["old"]


def test_the_commands_print_a_table_json_and_what_they_removed(tmp_path: Path, make_driver) -> None:
    driver = make_driver({"localhost": 8})
    cluster = ext4_cluster(tmp_path / "image", size=8 << 20)
    _crash_leftovers(driver, cluster)
    registered: dict[str, object] = {}
    commands.pragma_cli_commands(lambda words, func, **kw: registered.__setitem__(words, (func, kw)))
    assert set(registered) == {"list orphans", "remove orphans"}

    out: list[str] = []
    ctx = SimpleNamespace(driver=driver, json=False, print=out.append, print_json=out.append)
    assert commands.list_orphans([], {}, ctx) == 0
    assert out[0].split() == ["KIND", "HOST", "NAME", "CLUSTER", "REASON"]
    assert out[-1].endswith("orphan(s); 'pragma remove orphans' removes them")
    rows = len(out) - 2
    ctx.json, out[:] = True, []
    commands.list_orphans([], {}, ctx)
    assert len(out[0]) == rows and {"kind", "host", "name", "cluster", "reason"} == set(out[0][0])
    ctx.json, out[:] = False, []
    assert commands.remove_orphans([], {}, ctx) == 0
    assert out[-1] == f"{rows} orphan(s) removed" and all(line.startswith("removed ") for line in out[:-1])
    out[:] = []
    commands.list_orphans([], {}, ctx)
    assert out == ["No orphans: everything pragma made belongs to a live cluster"]


# --------------------------------------------------------------------------- the pragma command


def _entry_point_dir(tmp_path: Path) -> str:
    """A directory to put on PYTHONPATH that registers the hook module, unless the installed plugin does."""
    installed = {ep.value for ep in metadata.entry_points(group="pragma.plugins")}
    if "pragma_kvm_rocks.commands" in installed:
        return ""
    info = tmp_path / "ep" / "pragma_kvm_rocks_commands-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pragma-kvm-rocks-commands\nVersion: 0.1.0\n"
                                   "Requires-Dist: pragma-core>=0.1,<0.2\n")
    (info / "entry_points.txt").write_text('[pragma.plugins]\nkvm_rocks = pragma_kvm_rocks.commands\n')
    return str(tmp_path / "ep")


def test_pragma_list_orphans_and_remove_orphans_on_a_site(tmp_path: Path) -> None:
    etc = make_site(tmp_path, driver="kvm_rocks")
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    metadata_xml = ('<pragma:node xmlns:pragma="https://pragma-grid.github.io/pragma/1" cluster="gone" name="gone"'
                    ' hostname="gone" role="frontend" host="localhost" cpus="1" memory-mib="64"'
                    ' allocation="8d5cbd7c-34c5-4a0f-9b43-1d2f1a3c2e10"/>')
    (hosts / "localhost.xml").write_text(textwrap.dedent(f"""\
        <node><cpu><mhz>2000</mhz><model>x86_64</model><active>4</active><nodes>1</nodes><sockets>1</sockets>
        <cores>4</cores><threads>1</threads></cpu><memory>8388608</memory>
        <domain type="test"><name>gone</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>
        <metadata>{metadata_xml}</metadata></domain></node>
        """))
    (etc / "kvm_rocks.conf").write_text(
        'public_ips = ["192.0.2.10"]\nvlans = [5]\n'
        f'libvirt_uri = "test://{hosts}/{{host}}.xml"\n'
        f'diskdir = "{tmp_path / "disks"}"\nstate_dir = "{tmp_path / "state"}"\n')
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "gone.qcow2").write_bytes(b"x")
    env = {**os.environ, "PRAGMA_PLUGINS_STRICT": "1"}
    extra = _entry_point_dir(tmp_path)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)

    def pragma(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pragma_core.cli", "--conf", str(etc), *args],
                              capture_output=True, text=True, env=env, timeout=120, check=False)

    listed = pragma("list", "orphans", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(o["kind"], o["name"]) for o in json.loads(listed.stdout)} == {("domain", "gone"), ("disk", "gone.qcow2")}
    removed = pragma("remove", "orphans")
    assert removed.returncode == 0, removed.stderr
    assert "removed disk gone.qcow2" in removed.stdout and removed.stdout.splitlines()[-1] == "2 orphan(s) removed"
    assert not (tmp_path / "disks" / "gone.qcow2").exists()
    assert claim_name("gone") not in removed.stdout


def test_while_a_host_does_not_answer_no_node_disk_in_the_shared_diskdir_is_an_orphan(tmp_path: Path) -> None:
    from conftest import base_conf, host_file, settings_from

    from pragma_kvm_rocks.driver import KvmRocksDriver
    from pragma_kvm_rocks.records import NAMESPACE

    hosts_dir = tmp_path / "hosts"
    hosts_dir.mkdir()
    for host in ("h1", "h2", "h3", "h4"):
        host_file(hosts_dir, host, cpus=8)
    conf = base_conf(tmp_path, hosts_dir=hosts_dir, containers=["h1", "h2", "h3", "h4"])
    driver = KvmRocksDriver(settings_from(conf, tmp_path / "kvm_rocks.conf"), site=None)
    diskdir = driver.settings.disk_directory
    diskdir.mkdir(parents=True)
    files = ["vc-old-compute-0.console.log", "vc-old-compute-0.qcow2"]
    for name in files:
        (diskdir / name).write_text("in use")
    # a node of a cluster booted before allocation ids (no claim): live only through its domain, on h4
    meta = (f"<p:node xmlns:p='{NAMESPACE}' cluster='vc-old' name='vc-old-compute-0' hostname='c' role='compute'"
            f" host='h4' cpus='1' memory-mib='512' disk='{diskdir}/vc-old-compute-0.qcow2'/>")
    driver.hosts.conn("h4").defineXML(f"<domain type='test'><name>vc-old-compute-0</name><memory>524288</memory>"
                                      f"<vcpu>1</vcpu><os><type>hvm</type></os><metadata>{meta}</metadata></domain>")
    assert [o.name for o in driver.orphans()] == []
    driver.hosts.mark_down("h4", "h4 does not answer (simulated)")
    found, failures = driver.remove_orphans()
    assert [o for o in found if o.kind == "disk"] == [] and failures == []
    assert sorted(p.name for p in diskdir.iterdir()) == files, "its disk stays while its host cannot be asked"
