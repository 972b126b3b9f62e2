"""The driver's flows against the simulator: allocate, deploy, list, shutdown, clean, rollback."""

from __future__ import annotations

import base64
import ipaddress
import time
from pathlib import Path

import attrs
import pytest
from cloudstack_simulator import CloudStackSimulator
from cloudstack_testkit import make_driver, write_conf
from pragma_core.errors import CapacityError, ConfigError, DriverError, NotFoundError
from pragma_core.model import BootRequest, MemorySpec, ResolvedCluster, StagedCluster
from pragma_core.testing import boot, make_site

from pragma_cloudstack.driver import CloudStackDriver, template_name
from pragma_cloudstack.state import CloudStackState

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


def request(cpus: int, **kw: object) -> BootRequest:
    return BootRequest(image="demo", cpus=cpus, key=KEY, **kw)  # type: ignore[arg-type]


def leftovers(sim: CloudStackSimulator) -> tuple[list[str], list[str]]:
    """VM names and non-public network names the simulator still holds."""
    with sim.lock:
        return sorted(vm["name"] for vm in sim.vms.values()), sorted(n["name"] for n in sim.networks.values() if n["name"] != "public")


def by_name(sim: CloudStackSimulator) -> dict[str, dict]:
    return {vm["name"]: vm for vm in sim.vms.values()}


def test_template_is_the_basename_of_the_source_up_to_the_first_dot() -> None:
    assert template_name("demo-frontend.img") == "demo-frontend"
    assert template_name("/abs/dir/rocks-sge.vda.raw.gz") == "rocks-sge"
    assert template_name("plain") == "plain"


def test_allocate_makes_an_isolated_network_and_stopped_vms(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation = driver.allocate(request(3), cluster)
    assert allocation.cluster == "vc-1"
    assert [n.name for n in allocation.nodes] == ["vc-1", "vc-1-compute-0", "vc-1-compute-1", "vc-1-compute-2"]
    assert [n.hostname for n in allocation.computes] == ["compute-0", "compute-1", "compute-2"]
    (network,) = sim.networks_named("vc-1")
    assert network["type"] == "Isolated"
    assert {(t["key"], t["value"]) for t in network["tags"]} >= {("pragma-cluster", "vc-1")}
    (egress,) = sim.egress_rules.values()
    assert (egress["networkid"], egress["protocol"], egress["cidrlist"]) == (network["id"], "all", network["cidr"])
    deploys = [p for _, p in sim.calls("deployVirtualMachine")]
    assert all(p["startvm"] == "false" for p in deploys)
    templates = {p["name"]: sim.templates[p["templateid"]]["name"] for p in deploys}
    assert templates == {"vc-1": "demo-frontend", **{f"vc-1-compute-{i}": "demo-compute" for i in range(3)}}
    vms = by_name(sim)
    assert {vm["state"] for vm in vms.values()} == {"Stopped"}
    for node in allocation.nodes:
        vm = vms[node.name]
        assert {(t["key"], t["value"]) for t in vm["tags"]} == {("pragma-cluster", "vc-1"), ("pragma-role", node.role)}
        macs = {nic["macaddress"] for nic in vm["nic"]}
        assert {nic.mac for nic in node.interfaces} == macs


def test_allocation_reads_nics_gateways_and_dns(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation = driver.allocate(request(2), cluster)
    fe_vm = by_name(sim)["vc-1"]
    private, public = fe_vm["nic"]
    assert allocation.frontend.interface("private").ip == ipaddress.IPv4Address(private["ipaddress"])  # type: ignore[union-attr]
    assert allocation.frontend.interface("public").ip == ipaddress.IPv4Address(public["ipaddress"])  # type: ignore[union-attr]
    assert allocation.frontend.interface("public").mac == public["macaddress"]  # type: ignore[union-attr]
    assert allocation.network("private").subnet == ipaddress.IPv4Network("10.1.1.0/24")
    assert allocation.network("private").subnet.netmask == ipaddress.IPv4Address(private["netmask"])
    assert allocation.network("public").gateway == ipaddress.IPv4Address("203.0.113.1")
    assert allocation.frontend.gateway == ipaddress.IPv4Address("203.0.113.1")
    assert {c.gateway for c in allocation.computes} == {ipaddress.IPv4Address(private["ipaddress"])}
    assert allocation.dns == ("8.8.8.8", "8.8.4.4")  # the zone's, as none is configured
    assert allocation.fqdn == "vc-1.example.org"
    assert allocation.key == KEY
    assert allocation.public_ip == ipaddress.IPv4Address(public["ipaddress"])


def test_dns_and_prefix_come_from_the_config(tmp_path: Path, sim: CloudStackSimulator, cluster: StagedCluster) -> None:
    etc = make_site(tmp_path / "s2", driver="cloudstack")
    write_conf(etc, sim, dns=["1.1.1.1"], vm_prefix="lab-", service_offering="Small Instance")
    allocation = make_driver(etc).allocate(request(1), cluster)
    assert allocation.dns == ("1.1.1.1",)
    assert allocation.cluster == "lab-1"


def test_service_offering_is_chosen_by_cpus_and_memory_when_not_configured(tmp_path: Path, sim: CloudStackSimulator, cluster: StagedCluster) -> None:
    etc = make_site(tmp_path / "s2", driver="cloudstack")
    write_conf(etc, sim)
    allocation = make_driver(etc).allocate(request(4, memory=MemorySpec(frontend_mib=256, compute_mib=1024)), cluster)
    offerings = {p["name"]: sim.service_offerings[p["serviceofferingid"]]["name"] for _, p in sim.calls("deployVirtualMachine")}
    assert offerings == {"vc-1": "Small Instance", "vc-1-compute-0": "Medium Instance", "vc-1-compute-1": "Medium Instance"}
    assert [n.cpus for n in allocation.computes] == [2, 2]
    assert [n.memory_mib for n in allocation.computes] == [2048, 2048]


def test_configured_network_offering_is_honoured(tmp_path: Path, sim: CloudStackSimulator, cluster: StagedCluster) -> None:
    etc = make_site(tmp_path / "s2", driver="cloudstack")
    write_conf(etc, sim, networkoffering="IsolatedWithSourceNatAndEgressOpen", service_offering="Small Instance")
    make_driver(etc).allocate(request(1), cluster)
    (network,) = sim.networks_named("vc-1")
    assert network["networkofferingname"] == "IsolatedWithSourceNatAndEgressOpen"
    assert sim.egress_rules == {}  # this offering lets traffic out already


def test_unknown_network_offering_is_a_config_error(tmp_path: Path, sim: CloudStackSimulator, cluster: StagedCluster) -> None:
    etc = make_site(tmp_path / "s2", driver="cloudstack")
    write_conf(etc, sim, networkoffering="DisabledOffering")
    with pytest.raises(ConfigError, match=r"cloudstack.conf: networkoffering: no enabled isolated SourceNat network offering 'DisabledOffering'"):
        make_driver(etc).allocate(request(1), cluster)
    assert leftovers(sim) == ([], [])


def test_missing_template_fails_before_anything_is_made(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    description = attrs.evolve(cluster.description, compute=attrs.evolve(cluster.description.compute, disk=attrs.evolve(cluster.description.compute.disk, source="nope.vda.img")))  # type: ignore[union-attr]
    with pytest.raises(DriverError, match=r"^template 'nope' is not in CloudStack \(templatefilter=community\)$"):
        driver.allocate(request(1), attrs.evolve(cluster, description=description))
    assert sim.calls("createNetwork") == []


def test_request_over_the_cpu_limit_is_a_capacity_error_before_anything_is_made(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    sim.cpu_limit = 3
    with pytest.raises(CapacityError, match="the cluster needs 4 CPUs; the CloudStack account has 3 left"):
        driver.allocate(request(3), cluster)
    assert sim.calls("createNetwork") == []


def test_deploy_hands_each_node_its_vcout_by_post_and_starts_frontend_first(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    states_at_compute_start: list[str] = []
    original = sim.cmd_startVirtualMachine

    def spy(p: dict[str, str], method: str) -> dict:
        vm = sim.vms[p["id"]]
        if vm["name"] != "vc-1":
            states_at_compute_start.append(by_name(sim)["vc-1"]["state"])
        return original(p, method)

    sim.cmd_startVirtualMachine = spy  # type: ignore[method-assign]
    allocation, files = boot(driver, cluster, request(3))
    vms = by_name(sim)
    for node in allocation.nodes:
        assert base64.b64decode(sim.userdata[vms[node.name]["id"]]) == files[node.name]
        assert vms[node.name]["state"] == "Running"
    assert {m for m, _ in sim.calls("updateVirtualMachine")} == {"POST"}
    assert states_at_compute_start == ["Running"] * 3


def test_deploy_starts_computes_in_parallel_up_to_max_parallel(tmp_path: Path, sim: CloudStackSimulator, cluster: StagedCluster) -> None:
    etc = make_site(tmp_path / "s2", driver="cloudstack")
    write_conf(etc, sim, max_parallel=3, service_offering="Small Instance")
    driver = make_driver(etc)
    allocation = driver.allocate(request(8), cluster)
    sim.job_latency = 0.05
    pending: list[int] = []
    original = sim.cmd_startVirtualMachine

    def spy(p: dict[str, str], method: str) -> dict:
        pending.append(sum(1 for j in sim.jobs.values() if j.status == 0 and j.cmd.endswith("StartVMCmd")))
        return original(p, method)

    sim.cmd_startVirtualMachine = spy  # type: ignore[method-assign]
    from pragma_core.vcout import render

    driver.deploy(allocation, cluster, render(allocation))
    assert len(pending) == 9
    assert 1 <= max(pending) <= 2  # started side by side, never more than three at once
    assert pending[0] == 0


def test_oversized_vcout_is_refused_with_a_clear_error_and_nothing_started(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation = driver.allocate(request(1), cluster)
    files = {node.name: b"<?xml version='1.0'?><vc/>" for node in allocation.nodes}
    files["vc-1-compute-0"] = b"x" * 30000
    with pytest.raises(DriverError, match=r"^vc-out.xml of vc-1-compute-0 is 30000 bytes \(40000 in base64\), over CloudStack's userdata limit of 32768 base64 bytes$"):
        driver.deploy(allocation, cluster, files)
    assert sim.calls("updateVirtualMachine") == [] and sim.calls("startVirtualMachine") == []


def test_list_groups_by_exact_cluster_tag_never_by_substring(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    first, _ = boot(driver, cluster, request(1))
    # A cluster "vc-10" (its name contains "vc-1") and a stranger's VM named like a compute of vc-1.
    client = driver.client
    zone = next(iter(sim.zones.values()))
    template = next(t for t in sim.templates.values() if t["name"] == "fe-image")
    public = sim.networks_named("public")[0]
    ids = []
    for name in ("vc-10", "vc-1-compute-7"):
        vm = client.call("deployVirtualMachine", {"name": name, "zoneid": zone["id"], "templateid": template["id"], "serviceofferingid": next(iter(sim.service_offerings)), "iptonetworklist[0].networkid": public["id"], "startvm": "false"})
        ids.append(vm["virtualmachine"]["id"])
    client.call("createTags", {"resourceids": ids[0], "resourcetype": "UserVm", "tags[0].key": "pragma-cluster", "tags[0].value": "vc-10", "tags[1].key": "pragma-role", "tags[1].value": "frontend"})
    (status,) = driver.list_clusters("vc-1")
    assert [n.name for n in status.nodes] == ["vc-1", "vc-1-compute-0"]
    assert [n.role for n in status.nodes] == ["frontend", "compute"]
    assert status.public_ip == str(first.public_ip)
    assert status.nodes[0].public_ip == str(first.public_ip)
    assert status.nodes[1].private_ip == str(first.computes[0].interface("private").ip)  # type: ignore[union-attr]
    assert [c.name for c in driver.list_clusters()] == ["vc-1", "vc-10"]
    assert driver.list_clusters("vc") == []
    # The next cluster skips every number in use.
    assert driver.allocate(request(1), cluster).cluster == "vc-2"


def test_shutdown_stops_every_node(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation, _ = boot(driver, cluster, request(2))
    status = driver.shutdown(allocation.cluster)
    assert [n.state for n in status.nodes] == ["Stopped"] * 3
    assert [n.name for n in status.nodes] == [n.name for n in allocation.nodes]


def test_shutdown_forces_a_node_whose_stop_fails(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation, _ = boot(driver, cluster, request(1))
    sim.inject("stopVirtualMachine", "fail_job", errortext="Unable to stop VM: guest did not answer")
    status = driver.shutdown(allocation.cluster)
    assert {n.state for n in status.nodes} == {"Stopped"}
    # Computes first (the compute's stop fails and is forced), then the frontend.
    stops = [(sim.vms[p["id"]]["name"], p.get("forced")) for _, p in sim.calls("stopVirtualMachine")]
    assert stops == [("vc-1-compute-0", None), ("vc-1-compute-0", "true"), ("vc-1", None)]


def test_clean_refuses_while_nodes_run_then_removes_everything(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation, _ = boot(driver, cluster, request(2))
    with pytest.raises(DriverError, match=r"^cluster vc-1 still has running nodes: vc-1 \(Running\), vc-1-compute-0 \(Running\), vc-1-compute-1 \(Running\); run 'pragma shutdown vc-1' first$"):
        driver.clean(allocation.cluster)
    assert len(sim.vms) == 3
    driver.shutdown(allocation.cluster)
    driver.clean(allocation.cluster)
    assert leftovers(sim) == ([], [])
    assert all(p["expunge"] == "true" for _, p in sim.calls("destroyVirtualMachine"))
    assert driver.list_clusters() == []
    with pytest.raises(NotFoundError):
        driver.clean(allocation.cluster)


def test_unknown_cluster(driver: CloudStackDriver) -> None:
    assert driver.list_clusters("vc-99") == []
    with pytest.raises(NotFoundError, match="no CloudStack cluster named vc-99"):
        driver.shutdown("vc-99")
    with pytest.raises(NotFoundError):
        driver.clean("vc-99")


@pytest.mark.parametrize(
    ("command", "kind", "options", "message"),
    [
        ("deployVirtualMachine", "fail_job", {"errortext": "Insufficient capacity on host h1"}, "CloudStack deployVirtualMachine: Insufficient capacity on host h1 (error 530)"),
        ("createTags", "fail_job", {"errortext": "tag service down"}, "CloudStack createTags: tag service down (error 530)"),
        ("createEgressFirewallRule", "fail_job", {"errortext": "router unreachable"}, "CloudStack createEgressFirewallRule: router unreachable (error 530)"),
        ("createNetwork", "drop_after", {}, "CloudStack createNetwork: cannot talk to"),
        ("deployVirtualMachine", "drop_after", {}, "CloudStack deployVirtualMachine: cannot talk to"),
        ("deployVirtualMachine", "http_error", {"status": 500}, "CloudStack deployVirtualMachine: HTTP 500"),
    ],
)
def test_failed_allocate_removes_what_it_made(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster, command: str, kind: str, options: dict, message: str
) -> None:
    sim.inject(command, kind, **options)
    with pytest.raises(DriverError) as info:
        driver.allocate(request(3), cluster)
    assert str(info.value).startswith(message)
    assert leftovers(sim) == ([], [])


def test_a_network_made_after_its_lost_answer_is_found_and_removed(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster
) -> None:
    """No answer to createNetwork, and CloudStack makes the network only a moment later: a single look
    right after the failure finds nothing; pragma keeps looking while CloudStack may still be at work."""
    sim.inject("createNetwork", "late", delay=0.3)
    with pytest.raises(DriverError, match="^CloudStack createNetwork: cannot talk to"):
        driver.allocate(request(3), cluster)
    time.sleep(0.5)  # past the moment the network appeared
    assert len(sim.calls("listNetworks")) > 1, "it looked more than once"
    assert leftovers(sim) == ([], [])


def test_failed_deploy_is_rolled_back_and_rollback_twice_is_safe(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation = driver.allocate(request(3), cluster)
    # The frontend and the first compute start; the second compute fails.
    sim.inject("startVirtualMachine", "fail_job", skip=2, errortext="no host with enough memory")
    from pragma_core.vcout import render

    files = render(allocation)
    with pytest.raises(DriverError, match="CloudStack startVirtualMachine: no host with enough memory"):
        driver.deploy(allocation, cluster, files)
    assert by_name(sim)["vc-1"]["state"] == "Running"
    driver.rollback(allocation)
    assert leftovers(sim) == ([], [])
    driver.rollback(allocation)
    assert leftovers(sim) == ([], [])


@pytest.mark.parametrize("state", [None, CloudStackState()], ids=["no-state", "no-ids"])
def test_rollback_of_an_allocation_recording_no_ids_removes_nothing_and_says_to_clean(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster, state: CloudStackState | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    allocation = driver.allocate(request(2), cluster)
    partial = attrs.evolve(allocation, state=state)
    before = leftovers(sim)
    driver.rollback(partial)
    assert leftovers(sim) == before, "nothing is removed by its name or tag alone"
    assert sim.calls("destroyVirtualMachine") == [] and sim.calls("deleteNetwork") == []
    assert "run 'pragma clean vc-1'" in caplog.text
    driver.clean(allocation.cluster)  # what clean finds by its tags, in pragma's own account
    assert leftovers(sim) == ([], [])


def test_allocation_state_holds_the_ids_cloudstack_gave(sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster) -> None:
    allocation = driver.allocate(request(2), cluster)
    state = driver.state_of(allocation)
    assert isinstance(state, CloudStackState) and allocation.extra == {}
    assert dict(state.vm_ids) == {vm["name"]: vm["id"] for vm in sim.vms.values()}
    (network,) = sim.networks_named("vc-1")
    assert state.network_id == network["id"]
    driver.rollback(allocation)
    assert leftovers(sim) == ([], [])


@attrs.frozen
class OtherDriversState:
    vm_ids: tuple[str, ...] = ()


@pytest.mark.parametrize("step", ["deploy", "rollback"])
def test_an_allocation_made_by_another_driver_is_refused_naming_the_cluster(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster, step: str
) -> None:
    allocation = driver.allocate(request(1), cluster)
    foreign = attrs.evolve(allocation, state=OtherDriversState())
    with pytest.raises(DriverError, match=r"^the allocation of cluster vc-1 carries a OtherDriversState, not the CloudStackState of driver 'cloudstack': another driver made it$"):
        if step == "deploy":
            from pragma_core.vcout import render

            driver.deploy(foreign, cluster, render(foreign))
        else:
            driver.rollback(foreign)
    assert {vm["state"] for vm in sim.vms.values()} == {"Stopped"}  # nothing was started or removed
    driver.rollback(allocation)
    assert leftovers(sim) == ([], [])


def test_allocate_and_deploy_need_only_the_description_not_local_images(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster
) -> None:
    assert CloudStackDriver.uses_local_images is False
    resolved = ResolvedCluster(description=cluster.description)
    for role in ("frontend", "compute"):
        (cluster.description.directory / f"demo-{role}.img").unlink()
    allocation, _ = boot(driver, resolved, request(2))  # type: ignore[arg-type]
    assert {vm["state"] for vm in sim.vms.values()} == {"Running"}
    assert len(allocation.computes) == 2


def test_list_repository_gives_ready_template_names(sim: CloudStackSimulator, driver: CloudStackDriver) -> None:
    zone = next(iter(sim.zones.values()))
    sim.add_template("still-downloading", zone, ready=False)
    assert driver.list_repository(None) == ["compute-image", "demo-compute", "demo-frontend", "fe-image", "other-image"]  # type: ignore[arg-type]


def test_clean_without_user_expunge_destroys_and_says_why_the_network_stays(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    sim.allow_user_expunge = False
    allocation, _ = boot(driver, cluster, request(1))
    driver.shutdown(allocation.cluster)
    with pytest.raises(DriverError, match=r"^CloudStack deleteNetwork: Can't delete the network, not all user vms are expunged"):
        driver.clean(allocation.cluster)
    assert {vm["state"] for vm in sim.vms.values()} == {"Destroyed"}
    assert "allow.user.expunge.recover.vm" in caplog.text
    # Once CloudStack has expunged the VMs itself, clean finishes the job.
    with sim.lock:
        for vm in list(sim.vms.values()):
            sim._expunge(vm)
    driver.clean(allocation.cluster)
    assert leftovers(sim) == ([], [])


def test_loading_the_entry_point_does_not_import_requests() -> None:
    import subprocess
    import sys

    code = "import sys, pragma_cloudstack.driver; print('requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_link_planted_at_the_allocation_lock_is_one_error_and_its_target_untouched(
    sim: CloudStackSimulator, driver: CloudStackDriver, cluster: StagedCluster, tmp_path: Path
) -> None:
    from pragma_cloudstack.naming import cluster_lock

    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    with cluster_lock(driver.config, driver.site):  # find the lock's name, then put a link there
        pass
    directory = driver.site.temp_directory
    (lock,) = Path(directory).glob("pragma-cloudstack-*.lock")
    lock.unlink()
    lock.symlink_to(victim)
    with pytest.raises(DriverError, match=r"cannot take the allocation lock: Too many levels of symbolic links"):
        boot(driver, cluster, BootRequest(image="demo", cpus=1))
    assert victim.read_bytes() == b"keep me"
    assert sim.calls("createNetwork") == [] and sim.calls("deployVirtualMachine") == [], "nothing was made"


def test_without_a_temp_directory_the_lock_is_in_a_private_directory_another_user_cannot_hold(
    driver: CloudStackDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import tempfile

    import attrs
    from pragma_cloudstack.naming import cluster_lock

    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    site = attrs.evolve(driver.site, temp_directory=None)
    with cluster_lock(driver.config, site):
        pass
    private = shared / f"pragma-{os.geteuid()}"
    assert private.is_dir() and private.stat().st_mode & 0o777 == 0o700
    assert [p.name.startswith("pragma-cloudstack-") for p in private.iterdir()] == [True]
    assert not list(shared.glob("pragma-cloudstack-*")), "nothing another user can open sits in the shared directory"
    for directory in private.iterdir():
        directory.unlink()
    private.rmdir()
    if os.geteuid() != 0:
        pytest.skip("making a directory another user's needs root")
    private.mkdir(mode=0o755)  # made first by someone else, say
    os.chown(private, 65534, 65534)
    with pytest.raises(DriverError, match=r"cannot take the allocation lock: .*pragma-0: belongs to user 65534, not"):
        with cluster_lock(driver.config, site):
            pass
    assert list(private.iterdir()) == [], "nothing is made in it"
