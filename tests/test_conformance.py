"""Core proves its conformance kit on its own reference implementations, and proves the kit's checks can fail.

The ``fake`` driver is a test double (it starts no VM) and the ``local``
repository is the real one; both must pass the same contracts every plugin
in this repository runs. The kit's own checks -- entry-point name, settings
defaults, wait support, rollback through the real pipeline -- are then shown
to refuse a class that breaks them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from attrs import frozen

from pragma_core.config import load_site_config
from pragma_core.errors import ConfigError
from pragma_core.interfaces import Driver
from pragma_core.model import BootRequest
from pragma_core.repositories.local import LocalRepository
from pragma_core.settings import setting, to_nonempty_str, to_positive_int
from pragma_core.staging import Stager
from pragma_core.testing import (
    DriverContract,
    DriverHarness,
    RepositoryContract,
    RepositoryHarness,
    make_cluster,
    make_site,
)
from pragma_core.testing.contract import (
    DEFAULT_KEY,
    StageRecorder,
    boot,
    check_entry_point,
    check_settings_defaults,
    check_wait_support,
    registered_names,
)
from pragma_core.testing.fake import FakeConfig, FakeDriver

FAIL = pytest.fail.Exception  # what a failed pytest.raises / pytest.fail raises


class TestFakeDriverContract(DriverContract):
    @pytest.fixture
    def driver_harness(self, tmp_path: Path) -> DriverHarness:
        site = load_site_config(make_site(tmp_path))
        driver = FakeDriver(FakeConfig(total_cpus=16, state_file=str(tmp_path / "state.json")), site=site)
        return DriverHarness(driver=driver, cluster=make_cluster(tmp_path / "cluster"), max_cpus=16)


class TestLocalRepositoryContract(RepositoryContract):
    @pytest.fixture
    def repository_harness(self, tmp_path: Path) -> RepositoryHarness:
        site = load_site_config(make_site(tmp_path))
        repo_dir = tmp_path / "repo"
        for name in ("beta", "alpha"):
            make_cluster(repo_dir / "images" / name, name=name)
        (repo_dir / "vcdb.txt").write_text("# catalogue\nbeta,images/beta/beta.xml\n\nalpha,images/alpha/alpha.xml\n")
        assert site.repository is not None
        return RepositoryHarness(repository=LocalRepository(site.repository, site=site), names=["alpha", "beta"], stager=Stager())


# --------------------------------------------------------------------------- the kit's checks refuse what breaks them


class Renamed(FakeDriver):
    """Registered nowhere, and named like a class that is."""

    name = "fake"


@frozen(kw_only=True)
class TwoRequired:
    url: str = setting(to_nonempty_str)
    token: str = setting(to_nonempty_str)
    retries: int = setting(to_positive_int, default=3)


class NeedsTwo(FakeDriver):
    config_class = TwoRequired


class ClaimsWait(FakeDriver):
    """Says it can wait, but does not implement wait_ready."""

    wait_ready = Driver.wait_ready  # the base's: not implemented


class HidesWait(FakeDriver):
    supports_wait = False


def test_the_fake_driver_and_local_repository_are_registered_under_their_names() -> None:
    assert registered_names(FakeDriver, "pragma.drivers") == ["fake"]
    assert registered_names(LocalRepository, "pragma.repositories") == ["local"]


def test_a_class_its_entry_point_does_not_name_fails_the_entry_point_check() -> None:
    with pytest.raises(AssertionError, match=r"test_conformance\.Renamed is registered in pragma\.drivers as nothing"):
        check_entry_point(Renamed, "pragma.drivers")


def test_settings_missing_two_required_keys_are_one_error_naming_both() -> None:
    check_settings_defaults(NeedsTwo, ["url", "token"])
    from pragma_core.config import build_settings

    with pytest.raises(ConfigError, match=r"^missing settings url, token$"):
        build_settings(TwoRequired, None)


def test_undocumented_required_settings_fail_the_settings_check() -> None:
    with pytest.raises(ConfigError, match="missing settings url, token"):
        check_settings_defaults(NeedsTwo, [])
    with pytest.raises(AssertionError, match=r"does not name \['secret'\]"):
        check_settings_defaults(NeedsTwo, ["url", "secret"])


def test_settings_documented_as_required_that_have_defaults_fail_the_settings_check() -> None:
    with pytest.raises(FAIL, match="DID NOT RAISE"):
        check_settings_defaults(FakeDriver, ["total_cpus"])


@pytest.mark.parametrize("cls", [ClaimsWait, HidesWait])
def test_supports_wait_that_disagrees_with_wait_ready_fails_the_wait_check(cls: type[FakeDriver]) -> None:
    if cls is ClaimsWait:
        assert cls.supports_wait  # inherited from FakeDriver, while wait_ready is the base's
    with pytest.raises(AssertionError, match="supports_wait is"):
        check_wait_support(cls)


def test_boot_goes_through_the_pipeline_and_its_request_hooks(tmp_path: Path) -> None:
    """The kit's boot is the real pipeline: request hooks run, then every stage is announced."""
    from pragma_core import hookimpl

    class Bigger:
        @hookimpl
        def pragma_adjust_request(self, request: BootRequest, site: object) -> BootRequest:
            return BootRequest(image=request.image, cpus=request.cpus + 4, key=request.key, memory=request.memory)

    site = load_site_config(make_site(tmp_path))
    driver = FakeDriver(FakeConfig(total_cpus=16, cpus_per_node=4, state_file=str(tmp_path / "state.json")), site=site)
    stages = StageRecorder()
    request = BootRequest(image="served-as-this", cpus=1, key=DEFAULT_KEY)
    allocation, files = boot(driver, make_cluster(tmp_path / "cluster"), request, format=1, plugins=[stages, Bigger()])
    assert sum(n.cpus for n in allocation.computes) == 5
    assert {e.cluster for e in stages.events} == {"served-as-this"}
    assert [s for s, status in stages.seen if status == "start"] == ["resolve", "stage", "allocate", "render", "deploy"]
    assert b"<public fqdn=" in files[allocation.frontend.name]  # format 1: the frontend's public NIC carries its name
