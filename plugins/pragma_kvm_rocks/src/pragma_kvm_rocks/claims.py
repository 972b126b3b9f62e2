"""Reservations that live on the hosts, so several head nodes never hand out the same resource.

A head's lock and records are its own (``state_dir``); two heads allocating
from the same hosts need a truth both see, and a claim that cannot race.
Here it is libvirt itself:

* **A claim is a domain** named ``<cluster>-pragma-claim``, never started,
  whose ``<metadata>`` holds the cluster's whole record (public IP, VLAN,
  node names and hosts, MACs) and whose UUID is the allocation's id. It is
  defined on the **claim hosts** (``claim_hosts``; default the first three
  of the sorted host names), and held when it is on a strict majority of
  them. Defining a domain name is atomic on a host (a second definition with
  another UUID fails), and any two majorities share a host.
* **Write, then read** (:meth:`Claims.take`): define the claim on every
  claim host, then read every claim back from them. Any other live claim
  that shares a name, the public IP, the VLAN or a MAC with ours makes us
  withdraw ours and try again with those taken. Of two heads claiming at
  once, at least one sees the other (each wrote a majority before reading a
  majority), so they never both keep a clash; both may withdraw, and retry
  after a random pause. The driver applies the same rule to CPUs: a kept
  claim that, with every claim read back, would put one of its hosts over
  capacity is withdrawn and the cluster placed again.
* A copy **absent from a majority** of the claim hosts that answered is
  stale (left on a host that was down when its cluster was cleaned): it is
  ignored, listed by ``list orphans`` and replaced when its name is claimed
  again.
* A claim stays as long as its cluster: ``clean`` (or a rollback that
  removed everything) withdraws it last; a rollback that could not reach a
  host narrows it to the nodes left there.

A single host site has one claim host (a majority of one); a head then
needs that host to boot. Heads sharing hosts must use the same claim hosts
(set ``claim_hosts`` when their host lists differ).
"""

from __future__ import annotations

import json
import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence

from attrs import field, frozen

from pragma_core import DriverError
from pragma_core.pluginkit import to_tuple

from .hosts import DomainInfo, Hosts, HostUnavailable, import_libvirt
from .parallel import settle
from .records import NAMESPACE, PREFIX, ClusterRecord

log = logging.getLogger(__name__)

ET.register_namespace(PREFIX, NAMESPACE)

#: Suffix of claim domain names.
CLAIM_SUFFIX = "-pragma-claim"
#: Attempts of :meth:`Claims.take` before giving up when other heads keep claiming the same resources.
MAX_ATTEMPTS = 8


def claim_name(cluster: str) -> str:
    """The domain name of ``cluster``'s claim."""
    return cluster + CLAIM_SUFFIX


def is_claim_name(name: str) -> bool:
    return name.endswith(CLAIM_SUFFIX)


def claim_xml(record: ClusterRecord) -> str:
    """The claim domain of ``record``: never started; its UUID is the allocation id, its metadata the record."""
    root = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(root, "name").text = claim_name(record.cluster)
    ET.SubElement(root, "uuid").text = record.allocation
    ET.SubElement(root, "title").text = f"pragma reservation of cluster {record.cluster} (not a VM)"
    ET.SubElement(root, "description").text = (
        f"Holds the public IP, VLAN, names and MACs of pragma cluster {record.cluster};"
        f" 'pragma clean {record.cluster}' removes it. Never start it."
    )
    metadata = ET.SubElement(root, "metadata")
    ET.SubElement(metadata, f"{{{NAMESPACE}}}claim").text = json.dumps(record.as_dict(), sort_keys=True)
    ET.SubElement(root, "memory", {"unit": "KiB"}).text = "1024"
    ET.SubElement(root, "vcpu").text = "1"
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    return ET.tostring(root, encoding="unicode")


def clashes(mine: ClusterRecord, other: ClusterRecord) -> list[str]:
    """What ``other`` holds that ``mine`` wants too: names, public IP, VLAN, MACs (empty: none)."""
    found = []
    names = mine.names & (other.names | {claim_name(other.cluster)})
    if names:
        found.append("name " + ", ".join(sorted(names)))
    if mine.public_ip == other.public_ip:
        found.append(f"public IP {mine.public_ip}")
    if mine.vlan == other.vlan:
        found.append(f"VLAN {mine.vlan}")
    macs = mine.macs & other.macs
    if macs:
        found.append("MAC " + ", ".join(sorted(macs)))
    return found


@frozen(kw_only=True)
class ClaimCopy:
    """One claim domain on one claim host."""

    host: str
    uuid: str
    record: ClusterRecord


@frozen(kw_only=True)
class ClaimSet:
    """The claims read from the claim hosts: which answered, and every copy found."""

    group: tuple[str, ...] = field(converter=to_tuple)
    answered: frozenset[str] = frozenset()
    copies: tuple[ClaimCopy, ...] = field(default=(), converter=to_tuple)
    failures: tuple[str, ...] = field(default=(), converter=to_tuple)

    @property
    def majority(self) -> int:
        return len(self.group) // 2 + 1

    @property
    def decisive(self) -> bool:
        """Whether a majority of the claim hosts answered (what a new claim needs)."""
        return len(self.answered) >= self.majority

    def _absent(self, uuid: str) -> int:
        holders = {c.host for c in self.copies if c.uuid == uuid}
        return len(self.answered - holders)

    def live(self) -> list[ClusterRecord]:
        """One record per claim that is not provably stale (absent from a majority of the claim hosts)."""
        out: dict[str, ClusterRecord] = {}
        for copy in self.copies:
            if copy.uuid not in out and self._absent(copy.uuid) < self.majority:
                out[copy.uuid] = copy.record
        return list(out.values())

    def stale(self) -> list[ClaimCopy]:
        """Copies absent from a majority of the claim hosts: left where a cleaned cluster's host was down."""
        return [c for c in self.copies if self._absent(c.uuid) >= self.majority]

    def holding(self, allocation: str) -> list[str]:
        """The claim hosts holding a copy of claim ``allocation``."""
        return [c.host for c in self.copies if c.uuid == allocation]

    @classmethod
    def from_domains(cls, group: Sequence[str], answered: Iterable[str], domains: Iterable[DomainInfo],
                     failures: Iterable[str] = ()) -> ClaimSet:
        """The claims among ``domains`` read from the hosts ``answered`` (an inventory covers the claim hosts)."""
        wanted = set(group)
        copies = [ClaimCopy(host=d.host, uuid=d.uuid, record=d.claim) for d in domains
                  if d.claim is not None and d.host in wanted]
        return cls(group=group, answered=frozenset(answered) & wanted, copies=copies, failures=failures)


class Claims:
    """The claims of a site on its claim hosts (``group``), through ``hosts``' connections."""

    def __init__(self, hosts: Hosts, group: Sequence[str]) -> None:
        self.hosts = hosts
        self.group = tuple(group)

    def read(self) -> ClaimSet:
        """Every claim copy on the claim hosts that answer."""
        outcomes = settle(lambda host: self.hosts.inventory(host, only=is_claim_name), self.group)
        domains = [d for o in outcomes if isinstance(o, list) for d in o]
        answered = [h for h, o in zip(self.group, outcomes) if not isinstance(o, BaseException)]
        failures = [str(o) for o in outcomes if isinstance(o, BaseException)]
        return ClaimSet.from_domains(self.group, answered, domains, failures)

    def _define(self, host: str, xml: str) -> str:
        """Define the claim on ``host``: ``"ok"``, ``"taken"`` (the name holds another claim); raises when down."""
        libvirt = import_libvirt()
        conn = self.hosts.conn(host)
        try:
            conn.defineXML(xml)
            return "ok"
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and "already exists" in str(
                    exc.get_error_message()):
                return "taken"
            raise self.hosts.failure(host, conn, exc, "defining a claim") from None

    def write(self, record: ClusterRecord, hosts: Sequence[str] | None = None) -> list[str]:
        """Define (or update) ``record``'s claim on the claim hosts; the hosts that hold it now."""
        xml = claim_xml(record)
        targets = list(hosts if hosts is not None else self.group)
        outcomes = settle(lambda host: self._define(host, xml), targets)
        for host, outcome in zip(targets, outcomes):
            if isinstance(outcome, BaseException):
                log.debug("claim of %s on %s: %s", record.cluster, host, outcome)
        return [h for h, o in zip(targets, outcomes) if o == "ok"]

    def take(self, record: ClusterRecord) -> tuple[bool, ClaimSet]:
        """Write ``record``'s claim, then read: whether it is ours alone, and what the read found.

        On a clash (or fewer than a majority of writes) our copies are
        withdrawn before returning ``False``.
        """
        wrote = self.write(record)
        seen = self.read()
        if not seen.decisive:
            self.withdraw(record.cluster, record.allocation)
            raise DriverError(
                f"cannot reserve cluster {record.cluster}: {len(seen.answered)} of the {len(self.group)} claim hosts"
                f" answer, {seen.majority} needed (claim_hosts: {', '.join(self.group)}): " + "; ".join(seen.failures)
            )
        rivals = [(other, clashes(record, other)) for other in seen.live() if other.allocation != record.allocation]
        rivals = [(other, what) for other, what in rivals if what]
        if len(wrote) >= seen.majority and not rivals:
            self._replace_stale(record, seen, wrote)
            return True, seen
        for other, what in rivals:
            log.info("cluster %s: %s already claimed by cluster %s (head %s); trying again",
                     record.cluster, "; ".join(what), other.cluster, other.head or "unknown")
        self.withdraw(record.cluster, record.allocation)
        return False, seen

    def _replace_stale(self, record: ClusterRecord, seen: ClaimSet, wrote: Sequence[str]) -> None:
        """Where a stale copy held our claim's name, remove it and put ours there."""
        stale = [c for c in seen.stale() if c.record.cluster == record.cluster and c.host not in wrote]
        for copy in stale:
            try:
                self._undefine(copy.host, record.cluster, copy.uuid)
                self.write(record, [copy.host])
            except DriverError as exc:
                log.debug("stale claim of %s on %s stays: %s", record.cluster, copy.host, exc)

    def _undefine(self, host: str, cluster: str, allocation: str) -> bool:
        """Undefine ``cluster``'s claim on ``host`` if it is claim ``allocation``; whether one was removed."""
        libvirt = import_libvirt()
        conn = self.hosts.conn(host)
        try:
            dom = conn.lookupByName(claim_name(cluster))
            if dom.UUIDString() != allocation:
                return False
            dom.undefine()
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self.hosts.failure(host, conn, exc, f"removing the claim of {cluster}") from None

    def withdraw(self, cluster: str, allocation: str) -> list[BaseException]:
        """Remove claim ``allocation`` of ``cluster`` from every claim host; the failures (hosts down)."""
        outcomes = settle(lambda host: self._undefine(host, cluster, allocation), self.group)
        return [o for o in outcomes if isinstance(o, BaseException)]

    def remove_copy(self, copy: ClaimCopy) -> None:
        """Remove one copy (a stale one, for ``remove orphans``)."""
        self._undefine(copy.host, copy.record.cluster, copy.uuid)


def pause(attempt: int) -> None:
    """A random pause before claiming again: two heads that both withdrew do not clash again in step."""
    time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))


__all__ = ["CLAIM_SUFFIX", "ClaimCopy", "ClaimSet", "Claims", "HostUnavailable", "MAX_ATTEMPTS", "claim_name",
           "claim_xml", "clashes", "is_claim_name", "pause"]
