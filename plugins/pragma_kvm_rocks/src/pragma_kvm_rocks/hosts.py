"""The libvirt hosts: a few shared connections each, and what runs on them.

libvirt connections are thread-safe and opening one costs far more than a
call on it, so threads share a few connections per host (see :class:`Hosts`).
An inventory reads every domain's XML once: its vCPUs, MACs, state and
pragma metadata.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as SafeET
from attrs import field, frozen

from pragma_core import DriverError
from pragma_core.pluginkit import is_valid_name

from .records import DAMAGED, NAMESPACE, ClusterRecord, NodeRecord, parse_record

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
    uuid: str = ""
    #: The reservation a claim domain holds (see :mod:`.claims`); ``None`` for every other domain.
    claim: ClusterRecord | None = None


#: Calls a thread group puts on one connection: libvirtd serves at most 5 calls of a client at once
#: (``max_client_requests``); a sixth waits for one of them to finish.
CALLS_PER_CONNECTION = 4


class HostUnavailable(DriverError):
    """A host's libvirt cannot be reached: refused, no answer in time, or the connection died."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(message)


_EVENT_LOCK = threading.Lock()
_event_loop_started = False


def ensure_event_loop(libvirt: Any) -> None:
    """Run libvirt's default event loop in a daemon thread (once per process): keepalives need it."""
    global _event_loop_started
    with _EVENT_LOCK:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class Hosts:
    """Connections to the hosts of a site, opened on first use and shared by threads.

    libvirt connections are thread-safe, but libvirtd answers only five calls
    of one connection at once: eight parallel destroys on one connection run
    as five, then three. So each host gets up to ``max_connections``
    connections, and every thread keeps to one of them, four threads to a
    connection (the calling thread and the first three workers share the
    first). ``test:///`` hosts get one: each open of the test driver is a
    world of its own.

    Nothing waits for a host without a limit: opening a connection gets
    ``connect_timeout`` seconds (in a thread of its own, as libvirt's open
    has no timeout), and a remote connection sends keepalives
    (``keepalive_interval`` seconds apart, ``keepalive_count`` unanswered
    ones close it), so a call on a host that stopped answering fails instead
    of hanging. A host that failed is remembered for ``retry_after`` seconds:
    a later call fails at once with the same reason (:class:`HostUnavailable`).
    Connections to different hosts open in parallel.
    """

    def __init__(self, uris: dict[str, str], *, max_connections: int = 4, connect_timeout: float = 10.0,
                 keepalive_interval: float = 5.0, keepalive_count: int = 3, retry_after: float = 30.0) -> None:
        self.uris = dict(uris)
        self.max_connections = max(1, max_connections)
        self.connect_timeout = connect_timeout
        self.keepalive = (keepalive_interval, keepalive_count)
        self.retry_after = retry_after
        self._conns: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._opening: dict[tuple[str, int], threading.Lock] = {}
        self._down: dict[str, tuple[float, str]] = {}
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
        """The calling thread's open connection to ``host`` (:class:`HostUnavailable` when it cannot be had)."""
        key = (host, self._slot(host))
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:
            with self._lock:
                conn = self._conns.get(key)
            if conn is not None and _alive(conn):
                return conn
            self._check_down(host)
            conn = self._open(host)
            with self._lock:
                self._conns[key] = conn
            return conn

    def _check_down(self, host: str) -> None:
        with self._lock:
            down = self._down.get(host)
        if down is not None and time.monotonic() < down[0]:
            raise HostUnavailable(host, down[1])

    def mark_down(self, host: str, message: str) -> HostUnavailable:
        """Remember that ``host`` failed (for ``retry_after`` s); the error to raise."""
        with self._lock:
            self._down[host] = (time.monotonic() + self.retry_after, message)
            for key in [k for k in self._conns if k[0] == host]:
                _close(self._conns.pop(key))
        return HostUnavailable(host, message)

    def unavailable(self) -> dict[str, str]:
        """The hosts that failed recently, with the reason."""
        now = time.monotonic()
        with self._lock:
            return {host: why for host, (until, why) in self._down.items() if now < until}

    def _open(self, host: str) -> Any:
        libvirt = import_libvirt()
        uri = self.uris[host]
        remote = not _is_local(uri)
        interval, count = self.keepalive
        if remote and interval > 0:
            ensure_event_loop(libvirt)
        outcome: list[Any] = []
        done = threading.Event()
        abandoned = threading.Event()

        def open_it() -> None:
            try:
                got = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                got = exc
            outcome.append(got)
            done.set()
            if abandoned.is_set() and not isinstance(got, BaseException):
                _close(got)  # nobody waits for it any more

        threading.Thread(target=open_it, name=f"libvirt-open-{host}", daemon=True).start()
        if not done.wait(self.connect_timeout):
            abandoned.set()
            raise self.mark_down(host, f"cannot connect to libvirt on {host} ({uri}): no answer within"
                                       f" {self.connect_timeout:g} s (connect_timeout)")
        got = outcome[0]
        if isinstance(got, BaseException):
            raise self.mark_down(host, f"cannot connect to libvirt on {host} ({uri}): {got.get_error_message()}")
        if remote and interval > 0:
            try:
                got.setKeepAlive(max(int(interval), 1), count)
            except libvirt.libvirtError as exc:
                log.debug("host %s: no keepalive (%s)", host, exc.get_error_message())
        return got

    def failure(self, host: str, conn: Any, exc: Exception, what: str) -> DriverError:
        """The error to raise for libvirt error ``exc`` of ``what`` on ``host``: lost connection or refusal."""
        message = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
        if not _alive(conn):
            return self.mark_down(host, f"lost libvirt on {host} during {what}: {message}")
        return DriverError(f"{what} on {host}: {message}")

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                _close(conn)
            self._conns.clear()

    def cpus(self, host: str) -> int:
        """Online CPUs of ``host`` (``virConnectGetInfo``)."""
        return self.size(host)[0]

    def size(self, host: str) -> tuple[int, int]:
        """Online CPUs and memory in MiB of ``host`` (``virConnectGetInfo``)."""
        conn = self.conn(host)
        libvirt = import_libvirt()
        try:
            info = conn.getInfo()
            return int(info[2]), int(info[1])
        except libvirt.libvirtError as exc:
            raise self.failure(host, conn, exc, "reading the CPUs and memory") from None

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

    def inventory(self, host: str, *, only: Callable[[str], bool] | None = None) -> list[DomainInfo]:
        """Every domain defined on ``host``, running or not (only those whose name ``only`` accepts).

        One call lists the domains; per domain, ``virDomainGetInfo`` gives its
        state, vCPUs and memory from libvirtd's own records and one call reads
        pragma's metadata. No domain XML is fetched or parsed, and QEMU is
        never asked: the vCPU and balloon statistics of
        ``virConnectGetAllDomainStats`` query every running QEMU's monitor
        (~35 ms a domain here). MACs come from pragma's metadata (other
        domains' MACs are not read).
        """
        libvirt = import_libvirt()
        conn = self.conn(host)
        out = []
        try:
            domains = conn.listAllDomains()
            wanted = [d for d in domains if only is None or only(d.name())]
        except libvirt.libvirtError as exc:
            raise self.failure(host, conn, exc, "listing domains") from None
        for dom in wanted:
            try:
                out.append(_describe(libvirt, host, dom))
            except libvirt.libvirtError as exc:
                if not _alive(conn):
                    raise self.failure(host, conn, exc, "listing domains") from None
                # vanished while we looked
        return out

    def domain(self, host: str, name: str) -> DomainInfo | None:
        """Domain ``name`` on ``host``, or ``None`` when it is not defined there."""
        libvirt = import_libvirt()
        conn = self.conn(host)
        try:
            dom = conn.lookupByName(name)
            return parse_domain(host, dom.XMLDesc(0), dom.state()[0])
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self.failure(host, conn, exc, f"reading domain {name}") from None


def _describe(libvirt: Any, host: str, dom: Any) -> DomainInfo:
    """A :class:`DomainInfo` from a domain's info (state, maximum memory, vCPUs) and pragma metadata."""
    state, memory, _current, vcpus, _cpu_time = dom.info()
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            raise
        text = None
    record, claim = _metadata(host, dom.name(), text)
    return DomainInfo(host=host, name=dom.name(), state=STATE_NAMES.get(state, "nostate"),
                      active=state in (1, 2, 3, 7), vcpus=int(vcpus), memory_mib=int(memory) // 1024,
                      macs=frozenset(n.mac for n in record.nics) if record else frozenset(), record=record,
                      uuid=dom.UUIDString(), claim=claim)


def _metadata(host: str, name: str, text: str | None) -> tuple[NodeRecord | None, ClusterRecord | None]:
    """The node record or the claim in a domain's pragma metadata element (``None`` each when absent)."""
    if not text:
        return None, None
    try:
        element = SafeET.fromstring(text)
    except ET.ParseError:
        log.warning("host %s: domain %s has unreadable pragma metadata", host, name)
        return None, None
    tag = element.tag.rsplit("}", 1)[-1]
    if tag == "node":
        try:
            node = NodeRecord.from_element(element)
        except DAMAGED as exc:  # one domain's bad metadata must not hide the host's others
            log.warning("host %s: domain %s has unreadable pragma metadata (%s)", host, name, exc)
            return None, None
        if not is_valid_name(node.name) or (node.cluster and not is_valid_name(node.cluster)):
            log.warning("host %s: domain %s has pragma metadata naming an invalid node or cluster", host, name)
            return None, None
        return node, None
    if tag == "claim":
        try:
            return None, _claim(element.text or "")
        except DAMAGED as exc:
            log.warning("host %s: domain %s holds an unreadable pragma claim (%s)", host, name, exc)
    return None, None


@functools.lru_cache(maxsize=4096)
def _claim(text: str) -> ClusterRecord:
    """A claim's record (claims are read again and again and rarely change: parsed once per text)."""
    return parse_record(text)


def _alive(conn: Any) -> bool:
    """Whether a connection is still open (a local check: no call to the daemon)."""
    try:
        return bool(conn.isAlive())
    except Exception:  # noqa: BLE001 - a connection that cannot even say is not alive
        return False


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


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
    claim = None
    for element in root.iterfind(f"metadata/{{{NAMESPACE}}}claim"):
        try:
            claim = parse_record(element.text or "")
        except DAMAGED as exc:
            log.warning("host %s: domain %s holds an unreadable pragma claim (%s)", host, root.findtext("name"), exc)
    return DomainInfo(
        host=host,
        name=root.findtext("name", ""),
        state=STATE_NAMES.get(state, "nostate"),
        active=state in (1, 2, 3, 7),
        vcpus=vcpus,
        memory_mib=_memory_mib(root.find("memory")),
        macs=macs,
        record=record,
        uuid=root.findtext("uuid", ""),
        claim=claim,
    )


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def _memory_mib(element: ET.Element | None) -> int:
    if element is None or not (element.text or "").strip():
        return 0
    unit = _UNITS.get(element.get("unit", "KiB").lower(), 1024)
    return int(element.text.strip()) * unit // (1 << 20)  # type: ignore[union-attr]
