"""Winding a CloudStack cluster down: ``shutdown`` stops its VMs; ``clean`` and ``rollback`` remove them and its network.

Removal destroys every VM with ``expunge=true`` (so the network can be
deleted at once), then deletes the network; whatever is already gone is
ignored, so it is safe to repeat. Only pragma's own account's VMs and
networks are ever stopped or removed (:mod:`.ownership`). ``clean`` and
``shutdown`` find a cluster by its tags; ``rollback`` and the clean-up of a
failed ``allocate`` remove only what that run made: the ids it recorded,
and a VM whose deployment answer was lost by its name *and* its NIC on the
network the run made, never by a name alone. An account that may not expunge
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
from .naming import ordered
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
        """Destroy (expunge) cluster ``name``'s VMs and delete its network; refuses while a node runs.

        Only pragma's account's VMs and networks tagged with ``name`` count
        (:mod:`.ownership`): another tenant's cluster of the same name is
        never seen, let alone removed.
        """
        lookups = self.driver.lookups
        vms = lookups.cluster_vms(name, include_expunging=True)
        networks = lookups.cluster_networks(name)
        if not vms and not networks:
            raise NotFoundError(f"no CloudStack cluster named {name}")
        running = [vm for vm in vms if vm.get("state") in ACTIVE_STATES]
        if running:
            listed = ", ".join(f"{vm['name']} ({vm['state']})" for vm in ordered(running))
            raise DriverError(f"cluster {name} still has running nodes: {listed}; run 'pragma shutdown {name}' first")
        self._remove(vms, [network["id"] for network in networks])

    def rollback(self, allocation: Allocation) -> None:
        """Destroy (expunge) the VMs and delete the network whose ids ``allocation`` records; safe to repeat.

        Nothing is found by name or tag: an allocation recording no id removes
        nothing (a warning says to run ``pragma clean``).
        """
        state = self.driver.state_of(allocation, CloudStackState())
        if not state.vm_ids and not state.network_id:
            log.warning(
                "the allocation of cluster %s records no CloudStack ids, so rollback removes nothing; "
                "run 'pragma clean %s' to remove it by its tags",
                allocation.cluster, allocation.cluster,
            )
            return
        self.remove_made(
            cluster=allocation.cluster,
            vm_ids=list(state.vm_ids.values()),
            network_ids=[state.network_id] if state.network_id else [],
            names=[node.name for node in allocation.nodes],
        )

    def remove_made(
        self,
        *,
        cluster: str | None,
        vm_ids: Iterable[str],
        network_ids: Iterable[str],
        names: Iterable[str],
        quiet: bool = False,
    ) -> None:
        """Destroy with expunge the VMs one run made, then delete its networks; ignores what is gone.

        A VM is the run's when its id is in ``vm_ids``, or when it is named one
        of ``names`` *and* has a NIC on one of ``network_ids`` (a deployment
        whose answer was lost); never by its name alone, never by a tag, and
        only when pragma's account owns it. ``quiet``: a failure is logged as
        a warning instead of raised (the clean-up of a failed ``allocate``,
        whose own error is what counts).
        """
        try:
            networks = list(dict.fromkeys(network_ids))
            self._remove(self._vms_made(list(vm_ids), networks, set(names)), self._networks_made(networks))
        except DriverError as exc:
            if not quiet:
                raise
            log.warning("could not remove everything of cluster %s: %s", cluster, exc)

    def _remove(self, vms: list[dict], network_ids: list[str]) -> None:
        """Destroy ``vms`` with expunge, then delete the networks ``network_ids``; ignores what is gone."""
        self.driver._parallel(self._destroy, [vm for vm in vms if vm.get("state") != "Expunging"])
        for network_id in network_ids:
            self._ignore_gone(functools.partial(self.driver.client.call, "deleteNetwork", {"id": network_id}))

    def _vms_made(self, vm_ids: list[str], network_ids: list[str], names: set[str]) -> list[dict]:
        """pragma's VMs named one of ``names`` on one of ``network_ids``, and those with one of ``vm_ids``, once each."""
        lookups = self.driver.lookups
        vms: dict[str, dict] = {}
        for network_id in network_ids:
            vms.update((vm["id"], vm) for vm in lookups.vms_on_network(network_id) if vm.get("name") in names)
        for vm_id in vm_ids:
            if vm_id not in vms:
                vms.update((vm["id"], vm) for vm in lookups.vms_with_id(vm_id))
        return list(vms.values())

    def _networks_made(self, network_ids: list[str]) -> list[str]:
        """The ids among ``network_ids`` of networks that still exist and are pragma's account's."""
        lookups = self.driver.lookups
        return [network["id"] for network_id in network_ids for network in lookups.network_with_id(network_id)]

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
