"""Contract test classes for drivers and repositories (see :mod:`pragma_core.testing`).

Boots run through core's real :class:`~pragma_core.pipeline.Pipeline`
(:func:`boot`), with a :class:`StagedRepository` handing it the harness's
staged cluster and a hook manager holding only the plugins a test gives; a
failure after the allocation is rolled back by the pipeline, exactly as in
``pragma boot``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from ..errors import (
    CapacityError,
    ConfigError,
    DriverError,
    NotFoundError,
    NotSupportedError,
)
from ..hookspecs import hookimpl
from ..interfaces import Driver, Repository
from ..model import (
    Allocation,
    BootRequest,
    ClusterDescription,
    ClusterReadiness,
    ClusterStatus,
    MemorySpec,
    Readiness,
    StagedCluster,
    StagedImage,
)

if TYPE_CHECKING:
    from ..config import SiteConfig
    from ..pipeline import Pipeline

DEFAULT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


@attrs.define
class DriverHarness:
    """What :class:`DriverContract` needs: a driver, a cluster it can boot, its capacity.

    ``max_cpus`` is how many compute CPUs the driver can give in total (a
    request above it must fail with :class:`CapacityError`); ``cpus`` is a
    small request that must succeed (at least 1). ``required_settings``
    documents the keys of the driver's ``config_class`` that have no default
    (building the class without them must be one :class:`ConfigError`
    naming them all); ``wait_timeout`` is the time the contract gives
    :meth:`Driver.wait_ready` (nodes need not become ready in it).
    """

    driver: Driver[Any, Any]
    cluster: StagedCluster
    max_cpus: int
    key: str = DEFAULT_KEY
    cpus: int = 2
    memory: MemorySpec = attrs.field(factory=lambda: MemorySpec(frontend_mib=256, compute_mib=256))
    required_settings: tuple[str, ...] = ()
    wait_timeout: float = 1.0


@attrs.define
class RepositoryHarness:
    """What :class:`RepositoryContract` needs: a repository, the names it lists, a stager.

    ``required_settings`` documents the keys of the repository's
    ``config_class`` that have no default (see :class:`DriverHarness`).
    """

    repository: Repository[Any]
    names: list[str]
    stager: Any
    required_settings: tuple[str, ...] = ()


def make_cluster(directory: Path, *, name: str = "demo", size: int = 1 << 20, compute: bool = True) -> StagedCluster:
    """Write a small cluster description with raw images into ``directory`` and return it staged.

    The images are sparse files of ``size`` bytes with a recognisable first
    block. Drivers that need a real bootable or mountable image build their own.
    """
    from ..clusterxml import parse_cluster_xml

    directory.mkdir(parents=True, exist_ok=True)
    roles = ["frontend", "compute"] if compute else ["frontend"]
    sections = []
    for role in roles:
        image = directory / f"{name}-{role}.img"
        with open(image, "wb") as fh:
            fh.write(f"pragma test image {name} {role}\n".encode())
            fh.truncate(size)
        sections.append(
            textwrap.dedent(
                f"""\
                <{role}>
                  <domain type="kvm">
                    <name>{name}-{role}</name>
                    <memory unit="MiB">256</memory>
                    <vcpu>1</vcpu>
                    <os><type arch="x86_64">hvm</type></os>
                    <devices>
                      <disk type="file" device="disk">
                        <driver name="qemu" type="raw"/>
                        <source file="{image.name}"/>
                        <target dev="vda" bus="virtio"/>
                      </disk>
                    </devices>
                  </domain>
                </{role}>"""
            )
        )
    xml = directory / f"{name}.xml"
    body = textwrap.indent("\n".join(sections), "  ")
    xml.write_text(f'<vc version="0.1">\n  <virtualization engine="kvm" type="hvm" arch="x86_64"/>\n{body}\n</vc>\n')
    description = parse_cluster_xml(xml, name)
    return staged_in_place(description)


def staged_in_place(description: ClusterDescription) -> StagedCluster:
    """A :class:`StagedCluster` for a description whose images are raw files already in place."""

    def image(role_disk: Any) -> StagedImage:
        return StagedImage(path=description.directory / role_disk.source, format=role_disk.format)

    return StagedCluster(
        description=description,
        frontend=image(description.frontend.disk),
        compute=image(description.compute_template.disk),
    )


def make_site(directory: Path, *, driver: str = "fake", repository: Path | None = None, extra: str = "") -> Path:
    """Write a minimal ``site_conf.conf`` into ``directory/etc`` and return that directory."""
    etc = directory / "etc"
    for sub in ("etc", "tmp", "log", "repo"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    repo = repository or directory / "repo"
    (etc / "site_conf.conf").write_text(
        f'site_ve_driver = "{driver}"\n'
        f'temp_directory = "{directory / "tmp"}"\n'
        f'log_directory = "{directory / "log"}"\n'
        f'repository_settings = {{"repository_class": "local", "repository_dir": "{repo}"}}\n' + extra
    )
    return etc



# --------------------------------------------------------------------------- the real pipeline


class StagedRepository(Repository[Any]):
    """A repository of clusters that are already staged: how :func:`boot` hands one to the real pipeline.

    ``clusters`` maps the image name a request asks for to its staged
    cluster; ``stage`` gives that cluster back without touching a file.
    """

    name = "staged"

    def __init__(self, clusters: Mapping[str, StagedCluster], *, site: Any) -> None:
        super().__init__(None, site=site)  # type: ignore[arg-type]  # no repository_settings: nothing to read
        self.clusters = dict(clusters)

    def list(self) -> list[str]:
        return sorted(self.clusters)

    def describe(self, name: str) -> ClusterDescription:
        if name not in self.clusters:
            raise NotFoundError(f"no image named {name!r} (staged: {', '.join(self.list()) or 'none'})")
        return self.clusters[name].description

    def stage(self, description: ClusterDescription, stager: Any) -> StagedCluster:
        for cluster in self.clusters.values():
            if cluster.description is description:
                return cluster
        raise NotFoundError(f"image {description.name!r} was not described by this repository")


class StageRecorder:
    """A hook plugin that records every stage event of the pipeline: ``(stage, status)`` pairs and the events."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    @hookimpl
    def pragma_stage_event(self, event: Any) -> None:
        self.events.append(event)

    @property
    def seen(self) -> list[tuple[str, str]]:
        """``(stage, status)`` of every event, in order."""
        return [(e.stage, e.status) for e in self.events]

    def allocations(self) -> set[str]:
        """Every cluster name the events carry (allocated ones)."""
        return {e.allocation for e in self.events if e.allocation}


def pipeline_site(site: Any, *, vcout_format: int | None = None) -> SiteConfig:
    """``site`` when it is a :class:`~pragma_core.config.SiteConfig`, else an empty one; with ``vcout_format`` set."""
    from ..config import ConfigFile, SiteConfig

    chosen = site if isinstance(site, SiteConfig) else SiteConfig(
        conf_dir=Path("."), source=ConfigFile(path=Path("site_conf.conf"), values={}, lines={})
    )
    return chosen if vcout_format is None else attrs.evolve(chosen, vcout_format=vcout_format)


def make_pipeline(
    *,
    driver: Driver[Any, Any] | None,
    repository: Repository[Any],
    plugins: Iterable[object] = (),
    stager: Any = None,
    vcout_format: int | None = None,
) -> Pipeline:
    """Core's :class:`~pragma_core.pipeline.Pipeline` over ``driver`` and ``repository``, calling only ``plugins``' hooks.

    The site is the driver's (else the repository's) when it is a
    :class:`~pragma_core.config.SiteConfig`; ``vcout_format`` overrides its
    ``vcout_format``. Installed ``pragma.plugins`` are not loaded: a test
    sees only the hooks it registers.
    """
    from ..hooks import HookManager, Hooks
    from ..pipeline import Pipeline

    manager = HookManager()
    for index, plugin in enumerate(plugins):
        manager.register(plugin, name=f"contract-{index}")
    owner = driver if driver is not None else repository
    site = pipeline_site(getattr(owner, "site", None), vcout_format=vcout_format)
    return Pipeline(site=site, driver=driver, repository=repository, hooks=Hooks(manager), stager=stager)


def boot(
    driver: Driver[Any, Any], cluster: StagedCluster, request: BootRequest, *, format: int = 2, plugins: Iterable[object] = ()
) -> tuple[Allocation, dict[str, bytes]]:
    """Boot ``cluster`` with ``driver`` through core's real pipeline, as ``pragma boot`` does.

    The pipeline resolves ``request.image`` to ``cluster`` (a
    :class:`StagedRepository`), allocates, renders vc-out in ``format``
    (unless the cluster description sets one), deploys, and rolls back on
    any failure after the allocation, re-raising the first cause.
    ``plugins`` are hook plugins the pipeline calls. Returns the allocation
    and the vc-out files.
    """
    repository = StagedRepository({request.image: cluster}, site=getattr(driver, "site", None))
    result = make_pipeline(driver=driver, repository=repository, plugins=plugins, vcout_format=format).boot(request)
    return result.allocation, result.vcout


# --------------------------------------------------------------------------- injected failures


class InjectedFailure(DriverError):
    """The failure the conformance kit injects into a boot; the pipeline must report it, not a rollback error."""


class FailingRender:
    """A hook plugin whose ``pragma_vcout_element`` fails: the boot fails after the allocation, before deploy."""

    @hookimpl
    def pragma_vcout_element(self, root: Any, allocation: Allocation, node: Any, format: int) -> None:
        raise InjectedFailure(f"vc-out of {node.name} refused by the conformance kit")


class DeployThenFail(Driver[Any, Any]):
    """Wraps a driver: ``deploy`` does all of its work, then fails, so core must roll back a running cluster.

    ``deployed`` is the allocation it deployed. Every other method is the
    wrapped driver's own; keyword options core passes (``progress``,
    ``force``) go through to it as they came.
    """

    def __init__(self, inner: Driver[Any, Any]) -> None:
        super().__init__(inner.config, site=inner.site)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.deployed: Allocation | None = None

    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        return self.inner.allocate(request, cluster)

    def deploy(self, allocation: Allocation, cluster: StagedCluster, vcout: Mapping[str, bytes], **options: Any) -> None:
        self.inner.deploy(allocation, cluster, vcout, **options)
        self.deployed = allocation
        raise InjectedFailure(f"cluster {allocation.cluster} deployed, then failed by the conformance kit")

    def rollback(self, allocation: Allocation) -> None:
        self.inner.rollback(allocation)

    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        return self.inner.list_clusters(name)

    def shutdown(self, name: str) -> ClusterStatus:
        return self.inner.shutdown(name)

    def clean(self, name: str, **options: Any) -> None:
        self.inner.clean(name, **options)


# --------------------------------------------------------------------------- registration and settings


def registered_names(cls: type, group: str) -> list[str]:
    """The names under which entry-point ``group`` registers exactly ``cls`` (core's one scan of the entry points).

    Only entry points whose object name is ``cls``'s are loaded.
    """
    from .. import plugins

    names = []
    for name, eps in plugins.claims(group).items():
        for ep in eps:
            if (ep.attr or "").rsplit(".", 1)[-1] != cls.__name__:
                continue
            try:
                loaded = ep.load()
            except Exception:  # noqa: BLE001, S112 - another distribution's broken entry point is not this class
                continue
            if loaded is cls:
                names.append(name)
    return names


def check_entry_point(cls: type[Driver[Any, Any] | Repository[Any]], group: str) -> None:
    """Assert that ``group`` registers ``cls`` under its own :attr:`name`."""
    assert cls.name, f"{cls.__qualname__}.name is empty: set it to the entry-point name"
    names = registered_names(cls, group)
    assert cls.name in names, (
        f"{cls.__module__}.{cls.__qualname__} is registered in {group} as {names or 'nothing'},"
        f" not under its name {cls.name!r}"
    )


def check_settings_defaults(cls: type[Driver[Any, Any] | Repository[Any]], required: Iterable[str]) -> None:
    """Assert that ``cls.config_class`` builds from an empty source, or fails naming every ``required`` key.

    Built by :func:`pragma_core.config.build_settings`, as core builds it.
    """
    from ..config import build_settings

    config_class = cls.config_class
    if config_class is None:
        pytest.skip(f"{cls.__qualname__} has no config_class")
    required = tuple(required)
    if not required:
        assert isinstance(build_settings(config_class, None), config_class)
        return
    with pytest.raises(ConfigError) as info:
        build_settings(config_class, None)
    message = str(info.value)
    unnamed = [key for key in required if key not in message]
    assert message.startswith("missing") and not unnamed, f"{message!r} does not name {unnamed}"


def overrides_wait_ready(cls: type[Driver[Any, Any]]) -> bool:
    """Whether ``cls`` implements :meth:`Driver.wait_ready` (overrides the base's)."""
    return cls.wait_ready is not Driver.wait_ready


def check_wait_support(cls: type[Driver[Any, Any]]) -> None:
    """Assert that ``cls.supports_wait`` says whether ``cls`` implements :meth:`Driver.wait_ready`."""
    implemented = overrides_wait_ready(cls)
    assert cls.supports_wait == implemented, (
        f"{cls.__qualname__}.supports_wait is {cls.supports_wait}, but wait_ready is {'' if implemented else 'not '}implemented"
    )


# --------------------------------------------------------------------------- the contracts


class DriverContract:
    """Every driver must pass these. Override the ``driver_harness`` fixture."""

    @pytest.fixture
    def driver_harness(self, tmp_path: Path) -> DriverHarness:  # pragma: no cover - overridden
        raise NotImplementedError("override the driver_harness fixture")

    @pytest.fixture
    def harness(self, driver_harness: DriverHarness) -> Iterator[DriverHarness]:
        """The plugin's harness, with every cluster made during the test removed afterwards."""
        before = {c.name for c in driver_harness.driver.list_clusters()}
        yield driver_harness
        driver = driver_harness.driver
        for status in driver.list_clusters():
            if status.name in before:
                continue
            for step in (driver.shutdown, driver.clean):
                try:
                    step(status.name)
                except Exception:  # noqa: BLE001, S110 - best-effort cleanup
                    pass

    def request(self, harness: DriverHarness, cpus: int | None = None) -> BootRequest:
        return BootRequest(
            image=harness.cluster.name,
            cpus=harness.cpus if cpus is None else cpus,
            key=harness.key,
            memory=harness.memory,
        )

    def _names(self, harness: DriverHarness) -> set[str]:
        return {c.name for c in harness.driver.list_clusters()}

    # -- registration and declared features

    def test_entry_point_name_is_the_class_name(self, harness: DriverHarness) -> None:
        check_entry_point(type(harness.driver), "pragma.drivers")

    def test_config_class_builds_from_its_defaults_or_names_every_required_key(self, harness: DriverHarness) -> None:
        check_settings_defaults(type(harness.driver), harness.required_settings)

    def test_supports_wait_matches_whether_wait_ready_is_implemented(self, harness: DriverHarness) -> None:
        check_wait_support(type(harness.driver))

    def test_wait_ready_names_every_node_frontend_first(self, harness: DriverHarness) -> None:
        if not overrides_wait_ready(type(harness.driver)):
            pytest.skip("the driver does not implement wait_ready")
        allocation, _ = boot(harness.driver, harness.cluster, self.request(harness))
        verdicts = harness.driver.wait_ready(allocation.cluster, harness.wait_timeout)
        assert isinstance(verdicts, (ClusterReadiness, Mapping)), f"wait_ready returned a {type(verdicts).__name__}"
        readiness = verdicts if isinstance(verdicts, ClusterReadiness) else ClusterReadiness.from_mapping(allocation.cluster, verdicts)
        assert readiness.cluster == allocation.cluster
        assert [n.node for n in readiness.nodes] == [n.name for n in allocation.nodes]
        assert all(isinstance(n.state, Readiness) for n in readiness.nodes)

    def test_wait_ready_for_an_unknown_cluster_is_not_found_or_not_supported(self, harness: DriverHarness) -> None:
        expected = NotFoundError if overrides_wait_ready(type(harness.driver)) else NotSupportedError
        with pytest.raises(expected):
            harness.driver.wait_ready("no-such-cluster-7f3a", harness.wait_timeout)

    # -- boot, through the real pipeline

    def test_boot_runs_every_stage_of_the_pipeline(self, harness: DriverHarness) -> None:
        stages = StageRecorder()
        allocation, _ = boot(harness.driver, harness.cluster, self.request(harness), plugins=[stages])
        done = [stage for stage, status in stages.seen if status == "done"]
        staging = ["stage"] if harness.driver.uses_local_images else []  # images in the engine: nothing staged
        assert done == ["resolve", *staging, "allocate", "render", "deploy"]
        assert stages.allocations() == {allocation.cluster}

    def test_failed_render_is_rolled_back_and_its_cause_reported(self, harness: DriverHarness) -> None:
        before = self._names(harness)
        stages = StageRecorder()
        with pytest.raises(InjectedFailure):
            boot(harness.driver, harness.cluster, self.request(harness), plugins=[stages, FailingRender()])
        assert ("render", "failed") in stages.seen and ("deploy", "start") not in stages.seen
        assert ("rollback", "done") in stages.seen, "the rollback itself failed"
        (cluster,) = stages.allocations()
        assert harness.driver.list_clusters(cluster) == []
        assert self._names(harness) == before

    def test_failed_deploy_of_a_running_cluster_is_rolled_back(self, harness: DriverHarness) -> None:
        before = self._names(harness)
        failing = DeployThenFail(harness.driver)
        stages = StageRecorder()
        with pytest.raises(InjectedFailure):
            boot(failing, harness.cluster, self.request(harness), plugins=[stages])
        assert failing.deployed is not None, "deploy did not finish"
        assert ("deploy", "failed") in stages.seen
        assert ("rollback", "done") in stages.seen, "the rollback itself failed"
        assert harness.driver.list_clusters(failing.deployed.cluster) == []
        assert self._names(harness) == before

    # -- the driver's own operations

    def test_allocate_then_rollback_leaves_nothing(self, harness: DriverHarness) -> None:
        before = self._names(harness)
        allocation = harness.driver.allocate(self.request(harness), harness.cluster)
        harness.driver.rollback(allocation)
        assert self._names(harness) == before
        assert harness.driver.list_clusters(allocation.cluster) == []

    def test_rollback_twice_is_safe(self, harness: DriverHarness) -> None:
        allocation = harness.driver.allocate(self.request(harness), harness.cluster)
        harness.driver.rollback(allocation)
        harness.driver.rollback(allocation)
        assert harness.driver.list_clusters(allocation.cluster) == []

    def test_boot_lists_cluster_with_frontend_first_and_enough_cpus(self, harness: DriverHarness) -> None:
        allocation, _ = boot(harness.driver, harness.cluster, self.request(harness))
        (status,) = harness.driver.list_clusters(allocation.cluster)
        assert status.name == allocation.cluster
        assert status.nodes[0].role == "frontend"
        assert all(n.role == "compute" for n in status.nodes[1:])
        assert sum(n.cpus for n in allocation.computes) >= harness.cpus
        assert {n.name for n in status.nodes} == {n.name for n in allocation.nodes}

    def test_allocation_is_consistent(self, harness: DriverHarness) -> None:
        allocation = harness.driver.allocate(self.request(harness), harness.cluster)
        try:
            nodes = allocation.nodes
            assert len({n.name for n in nodes}) == len(nodes), "node names must be unique"
            macs = [nic.mac.lower() for n in nodes for nic in n.interfaces]
            assert len(set(macs)) == len(macs), "MACs must be unique"
            ips = [nic.ip for n in nodes for nic in n.interfaces]
            assert len(set(ips)) == len(ips), "IPs must be unique"
            networks = {net.name: net for net in allocation.networks}
            assert "private" in networks
            for node in nodes:
                for nic in node.interfaces:
                    net = networks[nic.network]
                    assert nic.ip in net.subnet, f"{nic.ip} outside {net.subnet}"
                    assert nic.ip not in (net.subnet.network_address, net.subnet.broadcast_address)
            fe_private = allocation.frontend.interface("private")
            assert fe_private is not None
            for node in allocation.computes:
                assert node.gateway == fe_private.ip, "computes route through the frontend's private IP"
                assert node.interface("private") is not None
            assert allocation.frontend.interface("public") is not None
            assert allocation.key == harness.key
        finally:
            harness.driver.rollback(allocation)

    def test_frontend_only_boot_has_no_computes(self, harness: DriverHarness) -> None:
        allocation, files = boot(harness.driver, harness.cluster, self.request(harness, cpus=0))
        assert allocation.computes == ()
        assert set(files) == {allocation.frontend.name}
        (status,) = harness.driver.list_clusters(allocation.cluster)
        assert [n.role for n in status.nodes] == ["frontend"]

    def test_clean_refuses_a_running_cluster(self, harness: DriverHarness) -> None:
        allocation, _ = boot(harness.driver, harness.cluster, self.request(harness))
        with pytest.raises(DriverError):
            harness.driver.clean(allocation.cluster)
        assert harness.driver.list_clusters(allocation.cluster) != []

    def test_shutdown_then_clean_removes_the_cluster(self, harness: DriverHarness) -> None:
        allocation, _ = boot(harness.driver, harness.cluster, self.request(harness))
        status = harness.driver.shutdown(allocation.cluster)
        assert status.name == allocation.cluster
        harness.driver.clean(allocation.cluster)
        assert harness.driver.list_clusters(allocation.cluster) == []
        assert allocation.cluster not in self._names(harness)

    def test_unknown_cluster_is_not_found(self, harness: DriverHarness) -> None:
        name = "no-such-cluster-7f3a"
        assert harness.driver.list_clusters(name) == []
        with pytest.raises(NotFoundError):
            harness.driver.shutdown(name)
        with pytest.raises(NotFoundError):
            harness.driver.clean(name)

    def test_request_beyond_capacity_fails_and_leaves_nothing(self, harness: DriverHarness) -> None:
        before = self._names(harness)
        with pytest.raises(CapacityError):
            harness.driver.allocate(self.request(harness, cpus=harness.max_cpus + 1), harness.cluster)
        assert self._names(harness) == before

    def test_two_clusters_get_distinct_names_and_public_ips(self, harness: DriverHarness) -> None:
        first = harness.driver.allocate(self.request(harness, cpus=1), harness.cluster)
        try:
            second = harness.driver.allocate(self.request(harness, cpus=1), harness.cluster)
            try:
                assert first.cluster != second.cluster
                assert {n.name for n in first.nodes}.isdisjoint(n.name for n in second.nodes)
                assert first.public_ip != second.public_ip
            finally:
                harness.driver.rollback(second)
        finally:
            harness.driver.rollback(first)

    def test_list_is_sorted_by_cluster_name(self, harness: DriverHarness) -> None:
        names = [c.name for c in harness.driver.list_clusters()]
        assert names == sorted(names)

    def test_vcout_files_reach_every_node(self, harness: DriverHarness) -> None:
        allocation, files = boot(harness.driver, harness.cluster, self.request(harness))
        assert set(files) == {n.name for n in allocation.nodes}
        for data in files.values():
            assert data.startswith(b"<?xml")
            assert harness.key.encode() in data


class RepositoryContract:
    """Every repository must pass these. Override the ``repository_harness`` fixture."""

    @pytest.fixture
    def repository_harness(self, tmp_path: Path) -> RepositoryHarness:  # pragma: no cover - overridden
        raise NotImplementedError("override the repository_harness fixture")

    def test_entry_point_name_is_the_class_name(self, repository_harness: RepositoryHarness) -> None:
        check_entry_point(type(repository_harness.repository), "pragma.repositories")

    def test_config_class_builds_from_its_defaults_or_names_every_required_key(
        self, repository_harness: RepositoryHarness
    ) -> None:
        check_settings_defaults(type(repository_harness.repository), repository_harness.required_settings)

    def test_list_gives_every_name_sorted(self, repository_harness: RepositoryHarness) -> None:
        names = repository_harness.repository.list()
        assert names == sorted(repository_harness.names)

    def test_describe_gives_a_cluster_rooted_in_its_directory(self, repository_harness: RepositoryHarness) -> None:
        for name in repository_harness.names:
            description = repository_harness.repository.describe(name)
            assert description.name == name
            assert description.directory.is_absolute()
            assert description.path.parent == description.directory
            assert description.frontend.role == "frontend"

    def test_describe_unknown_name_is_not_found(self, repository_harness: RepositoryHarness) -> None:
        with pytest.raises(NotFoundError):
            repository_harness.repository.describe("no-such-image-7f3a")

    def test_stage_gives_existing_images_and_is_idempotent(self, repository_harness: RepositoryHarness) -> None:
        """The first stage goes through the real pipeline (``pragma stage``), the second straight to the repository."""
        repo = repository_harness.repository
        stages = StageRecorder()
        pipeline = make_pipeline(driver=None, repository=repo, plugins=[stages], stager=repository_harness.stager)
        staged = pipeline.stage_images(repository_harness.names[0])
        assert stages.seen == [("resolve", "start"), ("resolve", "done"), ("stage", "start"), ("stage", "done")]
        for image in (staged.frontend, staged.compute):
            assert image.path.is_file()
            assert image.path.is_absolute()
        stamps = {p: p.stat().st_mtime_ns for p in (staged.frontend.path, staged.compute.path)}
        again = repo.stage(repo.describe(repository_harness.names[0]), repository_harness.stager)
        assert (again.frontend.path, again.compute.path) == (staged.frontend.path, staged.compute.path)
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a second stage must not rewrite images"
