"""End to end: the ``pragma`` command boots, lists, shuts down and cleans a 1+3 cluster on the simulator."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cloudstack_simulator import CloudStackSimulator
from cloudstack_testkit import write_conf
from pragma_core.testing import make_cluster, make_site

pytestmark = pytest.mark.e2e

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 e2e@pragma\n"


def pragma(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("pragma")  # this interpreter's (.venv/bin/pragma), never PATH's
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pragma_core.cli"]
    env = {**os.environ, "PRAGMA_CONF_DIR": ""}
    return subprocess.run([*command, "--conf", str(conf), *args], check=False, capture_output=True, text=True, timeout=60, env=env)


def test_boot_list_shutdown_clean_through_the_pragma_command(tmp_path: Path, sim: CloudStackSimulator) -> None:
    repo = tmp_path / "repo"
    make_cluster(repo / "demo", name="demo", size=4096)
    (repo / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    etc = make_site(tmp_path / "site", driver="cloudstack", repository=repo)
    write_conf(etc, sim, service_offering="Small Instance", max_parallel=3)
    key = tmp_path / "id.pub"
    key.write_text(KEY)

    booted = pragma(etc, "boot", "demo", "3", f"key={key}")
    assert booted.returncode == 0, booted.stderr
    assert "Cluster vc-1 booted" in booted.stdout
    names = sorted(vm["name"] for vm in sim.vms.values())
    assert names == ["vc-1", "vc-1-compute-0", "vc-1-compute-1", "vc-1-compute-2"]
    assert {vm["state"] for vm in sim.vms.values()} == {"Running"}
    for vm in sim.vms.values():
        vcout = base64.b64decode(sim.userdata[vm["id"]])
        assert vcout.startswith(b"<?xml") and b"ssh-ed25519" in vcout

    listed = pragma(etc, "list", "cluster")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert any("vc-1" in row and "Running" in row for row in rows)
    assert sum("vc-1-compute-" in row for row in rows) == 3

    shut = pragma(etc, "shutdown", "vc-1")
    assert shut.returncode == 0, shut.stderr
    assert {vm["state"] for vm in sim.vms.values()} == {"Stopped"}

    cleaned = pragma(etc, "clean", "vc-1")
    assert cleaned.returncode == 0, cleaned.stderr

    assert sim.vms == {}
    assert [n["name"] for n in sim.networks.values()] == ["public"]
    assert sim.tags == [] and sim.egress_rules == {} and sim.userdata == {}
    assert sim.rejected == []
    after = pragma(etc, "list", "cluster")
    assert after.returncode == 0 and "vc-1" not in after.stdout


def test_clean_of_a_running_cluster_is_one_error_line(tmp_path: Path, sim: CloudStackSimulator) -> None:
    repo = tmp_path / "repo"
    make_cluster(repo / "demo", name="demo", size=4096)
    (repo / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    etc = make_site(tmp_path / "site", driver="cloudstack", repository=repo)
    write_conf(etc, sim, service_offering="Small Instance")
    key = tmp_path / "id.pub"
    key.write_text(KEY)
    assert pragma(etc, "boot", "demo", "1", f"key={key}").returncode == 0
    refused = pragma(etc, "clean", "vc-1")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: cluster vc-1 still has running nodes: vc-1 (Running), vc-1-compute-0 (Running); run 'pragma shutdown vc-1' first"
    )
    assert sim.secret_key not in refused.stderr + refused.stdout


def test_boot_needs_no_local_image_files_the_templates_are_in_cloudstack(tmp_path: Path, sim: CloudStackSimulator) -> None:
    repo = tmp_path / "repo"
    make_cluster(repo / "demo", name="demo", size=4096)
    images = sorted((repo / "demo").glob("*.img"))
    assert len(images) == 2
    for image in images:
        image.unlink()  # the repository holds only the description: nothing to stage
    (repo / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    etc = make_site(tmp_path / "site", driver="cloudstack", repository=repo)
    write_conf(etc, sim, service_offering="Small Instance")
    key = tmp_path / "id.pub"
    key.write_text(KEY)

    booted = pragma(etc, "boot", "demo", "1", f"key={key}")
    assert booted.returncode == 0, booted.stderr
    assert "Cluster vc-1 booted" in booted.stdout
    assert sorted(vm["name"] for vm in sim.vms.values()) == ["vc-1", "vc-1-compute-0"]
    assert sorted(p.name for p in (repo / "demo").iterdir()) == ["demo.xml"]  # nothing staged, no stamp, no lock
