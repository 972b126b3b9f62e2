"""What the ``cloudstack`` driver reads from CloudStack: zone, offerings, templates, and a cluster's VMs and networks.

Nothing here changes CloudStack. A setting that names something CloudStack
does not have (``zone``, ``networkoffering``, ``public_network``,
``service_offering``) is a :class:`~pragma_core.errors.ConfigError` naming
``cloudstack.conf`` and the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pragma_core import CapacityError, ConfigError, DriverError, NodeTemplate

from .config import settings_file
from .naming import TAG_CLUSTER, names_of, tag

if TYPE_CHECKING:
    from .driver import CloudStackDriver

log = logging.getLogger(__name__)


class Lookups:
    """Read-only queries through ``driver``'s client, with ``driver``'s settings."""

    def __init__(self, driver: CloudStackDriver) -> None:
        self.driver = driver
        self.config = driver.config

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
        """The network ``public_network`` names in ``zone`` (exactly one)."""
        wanted = self.config.public_network
        networks = self._list("listNetworks", {"zoneid": zone["id"], "listall": "true"}, key="network")
        matches = [n for n in networks if wanted in (n.get("name"), n.get("id"))]
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
        accounts = self._list("listAccounts", {}, key="account")
        if not accounts:
            return
        available = str(accounts[0].get("cpuavailable", "Unlimited"))
        if available.isdigit() and needed > int(available):
            raise CapacityError(f"the cluster needs {needed} CPUs; the CloudStack account has {available} left")

    # ------------------------------------------------------------------ clusters

    def cluster_vms(self, name: str | None, *, include_expunging: bool = False) -> list[dict]:
        """The VMs tagged with cluster ``name`` (any cluster when ``None``); Expunging ones only when asked."""
        params = {"listall": "true"}
        if name is not None:
            # A tag filter needs both key and value; without a name, filter here.
            params.update({"tags[0].key": TAG_CLUSTER, "tags[0].value": name})
        result = []
        for vm in self._list("listVirtualMachines", params, key="virtualmachine"):
            cluster = tag(vm, TAG_CLUSTER)
            if cluster is None or (name is not None and cluster != name):
                continue
            if vm.get("state") == "Expunging" and not include_expunging:
                continue
            result.append(vm)
        return result

    def cluster_networks(self, name: str) -> list[dict]:
        """The networks tagged with cluster ``name``."""
        params = {"listall": "true", "tags[0].key": TAG_CLUSTER, "tags[0].value": name}
        return [n for n in self._list("listNetworks", params, key="network") if tag(n, TAG_CLUSTER) == name]

    def vms_named(self, names: Iterable[str]) -> list[dict]:
        """The VMs whose name is exactly one of ``names``."""
        found = []
        for name in names:
            for vm in self._list("listVirtualMachines", {"listall": "true", "name": name}, key="virtualmachine"):
                if vm.get("name") == name:  # CloudStack matches "name" as a substring
                    found.append(vm)
        return found

    def vms_with_id(self, vm_id: str) -> list[dict]:
        """The VM with id ``vm_id`` (empty when CloudStack has none)."""
        return self._list("listVirtualMachines", {"id": vm_id, "listall": "true"}, key="virtualmachine")

    def names_in_use(self, prefix: str) -> list[str]:
        """Names and cluster tags of every VM and network whose name holds ``prefix``."""
        vms = self._list("listVirtualMachines", {"listall": "true", "keyword": prefix}, key="virtualmachine")
        networks = self._list("listNetworks", {"listall": "true", "keyword": prefix}, key="network")
        return [*names_of(vms), *names_of(networks)]

    def all_networks(self) -> list[dict]:
        """Every network the account sees."""
        return self._list("listNetworks", {"listall": "true"}, key="network")
