"""Contract test classes for drivers and repositories (see :mod:`pragma_core.testing`)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ..errors import CapacityError, DriverError, NotFoundError
from ..interfaces import Driver, Repository
from ..model import Allocation, BootRequest, ClusterDescription, MemorySpec, StagedCluster, StagedImage

DEFAULT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 test@pragma"


@attrs.define
class DriverHarness:
    """What :class:`DriverContract` needs: a driver, a cluster it can boot, its capacity.

    ``max_cpus`` is how many compute CPUs the driver can give in total (a
    request above it must fail with :class:`CapacityError`); ``cpus`` is a
    small request that must succeed (at least 1).
    """

    driver: Driver
    cluster: StagedCluster
    max_cpus: int
    key: str = DEFAULT_KEY
    cpus: int = 2
    memory: MemorySpec = attrs.field(factory=lambda: MemorySpec(frontend_mib=256, compute_mib=256))


@attrs.define
class RepositoryHarness:
    """What :class:`RepositoryContract` needs: a repository, the names it lists, a stager."""

    repository: Repository
    names: list[str]
    stager: Any


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


def boot(driver: Driver, cluster: StagedCluster, request: BootRequest, *, format: int = 2) -> tuple[Allocation, dict[str, bytes]]:
    """Allocate, render vc-out and deploy like ``pragma boot`` does, rolling back on failure.

    Like ``pragma boot``, a driver that uses no local images is handed only
    the description (a :class:`~pragma_core.model.ResolvedCluster`).
    """
    from ..model import ResolvedCluster
    from ..vcout import render

    if not driver.uses_local_images:
        cluster = ResolvedCluster(description=cluster.description)  # type: ignore[assignment]
    allocation = driver.allocate(request, cluster)
    try:
        files = render(allocation, format=format)
        driver.deploy(allocation, cluster, files)
    except BaseException:
        driver.rollback(allocation)
        raise
    return allocation, files


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
                except Exception:  # noqa: BLE001 - best-effort cleanup
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
        repo = repository_harness.repository
        description = repo.describe(repository_harness.names[0])
        staged = repo.stage(description, repository_harness.stager)
        for image in (staged.frontend, staged.compute):
            assert image.path.is_file()
            assert image.path.is_absolute()
        stamps = {p: p.stat().st_mtime_ns for p in (staged.frontend.path, staged.compute.path)}
        again = repo.stage(description, repository_harness.stager)
        assert (again.frontend.path, again.compute.path) == (staged.frontend.path, staged.compute.path)
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a second stage must not rewrite images"


