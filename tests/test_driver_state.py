"""Typed driver state and driver features: ``Driver[Config, State]``, ``state_of``, ``uses_local_images``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest

import pragma_core
from pragma_core import hookimpl
from pragma_core.config import load_site_config
from pragma_core.errors import DriverError, StagingError
from pragma_core.hooks import Hooks
from pragma_core.interfaces import Driver, Repository
from pragma_core.model import Allocation, BootRequest, ResolvedCluster, StagedCluster
from pragma_core.pipeline import Pipeline
from pragma_core.plugins import get_plugin_manager, make_repository
from pragma_core.repositories.local import LocalRepository
from pragma_core.testing.fake import FakeConfig, FakeDriver

from conftest import KEY, build_site


@attrs.frozen(kw_only=True)
class Conf:
    size: int = 1


@attrs.frozen(kw_only=True)
class Ids:
    vm_ids: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class OtherIds:
    handle: str = "h-1"


class Stub(Driver[Conf, Ids]):
    """Only what the tests need; the engine methods are never called."""

    name = "stub"

    def allocate(self, request: Any, cluster: Any) -> Allocation:
        raise NotImplementedError

    def deploy(self, allocation: Any, cluster: Any, vcout: Any) -> None:
        raise NotImplementedError

    def rollback(self, allocation: Any) -> None:
        raise NotImplementedError

    def list_clusters(self, name: Any = None) -> list[Any]:
        raise NotImplementedError

    def shutdown(self, name: Any) -> Any:
        raise NotImplementedError

    def clean(self, name: Any) -> None:
        raise NotImplementedError


def allocation(state: object = None) -> Allocation:
    from pragma_core.model import Node

    frontend = Node(name="vc1", hostname="vc1", role="frontend", cpus=1, memory_mib=512)
    return Allocation(cluster="vc1", image="demo", fqdn="vc1.example.org", frontend=frontend, state=state)


# ---------------------------------------------------------------------- declaring the classes


def test_type_arguments_give_the_config_class_and_the_state_class() -> None:
    assert Stub.config_class is Conf and Stub.state_class is Ids
    assert FakeDriver.config_class is FakeConfig and FakeDriver.state_class is None

    class Repo(Repository[Conf]):
        def list(self) -> list[str]:
            return []

        def describe(self, name: str) -> Any:
            raise NotImplementedError

        def stage(self, description: Any, stager: Any) -> Any:
            raise NotImplementedError

    assert Repo.config_class is Conf
    assert Repository.config_class is None and Driver.config_class is None and Driver.state_class is None


def test_a_class_set_by_hand_wins_and_none_any_or_unions_set_nothing() -> None:
    class ByHand(Stub):
        config_class = None  # type: ignore[assignment]

    class Explicit(Driver[Conf, Ids]):  # type: ignore[misc]  # abstract: never made
        state_class = Ids

    class Loose(Driver[Any, None]):  # type: ignore[misc]
        pass

    class Either(Driver[Conf | None, Ids | OtherIds]):  # type: ignore[misc]
        pass

    assert ByHand.config_class is None and ByHand.state_class is Ids
    assert Explicit.config_class is Conf and Explicit.state_class is Ids
    assert Loose.config_class is None and Loose.state_class is None
    assert Either.config_class is None and Either.state_class is None
    assert LocalRepository.config_class is None


def test_drivers_use_local_images_and_cannot_wait_unless_they_say_otherwise() -> None:
    assert Driver.uses_local_images is True and Driver.supports_wait is False
    assert FakeDriver.uses_local_images is True


# ---------------------------------------------------------------------- state_of


def test_state_of_gives_the_drivers_own_state() -> None:
    ids = Ids(vm_ids=("i-1", "i-2"))
    driver = Stub(Conf(), site=None)  # type: ignore[arg-type]
    assert driver.state_of(allocation(ids)) is ids
    assert driver.state_of(allocation(ids), Ids()) is ids
    assert driver.config == Conf()


@pytest.mark.parametrize(
    "state, says",
    [
        (OtherIds(), "carries a OtherIds, not the Ids of driver 'stub': another driver made it"),
        ({"vm.vc1": "i-1"}, "carries a dict, not the Ids of driver 'stub': another driver made it"),
        ("i-1", "carries a str, not the Ids of driver 'stub': another driver made it"),
        (None, "carries no state; driver 'stub' needs its Ids"),
    ],
    ids=["other-driver", "dict", "str", "none"],
)
def test_state_of_refuses_what_is_not_the_drivers_state_naming_the_cluster(state: object, says: str) -> None:
    driver = Stub(Conf(), site=None)  # type: ignore[arg-type]
    with pytest.raises(DriverError) as caught:
        driver.state_of(allocation(state))
    assert str(caught.value) == f"the allocation of cluster vc1 {says}"


def test_state_of_gives_the_default_only_for_an_allocation_without_state() -> None:
    driver = Stub(Conf(), site=None)  # type: ignore[arg-type]
    assert driver.state_of(allocation(None), Ids()) == Ids()
    assert driver.state_of(allocation(None), None) is None
    with pytest.raises(DriverError, match="carries a OtherIds"):
        driver.state_of(allocation(OtherIds()), Ids())


def test_state_of_in_a_driver_that_declares_no_state_class_says_so(tmp_path: Path) -> None:
    driver = FakeDriver(FakeConfig(state_file=tmp_path / "fake.json"), site=None)
    with pytest.raises(DriverError, match=r"^driver 'fake' declares no state_class, so it keeps no allocation state$"):
        driver.state_of(allocation(Ids()))


@pytest.mark.skipif(not __import__("importlib").util.find_spec("mypy"), reason="mypy is not installed")
def test_a_type_checker_sees_the_plugins_config_and_state_types(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """\
            from attrs import frozen
            from pragma_core.interfaces import Driver
            from pragma_core.model import Allocation

            @frozen
            class Conf:
                size: int = 1

            @frozen
            class State:
                ids: tuple[str, ...] = ()

            class Mine(Driver[Conf, State]):
                def probe(self, allocation: Allocation) -> None:
                    reveal_type(self.config)
                    reveal_type(self.state_of(allocation))
                    reveal_type(self.state_of(allocation, None))

            class Mismatched(Driver[Conf, State]):
                config_class = State
            """
        )
    )
    env = {**os.environ, "MYPYPATH": str(Path(pragma_core.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull, "--no-error-summary", str(plugin)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    lines = [line.split(": ", 1)[1] for line in done.stdout.splitlines()]
    assert lines == [
        'note: Revealed type is "plugin.Conf"',
        'note: Revealed type is "plugin.State"',
        'note: Revealed type is "plugin.State | None"',
        'error: Incompatible types in assignment (expression has type "type[State]", base class "Driver" '
        'defined the type as "type[Conf] | None")  [assignment]',
    ], done.stdout + done.stderr


# ---------------------------------------------------------------------- through the pipeline


@attrs.frozen(kw_only=True)
class Token:
    serial: int


class StatefulFake(FakeDriver):
    """The fake driver, keeping a state and recording what it is handed."""

    state_class = Token  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, object]] = []

    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        self.seen.append(("allocate", cluster))
        made = super().allocate(request, cluster)
        return attrs.evolve(made, state=Token(serial=made.vlan or 0))

    def deploy(self, allocation: Allocation, cluster: StagedCluster, vcout: Any) -> None:
        self.seen.append(("deploy", self.state_of(allocation)))
        super().deploy(allocation, cluster, vcout)

    def rollback(self, allocation: Allocation) -> None:
        self.seen.append(("rollback", self.state_of(allocation)))
        super().rollback(allocation)


class EngineImagesFake(StatefulFake):
    """A driver whose images live in its engine: core stages nothing for it."""

    uses_local_images = False


class Stages:
    def __init__(self) -> None:
        self.done: list[str] = []

    @hookimpl
    def pragma_stage_event(self, event: Any) -> None:
        if event.status == "done":
            self.done.append(event.stage)


def pipeline(tmp_path: Path, driver_class: type[FakeDriver], fake_conf: str = "") -> tuple[Pipeline, Stages]:
    site = load_site_config(build_site(tmp_path, fake_conf=fake_conf).etc)
    stages = Stages()
    hooks = Hooks(get_plugin_manager(extra=[("stages", stages)], strict=True))
    driver = driver_class(FakeConfig(state_file=tmp_path / "state" / "fake.json", fail_deploy="fail_deploy" in fake_conf), site=site)
    return Pipeline(site=site, driver=driver, repository=make_repository(site), hooks=hooks), stages


def test_the_state_allocate_makes_reaches_deploy_and_rollback(tmp_path: Path) -> None:
    pipe, _ = pipeline(tmp_path, StatefulFake, fake_conf="fail_deploy = True\n")
    with pytest.raises(DriverError, match="fail_deploy is set"):
        pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
    driver = pipe.driver
    assert isinstance(driver, StatefulFake)
    assert driver.seen[1:] == [("deploy", Token(serial=1)), ("rollback", Token(serial=1))]


def test_a_driver_with_local_images_gets_them_staged(tmp_path: Path) -> None:
    pipe, stages = pipeline(tmp_path, StatefulFake)
    result = pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
    driver = pipe.driver
    assert isinstance(driver, StatefulFake)
    given = driver.seen[0][1]
    assert isinstance(given, StagedCluster) and given.frontend.path.is_file()
    assert result.cluster is given
    assert stages.done == ["resolve", "stage", "allocate", "render", "deploy"]


def test_a_driver_without_local_images_gets_the_description_and_nothing_is_staged(tmp_path: Path) -> None:
    pipe, stages = pipeline(tmp_path, EngineImagesFake)
    repo = tmp_path / "repo" / "demo"
    for image in repo.glob("*.img"):
        image.unlink()  # the images live in the engine; staging them would fail
    before = sorted(p.name for p in repo.iterdir())
    result = pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
    driver = pipe.driver
    assert isinstance(driver, EngineImagesFake)
    given = driver.seen[0][1]
    assert type(given) is ResolvedCluster and given.name == "demo" and given.description.path == repo / "demo.xml"
    assert result.cluster is given and result.allocation.state == Token(serial=1)
    assert stages.done == ["resolve", "allocate", "render", "deploy"]
    assert sorted(p.name for p in repo.iterdir()) == before  # no image, stamp or lock written


def test_staging_alone_still_stages_whatever_the_driver(tmp_path: Path) -> None:
    pipe, _ = pipeline(tmp_path, EngineImagesFake)
    staged = pipe.stage_images("demo")
    assert isinstance(staged, StagedCluster) and staged.compute.path.is_file()
    (tmp_path / "repo" / "demo" / "demo-frontend.img").unlink()
    with pytest.raises(StagingError, match="image not found"):
        pipe.stage_images("demo")
