"""Whose resources the ``cloudstack`` driver may touch: only its own account's.

An API key may see more than its own account: a domain admin's sees its
domain, a root admin's the whole cloud (with ``listall=true``), and two pragma
sites on one cloud both name their clusters ``vc-<n>``. So the driver finds
the account its key belongs to once (``listAccounts`` without ``listall``
answers the caller's own account, whatever its role) and:

* scopes every list of VMs and networks to it (``account`` and ``domainid``
  request parameters, never ``listall``);
* checks the ``account`` and ``domainid`` fields of every VM and network
  CloudStack returns, and ignores (with a debug line) anything not its own:
  a server that ignores the filter cannot make the driver stop or remove
  another tenant's resources.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from pragma_core import DriverError

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class Owner:
    """The CloudStack account the API key belongs to: its name and its domain's id."""

    name: str
    domainid: str

    @classmethod
    def of(cls, accounts: list[dict]) -> Owner:
        """The owner from ``listAccounts``' answer for the caller (exactly one account, with a name and a domain)."""
        if len(accounts) != 1:
            raise DriverError(
                f"CloudStack listAccounts gives {len(accounts)} accounts for this API key, not its own one; "
                "cannot tell which resources are pragma's"
            )
        name, domainid = accounts[0].get("name"), accounts[0].get("domainid")
        if not name or not domainid:
            raise DriverError("CloudStack listAccounts gives an account without a name or a domainid; cannot tell which resources are pragma's")
        return cls(name=str(name), domainid=str(domainid))

    def scope(self) -> dict[str, str]:
        """The request parameters restricting a list to this account."""
        return {"account": self.name, "domainid": self.domainid}

    def owns(self, resource: Mapping[str, Any]) -> bool:
        """Whether a VM or network CloudStack listed belongs to this account (its ``account`` and ``domainid``)."""
        return resource.get("account") == self.name and str(resource.get("domainid")) == self.domainid

    def may_use(self, network: Mapping[str, Any]) -> bool:
        """Whether a network is this account's or shared (a domain- or zone-wide network carries no ``account``)."""
        return network.get("account") in (None, "") or self.owns(network)

    def mine(self, resources: Iterable[dict], what: str) -> list[dict]:
        """The resources this account owns; every other one is left out with a debug line."""
        kept = []
        for resource in resources:
            if self.owns(resource):
                kept.append(resource)
            else:
                log.debug(
                    "ignoring %s %s (%s): it belongs to account %r of domain %s, not to %r",
                    what, resource.get("name"), resource.get("id"), resource.get("account"), resource.get("domainid"), self.name,
                )
        return kept
