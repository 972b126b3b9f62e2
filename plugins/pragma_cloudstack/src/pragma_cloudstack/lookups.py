"""What the ``cloudstack`` driver reads from CloudStack: zone, offerings, templates, and a cluster's VMs and networks.

Nothing here changes CloudStack. Every VM and network the driver may act on
is listed through :meth:`Lookups.owner`: scoped to pragma's own account and
checked to be its (:mod:`.ownership`). A setting that names something CloudStack
does not have (``zone``, ``networkoffering``, ``public_network``,
``service_offering``) is a :class:`~pragma_core.errors.ConfigError` naming
``cloudstack.conf`` and the key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pragma_core import CapacityError, ConfigError, DriverError, NodeTemplate

from .config import settings_file
from .naming import TAG_CLUSTER, names_of, tag
from .ownership import Owner

if TYPE_CHECKING:
    from .driver import CloudStackDriver

log = logging.getLogger(__name__)


class Lookups:
    """Read-only queries through ``driver``'s client, with ``driver``'s settings."""

    def __init__(self, driver: CloudStackDriver) -> None:
        self.driver = driver
        self.config = driver.config
        self._owner: Owner | None = None
        self._owner_lock = threading.Lock()

    def _config_error(self, key: str, message: str) -> ConfigError:
        path = settings_file(Path(self.driver.site.conf_dir))
        return ConfigError(message, path=path, key=key)

    def _list(self, command: str, params: dict[str, str], key: str) -> list[dict]:
        return self.driver.client.list(command, params, key=key)

    # ------------------------------------------------------------------ the site's choices

    def zone(self) -> dict:
        """The configured zone, else the only (or first) available one."""
        zones = self._list("listZones", {"available": "true"}, key="zone")
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

    def network_offering(self) -> dict:
        """The configured (else the first) enabled isolated network offering with SourceNat."""
        offerings = self._list(
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

    def public_network(self, zone: dict) -> dict:
        """The network ``public_network`` names in ``zone`` (exactly one): a shared one, or pragma's account's."""
        wanted = self.config.public_network
        networks = self._list("listNetworks", {"zoneid": zone["id"]}, key="network")
        owner = self.owner
        matches = [n for n in networks if wanted in (n.get("name"), n.get("id")) and owner.may_use(n)]
        if not matches:
            raise self._config_error("public_network", f"no network {wanted!r} in zone {zone.get('name')}")
        if len(matches) > 1:
            raise self._config_error("public_network", f"{len(matches)} networks are named {wanted!r}; give its id")
        return matches[0]

    def templates(self, zone: dict) -> list[dict]:
        """Every template of ``zone`` under ``templatefilter``."""
        return self._list("listTemplates", {"templatefilter": self.config.templatefilter, "zoneid": zone["id"]}, key="template")

    def template(self, templates: list[dict], name: str) -> dict:
        """The ready template called ``name`` among ``templates``."""
        found = [t for t in templates if t.get("name") == name]
        ready = [t for t in found if t.get("isready", True)]
        if not ready:
            state = "is not ready" if found else "is not in CloudStack"
            raise DriverError(f"template {name!r} {state} (templatefilter={self.config.templatefilter})")
        return ready[0]

    def service_offering(self, offerings: list[dict], template: NodeTemplate, memory_mib: int | None) -> dict:
        """The configured service offering, else the smallest fixed one with the template's CPUs and the memory asked."""
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

    def check_cpu_limit(self, needed: int) -> None:
        """Raise :class:`CapacityError` when the account has fewer than ``needed`` CPUs left."""
        available = str(self.account().get("cpuavailable", "Unlimited"))
        if available.isdigit() and needed > int(available):
            raise CapacityError(f"the cluster needs {needed} CPUs; the CloudStack account has {available} left")

    # ------------------------------------------------------------------ the account

    def account(self) -> dict:
        """The account the API key belongs to, as ``listAccounts`` gives it now (its CPU counts change).

        Without ``listall``, ``domainid``, ``id`` or ``name``, CloudStack lists
        the caller's own account only, for a user and an admin alike.
        """
        accounts = self._list("listAccounts", {}, key="account")
        Owner.of(accounts)  # exactly one, with a name and a domain
        return accounts[0]

    @property
    def owner(self) -> Owner:
        """pragma's own account (looked up once): every VM and network the driver touches is its."""
        with self._owner_lock:
            if self._owner is None:
                self._owner = Owner.of([self.account()])
                log.debug("CloudStack account: %s (domain %s)", self._owner.name, self._owner.domainid)
            return self._owner

    def _own(self, command: str, params: dict[str, str], key: str) -> list[dict]:
        """The items of a list of VMs or networks, scoped to pragma's account and checked to be its."""
        owner = self.owner
        return owner.mine(self._list(command, {**params, **owner.scope()}, key=key), key)

    # ------------------------------------------------------------------ clusters

    def cluster_vms(self, name: str | None, *, include_expunging: bool = False) -> list[dict]:
        """pragma's VMs tagged with cluster ``name`` (any cluster when ``None``); Expunging ones only when asked."""
        params: dict[str, str] = {}
        if name is not None:
            # A tag filter needs both key and value; without a name, filter here.
            params.update({"tags[0].key": TAG_CLUSTER, "tags[0].value": name})
        result = []
        for vm in self._own("listVirtualMachines", params, key="virtualmachine"):
            cluster = tag(vm, TAG_CLUSTER)
            if cluster is None or (name is not None and cluster != name):
                continue
            if vm.get("state") == "Expunging" and not include_expunging:
                continue
            result.append(vm)
        return result

    def cluster_networks(self, name: str) -> list[dict]:
        """pragma's networks tagged with cluster ``name``."""
        params = {"tags[0].key": TAG_CLUSTER, "tags[0].value": name}
        return [n for n in self._own("listNetworks", params, key="network") if tag(n, TAG_CLUSTER) == name]

    def vms_named(self, names: Iterable[str]) -> list[dict]:
        """pragma's VMs whose name is exactly one of ``names``."""
        found = []
        for name in names:
            for vm in self._own("listVirtualMachines", {"name": name}, key="virtualmachine"):
                if vm.get("name") == name:  # CloudStack matches "name" as a substring
                    found.append(vm)
        return found

    def vms_with_id(self, vm_id: str) -> list[dict]:
        """pragma's VM with id ``vm_id`` (empty when CloudStack has none, or it is another account's)."""
        return [vm for vm in self._own("listVirtualMachines", {"id": vm_id}, key="virtualmachine") if vm.get("id") == vm_id]

    def vms_on_network(self, network_id: str) -> list[dict]:
        """pragma's VMs with a NIC on network ``network_id``."""
        return self._own("listVirtualMachines", {"networkid": network_id}, key="virtualmachine")

    def network_with_id(self, network_id: str) -> list[dict]:
        """pragma's network with id ``network_id`` (empty when CloudStack has none, or it is another account's)."""
        return [n for n in self._own("listNetworks", {"id": network_id}, key="network") if n.get("id") == network_id]

    def networks_made(self, name: str, displaytext: str) -> list[dict]:
        """pragma's networks called ``name`` whose display text is exactly ``displaytext`` (which names one run)."""
        networks = self._own("listNetworks", {"keyword": name}, key="network")
        return [n for n in networks if n.get("name") == name and n.get("displaytext") == displaytext]

    def names_in_use(self, prefix: str) -> list[str]:
        """Names and cluster tags of every VM and network whose name holds ``prefix``, whoever's.

        Deliberately not scoped to pragma's account: a new cluster's name
        should differ from every one the key can see. Nothing is changed.
        """
        vms = self._list("listVirtualMachines", {"listall": "true", "keyword": prefix}, key="virtualmachine")
        networks = self._list("listNetworks", {"listall": "true", "keyword": prefix}, key="network")
        return [*names_of(vms), *names_of(networks)]
