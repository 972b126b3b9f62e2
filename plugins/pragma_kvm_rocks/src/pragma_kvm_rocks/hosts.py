"""The libvirt hosts: a few shared connections each, and what runs on them.

libvirt connections are thread-safe and opening one costs far more than a
call on it, so threads share a few connections per host (see :class:`Hosts`).
An inventory reads every domain's XML once: its vCPUs, MACs, state and
pragma metadata.
"""

from __future__ import annotations

import logging
import os
import threading
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as SafeET
from attrs import field, frozen

from pragma_core import DriverError

from .records import NAMESPACE, NodeRecord

if TYPE_CHECKING:
    import libvirt

log = logging.getLogger(__name__)

#: libvirt domain states by number, named like ``virsh domstate`` (and Rocks).
STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


def import_libvirt() -> Any:
    """Import libvirt-python with its stderr chatter silenced; a clear error when missing."""
    try:
        import libvirt
    except ImportError:
        raise DriverError("the kvm_rocks driver needs libvirt-python: pip install libvirt-python") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


@frozen(kw_only=True)
class DomainInfo:
    """One domain on a host: name, state, vCPUs, MACs, and pragma's record when it has one."""

    host: str
    name: str
    state: str
    active: bool
    vcpus: int
    memory_mib: int
    macs: frozenset[str] = field(factory=frozenset)
    record: NodeRecord | None = None


#: Calls a thread group puts on one connection: libvirtd serves at most 5 calls of a client at once
#: (``max_client_requests``); a sixth waits for one of them to finish.
CALLS_PER_CONNECTION = 4


class Hosts:
    """Connections to the hosts of a site, opened on first use and shared by threads.

    libvirt connections are thread-safe, but libvirtd answers only five calls
    of one connection at once: eight parallel destroys on one connection run
    as five, then three. So each host gets up to ``max_connections``
    connections, and every thread keeps to one of them, four threads to a
    connection (the calling thread and the first three workers share the
    first). ``test:///`` hosts get one: each open of the test driver is a
    world of its own.
    """

    def __init__(self, uris: dict[str, str], *, max_connections: int = 4) -> None:
        self.uris = dict(uris)
        self.max_connections = max(1, max_connections)
        self._conns: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._domain_types: dict[str, str] = {}
        self._local = threading.local()
        self._threads = 0

    @property
    def names(self) -> list[str]:
        return list(self.uris)

    def _slot(self, host: str) -> int:
        """Which of ``host``'s connections the calling thread uses (fixed for the thread's life)."""
        if self.uris[host].startswith("test:"):
            return 0
        slot = getattr(self._local, "slot", None)
        if slot is None:
            with self._lock:
                slot = (self._threads // CALLS_PER_CONNECTION) % self.max_connections
                self._threads += 1
            self._local.slot = slot
        return slot

    def conn(self, host: str) -> libvirt.virConnect:
        """The calling thread's open connection to ``host``."""
        key = (host, self._slot(host))
        with self._lock:
            conn = self._conns.get(key)
            if conn is not None:
                return conn
            libvirt = import_libvirt()
            uri = self.uris[host]
            try:
                conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise DriverError(f"cannot connect to libvirt on {host} ({uri}): {exc.get_error_message()}") from None
            self._conns[key] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            self._conns.clear()

    def cpus(self, host: str) -> int:
        """Online CPUs of ``host`` (``virConnectGetInfo``)."""
        return int(self.conn(host).getInfo()[2])

    def domain_type(self, host: str, wanted: str) -> str:
        """``kvm`` or ``qemu`` for ``host``; ``auto`` picks kvm when the host can run it."""
        if wanted != "auto":
            return wanted
        if host not in self._domain_types:
            libvirt = import_libvirt()
            try:
                self.conn(host).getDomainCapabilities(None, None, None, "kvm")
                kind = "kvm" if (not _is_local(self.uris[host]) or local_kvm_usable()) else "qemu"
            except libvirt.libvirtError:
                kind = "qemu"
            self._domain_types[host] = kind
            log.debug("host %s: domain type %s", host, kind)
        return self._domain_types[host]

    def inventory(self, host: str) -> list[DomainInfo]:
        """Every domain defined on ``host``, running or not."""
        libvirt = import_libvirt()
        out = []
        try:
            domains = self.conn(host).listAllDomains()
        except libvirt.libvirtError as exc:
            raise DriverError(f"cannot list domains on {host}: {exc.get_error_message()}") from None
        for dom in domains:
            try:
                xml = dom.XMLDesc(0)
                state = dom.state()[0]
            except libvirt.libvirtError:
                continue  # vanished while we looked
            out.append(parse_domain(host, xml, state))
        return out


    def domain(self, host: str, name: str) -> DomainInfo | None:
        """Domain ``name`` on ``host``, or ``None`` when it is not defined there."""
        libvirt = import_libvirt()
        try:
            dom = self.conn(host).lookupByName(name)
            return parse_domain(host, dom.XMLDesc(0), dom.state()[0])
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(f"cannot read domain {name} on {host}: {exc.get_error_message()}") from None


def _is_local(uri: str) -> bool:
    from urllib.parse import urlsplit

    return not urlsplit(uri).hostname


def local_kvm_usable(device: str = "/dev/kvm") -> bool:
    """Whether QEMU run by libvirt (as an unprivileged user) can open ``device``.

    libvirt reports KVM as available when the daemon (root) can open it, but
    QEMU runs as ``libvirt-qemu``: a ``/dev/kvm`` that only root may open
    makes every ``type='kvm'`` domain fail to start.
    """
    try:
        st = os.stat(device)
    except OSError:
        return False
    if st.st_mode & 0o006 == 0o006:
        return True
    return st.st_gid != 0 and st.st_mode & 0o060 == 0o060


def parse_domain(host: str, xml: str, state: int) -> DomainInfo:
    """A :class:`DomainInfo` from a domain's XML and state number."""
    root = SafeET.fromstring(xml)
    vcpu = root.find("vcpu")
    vcpus = int(vcpu.get("current") or vcpu.text or 1) if vcpu is not None else 1
    macs = frozenset(m.get("address", "").lower() for m in root.iterfind("devices/interface/mac"))
    record = None
    for node in root.iterfind(f"metadata/{{{NAMESPACE}}}node"):
        record = NodeRecord.from_element(node)
    return DomainInfo(
        host=host,
        name=root.findtext("name", ""),
        state=STATE_NAMES.get(state, "nostate"),
        active=state in (1, 2, 3, 7),
        vcpus=vcpus,
        memory_mib=_memory_mib(root.find("memory")),
        macs=macs,
        record=record,
    )


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def _memory_mib(element: ET.Element | None) -> int:
    if element is None or not (element.text or "").strip():
        return 0
    unit = _UNITS.get(element.get("unit", "KiB").lower(), 1024)
    return int(element.text.strip()) * unit // (1 << 20)  # type: ignore[union-attr]
