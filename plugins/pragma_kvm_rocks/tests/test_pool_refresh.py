"""Listing a host's pool while libvirt builds a volume in it (another boot's) waits, then lists anyway.

libvirt refuses ``virStoragePoolRefresh`` with "pool 'x' has asynchronous
jobs running." while a volume is being built. A ``clean`` or ``list orphans``
that lists the pool then must not fail: the refresh is tried again for up to
``REFRESH_WAIT`` seconds, then the pool is listed as libvirt last saw it.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from pragma_core import DriverError
from pragma_kvm_rocks import pool as pool_module
from pragma_kvm_rocks.pool import HostPool


class _Error(libvirt.libvirtError):
    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.message = message

    def get_error_message(self) -> str:
        return self.message

    def get_error_code(self) -> int:
        return libvirt.VIR_ERR_INTERNAL_ERROR


class _Volume:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class _BusyPool:
    """A pool whose refresh is refused ``busy`` times (a volume being built), then works."""

    def __init__(self, busy: int, *, error: str = "pool 'pragma' has asynchronous jobs running.") -> None:
        self.busy, self.error, self.refreshes = busy, error, 0

    def refresh(self, flags: int) -> None:
        self.refreshes += 1
        if self.refreshes <= self.busy:
            raise _Error(self.error)

    def listAllVolumes(self, flags: int) -> list[_Volume]:  # noqa: N802 - libvirt's name
        return [_Volume("n1.console.log.1"), _Volume("n1.qcow2")]


class _Hosts:
    def conn(self, host: str) -> object:
        return object()

    def failure(self, host: str, conn: object, exc: Exception, what: str) -> DriverError:
        return DriverError(f"{what} on {host}: {exc}")


def _host_pool(busy: _BusyPool) -> HostPool:
    found = HostPool(_Hosts(), "h1", "pragma", Path("/var/lib/pragma/disks"))  # type: ignore[arg-type]
    found._pool = busy
    return found


def test_a_pool_busy_building_a_volume_is_listed_once_libvirt_lets_it_be_refreshed() -> None:
    busy = _BusyPool(3)
    assert _host_pool(busy).names() == ["n1.console.log.1", "n1.qcow2"]
    assert busy.refreshes == 4


def test_a_pool_busy_for_longer_than_the_wait_is_listed_as_libvirt_last_saw_it(monkeypatch) -> None:
    monkeypatch.setattr(pool_module, "REFRESH_WAIT", 0.3)
    busy = _BusyPool(10_000)
    assert _host_pool(busy).names() == ["n1.console.log.1", "n1.qcow2"]
    assert 2 <= busy.refreshes < 20


def test_any_other_refresh_failure_is_an_error_naming_the_pool() -> None:
    with pytest.raises(DriverError, match="listing pool pragma on h1: cannot open directory"):
        _host_pool(_BusyPool(1, error="cannot open directory")).names()
