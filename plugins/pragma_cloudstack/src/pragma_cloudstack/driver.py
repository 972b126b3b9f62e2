"""The ``cloudstack`` driver: virtual clusters as Apache CloudStack VMs.

A cluster ``<vm_prefix><n>`` (e.g. ``vc-3``) is:

* an isolated network named like the cluster, from the configured (or first
  suitable) network offering, with egress opened for the cluster's subnet;
* a frontend VM named like the cluster, with a NIC on that network (eth0,
  ``private``) and one on ``public_network`` (eth1, ``public``);
* compute VMs ``<cluster>-compute-<i>`` on the private network only.

Every VM and the network carry the resource tags ``pragma-cluster=<cluster>``
and ``pragma-role=frontend|compute``; ``list``, ``shutdown`` and ``clean``
find a cluster by exact tag value, never by a substring of a name. A frontend
name is ``<prefix><number>`` and the prefix may not contain ``compute``, so a
frontend name can never equal another cluster's compute name.

``allocate`` deploys everything stopped (``startvm=false``) and reads the
NICs back; ``deploy`` hands each VM its ``vc-out.xml`` as userdata (POST,
base64) and starts the frontend, then the computes with ``max_parallel``
threads. Whatever a failed ``allocate`` made is removed before it raises;
core calls :meth:`CloudStackDriver.rollback` for a failed ``deploy``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TypeVar

from pragma_core import (
    Allocation,
    BootRequest,
    CapacityError,
    ClusterStatus,
    ConfigError,
    Driver,
    DriverError,
    Interface,
    Network,
    Node,
    NodeStatus,
    NodeTemplate,
    NotFoundError,
    StagedCluster,
)
from pragma_core.pluginkit import run_parallel

from .config import CloudStackSettings, settings_file, warn_about_secret_file

if TYPE_CHECKING:
    from pragma_core import Repository
    from pragma_core.pluginkit import SiteConfig

    from .client import CloudStackClient

log = logging.getLogger(__name__)

TAG_CLUSTER = "pragma-cluster"
TAG_ROLE = "pragma-role"
#: VM states in which a node counts as running (``clean`` refuses).
ACTIVE_STATES = frozenset({"Running", "Starting", "Stopping", "Migrating"})
#: VM states that need no stop.
STOPPED_STATES = frozenset({"Stopped", "Destroyed", "Error", "Expunging"})
#: Error code CloudStack uses when an id is unknown or a parameter is wrong.
PARAM_ERROR = 431
#: Error code of a permission refusal (e.g. expunge=true for a plain user).
PERMISSION_DENIED = 531

T = TypeVar("T")
R = TypeVar("R")


def template_name(source: str) -> str:
    """The CloudStack template for a disk: the basename of its ``<source file>`` up to the first ``.``."""
    return PurePath(source).name.split(".", 1)[0]


class CloudStackDriver(Driver):
    """Boots virtual clusters on Apache CloudStack (settings: ``cloudstack.conf``)."""

    name = "cloudstack"
    config_class = CloudStackSettings

    def __init__(self, config: CloudStackSettings | None, *, site: SiteConfig) -> None:
        if config is None:
            raise ConfigError(f"configuration file not found: {Path(site.conf_dir) / 'cloudstack.conf'}")
        super().__init__(config, site=site)
        self.config: CloudStackSettings = config
        warn_about_secret_file(Path(site.conf_dir))
        self._client: CloudStackClient | None = None
        self._expunge_allowed = True

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> CloudStackClient:
        """The API client, made on first use."""
        if self._client is None:
            from .client import CloudStackClient

            cfg = self.config
            self._client = CloudStackClient(
                cfg.baseurl,
                cfg.apikey,
                cfg.secretkey,
                timeout=cfg.request_timeout,
                retries=cfg.retries,
                retry_backoff=cfg.poll_interval,
                expires_after=cfg.signature_lifetime,
                page_size=cfg.page_size,
                poll_interval=cfg.poll_interval,
                poll_max_interval=cfg.poll_max_interval,
                job_timeout=cfg.job_timeout,
                verify_tls=cfg.verify_tls,
                pool_size=cfg.max_parallel + 2,
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _parallel(
        self, func: Callable[[T], R], items: Iterable[T], *, label: Callable[[T], str] | None = None, what: str = "calls"
    ) -> list[R]:
        """``func`` over ``items`` with ``max_parallel`` threads; waits for all, then raises every failure.

        One failure is raised as it is, several as one
        :class:`~pragma_core.pluginkit.ParallelError` naming each (still a
        :class:`DriverError` when they all are).
        """
        return run_parallel(func, items, workers=self.config.max_parallel, label=label, what=what)

    def _config_error(self, key: str, message: str) -> ConfigError:
        path = settings_file(Path(self.site.conf_dir))
        return ConfigError(message, path=path, key=key)

    # ------------------------------------------------------------------ lookups

    def _zone(self) -> dict:
        zones = self.client.list("listZones", {"available": "true"}, key="zone")
        wanted = self.config.zone
        if wanted is not None:
            for zone in zones:
                if wanted in (zone.get("name"), zone.get("id")):
                    return zone
            names = ", ".join(sorted(str(z.get("name")) for z in zones)) or "none"
            raise self._config_error("zone", f"no zone {wanted!r} in CloudStack (zones: {names})")
        if not zones:
            raise DriverError("CloudStack lists no zone")
        if len(zones) > 1:
            log.warning("CloudStack has %d zones; using %s (set zone in cloudstack.conf)", len(zones), zones[0].get("name"))
        return zones[0]

    def _network_offering(self) -> dict:
        offerings = self.client.list(
            "listNetworkOfferings",
            {"state": "Enabled", "guestiptype": "Isolated", "forvpc": "false", "supportedServices": "SourceNat"},
            key="networkoffering",
        )
        wanted = self.config.networkoffering
        if wanted is not None:
            for offering in offerings:
                if wanted in (offering.get("name"), offering.get("id")):
                    return offering
            names = ", ".join(sorted(str(o.get("name")) for o in offerings)) or "none"
            raise self._config_error(
                "networkoffering", f"no enabled isolated SourceNat network offering {wanted!r} (offerings: {names})"
            )
        if not offerings:
            raise DriverError("CloudStack has no enabled isolated network offering with SourceNat")
        return offerings[0]

    def _public_network(self, zone: dict) -> dict:
        wanted = self.config.public_network
        networks = self.client.list("listNetworks", {"zoneid": zone["id"], "listall": "true"}, key="network")
        matches = [n for n in networks if wanted in (n.get("name"), n.get("id"))]
        if not matches:
            raise self._config_error("public_network", f"no network {wanted!r} in zone {zone.get('name')}")
        if len(matches) > 1:
            raise self._config_error("public_network", f"{len(matches)} networks are named {wanted!r}; give its id")
        return matches[0]

    def _templates(self, zone: dict) -> list[dict]:
        return self.client.list(
            "listTemplates", {"templatefilter": self.config.templatefilter, "zoneid": zone["id"]}, key="template"
        )

    def _template(self, templates: list[dict], name: str) -> dict:
        found = [t for t in templates if t.get("name") == name]
        ready = [t for t in found if t.get("isready", True)]
        if not ready:
            state = "is not ready" if found else "is not in CloudStack"
            raise DriverError(f"template {name!r} {state} (templatefilter={self.config.templatefilter})")
        return ready[0]

    def _offering(self, offerings: list[dict], template: NodeTemplate, memory_mib: int | None) -> dict:
        wanted = self.config.service_offering
        if wanted is not None:
            for offering in offerings:
                if wanted in (offering.get("name"), offering.get("id")):
                    return offering
            names = ", ".join(sorted(str(o.get("name")) for o in offerings)) or "none"
            raise self._config_error("service_offering", f"no service offering {wanted!r} (offerings: {names})")
        cpus = template.vcpus or 1
        memory = memory_mib or template.memory_mib or 0
        fitting = [
            o for o in offerings
            if int(o.get("cpunumber") or 0) >= cpus and int(o.get("memory") or 0) >= memory and not o.get("iscustomized")
        ]
        if not fitting:
            raise CapacityError(f"no CloudStack service offering has {cpus} CPUs and {memory} MiB for the {template.role}")
        return min(fitting, key=lambda o: (int(o["cpunumber"]), int(o["memory"])))

    def _check_cpu_limit(self, needed: int) -> None:
        accounts = self.client.list("listAccounts", {}, key="account")
        if not accounts:
            return
        available = str(accounts[0].get("cpuavailable", "Unlimited"))
        if available.isdigit() and needed > int(available):
            raise CapacityError(f"the cluster needs {needed} CPUs; the CloudStack account has {available} left")

    def _cluster_vms(self, name: str | None, *, include_expunging: bool = False) -> list[dict]:
        params = {"listall": "true"}
        if name is not None:
            # A tag filter needs both key and value; without a name, filter here.
            params.update({"tags[0].key": TAG_CLUSTER, "tags[0].value": name})
        vms = self.client.list("listVirtualMachines", params, key="virtualmachine")
        result = []
        for vm in vms:
            cluster = _tag(vm, TAG_CLUSTER)
            if cluster is None or (name is not None and cluster != name):
                continue
            if vm.get("state") == "Expunging" and not include_expunging:
                continue
            result.append(vm)
        return result

    def _cluster_networks(self, name: str) -> list[dict]:
        params = {"listall": "true", "tags[0].key": TAG_CLUSTER, "tags[0].value": name}
        networks = self.client.list("listNetworks", params, key="network")
        return [n for n in networks if _tag(n, TAG_CLUSTER) == name]

    def _vms_named(self, names: Iterable[str]) -> list[dict]:
        found = []
        for name in names:
            for vm in self.client.list("listVirtualMachines", {"listall": "true", "name": name}, key="virtualmachine"):
                if vm.get("name") == name:  # CloudStack matches "name" as a substring
                    found.append(vm)
        return found

    # ------------------------------------------------------------------ naming

    def _lock(self) -> Any:
        from filelock import FileLock

        directory = self.site.temp_directory or Path(tempfile.gettempdir())
        digest = hashlib.sha256(f"{self.config.baseurl}\0{self.config.apikey}".encode()).hexdigest()[:16]
        return FileLock(str(Path(directory) / f"pragma-cloudstack-{digest}.lock"), timeout=300)

    def _free_name(self) -> str:
        """The smallest unused ``<vm_prefix><n>``: no VM, network or tag uses it."""
        prefix = self.config.vm_prefix
        taken: set[str] = set()
        pattern = re.compile(re.escape(prefix) + r"(\d+)(?:-compute-\d+)?")
        for vm in self.client.list("listVirtualMachines", {"listall": "true", "keyword": prefix}, key="virtualmachine"):
            for text in (vm.get("name", ""), _tag(vm, TAG_CLUSTER) or ""):
                match = pattern.fullmatch(text)
                if match:
                    taken.add(match.group(1))
        for net in self.client.list("listNetworks", {"listall": "true", "keyword": prefix}, key="network"):
            for text in (net.get("name", ""), _tag(net, TAG_CLUSTER) or ""):
                match = pattern.fullmatch(text)
                if match:
                    taken.add(match.group(1))
        number = 1
        while str(number) in taken:
            number += 1
        return f"{prefix}{number}"

    # ------------------------------------------------------------------ allocate

    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        """Create the cluster's network and its stopped VMs; read their NICs into an :class:`Allocation`."""
        description = cluster.description
        zone = self._zone()
        templates = self._templates(zone)
        fe_template = self._template(templates, template_name(description.frontend.disk.source))
        cp_template = self._template(templates, template_name(description.compute_template.disk.source))
        offerings = self.client.list("listServiceOfferings", {}, key="serviceoffering")
        fe_offering = self._offering(offerings, description.frontend, request.memory.frontend_mib)
        cp_offering = self._offering(offerings, description.compute_template, request.memory.compute_mib)
        per_compute = int(cp_offering["cpunumber"])
        if per_compute < 1:
            raise DriverError(f"service offering {cp_offering.get('name')!r} has no CPU")
        computes = math.ceil(request.cpus / per_compute) if request.cpus > 0 else 0
        self._check_cpu_limit(int(fe_offering["cpunumber"]) + computes * per_compute)
        public = self._public_network(zone)
        net_offering = self._network_offering()

        made = _Made()
        try:
            with self._lock():
                name = self._free_name()
                made.cluster = name
                network = self._create_network(name, zone, net_offering, made)
            names = [name] + [f"{name}-compute-{i}" for i in range(computes)]
            made.names.extend(names)
            specs = [(name, "frontend", fe_template, fe_offering, [network, public])]
            specs += [(n, "compute", cp_template, cp_offering, [network]) for n in names[1:]]
            vms = self._parallel(lambda spec: self._deploy_vm(zone, spec, made), specs, label=lambda spec: spec[0], what="VMs")
            return self._allocation(request, cluster, name, zone, network, public, vms)
        except BaseException as exc:
            log.debug("allocate failed (%s); removing what it made", exc)
            self._remove(made.cluster, vm_ids=made.vm_ids, network_ids=made.network_ids, names=made.names, quiet=True)
            raise

    def _create_network(self, name: str, zone: dict, offering: dict, made: _Made) -> dict:
        # If the answer is lost after CloudStack made the network, the clean-up finds it by its name.
        answer = self.client.request(
            "createNetwork",
            {
                "name": name,
                "displaytext": f"pragma virtual cluster {name}",
                "networkofferingid": offering["id"],
                "zoneid": zone["id"],
            },
        )
        network = answer.get("network", answer)
        made.network_ids.append(network["id"])
        # Tagging and opening egress are independent: run both jobs at once.
        jobs = [("createTags", self._start_tagging([network["id"]], "Network", name, "private"))]
        if not _truthy(offering.get("egressdefaultpolicy")):
            # Egress is closed by default on this offering: let the cluster reach out.
            egress = {"networkid": network["id"], "protocol": "all", "cidrlist": network.get("cidr", "0.0.0.0/0")}
            jobs.append(("createEgressFirewallRule", self.client.start_job("createEgressFirewallRule", egress)[0]))
        self._wait_all(jobs)
        return network

    def _wait_all(self, jobs: list[tuple[str, str]]) -> list[dict]:
        """Wait for every started job (one after the other: they run in CloudStack), then raise every failure."""
        return run_parallel(lambda job: self.client.wait_job(*job), jobs, workers=1, label=lambda job: job[0], what="jobs")

    def _deploy_vm(self, zone: dict, spec: tuple[str, str, dict, dict, list[dict]], made: _Made) -> dict:
        name, role, template, offering, networks = spec
        params: dict[str, Any] = {
            "name": name,
            "displayname": name,
            "zoneid": zone["id"],
            "templateid": template["id"],
            "serviceofferingid": offering["id"],
            "startvm": "false",
        }
        for index, network in enumerate(networks):
            params[f"iptonetworklist[{index}].networkid"] = network["id"]
        jobid, answer = self.client.start_job("deployVirtualMachine", params)
        jobs = [("deployVirtualMachine", jobid)]
        tag_error: DriverError | None = None
        if answer.get("id"):
            made.vm_ids.append(str(answer["id"]))
            # The VM exists from here on: tag it while it deploys, so it is found by tag whatever happens next.
            try:
                jobs.append(("createTags", self._start_tagging([str(answer["id"])], "UserVm", made.cluster or "", role)))
            except DriverError as exc:
                tag_error = exc  # still let the deployment finish before the clean-up removes it
        result = self._wait_all(jobs)[0]
        if tag_error is not None:
            raise tag_error
        vm = result.get("virtualmachine")
        if not isinstance(vm, dict):
            raise DriverError(f"CloudStack deployVirtualMachine: no virtualmachine in the result for {name} ({role})")
        if len(jobs) == 1:
            self.client.wait_job("createTags", self._start_tagging([vm["id"]], "UserVm", made.cluster or "", role))
        return vm

    def _start_tagging(self, ids: list[str], resource_type: str, cluster: str, role: str) -> str:
        """Start tagging resources with ``pragma-cluster`` and ``pragma-role``; the job id."""
        jobid, _ = self.client.start_job(
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

    def _allocation(
        self,
        request: BootRequest,
        cluster: StagedCluster,
        name: str,
        zone: dict,
        network: dict,
        public: dict,
        vms: list[dict],
    ) -> Allocation:
        private_net = ipaddress.IPv4Network(network["cidr"])
        public_net = ipaddress.IPv4Network(public["cidr"])
        public_gateway = ipaddress.IPv4Address(public["gateway"])
        fe_vm = vms[0]
        fe_private = _nic(fe_vm, network["id"], "private", "eth0")
        fe_public = _nic(fe_vm, public["id"], "public", "eth1")
        frontend = Node(
            name=fe_vm["name"],
            hostname=name,
            role="frontend",
            cpus=int(fe_vm.get("cpunumber") or 1),
            memory_mib=int(fe_vm.get("memory") or 0),
            interfaces=(fe_private, fe_public),
            gateway=public_gateway,
            host=str(zone.get("name", "")),
        )
        computes = tuple(
            Node(
                name=vm["name"],
                hostname=f"compute-{index}",
                role="compute",
                cpus=int(vm.get("cpunumber") or 1),
                memory_mib=int(vm.get("memory") or 0),
                interfaces=(_nic(vm, network["id"], "private", "eth0"),),
                gateway=fe_private.ip,
                host=str(zone.get("name", "")),
            )
            for index, vm in enumerate(vms[1:])
        )
        dns = self.config.dns or tuple(str(zone[k]) for k in ("dns1", "dns2") if zone.get(k)) or ("8.8.8.8",)
        domain = public.get("networkdomain")
        extra = {
            "zone_id": str(zone["id"]),
            "network_id": str(network["id"]),
            "public_network_id": str(public["id"]),
            **{f"vm.{vm['name']}": str(vm["id"]) for vm in vms},
        }
        return Allocation(
            cluster=name,
            image=cluster.description.name,
            fqdn=f"{name}.{domain}" if domain else name,
            frontend=frontend,
            computes=computes,
            networks=(
                Network(name="private", subnet=private_net, gateway=ipaddress.IPv4Address(network["gateway"])),
                Network(name="public", subnet=public_net, gateway=public_gateway),
            ),
            dns=dns,
            key=request.key,
            extra=extra,
        )

    # ------------------------------------------------------------------ deploy

    def deploy(self, allocation: Allocation, cluster: StagedCluster, vcout: Mapping[str, bytes]) -> None:
        """Give each VM its vc-out.xml as userdata, then start the frontend and the computes."""
        from .client import MAX_USERDATA_POST

        userdata: dict[str, str] = {}
        for node in allocation.nodes:
            if node.name not in vcout:
                raise DriverError(f"no vc-out.xml was rendered for node {node.name}")
            encoded = base64.b64encode(vcout[node.name]).decode("ascii")
            if len(encoded) > MAX_USERDATA_POST:
                raise DriverError(
                    f"vc-out.xml of {node.name} is {len(vcout[node.name])} bytes ({len(encoded)} in base64), "
                    f"over CloudStack's userdata limit of {MAX_USERDATA_POST} base64 bytes"
                )
            userdata[node.name] = encoded
        ids = {node.name: self._vm_id(allocation, node.name) for node in allocation.nodes}
        self._parallel(
            lambda node: self.client.request("updateVirtualMachine", {"id": ids[node.name], "userdata": userdata[node.name]}, post=True),
            allocation.nodes,
            label=lambda node: node.name,
            what="userdata updates",
        )
        self.client.call("startVirtualMachine", {"id": ids[allocation.frontend.name]})
        self._parallel(
            lambda node: self.client.call("startVirtualMachine", {"id": ids[node.name]}),
            allocation.computes,
            label=lambda node: node.name,
            what="compute starts",
        )

    def _vm_id(self, allocation: Allocation, name: str) -> str:
        vm_id = allocation.extra.get(f"vm.{name}")
        if vm_id:
            return vm_id
        found = self._vms_named([name])
        if not found:
            raise NotFoundError(f"CloudStack has no VM {name}")
        return str(found[0]["id"])

    # ------------------------------------------------------------------ rollback / clean

    def rollback(self, allocation: Allocation) -> None:
        """Destroy (expunge) every VM and delete the network made for ``allocation``; safe to repeat."""
        vm_ids = [v for k, v in allocation.extra.items() if k.startswith("vm.")]
        network_ids = [allocation.extra["network_id"]] if allocation.extra.get("network_id") else []
        self._remove(
            allocation.cluster,
            vm_ids=vm_ids,
            network_ids=network_ids,
            names=[node.name for node in allocation.nodes],
        )

    def _remove(
        self,
        cluster: str | None,
        *,
        vm_ids: Iterable[str] = (),
        network_ids: Iterable[str] = (),
        names: Iterable[str] = (),
        quiet: bool = False,
    ) -> None:
        """Destroy with expunge the cluster's VMs, then delete its networks; ignores what is gone."""
        try:
            vms: dict[str, dict] = {}
            if cluster is not None:
                vms.update((vm["id"], vm) for vm in self._cluster_vms(cluster, include_expunging=True))
            vms.update((vm["id"], vm) for vm in self._vms_named(names))
            for vm_id in vm_ids:
                if vm_id not in vms:
                    vms.update((vm["id"], vm) for vm in self.client.list("listVirtualMachines", {"id": vm_id, "listall": "true"}, key="virtualmachine"))
            self._parallel(
                self._destroy, [vm for vm in vms.values() if vm.get("state") != "Expunging"], label=lambda vm: str(vm.get("name")), what="VM removals"
            )
            networks: dict[str, dict] = {}
            wanted_names: set[str] = set()
            if cluster is not None:
                networks.update((n["id"], n) for n in self._cluster_networks(cluster))
                wanted_names.add(cluster)  # made, but maybe not tagged yet
            wanted_ids = set(network_ids) - set(networks)
            if wanted_names or wanted_ids:
                for net in self.client.list("listNetworks", {"listall": "true"}, key="network"):
                    if net["id"] in wanted_ids or (net.get("name") in wanted_names and net.get("type") == "Isolated" and _tag(net, TAG_CLUSTER) in (None, cluster)):
                        networks[net["id"]] = net
            for network_id in networks:
                self._ignore_gone(functools.partial(self.client.call, "deleteNetwork", {"id": network_id}))
        except DriverError as exc:
            if not quiet:
                raise
            log.warning("could not remove everything of cluster %s: %s", cluster, exc)

    def _destroy(self, vm: dict) -> None:
        from .client import CloudStackError

        if self._expunge_allowed:
            try:
                self._ignore_gone(lambda: self.client.call("destroyVirtualMachine", {"id": vm["id"], "expunge": "true"}))
                return
            except CloudStackError as exc:
                if exc.errorcode != PERMISSION_DENIED:
                    raise
                self._expunge_allowed = False
                log.warning(
                    "CloudStack refuses expunge=true for this account (%s); destroyed VMs stay until CloudStack "
                    "expunges them, and their network cannot be deleted before. Set allow.user.expunge.recover.vm=true.",
                    exc.errortext,
                )
        if vm.get("state") != "Destroyed":
            self._ignore_gone(lambda: self.client.call("destroyVirtualMachine", {"id": vm["id"]}))

    @staticmethod
    def _ignore_gone(action: Callable[[], Any]) -> None:
        from .client import CloudStackError

        try:
            action()
        except CloudStackError as exc:
            if exc.errorcode == PARAM_ERROR and "unable to find" in exc.errortext.lower():
                log.debug("already gone: %s", exc)
                return
            raise

    def clean(self, name: str) -> None:
        """Destroy (expunge) cluster ``name``'s VMs and delete its network; refuses while a node runs."""
        vms = self._cluster_vms(name, include_expunging=True)
        networks = self._cluster_networks(name)
        if not vms and not networks:
            raise NotFoundError(f"no CloudStack cluster named {name}")
        running = [vm for vm in vms if vm.get("state") in ACTIVE_STATES]
        if running:
            listed = ", ".join(f"{vm['name']} ({vm['state']})" for vm in _ordered(running))
            raise DriverError(f"cluster {name} still has running nodes: {listed}; run 'pragma shutdown {name}' first")
        self._remove(name)

    # ------------------------------------------------------------------ list / shutdown

    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        """The clusters found by their ``pragma-cluster`` tag, frontend first, sorted by name."""
        groups: dict[str, list[dict]] = {}
        for vm in self._cluster_vms(name):
            groups.setdefault(_tag(vm, TAG_CLUSTER) or "", []).append(vm)
        return [self._status(cluster, groups[cluster]) for cluster in sorted(groups)]

    def _status(self, cluster: str, vms: list[dict]) -> ClusterStatus:
        rows = []
        public_ip = None
        for vm in _ordered(vms):
            role = "frontend" if _tag(vm, TAG_ROLE) == "frontend" else "compute"
            private_ip = next((n.get("ipaddress") for n in vm.get("nic", []) if n.get("networkname") == cluster), None)
            public = next((n.get("ipaddress") for n in vm.get("nic", []) if n.get("networkname") != cluster), None)
            if role == "frontend":
                public_ip = public
            rows.append(
                NodeStatus(
                    name=vm["name"],
                    role=role,
                    state=str(vm.get("state", "")),
                    host=str(vm.get("hostname") or vm.get("zonename") or ""),
                    cpus=int(vm.get("cpunumber") or 0),
                    memory_mib=int(vm.get("memory") or 0),
                    public_ip=public if role == "frontend" else None,
                    private_ip=private_ip,
                )
            )
        return ClusterStatus(name=cluster, nodes=rows, public_ip=public_ip)

    def shutdown(self, name: str) -> ClusterStatus:
        """Stop the computes, then the frontend; a stop that fails is retried with ``forced=true``."""
        vms = self._cluster_vms(name)
        if not vms:
            if self._cluster_networks(name):
                return ClusterStatus(name=name)
            raise NotFoundError(f"no CloudStack cluster named {name}")
        ordered = _ordered(vms)
        computes = [vm for vm in ordered[1:] if vm.get("state") not in STOPPED_STATES]
        self._parallel(self._stop, computes, label=lambda vm: str(vm.get("name")), what="compute stops")
        if ordered[0].get("state") not in STOPPED_STATES:
            self._stop(ordered[0])
        statuses = self.list_clusters(name)
        return statuses[0] if statuses else ClusterStatus(name=name)

    def _stop(self, vm: dict) -> None:
        from .client import CloudStackError

        try:
            self.client.call("stopVirtualMachine", {"id": vm["id"]})
        except CloudStackError as exc:
            log.warning("stopping %s failed (%s); forcing it off", vm["name"], exc)
            self.client.call("stopVirtualMachine", {"id": vm["id"], "forced": "true"})

    # ------------------------------------------------------------------ repository

    def list_repository(self, repository: Repository) -> list[str]:
        """The names of the ready CloudStack templates this account can use."""
        zone = self._zone()
        return sorted({t["name"] for t in self._templates(zone) if t.get("isready", True)})


class _Made:
    """What an ``allocate`` in progress has created (ids as soon as CloudStack gave them)."""

    def __init__(self) -> None:
        self.cluster: str | None = None
        self.vm_ids: list[str] = []
        self.network_ids: list[str] = []
        self.names: list[str] = []


def _tag(obj: Mapping[str, Any], key: str) -> str | None:
    for tag in obj.get("tags") or ():
        if tag.get("key") == key:
            return str(tag.get("value"))
    return None


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _nic(vm: dict, network_id: str, network: str, device: str) -> Interface:
    for nic in vm.get("nic", []):
        if nic.get("networkid") == network_id:
            return Interface(network=network, ip=ipaddress.IPv4Address(nic["ipaddress"]), mac=nic["macaddress"], device=device)
    raise DriverError(f"CloudStack VM {vm.get('name')} has no NIC on the {network} network")


def _ordered(vms: list[dict]) -> list[dict]:
    """Frontend first, then computes by their index."""

    def key(vm: dict) -> tuple[int, int, str]:
        if _tag(vm, TAG_ROLE) == "frontend":
            return (0, 0, vm.get("name", ""))
        match = re.search(r"-compute-(\d+)$", vm.get("name", ""))
        return (1, int(match.group(1)) if match else 1 << 30, vm.get("name", ""))

    return sorted(vms, key=key)
