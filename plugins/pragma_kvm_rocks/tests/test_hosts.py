"""How kvm_rocks spreads its threads over libvirt connections."""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import pytest

from pragma_kvm_rocks import hosts as hosts_module
from pragma_kvm_rocks.hosts import CALLS_PER_CONNECTION, Hosts


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Replace libvirt.open with one that records the URIs it opens (a new object each time)."""
    uris: list[str] = []

    class FakeConnection:
        def isAlive(self) -> int:  # noqa: N802 - libvirt's name
            return 1

        def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802
            return 0

    class FakeLibvirt(SimpleNamespace):
        libvirtError = Exception

        @staticmethod
        def open(uri: str) -> object:
            uris.append(uri)
            return FakeConnection()

    monkeypatch.setattr(hosts_module, "import_libvirt", lambda: FakeLibvirt)
    monkeypatch.setattr(hosts_module, "ensure_event_loop", lambda _libvirt: None)
    return uris


def _connections_of_threads(hosts: Hosts, host: str, threads: int) -> list[object]:
    got: list[object] = [None] * threads
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        barrier.wait()
        got[i] = hosts.conn(host)
        assert hosts.conn(host) is got[i], "a thread keeps to its connection"

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return got


def test_parallel_threads_share_a_connection_at_most_four_at_a_time(opened) -> None:
    hosts = Hosts({"h1": "qemu+ssh://h1/system"}, max_connections=4)
    conns = _connections_of_threads(hosts, "h1", 8)
    per_connection = Counter(id(c) for c in conns)
    assert len(per_connection) == 2
    assert max(per_connection.values()) <= CALLS_PER_CONNECTION < 5  # libvirtd serves 5 calls per client at once
    assert opened == ["qemu+ssh://h1/system"] * 2


def test_connections_per_host_never_exceed_max_connections(opened) -> None:
    hosts = Hosts({"h1": "qemu:///system"}, max_connections=2)
    conns = _connections_of_threads(hosts, "h1", 16)
    assert len({id(c) for c in conns}) == 2
    assert len(opened) == 2


def test_a_test_driver_host_keeps_one_connection_because_each_open_is_a_new_world(opened) -> None:
    hosts = Hosts({"h1": "test:///tmp/h1.xml"}, max_connections=4)
    conns = _connections_of_threads(hosts, "h1", 8)
    assert len({id(c) for c in conns}) == 1
    assert opened == ["test:///tmp/h1.xml"]


def test_a_host_that_never_answers_the_open_fails_in_bounded_time_and_is_remembered(monkeypatch) -> None:
    import time

    from pragma_kvm_rocks.hosts import HostUnavailable

    release = threading.Event()
    opens: list[str] = []

    class Hanging(SimpleNamespace):
        libvirtError = Exception

        @staticmethod
        def open(uri: str) -> object:
            opens.append(uri)
            release.wait(30)  # a daemon that accepted the connection and never answers
            raise Exception("late")

    monkeypatch.setattr(hosts_module, "import_libvirt", lambda: Hanging)
    hosts = Hosts({"h1": "qemu+tcp://h1/system"}, connect_timeout=0.3, keepalive_interval=0, retry_after=60)
    try:
        started = time.monotonic()
        with pytest.raises(HostUnavailable, match=r"cannot connect to libvirt on h1 .*no answer within 0.3 s"):
            hosts.conn("h1")
        assert time.monotonic() - started < 10  # detects a hang, not a benchmark
        with pytest.raises(HostUnavailable, match="no answer within 0.3 s"):
            hosts.conn("h1")  # remembered: no second wait
        assert len(opens) == 1
        assert list(hosts.unavailable()) == ["h1"]
    finally:
        release.set()


def test_a_lost_connection_is_opened_again(opened, monkeypatch) -> None:
    hosts = Hosts({"h1": "qemu+tcp://h1/system"}, keepalive_interval=0)
    first = hosts.conn("h1")
    monkeypatch.setattr(first, "isAlive", lambda: 0)  # keepalive closed it
    assert hosts.conn("h1") is not first
    assert len(opened) == 2


@pytest.mark.parametrize("attributes", ['cluster="vc1" name="vc1" cpus="x"', 'cluster="vc1" name="../../etc"',
                                        'cluster="../x" name="vc1"', 'cluster="vc1" name="vc1" vlan="9" * 5000'])
def test_a_domain_with_damaged_pragma_metadata_is_skipped_not_fatal_to_the_listing(attributes: str) -> None:
    from pragma_kvm_rocks import hosts as hosts_module
    from pragma_kvm_rocks.records import NAMESPACE

    attributes = attributes.replace('"9" * 5000', '"' + "9" * 5000 + '"')
    text = f'<pragma:node xmlns:pragma="{NAMESPACE}" {attributes}/>'
    assert hosts_module._metadata("h", "d", text) == (None, None)
    good = f'<pragma:node xmlns:pragma="{NAMESPACE}" cluster="vc1" name="vc1-compute-0" cpus="1"/>'
    node, claim = hosts_module._metadata("h", "d", good)
    assert node is not None and node.name == "vc1-compute-0" and claim is None
