"""Winding a CloudStack cluster down: ``shutdown`` stops its VMs; ``clean`` and ``rollback`` remove them and its network.

Removal destroys every VM with ``expunge=true`` (so the network can be
deleted at once), then deletes the network; whatever is already gone is
ignored, so it is safe to repeat. A VM or network is found by the cluster's
tags, by its exact name and by the ids an allocation's state holds, so a
half-made allocation is removed whole. An account that may not expunge
(``allow.user.expunge.recover.vm`` is off) gets plain destroys and a warning
once: the network then stays until CloudStack expunges the VMs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pragma_core import Allocation, ClusterStatus, DriverError, NotFoundError

from .listing import list_clusters
from .naming import TAG_CLUSTER, ordered, tag
from .state import CloudStackState

if TYPE_CHECKING:
    from .driver import CloudStackDriver

log = logging.getLogger(__name__)

#: VM states in which a node counts as running (``clean`` refuses).
ACTIVE_STATES = frozenset({"Running", "Starting", "Stopping", "Migrating"})
#: VM states that need no stop.
STOPPED_STATES = frozenset({"Stopped", "Destroyed", "Error", "Expunging"})
#: Error code CloudStack uses when an id is unknown or a parameter is wrong.
PARAM_ERROR = 431
#: Error code of a permission refusal (e.g. expunge=true for a plain user).
PERMISSION_DENIED = 531


class Teardown:
    """Stops and removes clusters through ``driver``'s client; remembers whether the account may expunge."""

    def __init__(self, driver: CloudStackDriver) -> None:
        self.driver = driver
        self.expunge_allowed = True

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, name: str) -> ClusterStatus:
        """Stop the computes, then the frontend; a stop that fails is retried with ``forced=true``."""
        lookups = self.driver.lookups
        vms = lookups.cluster_vms(name)
        if not vms:
            if lookups.cluster_networks(name):
                return ClusterStatus(name=name)
            raise NotFoundError(f"no CloudStack cluster named {name}")
        frontend, *computes = ordered(vms)
        self.driver._parallel(self._stop, [vm for vm in computes if vm.get("state") not in STOPPED_STATES])
        if frontend.get("state") not in STOPPED_STATES:
            self._stop(frontend)
        statuses = list_clusters(lookups, name)
        return statuses[0] if statuses else ClusterStatus(name=name)

    def _stop(self, vm: dict) -> None:
        from .client import CloudStackError

        client = self.driver.client
        try:
            client.call("stopVirtualMachine", {"id": vm["id"]})
        except CloudStackError as exc:
            log.warning("stopping %s failed (%s); forcing it off", vm["name"], exc)
            client.call("stopVirtualMachine", {"id": vm["id"], "forced": "true"})

    # ------------------------------------------------------------------ clean and rollback

    def clean(self, name: str) -> None:
        """Destroy (expunge) cluster ``name``'s VMs and delete its network; refuses while a node runs."""
        lookups = self.driver.lookups
        vms = lookups.cluster_vms(name, include_expunging=True)
        networks = lookups.cluster_networks(name)
        if not vms and not networks:
            raise NotFoundError(f"no CloudStack cluster named {name}")
        running = [vm for vm in vms if vm.get("state") in ACTIVE_STATES]
        if running:
            listed = ", ".join(f"{vm['name']} ({vm['state']})" for vm in ordered(running))
            raise DriverError(f"cluster {name} still has running nodes: {listed}; run 'pragma shutdown {name}' first")
        self.remove(name)

    def rollback(self, allocation: Allocation) -> None:
        """Destroy (expunge) every VM and delete the network made for ``allocation``; safe to repeat."""
        state = self.driver.state_of(allocation, CloudStackState())
        self.remove(
            allocation.cluster,
            vm_ids=list(state.vm_ids.values()),
            network_ids=[state.network_id] if state.network_id else [],
            names=[node.name for node in allocation.nodes],
        )

    def remove(
        self,
        cluster: str | None,
        *,
        vm_ids: Iterable[str] = (),
        network_ids: Iterable[str] = (),
        names: Iterable[str] = (),
        quiet: bool = False,
    ) -> None:
        """Destroy with expunge the cluster's VMs, then delete its networks; ignores what is gone.

        ``quiet``: a failure is logged as a warning instead of raised (the
        clean-up of a failed ``allocate``, whose own error is what counts).
        """
        try:
            vms = self._vms_to_remove(cluster, vm_ids, names)
            self.driver._parallel(self._destroy, [vm for vm in vms if vm.get("state") != "Expunging"])
            for network_id in self._networks_to_remove(cluster, network_ids):
                self._ignore_gone(functools.partial(self.driver.client.call, "deleteNetwork", {"id": network_id}))
        except DriverError as exc:
            if not quiet:
                raise
            log.warning("could not remove everything of cluster %s: %s", cluster, exc)

    def _vms_to_remove(self, cluster: str | None, vm_ids: Iterable[str], names: Iterable[str]) -> list[dict]:
        """The VMs tagged with ``cluster``, named one of ``names`` or with one of ``vm_ids``, once each."""
        lookups = self.driver.lookups
        vms: dict[str, dict] = {}
        if cluster is not None:
            vms.update((vm["id"], vm) for vm in lookups.cluster_vms(cluster, include_expunging=True))
        vms.update((vm["id"], vm) for vm in lookups.vms_named(names))
        for vm_id in vm_ids:
            if vm_id not in vms:
                vms.update((vm["id"], vm) for vm in lookups.vms_with_id(vm_id))
        return list(vms.values())

    def _networks_to_remove(self, cluster: str | None, network_ids: Iterable[str]) -> list[str]:
        """Ids of the networks tagged with ``cluster``, of an untagged isolated one named like it, and ``network_ids``."""
        lookups = self.driver.lookups
        networks: dict[str, dict] = {}
        wanted_names: set[str] = set()
        if cluster is not None:
            networks.update((n["id"], n) for n in lookups.cluster_networks(cluster))
            wanted_names.add(cluster)  # made, but maybe not tagged yet
        wanted_ids = set(network_ids) - set(networks)
        if wanted_names or wanted_ids:
            for net in lookups.all_networks():
                named = net.get("name") in wanted_names and net.get("type") == "Isolated"
                if net["id"] in wanted_ids or (named and tag(net, TAG_CLUSTER) in (None, cluster)):
                    networks[net["id"]] = net
        return list(networks)

    def _destroy(self, vm: dict) -> None:
        from .client import CloudStackError

        client = self.driver.client
        if self.expunge_allowed:
            try:
                self._ignore_gone(lambda: client.call("destroyVirtualMachine", {"id": vm["id"], "expunge": "true"}))
                return
            except CloudStackError as exc:
                if exc.errorcode != PERMISSION_DENIED:
                    raise
                self.expunge_allowed = False
                log.warning(
                    "CloudStack refuses expunge=true for this account (%s); destroyed VMs stay until CloudStack "
                    "expunges them, and their network cannot be deleted before. Set allow.user.expunge.recover.vm=true.",
                    exc.errortext,
                )
        if vm.get("state") != "Destroyed":
            self._ignore_gone(lambda: client.call("destroyVirtualMachine", {"id": vm["id"]}))

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
