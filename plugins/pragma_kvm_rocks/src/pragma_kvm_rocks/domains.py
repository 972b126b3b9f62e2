"""One libvirt call on one node's domain, with pragma's error rules.

Every function takes the site's :class:`~.hosts.Hosts` and the node's host:
a call that loses its host raises :class:`~.hosts.HostUnavailable`, one the
host refuses a :class:`~pragma_core.errors.DriverError` naming node and host.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .hosts import Hosts, HostUnavailable, import_libvirt, parse_domain

if TYPE_CHECKING:
    from .records import NodeRecord

log = logging.getLogger(__name__)


def define(hosts: Hosts, host: str, name: str, xml: str) -> None:
    """Define domain ``name`` on ``host``."""
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise hosts.failure(host, conn, exc, f"defining node {name}") from None


def start(hosts: Hosts, host: str, name: str, *, paused: bool = False) -> bool:
    """Start domain ``name``; with ``paused``, its vCPUs stopped if the host can (then ``True``).

    ``paused`` on a host that cannot start a domain paused (libvirt's test
    driver) starts nothing and returns ``False``.
    """
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        dom = conn.lookupByName(name)
        if not paused:
            dom.create()
            return False
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                return False
            raise
        return True
    except libvirt.libvirtError as exc:
        raise hosts.failure(host, conn, exc, f"starting node {name}") from None


def resume(hosts: Hosts, host: str, name: str) -> None:
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        conn.lookupByName(name).resume()
    except libvirt.libvirtError as exc:
        raise hosts.failure(host, conn, exc, f"resuming node {name}") from None


def ask_shutdown(hosts: Hosts, host: str, name: str) -> None:
    """Send ``name`` an ACPI power-off request (a guest that ignores it is forced off later)."""
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        conn.lookupByName(name).shutdown()
    except libvirt.libvirtError as exc:
        if _gone(libvirt, exc):
            return
        error = hosts.failure(host, conn, exc, f"shutting down node {name}")
        if isinstance(error, HostUnavailable):
            raise error from None
        log.debug("%s", error)  # a guest not accepting it yet: it is forced off after the timeout


def is_active(hosts: Hosts, host: str, name: str) -> bool:
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        return bool(conn.lookupByName(name).isActive())
    except libvirt.libvirtError as exc:
        if _gone(libvirt, exc):
            return False
        raise hosts.failure(host, conn, exc, f"reading node {name}") from None


def destroy(hosts: Hosts, host: str, name: str) -> None:
    """Power ``name`` off at once (nothing when it does not run or is gone)."""
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        handle = conn.lookupByName(name)
        if handle.isActive():
            handle.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise hosts.failure(host, conn, exc, f"stopping node {name}") from None


def owner(hosts: Hosts, host: str, name: str) -> tuple[Any, NodeRecord | None]:
    """Domain ``name``'s handle and the pragma record of its metadata (``None``: none), or ``(None, None)``."""
    libvirt = import_libvirt()
    conn = hosts.conn(host)
    try:
        handle = conn.lookupByName(name)
        info = parse_domain(host, handle.XMLDesc(0), handle.state()[0])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None, None
        raise hosts.failure(host, conn, exc, f"reading node {name}") from None
    return handle, info.record


#: What :func:`discard` did: removed the domain, found none, or kept one that is not the caller's.
REMOVED, ABSENT, KEPT = "removed", "absent", "kept"


def discard(hosts: Hosts, host: str, name: str, *, allocation: str | None = None, cluster: str | None = None) -> str:
    """Power off and undefine ``name``: :data:`REMOVED`, :data:`ABSENT` (no such domain) or :data:`KEPT`.

    With ``allocation``, only a domain that allocation made is removed; with
    ``cluster``, only one whose own metadata names that cluster (the node
    list of a clean comes from records and claims, which another head may
    have written wrong: a name there must not remove another cluster's node).
    """
    libvirt = import_libvirt()
    handle, record = owner(hosts, host, name)
    if handle is None:
        return ABSENT
    made_by = record.allocation if record is not None else ""
    theirs = cluster is not None and (record is None or record.cluster != cluster)
    if theirs or (allocation is not None and made_by != allocation):
        return KEPT
    conn = hosts.conn(host)
    try:
        if handle.isActive():
            handle.destroy()
        try:
            handle.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError:
            handle.undefine()
    except libvirt.libvirtError as exc:
        if _gone(libvirt, exc):
            return REMOVED
        raise hosts.failure(host, conn, exc, f"removing node {name}") from None
    return REMOVED


def _gone(libvirt: Any, exc: Any) -> bool:
    return exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
