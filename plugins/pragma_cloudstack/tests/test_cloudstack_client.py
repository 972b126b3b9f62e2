"""The API client against the simulator over real HTTP: paging, retries, jobs, errors, secrecy."""

from __future__ import annotations

import base64
import logging
import time
from urllib.parse import quote_plus

import pytest
from cloudstack_simulator import CloudStackSimulator
from pragma_core.errors import CapacityError, DriverError

from pragma_cloudstack import client as client_module
from pragma_cloudstack.client import (
    MAX_ANSWER_BYTES,
    MAX_LIST_ITEMS,
    CloudStackAuth,
    CloudStackCapacityError,
    CloudStackClient,
    CloudStackError,
    CloudStackJobTimeout,
    is_idempotent,
)
from pragma_cloudstack.driver import CloudStackDriver


def public_network(sim: CloudStackSimulator) -> dict:
    return next(n for n in sim.networks.values() if n["name"] == "public")


def own_network(sim: CloudStackSimulator, client: CloudStackClient) -> dict:
    """An isolated network of the client's account (a user may tag only its own resources, not the shared one)."""
    zone = next(iter(sim.zones.values()))
    offering = next(o for o in sim.network_offerings.values() if o["name"].startswith("DefaultIsolatedNetworkOfferingWith"))
    answer = client.request("createNetwork", {"name": "mine", "displaytext": "mine", "zoneid": zone["id"], "networkofferingid": offering["id"]})
    return answer["network"]


def test_list_pages_through_every_result(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    zone = next(iter(sim.zones.values()))
    for i in range(6):
        sim.add_template(f"extra-{i}", zone)
    client.page_size = 2
    names = [t["name"] for t in client.list("listTemplates", {"templatefilter": "community"}, key="template")]
    assert sorted(names) == sorted(t["name"] for t in sim.templates.values())
    pages = [(p["page"], p["pagesize"]) for _, p in sim.calls("listTemplates")]
    assert pages == [("1", "2"), ("2", "2"), ("3", "2"), ("4", "2"), ("5", "2"), ("6", "2")]


def test_a_server_sending_full_pages_forever_is_cut_off_after_max_list_items(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    sim.inject("listVirtualMachines", "endless")
    with pytest.raises(CloudStackError) as info:
        client.list("listVirtualMachines", {"listall": "true"}, key="virtualmachine")
    pages = MAX_LIST_ITEMS // client.page_size
    assert str(info.value) == f"CloudStack listVirtualMachines: the list goes on past {MAX_LIST_ITEMS} items ({pages} pages); refused"
    assert isinstance(info.value, DriverError)
    assert len(sim.calls("listVirtualMachines")) == pages


def test_a_server_sending_full_pages_forever_is_cut_off_after_max_list_pages(
    sim: CloudStackSimulator, client: CloudStackClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_LIST_PAGES", 25)
    client.page_size = 2
    sim.inject("listZones", "endless")
    with pytest.raises(CloudStackError, match=r"^CloudStack listZones: the list goes on past 25 pages of 2; refused$"):
        client.list("listZones", key="zone")
    assert [p["page"] for _, p in sim.calls("listZones")] == [str(n) for n in range(1, 26)]


def test_clean_against_endless_pages_is_one_error_line(sim: CloudStackSimulator, driver: CloudStackDriver) -> None:
    sim.inject("listVirtualMachines", "endless")
    with pytest.raises(DriverError) as info:
        driver.clean("vc-1")
    pages = MAX_LIST_ITEMS // driver.config.page_size
    assert str(info.value) == f"CloudStack listVirtualMachines: the list goes on past {MAX_LIST_ITEMS} items ({pages} pages); refused"
    assert sim.calls("destroyVirtualMachine") == []


def test_list_of_nothing_is_an_empty_list(client: CloudStackClient) -> None:
    assert client.list("listVirtualMachines", {"listall": "true"}, key="virtualmachine") == []


def test_only_list_and_job_queries_count_as_idempotent() -> None:
    assert is_idempotent("listZones") and is_idempotent("queryAsyncJobResult")
    assert not is_idempotent("deployVirtualMachine") and not is_idempotent("createNetwork")


def test_list_call_is_retried_after_a_dropped_connection(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    sim.inject("listZones", "drop")
    assert [z["name"] for z in client.list("listZones", key="zone")] == ["zone1"]
    assert len(sim.calls("listZones")) == 2


def test_list_call_is_retried_after_http_503(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    sim.inject("listZones", "http_error", status=503)
    assert len(client.list("listZones", key="zone")) == 1
    assert len(sim.calls("listZones")) == 2


def test_retries_give_up_with_one_line(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    sim.inject("listZones", "http_error", status=502, count=10)
    with pytest.raises(CloudStackError) as info:
        client.list("listZones", key="zone")
    assert len(sim.calls("listZones")) == 3  # one try + retries=2
    assert str(info.value) == "CloudStack listZones: HTTP 502 Bad Gateway"


def test_non_idempotent_call_is_never_retried(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    zone = next(iter(sim.zones.values()))
    offering = next(o for o in sim.network_offerings.values() if o["name"].startswith("DefaultIsolatedNetworkOfferingWith"))
    sim.inject("createNetwork", "drop")
    with pytest.raises(CloudStackError, match="CloudStack createNetwork: cannot talk to"):
        client.request("createNetwork", {"name": "n", "displaytext": "n", "zoneid": zone["id"], "networkofferingid": offering["id"]})
    assert len(sim.calls("createNetwork")) == 1


def test_poll_of_a_job_survives_a_dropped_connection(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    net = own_network(sim, client)
    jobid, _ = client.start_job("createTags", {"resourceids": net["id"], "resourcetype": "Network", "tags[0].key": "a", "tags[0].value": "b"})
    sim.inject("queryAsyncJobResult", "drop")
    assert client.wait_job("createTags", jobid) == {"success": True}


def test_failed_job_surfaces_cloudstack_errortext(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    net = own_network(sim, client)
    sim.inject("createTags", "fail_job", errortext="Failed to create tags: database is on fire")
    with pytest.raises(CloudStackError) as info:
        client.call("createTags", {"resourceids": net["id"], "resourcetype": "Network", "tags[0].key": "a", "tags[0].value": "b"})
    assert str(info.value) == "CloudStack createTags: Failed to create tags: database is on fire (error 530)"
    assert info.value.errorcode == 530


def test_slow_job_is_polled_with_growing_waits_until_done(sim: CloudStackSimulator) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    client = CloudStackClient(sim.url, sim.api_key, sim.secret_key, poll_interval=0.005, poll_max_interval=0.02, job_timeout=5, sleep=sleep)
    net = own_network(sim, client)
    sim.inject("createTags", "slow_job", delay=0.15)
    assert client.call("createTags", {"resourceids": net["id"], "resourcetype": "Network", "tags[0].key": "a", "tags[0].value": "b"}) == {"success": True}
    assert waits[:3] == [0.005, 0.01, 0.02]
    assert max(waits) == 0.02
    assert waits == sorted(waits)
    assert len(sim.calls("queryAsyncJobResult")) == len(waits) + 1


def test_job_that_never_ends_times_out(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    net = own_network(sim, client)
    sim.inject("createTags", "slow_job", delay=60)
    jobid, _ = client.start_job("createTags", {"resourceids": net["id"], "resourcetype": "Network", "tags[0].key": "a", "tags[0].value": "b"})
    with pytest.raises(CloudStackJobTimeout, match=f"CloudStack createTags: job {jobid} did not finish within 0.1 s"):
        client.wait_job("createTags", jobid, timeout=0.1)


def test_expired_signature_is_refused_with_one_line(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    sim.inject("listZones", "expire")
    with pytest.raises(CloudStackError) as info:
        client.request("listZones")
    assert str(info.value) == "CloudStack listZones: unable to verify user credentials and/or request signature (error 401)"
    assert sim.rejected == [("listZones", "request expired")]
    assert len(client.list("listZones", key="zone")) == 1  # the next request is signed afresh


def test_signature_past_its_expiry_is_refused(sim: CloudStackSimulator) -> None:
    stale = CloudStackClient(sim.url, sim.api_key, sim.secret_key, expires_after=-5)
    with pytest.raises(CloudStackError, match="error 401"):
        stale.request("listZones")
    assert sim.rejected == [("listZones", "request expired")]


def test_api_error_names_command_and_errortext(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    zone = next(iter(sim.zones.values()))
    with pytest.raises(CloudStackError) as info:
        client.start_job("deployVirtualMachine", {"zoneid": zone["id"], "templateid": "nope", "serviceofferingid": next(iter(sim.service_offerings))})
    assert str(info.value) == "CloudStack deployVirtualMachine: Unable to use template nope (error 431)"
    assert "\n" not in str(info.value)


def test_unknown_command_is_one_line(client: CloudStackClient) -> None:
    with pytest.raises(CloudStackError, match=r"^CloudStack listBananas: The given command:listBananas does not exist"):
        client.request("listBananas")


def test_resource_limit_is_a_capacity_error(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    sim.cpu_limit = 0
    zone = next(iter(sim.zones.values()))
    template = next(t for t in sim.templates.values() if t["name"] == "fe-image")
    with pytest.raises(CloudStackCapacityError) as info:
        client.start_job("deployVirtualMachine", {
            "zoneid": zone["id"], "templateid": template["id"], "serviceofferingid": next(iter(sim.service_offerings)),
            "iptonetworklist[0].networkid": public_network(sim)["id"],
        })
    assert isinstance(info.value, CapacityError) and isinstance(info.value, DriverError)
    assert "Maximum number of resources of type 'cpu'" in str(info.value)


def _deploy_stopped_vm(sim: CloudStackSimulator, client: CloudStackClient) -> str:
    zone = next(iter(sim.zones.values()))
    template = next(t for t in sim.templates.values() if t["name"] == "fe-image")
    result = client.call("deployVirtualMachine", {
        "name": "probe", "zoneid": zone["id"], "templateid": template["id"], "startvm": "false",
        "serviceofferingid": next(iter(sim.service_offerings)), "iptonetworklist[0].networkid": public_network(sim)["id"],
    })
    return result["virtualmachine"]["id"]


def test_userdata_goes_as_post_and_may_exceed_the_get_limit(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    vm_id = _deploy_stopped_vm(sim, client)
    userdata = base64.b64encode(b"x" * 12000).decode()
    client.request("updateVirtualMachine", {"id": vm_id, "userdata": userdata})
    ((method, _),) = sim.calls("updateVirtualMachine")
    assert method == "POST"
    assert sim.userdata[vm_id] == userdata
    with pytest.raises(CloudStackError, match="User data is too long for an http GET request"):
        client.request("updateVirtualMachine", {"id": vm_id, "userdata": userdata}, post=False)


def test_secrets_never_reach_logs_or_errors(sim: CloudStackSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = CloudStackClient(sim.url, sim.api_key, sim.secret_key, retries=1, retry_backoff=0.001)
    errors: list[str] = []
    client.list("listZones", key="zone")
    sim.inject("listZones", "drop", count=5)
    for action in (
        lambda: client.request("listZones"),
        lambda: client.request("deployVirtualMachine", {"zoneid": "z"}),
        lambda: client.request("listZones", {"name": "x"}),
    ):
        try:
            action()
        except CloudStackError as exc:
            errors.append(str(exc))
            errors.append(repr(exc))
    down = CloudStackClient("http://127.0.0.1:9/client/api", sim.api_key, sim.secret_key, retries=0)
    with pytest.raises(CloudStackError) as info:
        down.request("listZones")
    errors.append(str(info.value))
    assert len(errors) == 7
    signatures = {p["signature"] for _, _, p in sim.requests}
    signatures |= {quote_plus(s) for s in signatures} | {quote_plus(sim.secret_key)}
    text = caplog.text + "\n".join(errors)
    assert "signature=***" in caplog.text, "urllib3's request lines are logged, redacted"
    for secret in (sim.secret_key, sim.api_key, *signatures):
        assert secret not in text
    assert "cannot talk to http://127.0.0.1:9/client/api" in str(info.value)


# --------------------------------------------------------------------------- bounded by core's HTTP client


@pytest.mark.parametrize("command", ["listZones", "deployVirtualMachine"])
def test_an_answer_dripping_under_the_read_timeout_ends_at_the_call_deadline(sim: CloudStackSimulator, command: str) -> None:
    client = CloudStackClient(sim.url, sim.api_key, sim.secret_key, timeout=5, deadline=0.5, retries=3, retry_backoff=0.001)
    sim.inject(command, "drip")
    start = time.monotonic()
    with pytest.raises(CloudStackError) as info:
        client.request(command, {"zoneid": "z"})
    assert time.monotonic() - start < 30, "the call outlived its deadline"
    assert str(info.value).startswith(f"CloudStack {command}: {sim.url}: not done within its 0.5 s deadline")
    assert len(sim.calls(command)) == 1, "the deadline ends the call, retries included"


@pytest.mark.parametrize("command", ["listZones", "deployVirtualMachine"])
def test_an_answer_announcing_a_huge_length_is_refused_unread(sim: CloudStackSimulator, client: CloudStackClient, command: str) -> None:
    sim.inject(command, "huge")
    with pytest.raises(CloudStackError) as info:
        client.request(command, {"zoneid": "z"})
    assert str(info.value) == (
        f"CloudStack {command}: {sim.url}: the server announces {10**12} bytes, "
        f"more than the {MAX_ANSWER_BYTES}-byte limit of an API answer; refused"
    )


def test_requests_are_signed_by_the_shared_clients_pluggable_authentication(sim: CloudStackSimulator, client: CloudStackClient) -> None:
    assert isinstance(client.http.auth, CloudStackAuth)
    assert set(client.http.auth.secrets()) == {sim.api_key, sim.secret_key}
    assert sim.api_key not in repr(client.http.auth) and sim.secret_key not in repr(client.http.auth)
    client.request("listZones")
    assert not sim.rejected
