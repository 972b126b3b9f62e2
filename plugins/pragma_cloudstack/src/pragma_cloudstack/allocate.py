"""``allocate`` on CloudStack: choose templates and offerings, then make the cluster's network and stopped VMs.

:class:`Allocator` first reads everything it needs (:meth:`Allocator.plan`:
zone, templates, service offerings, the account's CPU limit, the public
network, the network offering), so a request that cannot fit fails before
anything is made. Then, under the account's naming lock, it takes a free
cluster name and creates the isolated network (tagged, egress opened when the
offering closes it), and deploys every VM stopped (``startvm=false``),
``max_parallel`` at once, each tagged while it deploys. The VMs' NICs become
the :class:`~pragma_core.model.Allocation` (:func:`read_allocation`). Whatever
a failed ``allocate`` made is removed before it raises.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
from typing import TYPE_CHECKING, Any

from attrs import frozen

from pragma_core import Allocation, BootRequest, ClusterDescription, DriverError, Interface, Network, Node, ResolvedCluster, Role

from pragma_core.pluginkit import poll

from .client import CloudStackNoAnswer
from .naming import TAG_CLUSTER, TAG_ROLE, cluster_lock, compute_name, free_name, template_name
from .state import CloudStackState

if TYPE_CHECKING:
    from .driver import CloudStackDriver

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class Plan:
    """What a cluster will be made of, read from CloudStack before anything is made."""

    zone: dict
    public: dict
    network_offering: dict
    frontend_template: dict
    compute_template: dict
    frontend_offering: dict
    compute_offering: dict
    computes: int


@frozen(kw_only=True)
class VmSpec:
    """One VM to deploy: its name, role, template, service offering and networks (first: its eth0)."""

    name: str
    role: Role
    template: dict
    offering: dict
    networks: tuple[dict, ...]


class _NotSeen(Exception):
    """A network looked for after a lost ``createNetwork`` answer did not appear in time."""


class _Made:
    """What an ``allocate`` in progress has created (ids as soon as CloudStack gave them).

    ``run`` is a token naming this run; the network's display text carries it,
    so a network whose creation answer was lost is found again as this run's.
    """

    def __init__(self) -> None:
        self.run = secrets.token_hex(8)
        self.cluster: str | None = None
        self.vm_ids: list[str] = []
        self.network_ids: list[str] = []
        self.names: list[str] = []


class Allocator:
    """Makes one cluster's network and stopped VMs through ``driver``'s client."""

    def __init__(self, driver: CloudStackDriver) -> None:
        self.driver = driver
        self.lookups = driver.lookups

    def allocate(self, request: BootRequest, cluster: ResolvedCluster) -> Allocation:
        """Create the cluster's network and its stopped VMs; read their NICs into an :class:`Allocation`."""
        plan = self.plan(request, cluster.description)
        made = _Made()
        try:
            return self._make(request, cluster.description, plan, made)
        except BaseException as exc:
            log.debug("allocate failed (%s); removing what it made", exc)
            self.driver.teardown.remove_made(
                cluster=made.cluster, vm_ids=made.vm_ids, network_ids=made.network_ids, names=made.names, quiet=True
            )
            raise

    def plan(self, request: BootRequest, description: ClusterDescription) -> Plan:
        """Templates, offerings and how many computes; a :class:`CapacityError` when the account cannot hold them."""
        lookups = self.lookups
        zone = lookups.zone()
        templates = lookups.templates(zone)
        fe_template = lookups.template(templates, template_name(description.frontend.disk.source))
        cp_template = lookups.template(templates, template_name(description.compute_template.disk.source))
        offerings = self.driver.client.list("listServiceOfferings", {}, key="serviceoffering")
        fe_offering = lookups.service_offering(offerings, description.frontend, request.memory.frontend_mib)
        cp_offering = lookups.service_offering(offerings, description.compute_template, request.memory.compute_mib)
        per_compute = int(cp_offering["cpunumber"])
        if per_compute < 1:
            raise DriverError(f"service offering {cp_offering.get('name')!r} has no CPU")
        computes = math.ceil(request.cpus / per_compute) if request.cpus > 0 else 0
        lookups.check_cpu_limit(int(fe_offering["cpunumber"]) + computes * per_compute)
        return Plan(
            zone=zone,
            public=lookups.public_network(zone),
            network_offering=lookups.network_offering(),
            frontend_template=fe_template,
            compute_template=cp_template,
            frontend_offering=fe_offering,
            compute_offering=cp_offering,
            computes=computes,
        )

    def _make(self, request: BootRequest, description: ClusterDescription, plan: Plan, made: _Made) -> Allocation:
        config = self.driver.config
        with cluster_lock(config, self.driver.site):
            name = free_name(config.vm_prefix, self.lookups.names_in_use(config.vm_prefix))
            made.cluster = name
            network = self._create_network(name, plan.zone, plan.network_offering, made)
        names = [name] + [compute_name(name, i) for i in range(plan.computes)]
        made.names.extend(names)
        specs = [VmSpec(name=name, role="frontend", template=plan.frontend_template, offering=plan.frontend_offering,
                        networks=(network, plan.public))]
        specs += [
            VmSpec(name=n, role="compute", template=plan.compute_template, offering=plan.compute_offering, networks=(network,))
            for n in names[1:]
        ]
        vms = self.driver._parallel(lambda spec: self._deploy_vm(plan.zone, spec, made), specs)
        dns = config.dns or tuple(str(plan.zone[k]) for k in ("dns1", "dns2") if plan.zone.get(k)) or ("8.8.8.8",)
        return read_allocation(
            request, description.name, name, zone=plan.zone, network=network, public=plan.public, vms=vms, dns=dns
        )

    def _create_network(self, name: str, zone: dict, offering: dict, made: _Made) -> dict:
        client = self.driver.client
        displaytext = f"pragma virtual cluster {name} (run {made.run})"
        try:
            answer = client.request(
                "createNetwork",
                {"name": name, "displaytext": displaytext, "networkofferingid": offering["id"], "zoneid": zone["id"]},
            )
        except DriverError as exc:
            self._recover_network(name, displaytext, made, unknown=isinstance(exc, CloudStackNoAnswer))
            raise
        network = answer.get("network", answer)
        made.network_ids.append(network["id"])
        # Tagging and opening egress are independent: run both jobs at once.
        jobs = [("createTags", self._start_tagging([network["id"]], "Network", name, "private"))]
        if not _truthy(offering.get("egressdefaultpolicy")):
            # Egress is closed by default on this offering: let the cluster reach out.
            egress = {"networkid": network["id"], "protocol": "all", "cidrlist": network.get("cidr", "0.0.0.0/0")}
            jobs.append(("createEgressFirewallRule", client.start_job("createEgressFirewallRule", egress)[0]))
        self._wait_all(jobs)
        return network

    def _recover_network(self, name: str, displaytext: str, made: _Made, *, unknown: bool) -> None:
        """Record the network a failed ``createNetwork`` may still have made: pragma's, named ``name``, with this
        run's ``displaytext``, so that the clean-up removes it.

        ``unknown``: no answer came, so CloudStack may still be making it; it
        is looked for until ``request_timeout`` has passed (as long as
        CloudStack answers the lookups), not just once.
        """
        lookups, config = self.lookups, self.driver.config

        def seen() -> list[dict] | None:
            return lookups.networks_made(name, displaytext) or None

        try:
            if not unknown:
                made.network_ids.extend(n["id"] for n in lookups.networks_made(name, displaytext))
                return
            found = poll(seen, timeout=config.request_timeout, interval=config.poll_interval,
                         max_interval=config.poll_max_interval, timed_out=lambda: _NotSeen())
            made.network_ids.extend(n["id"] for n in found)
        except _NotSeen:
            log.warning("createNetwork got no answer and no network %s (display text %r) appeared within %g s;"
                        " should one appear later, delete it", name, displaytext, config.request_timeout)
        except DriverError as exc:  # the createNetwork error is the one to report
            log.warning("could not look for the network %s that a failed createNetwork may have made: %s", name, exc)

    def _wait_all(self, jobs: list[tuple[str, str]]) -> list[dict]:
        """Wait for every started job, then raise the first failure."""
        results: list[dict] = []
        first: BaseException | None = None
        for command, jobid in jobs:
            try:
                results.append(self.driver.client.wait_job(command, jobid))
            except DriverError as exc:
                first = first or exc
        if first is not None:
            raise first
        return results

    def _deploy_vm(self, zone: dict, spec: VmSpec, made: _Made) -> dict:
        """Deploy one stopped VM and tag it while it deploys; its ``virtualmachine`` answer."""
        params: dict[str, Any] = {
            "name": spec.name,
            "displayname": spec.name,
            "zoneid": zone["id"],
            "templateid": spec.template["id"],
            "serviceofferingid": spec.offering["id"],
            "startvm": "false",
        }
        for index, network in enumerate(spec.networks):
            params[f"iptonetworklist[{index}].networkid"] = network["id"]
        jobid, answer = self.driver.client.start_job("deployVirtualMachine", params)
        jobs = [("deployVirtualMachine", jobid)]
        tag_error: DriverError | None = None
        if answer.get("id"):
            made.vm_ids.append(str(answer["id"]))
            # The VM exists from here on: tag it while it deploys, so it is found by tag whatever happens next.
            try:
                jobs.append(("createTags", self._start_tagging([str(answer["id"])], "UserVm", made.cluster or "", spec.role)))
            except DriverError as exc:
                tag_error = exc  # still let the deployment finish before the clean-up removes it
        result = self._wait_all(jobs)[0]
        if tag_error is not None:
            raise tag_error
        vm = result.get("virtualmachine")
        if not isinstance(vm, dict):
            raise DriverError(f"CloudStack deployVirtualMachine: no virtualmachine in the result for {spec.name} ({spec.role})")
        if len(jobs) == 1:
            self.driver.client.wait_job("createTags", self._start_tagging([vm["id"]], "UserVm", made.cluster or "", spec.role))
        return vm

    def _start_tagging(self, ids: list[str], resource_type: str, cluster: str, role: str) -> str:
        """Start tagging resources with ``pragma-cluster`` and ``pragma-role``; the job id."""
        jobid, _ = self.driver.client.start_job(
            "createTags",
            {
                "resourceids": ",".join(ids),
                "resourcetype": resource_type,
                "tags[0].key": TAG_CLUSTER,
                "tags[0].value": cluster,
                "tags[1].key": TAG_ROLE,
                "tags[1].value": role,
            },
        )
        return jobid


# ---------------------------------------------------------------------- reading the VMs into an Allocation


def read_allocation(
    request: BootRequest,
    image: str,
    name: str,
    *,
    zone: dict,
    network: dict,
    public: dict,
    vms: list[dict],
    dns: tuple[str, ...],
) -> Allocation:
    """The :class:`Allocation` of cluster ``name`` from CloudStack's answers (``vms``: frontend first)."""
    public_gateway = ipaddress.IPv4Address(public["gateway"])
    host = str(zone.get("name", ""))
    fe_vm = vms[0]
    fe_private = _nic(fe_vm, network["id"], "private", "eth0")
    frontend = _node(fe_vm, name, "frontend", (fe_private, _nic(fe_vm, public["id"], "public", "eth1")), public_gateway, host)
    computes = tuple(
        _node(vm, f"compute-{index}", "compute", (_nic(vm, network["id"], "private", "eth0"),), fe_private.ip, host)
        for index, vm in enumerate(vms[1:])
    )
    domain = public.get("networkdomain")
    return Allocation(
        cluster=name,
        image=image,
        fqdn=f"{name}.{domain}" if domain else name,
        frontend=frontend,
        computes=computes,
        networks=(
            Network(name="private", subnet=ipaddress.IPv4Network(network["cidr"]), gateway=ipaddress.IPv4Address(network["gateway"])),
            Network(name="public", subnet=ipaddress.IPv4Network(public["cidr"]), gateway=public_gateway),
        ),
        dns=dns,
        key=request.key,
        state=CloudStackState(network_id=str(network["id"]), vm_ids={vm["name"]: str(vm["id"]) for vm in vms}),
    )


def _node(
    vm: dict, hostname: str, role: Role, interfaces: tuple[Interface, ...], gateway: ipaddress.IPv4Address, host: str
) -> Node:
    return Node(
        name=vm["name"],
        hostname=hostname,
        role=role,
        cpus=int(vm.get("cpunumber") or 1),
        memory_mib=int(vm.get("memory") or 0),
        interfaces=interfaces,
        gateway=gateway,
        host=host,
    )


def _nic(vm: dict, network_id: str, network: str, device: str) -> Interface:
    for nic in vm.get("nic", []):
        if nic.get("networkid") == network_id:
            return Interface(network=network, ip=ipaddress.IPv4Address(nic["ipaddress"]), mac=nic["macaddress"], device=device)
    raise DriverError(f"CloudStack VM {vm.get('name')} has no NIC on the {network} network")


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"
