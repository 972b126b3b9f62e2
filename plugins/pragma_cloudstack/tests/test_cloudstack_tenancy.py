"""Hostile: pragma's key sees other tenants (an admin key, or a second pragma site on the same cloud using ``vc-``).

pragma's account ``pragma`` is a root admin or a domain admin of ROOT, so a
``listall=true`` list shows it the resources of ``alice``, a plain user in
domain ``ROOT/tenants`` who runs her own pragma site with the same
``vc-`` prefix: both have a cluster ``vc-1``, tagged ``pragma-cluster=vc-1``.
An admin key *may* destroy alice's VMs, so nothing but the driver's own
scoping keeps them alive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from cloudstack_simulator import DOMAIN_ADMIN, ROOT_ADMIN, CloudStackSimulator
from cloudstack_testkit import make_driver, standard_simulator, write_conf
from pragma_core.errors import DriverError, NotFoundError
from pragma_core.model import BootRequest, StagedCluster
from pragma_core.testing import boot, make_cluster, make_site

from pragma_cloudstack.client import CloudStackClient
from pragma_cloudstack.driver import CloudStackDriver
from pragma_cloudstack.ownership import Owner

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


def request(cpus: int) -> BootRequest:
    return BootRequest(image="demo", cpus=cpus, key=KEY)


@attrs.define
class Cloud:
    """The simulator, pragma's (admin) driver and alice's (plain user) driver, on one cloud."""

    sim: CloudStackSimulator
    pragma: CloudStackDriver
    alice: CloudStackDriver
    alice_account: dict

    def owned_by(self, account: str) -> tuple[list[tuple[str, str]], list[str]]:
        """(name, state) of every VM, and the names of the networks, of ``account``."""
        with self.sim.lock:
            vms = sorted((vm["name"], vm["state"]) for vm in self.sim.vms.values() if vm["account"] == account)
            networks = sorted(n["name"] for n in self.sim.networks.values() if n.get("account") == account)
        return vms, networks


@pytest.fixture(params=[ROOT_ADMIN, DOMAIN_ADMIN], ids=["root-admin", "domain-admin"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    sim = standard_simulator(accounttype=request.param)
    zone = next(iter(sim.zones.values()))
    sim.add_shared_network("public-b", zone, "198.51.100.0/24")
    alice = sim.add_account("alice", domain=sim.add_domain("tenants", sim.root))
    sim.start()
    ours = make_site(tmp_path / "pragma-site", driver="cloudstack")
    write_conf(ours, sim, service_offering="Small Instance")
    theirs = make_site(tmp_path / "alice-site", driver="cloudstack")
    write_conf(theirs, sim, service_offering="Small Instance", apikey=alice["_apikey"], secretkey=alice["_secretkey"], public_network="public-b")
    cloud = Cloud(sim=sim, pragma=make_driver(ours), alice=make_driver(theirs), alice_account=alice)
    yield cloud
    cloud.pragma.close()
    cloud.alice.close()
    sim.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> StagedCluster:
    return make_cluster(tmp_path / "repo" / "demo", name="demo", size=4096)


def both_boot_vc_1(cloud: Cloud, cluster: StagedCluster) -> None:
    """pragma boots vc-1; alice, who sees only her own account, boots a vc-1 of her own."""
    assert boot(cloud.pragma, cluster, request(1))[0].cluster == "vc-1"
    assert boot(cloud.alice, cluster, request(2))[0].cluster == "vc-1"


ALICE_RUNNING = ([("vc-1", "Running"), ("vc-1-compute-0", "Running"), ("vc-1-compute-1", "Running")], ["vc-1"])
ALICE_STOPPED = ([("vc-1", "Stopped"), ("vc-1-compute-0", "Stopped"), ("vc-1-compute-1", "Stopped")], ["vc-1"])


def test_the_admin_key_does_see_the_other_tenant_and_may_destroy_its_vms(cloud: Cloud, cluster: StagedCluster) -> None:
    """The premise: the simulator gives the admin key what CloudStack gives it."""
    both_boot_vc_1(cloud, cluster)
    client = cloud.pragma.client
    seen = client.list("listVirtualMachines", {"listall": "true", "tags[0].key": "pragma-cluster", "tags[0].value": "vc-1"})
    assert sorted({vm["account"] for vm in seen}) == ["alice", "pragma"]
    own = client.list("listVirtualMachines", {"tags[0].key": "pragma-cluster", "tags[0].value": "vc-1"})
    assert {vm["account"] for vm in own} == {"pragma"}, "without listall, only the caller's own"
    (mine,) = client.list("listAccounts", {}, key="account")
    assert (mine["name"], mine["accounttype"]) == ("pragma", cloud.sim.account["accounttype"])
    theirs = next(vm for vm in seen if vm["account"] == "alice")
    client.call("stopVirtualMachine", {"id": theirs["id"]})  # an admin may act on the tenant's VMs
    assert cloud.sim.vms[theirs["id"]]["state"] == "Stopped"


def test_clean_never_touches_another_accounts_vms_with_the_same_cluster_tag(cloud: Cloud, cluster: StagedCluster) -> None:
    both_boot_vc_1(cloud, cluster)
    cloud.alice.shutdown("vc-1")  # stopped: nothing but ownership protects them from a clean
    cloud.pragma.shutdown("vc-1")
    cloud.pragma.clean("vc-1")
    assert cloud.owned_by("pragma") == ([], [])
    assert cloud.owned_by("alice") == ALICE_STOPPED
    with pytest.raises(NotFoundError, match="no CloudStack cluster named vc-1"):
        cloud.pragma.clean("vc-1")
    assert cloud.owned_by("alice") == ALICE_STOPPED


def test_clean_is_not_refused_because_another_accounts_cluster_runs(cloud: Cloud, cluster: StagedCluster) -> None:
    both_boot_vc_1(cloud, cluster)
    cloud.pragma.shutdown("vc-1")
    cloud.pragma.clean("vc-1")
    assert cloud.owned_by("alice") == ALICE_RUNNING


def test_shutdown_and_list_never_see_another_accounts_vms_with_the_same_cluster_tag(cloud: Cloud, cluster: StagedCluster) -> None:
    both_boot_vc_1(cloud, cluster)
    status = cloud.pragma.shutdown("vc-1")
    assert [(n.name, n.state) for n in status.nodes] == [("vc-1", "Stopped"), ("vc-1-compute-0", "Stopped")]
    assert cloud.owned_by("alice") == ALICE_RUNNING
    (listed,) = cloud.pragma.list_clusters()
    assert [n.name for n in listed.nodes] == ["vc-1", "vc-1-compute-0"]


def test_a_server_ignoring_the_account_filter_still_cannot_make_clean_remove_another_accounts_vms(
    cloud: Cloud, cluster: StagedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    both_boot_vc_1(cloud, cluster)
    cloud.alice.shutdown("vc-1")
    cloud.pragma.shutdown("vc-1")
    for command in ("listVirtualMachines", "listNetworks"):
        cloud.sim.inject(command, "unscoped", count=100)
    caplog.set_level(logging.DEBUG, logger="pragma_cloudstack.ownership")
    cloud.pragma.clean("vc-1")
    assert cloud.owned_by("pragma") == ([], [])
    assert cloud.owned_by("alice") == ALICE_STOPPED
    assert "ignoring virtualmachine vc-1-compute-1" in caplog.text and "belongs to account 'alice'" in caplog.text
    assert "ignoring network vc-1" in caplog.text


def test_a_shared_network_tagged_with_the_cluster_is_never_deleted(cloud: Cloud, cluster: StagedCluster) -> None:
    boot(cloud.pragma, cluster, request(1))
    public = cloud.sim.networks_named("public")[0]
    cloud.pragma.client.call("createTags", {
        "resourceids": public["id"], "resourcetype": "Network", "tags[0].key": "pragma-cluster", "tags[0].value": "vc-1",
    })
    cloud.pragma.shutdown("vc-1")
    cloud.pragma.clean("vc-1")
    assert cloud.sim.networks_named("public") != [], "a shared network has no account: never pragma's to delete"
    assert cloud.owned_by("pragma") == ([], [])


def test_rollback_removes_only_what_this_run_made(cloud: Cloud, cluster: StagedCluster) -> None:
    allocation = cloud.pragma.allocate(request(1), cluster)
    assert boot(cloud.alice, cluster, request(2))[0].cluster == "vc-1"
    cloud.alice.shutdown("vc-1")
    sim, client = cloud.sim, cloud.pragma.client
    # In pragma's own account too: a VM tagged with the cluster and an untagged isolated network named like it,
    # neither made by this run (another site on the same account, a colleague's experiment).
    zone = next(iter(sim.zones.values()))
    offering = next(o for o in sim.network_offerings.values() if o["name"].startswith("DefaultIsolatedNetworkOfferingWith"))
    client.request("createNetwork", {"name": "vc-1", "displaytext": "not this run's", "zoneid": zone["id"], "networkofferingid": offering["id"]})
    template = next(t for t in sim.templates.values() if t["name"] == "fe-image")
    keep = client.call("deployVirtualMachine", {
        "name": "keep-me", "zoneid": zone["id"], "templateid": template["id"], "startvm": "false",
        "serviceofferingid": next(iter(sim.service_offerings)), "iptonetworklist[0].networkid": sim.networks_named("public")[0]["id"],
    })["virtualmachine"]
    client.call("createTags", {"resourceids": keep["id"], "resourcetype": "UserVm", "tags[0].key": "pragma-cluster", "tags[0].value": "vc-1"})
    cloud.pragma.rollback(allocation)
    assert cloud.owned_by("pragma") == ([("keep-me", "Stopped")], ["vc-1"])
    (stray,) = [n for n in sim.networks_named("vc-1") if n["account"] == "pragma"]
    assert stray["displaytext"] == "not this run's"
    assert cloud.owned_by("alice") == ALICE_STOPPED
    destroyed = {sim_id for _, p in sim.calls("destroyVirtualMachine") for sim_id in [p["id"]]}
    assert destroyed == set(cloud.pragma.state_of(allocation).vm_ids.values())
    cloud.pragma.rollback(allocation)  # safe to repeat, still touches nothing else
    assert cloud.owned_by("pragma") == ([("keep-me", "Stopped")], ["vc-1"])
    assert cloud.owned_by("alice") == ALICE_STOPPED


def test_a_lost_create_network_answer_removes_only_this_runs_network(cloud: Cloud, cluster: StagedCluster) -> None:
    """The answer of createNetwork is lost, and a same-named network of the same account appeared meanwhile."""
    sim = cloud.sim
    original = sim.cmd_createNetwork

    def race(p: dict[str, str], method: str) -> dict:
        answer = original(p, method)
        original({**p, "displaytext": f"pragma virtual cluster {p['name']}"}, method)  # another site's, same account
        return answer

    sim.cmd_createNetwork = race  # type: ignore[method-assign]
    sim.inject("createNetwork", "drop_after")
    with pytest.raises(DriverError, match="CloudStack createNetwork: cannot talk to"):
        cloud.pragma.allocate(request(1), cluster)
    (left,) = sim.networks_named("vc-1")
    assert left["displaytext"] == "pragma virtual cluster vc-1", "only the network this run made was deleted"
    assert len(sim.calls("deleteNetwork")) == 1


def test_every_vm_and_network_list_that_may_lead_to_a_change_is_scoped_to_our_account(cloud: Cloud, cluster: StagedCluster) -> None:
    both_boot_vc_1(cloud, cluster)
    sim = cloud.sim
    sim.requests.clear()
    allocation = cloud.pragma.allocate(request(1), cluster)
    cloud.pragma.rollback(allocation)
    cloud.pragma.shutdown("vc-1")
    cloud.pragma.clean("vc-1")
    domain = sim.account["domainid"]
    for command in ("listVirtualMachines", "listNetworks"):
        for method, params in sim.calls(command):
            if params.get("apiKey") != sim.api_key:
                continue
            if "account" in params:
                assert (params["account"], params["domainid"]) == ("pragma", domain) and "listall" not in params
            elif "keyword" in params:  # choosing a free name: every name the key sees counts, nothing is changed
                assert params["keyword"] == "vc-"
            else:  # the public network: shared or pragma's, no listall
                assert set(params) >= {"zoneid"} and "listall" not in params, (method, params)


def test_an_api_key_whose_account_cannot_be_told_is_refused() -> None:
    one = {"name": "pragma", "domainid": "d1"}
    assert Owner.of([one]) == Owner(name="pragma", domainid="d1")
    with pytest.raises(DriverError, match=r"^CloudStack listAccounts gives 2 accounts for this API key, not its own one; cannot tell which resources are pragma's$"):
        Owner.of([one, {"name": "alice", "domainid": "d2"}])
    with pytest.raises(DriverError, match="an account without a name or a domainid"):
        Owner.of([{"name": "pragma"}])


def test_ownership_is_by_account_and_domain_both() -> None:
    owner = Owner(name="pragma", domainid="d1")
    assert owner.owns({"account": "pragma", "domainid": "d1"})
    assert not owner.owns({"account": "pragma", "domainid": "d2"}), "an account of the same name in another domain"
    assert not owner.owns({"account": "alice", "domainid": "d1"})
    assert not owner.owns({"domainid": "d1"}), "a shared network is nobody's to remove"
    assert owner.may_use({"domainid": "d1"}) and not owner.may_use({"account": "alice", "domainid": "d1"})


def test_a_plain_user_key_sees_and_lists_only_its_own_account(tmp_path: Path) -> None:
    sim = standard_simulator()
    other = sim.add_account("bob")
    with sim:
        bob = CloudStackClient(sim.url, other["_apikey"], other["_secretkey"])
        (mine,) = bob.list("listAccounts", {"listall": "true"}, key="account")
        assert mine["name"] == "bob"
        with pytest.raises(DriverError, match=r"Account bob does not have permission to access account pragma \(error 531\)"):
            bob.list("listVirtualMachines", {"account": "pragma", "domainid": sim.account["domainid"]})
        bob.close()
