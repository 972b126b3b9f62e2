"""pragma_core.Site: the library's front door, on the fake driver with a local repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pragma_core
from pragma_core import ClusterReadiness, NodeReadiness, Readiness, Site
from pragma_core.errors import ConfigError, NotFoundError, NotSupportedError, PragmaError, UsageError
from pragma_core.model import InterfaceRequest, MemorySpec

from conftest import KEY, build_site


@pytest.fixture
def conf(tmp_path: Path):
    return build_site(tmp_path, names=("demo", "alpha"))


def test_open_reads_the_directory_given_then_the_environment(conf, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Site.open(conf.etc).config.conf_dir == conf.etc
    monkeypatch.setenv("PRAGMA_CONF_DIR", str(conf.etc))
    assert Site.open().config.conf_dir == conf.etc


def test_open_of_a_directory_without_site_conf_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        Site.open(tmp_path)


def test_images_lists_the_catalogue_sorted(conf) -> None:
    with Site.open(conf.etc) as site:
        assert site.images() == ["alpha", "demo"]


def test_boot_returns_the_typed_allocation_and_clusters_lists_it(conf) -> None:
    with Site.open(conf.etc) as site:
        booted = site.boot("demo", 8, key=str(conf.key), memory="2048:1024")
        assert booted.name == booted.allocation.cluster
        assert booted.readiness is None
        assert booted.allocation.frontend.memory_mib == 2048
        assert {n.memory_mib for n in booted.allocation.computes} == {1024}
        [cluster] = site.clusters(booted.name)
        assert [n.state for n in cluster.nodes] == ["running"] * 3
        assert [c.name for c in site.clusters()] == [booted.name]


def test_boot_takes_key_text_as_well_as_a_key_file(conf) -> None:
    with Site.open(conf.etc) as site:
        booted = site.boot("demo", 0, key=KEY)
    assert booted.allocation.key == KEY


def test_boot_with_wait_returns_typed_readiness(conf) -> None:
    with Site.open(conf.etc) as site:
        booted = site.boot("demo", 4, key=KEY, wait=5)
    assert booted.readiness is not None and booted.readiness.ready
    assert [n.state for n in booted.readiness.nodes] == [Readiness.READY, Readiness.READY]


def test_wait_ready_reports_a_stopped_cluster_as_not_ready(conf) -> None:
    with Site.open(conf.etc) as site:
        name = site.boot("demo", 4, key=KEY).name
        site.shutdown(name)
        readiness = site.wait_ready(name, 1)
    assert not readiness.ready
    assert len(readiness.not_ready) == 2


def test_shutdown_then_clean_removes_the_cluster(conf) -> None:
    with Site.open(conf.etc) as site:
        name = site.boot("demo", 4, key=KEY).name
        assert site.shutdown(name).name == name
        site.clean(name)
        assert site.clusters() == []
        with pytest.raises(NotFoundError, match=name):
            site.clusters(name)


def test_clean_with_force_removes_a_running_cluster(conf) -> None:
    with Site.open(conf.etc) as site:
        name = site.boot("demo", 4, key=KEY).name
        with pytest.raises(PragmaError, match="still running"):
            site.clean(name)
        site.clean(name, force=True)
        assert site.clusters() == []


def test_clean_with_force_on_a_driver_without_force_shuts_down_then_cleans(conf, monkeypatch: pytest.MonkeyPatch) -> None:
    from pragma_core.testing.fake import FakeDriver

    calls: list[str] = []
    native_clean, native_shutdown = FakeDriver.clean, FakeDriver.shutdown

    def clean(self: FakeDriver, name: str) -> None:  # a driver written before force existed
        calls.append("clean")
        native_clean(self, name)

    def shutdown(self: FakeDriver, name: str):
        calls.append("shutdown")
        return native_shutdown(self, name)

    monkeypatch.setattr(FakeDriver, "clean", clean)
    monkeypatch.setattr(FakeDriver, "shutdown", shutdown)
    with Site.open(conf.etc) as site:
        name = site.boot("demo", 4, key=KEY).name
        site.clean(name, force=True)
        assert calls == ["shutdown", "clean"]
        assert site.clusters() == []
        calls.clear()
        with pytest.raises(NotFoundError):
            site.clean(name, force=True)
        assert calls == ["shutdown"], "an unknown cluster is refused by the shutdown"


def test_accepts_keyword_reads_the_signature() -> None:
    from pragma_core.interfaces import accepts_keyword

    def old(name): ...
    def new(name, *, force=False): ...
    def loose(name, **kwargs): ...

    assert not accepts_keyword(old, "force")
    assert accepts_keyword(new, "force") and not accepts_keyword(new, "progress")
    assert accepts_keyword(loose, "force")
    assert not accepts_keyword(len, "force")


def test_an_unknown_image_lists_the_images_from_the_library_too(conf) -> None:
    with Site.open(conf.etc) as site:
        with pytest.raises(NotFoundError, match=r"did you mean 'alpha'\? \(images: alpha, demo\)$"):
            site.boot("alpah", 1, key=KEY)
        with pytest.raises(NotFoundError, match=r"\(images: alpha, demo\)$"):
            site.stage("omega")
        assert site.clusters() == []


def test_a_not_found_error_about_something_else_is_left_alone(conf, monkeypatch: pytest.MonkeyPatch) -> None:
    from pragma_core.testing.fake import FakeDriver

    def deploy(self, allocation, cluster, vcout):
        raise NotFoundError("no such bridge br-x")

    monkeypatch.setattr(FakeDriver, "deploy", deploy)
    with Site.open(conf.etc) as site, pytest.raises(NotFoundError) as raised:
        site.boot("demo", 1, key=KEY)
    assert str(raised.value) == "no such bridge br-x"


def test_stage_returns_the_staged_images_without_booting(conf) -> None:
    with Site.open(conf.etc) as site:
        staged = site.stage("alpha")
        assert staged.frontend.path.is_file() and staged.name == "alpha"
        assert site.clusters() == []


def test_sync_of_a_local_repository_is_not_supported(conf) -> None:
    with Site.open(conf.etc) as site, pytest.raises(NotSupportedError, match="does not support sync"):
        site.sync()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus": -1}, "must be >= 0"),
        ({"cpus": "8x"}, "whole number"),
        ({"cpus": 10**40}, "must be at most 100000"),
        ({"memory": "0"}, "mem must be positive"),
        ({"memory": "lots"}, "mem must be N or FRONTEND:COMPUTE"),
        ({"add_ifaces": "bad name"}, "invalid network name"),
        ({"add_ifaces": "net:300.0.0.1/24"}, "not an IPv4 CIDR"),
        ({"key": "/no/such/key.pub"}, "file not found"),
        ({"wait": -5}, "wait must be a positive number"),
        ({"wait": float("nan")}, "wait must be a positive number"),
        ({"wait": 1e400}, "wait must be a positive number"),
    ],
)
def test_a_bad_boot_argument_is_one_error_and_boots_nothing(conf, kwargs: dict, message: str) -> None:
    args = {"cpus": 4, "key": KEY, **kwargs}
    with Site.open(conf.etc) as site:
        with pytest.raises(PragmaError, match=message):
            site.boot("demo", args.pop("cpus"), **args)
        assert site.clusters() == []


def test_the_library_and_the_command_refuse_a_bad_memory_value_alike(conf) -> None:
    with Site.open(conf.etc) as site, pytest.raises(UsageError) as raised:
        site.boot("demo", 4, key=KEY, memory="4096:")
    result = conf.run("boot", "demo", "4", f"key={conf.key}", "mem=4096:")
    assert result.code == 2 and result.err == f"Error: {raised.value}\n"


def test_request_parses_extra_networks_and_memory_into_the_model(conf) -> None:
    with Site.open(conf.etc) as site:
        request = site.request("demo", "2", key=KEY, memory=512, add_ifaces="openflow:10.9.0.5/24,ib")
    assert request.memory == MemorySpec(frontend_mib=512, compute_mib=512)
    assert [i.network for i in request.add_ifaces] == ["openflow", "ib"]
    assert str(request.add_ifaces[0].cidr) == "10.9.0.5/24"
    assert isinstance(request.add_ifaces[1], InterfaceRequest) and request.add_ifaces[1].cidr is None


def test_boot_with_wait_on_a_driver_that_cannot_wait_refuses_before_booting(conf, monkeypatch: pytest.MonkeyPatch) -> None:
    from pragma_core.interfaces import Driver
    from pragma_core.testing.fake import FakeDriver

    monkeypatch.setattr(FakeDriver, "wait_ready", Driver.wait_ready)
    monkeypatch.setattr(FakeDriver, "supports_wait", False)
    with Site.open(conf.etc) as site:
        with pytest.raises(NotSupportedError, match="cannot wait"):
            site.boot("demo", 4, key=KEY, wait=10)
        assert site.clusters() == []


def test_legacy_readiness_mappings_read_as_typed_values() -> None:
    readiness = ClusterReadiness.from_mapping(
        "vc1", {"vc1": "ready", "vc1-0": "timeout: no PRAGMA-READY after 5 s", "vc1-1": "failed: errors=2", "vc1-2": "odd text"}
    )
    assert readiness.nodes == (
        NodeReadiness(node="vc1", state=Readiness.READY),
        NodeReadiness(node="vc1-0", state=Readiness.TIMEOUT, detail="no PRAGMA-READY after 5 s"),
        NodeReadiness(node="vc1-1", state=Readiness.FAILED, detail="errors=2"),
        NodeReadiness(node="vc1-2", state=Readiness.TIMEOUT, detail="odd text"),
    )
    assert readiness.not_ready == ("vc1-0", "vc1-1", "vc1-2") and not readiness.ready


def test_closing_the_site_closes_the_driver_and_is_idempotent(conf) -> None:
    closed: list[str] = []
    site = Site.open(conf.etc)
    driver = site.driver
    driver.close = lambda: closed.append("driver")  # type: ignore[attr-defined]
    with site:
        pass
    site.close()
    assert closed == ["driver"]


def test_site_is_exported_lazily_from_the_package() -> None:
    assert "Site" in pragma_core.__all__ and pragma_core.Site is Site
    assert json.loads(json.dumps(sorted(pragma_core.__all__)))  # every name is importable
    for name in pragma_core.__all__:
        assert getattr(pragma_core, name) is not None


@pytest.mark.parametrize(("image", "key", "error"), [
    ("x\nError: forged", KEY, "invalid vc-name"),
    ("demo", "ssh-rsa AAAA\udcff x", "not an SSH public key"),
    ("demo", "not a key", "not an SSH public key"),
])
def test_a_boot_request_made_by_the_caller_gets_the_same_checks_before_anything_is_made(conf, image, key, error) -> None:
    from pragma_core.model import BootRequest

    with Site.open(conf.etc) as site:
        with pytest.raises(PragmaError, match=error):
            site.boot(BootRequest(image=image, cpus=1, key=key))
        assert site.clusters() == []


def test_a_key_file_is_read_only_when_the_file_opened_is_regular(tmp_path: Path) -> None:
    import os

    from pragma_core.request import read_key

    fifo = tmp_path / "key.pub"
    os.mkfifo(fifo)  # no writer: opening it by name, blocking, would hang the command
    with pytest.raises(PragmaError, match="is not a regular file"):
        read_key(str(fifo))
    (tmp_path / "k.pub").write_bytes(b"ssh-ed25519 AAAAC3Nz jos\xc3\xa9@h\n")
    assert read_key(str(tmp_path / "k.pub")) == "ssh-ed25519 AAAAC3Nz jos\u00e9@h"
