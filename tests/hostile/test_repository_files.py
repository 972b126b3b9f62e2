"""Every file pragma reads from a repository is a regular file really inside it.

A hostile repository replaces one of its files -- the catalogue, a cluster
description, an in-place image, a part, a checksum file -- with a symbolic
link leading out (to a copy of the very file, so following it would "work"),
a link to a device, a FIFO, a socket or a directory. ``pragma list
repository`` / ``pragma stage`` / ``pragma boot`` must refuse it in one
line, never block on the FIFO, and write nothing. A link that stays inside
is fine. A staged image is never more readable than the parts it is made of.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostilekit import cluster_xml, make_fifo, make_socket_file, one_line, snapshot
from stagingkit import describe, image_bytes

from pragma_core import paths
from pragma_core.config import RepositorySettings
from pragma_core.errors import RepositoryError, StagingError
from pragma_core.model import DiskImage, Part
from pragma_core.paths import UnsafeFileError, open_inside
from pragma_core.repositories.local import LocalRepository
from pragma_core.staging import Stager

MIB = 1 << 20


def _packed(repo: Path) -> None:
    """A cluster ``packed`` whose image is made from a gzip part with a checksum file."""
    directory = repo / "packed"
    directory.mkdir()
    blob = gzip.compress(image_bytes(MIB, seed=3))
    (directory / "packed.img.gz").write_bytes(blob)
    (directory / "packed.img.gz.sha256").write_text(f"{hashlib.sha256(blob).hexdigest()}  packed.img.gz\n")
    cluster_xml(directory, "packed", source="packed.img", file_type="gzip", parts=("packed.img.gz",))
    with open(repo / "vcdb.txt", "a") as catalogue:
        catalogue.write("packed,packed/packed.xml\n")


def _sidecar(repo: Path) -> None:
    image = repo / "demo" / "demo-frontend.img"
    (repo / "demo" / "demo-frontend.img.sha256").write_text(f"{hashlib.sha256(image.read_bytes()).hexdigest()}\n")


#: target -> (the file, the command that reads it, what the error line says before the reason, extra setup)
TARGETS: dict[str, tuple[str, tuple[str, ...], str, Callable[[Path], None] | None]] = {
    "catalogue": ("vcdb.txt", ("list", "repository"), "cannot read image catalogue: ", None),
    "description": ("demo/demo.xml", ("stage", "demo"), "cannot read cluster description: ", None),
    "image": ("demo/demo-frontend.img", ("stage", "demo"), "cannot read image: ", None),
    "image-checksum": ("demo/demo-frontend.img.sha256", ("stage", "demo"), "cannot read checksum file: ", _sidecar),
    "part": ("packed/packed.img.gz", ("stage", "packed"), "cannot read part: ", _packed),
    "part-checksum": ("packed/packed.img.gz.sha256", ("stage", "packed"), "cannot read checksum file: ", _packed),
}


def _link_out(path: Path, outside: Path) -> None:
    copy = outside / path.name
    shutil.copyfile(path, copy)  # the very bytes: following the link would "work"
    path.unlink()
    path.symlink_to(copy)


def _replace(kind: str) -> Callable[[Path, Path], None]:
    def make(path: Path, outside: Path) -> None:
        if kind == "symlink-out":
            _link_out(path, outside)
            return
        path.unlink()
        if kind == "device":
            path.symlink_to("/dev/zero")
        elif kind == "fifo":
            make_fifo(path)
        elif kind == "socket":
            make_socket_file(path)
        elif kind == "directory":
            path.mkdir()

    return make


#: kind -> what the reason says
KINDS = {
    "symlink-out": "outside",
    "device": "resolves to /dev/zero",
    "fifo": "is a FIFO, not a regular file",
    "socket": "is a socket, not a regular file",
    "directory": "is a directory, not a regular file",
}


@pytest.fixture
def outside(site) -> Path:
    directory = site.root / "outside"
    directory.mkdir()
    return directory


def _prepare(site, target: str) -> tuple[Path, tuple[str, ...], str]:
    name, command, prefix, setup = TARGETS[target]
    if setup is not None:
        setup(site.repo)
    return site.repo / name, command, prefix


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_repository_file_that_is_not_a_regular_file_inside_is_refused_in_one_line(
    site, outside: Path, target: str, kind: str
) -> None:
    path, command, prefix = _prepare(site, target)
    assert site.run(*command).code == 0, "the untouched repository works"
    _replace(kind)(path, outside)
    before = snapshot(site.repo, outside)
    result = site.run(*command)
    assert result.code == 1
    line = one_line(result.err)
    assert line.startswith(f"Error: {path}: {prefix}") and KINDS[kind] in line, line
    assert snapshot(site.repo, outside) == before


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_symbolic_link_that_stays_inside_the_repository_is_fine(site, target: str) -> None:
    path, command, _ = _prepare(site, target)
    real = path.with_name(f"real-{path.name}")
    path.rename(real)
    path.symlink_to(real.name)
    result = site.run(*command)
    assert result.code == 0, result.err


@pytest.mark.parametrize("kind", ["symlink-out", "fifo", "directory"])
def test_pragma_boot_refuses_a_hostile_image_and_allocates_nothing(site, outside: Path, kind: str) -> None:
    path = site.repo / "demo" / "demo-compute.img"
    _replace(kind)(path, outside)
    result = site.run("boot", "demo", "2", f"key={site.key}")
    assert result.code == 1 and KINDS[kind] in one_line(result.err)
    assert site.run("list", "cluster").out.count("\n") <= 1, "no cluster was allocated"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_local_repository_refuses_a_hostile_catalogue_and_description(site, outside: Path, kind: str) -> None:
    settings = RepositorySettings(repository_class="local", repository_dir=site.repo)
    catalogue = LocalRepository(settings, site=None)
    assert "demo" in catalogue.list()
    _replace(kind)(site.repo / "demo" / "demo.xml", outside)
    with pytest.raises(RepositoryError) as info:
        catalogue.describe("demo")
    assert KINDS[kind] in one_line(str(info.value))
    _replace(kind)(site.repo / "vcdb.txt", outside)
    with pytest.raises(RepositoryError) as info:
        LocalRepository(settings, site=None).list()
    assert KINDS[kind] in one_line(str(info.value))


# ----------------------------------------------------------------------- open_inside itself


def test_open_inside_reads_the_file_it_checked_even_if_the_name_is_swapped_meanwhile(tmp_path: Path, monkeypatch) -> None:
    inside = tmp_path / "repo"
    inside.mkdir()
    (inside / "part").write_bytes(b"the checked part\n")
    (tmp_path / "secret").write_bytes(b"root's secret\n")
    real_readlink = os.readlink

    def swap_then_readlink(path, *args, **kwargs):  # called on the checked descriptor
        if str(path).startswith("/proc/self/fd/") and not (inside / "part").is_symlink():
            (inside / "part").unlink()
            (inside / "part").symlink_to(tmp_path / "secret")
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(paths.os, "readlink", swap_then_readlink)
    with open_inside(inside, inside / "part") as handle:
        assert handle.read() == b"the checked part\n"
    assert (inside / "part").is_symlink(), "the name was swapped while it was checked"


def test_open_inside_never_blocks_on_a_fifo_and_leaves_the_descriptor_blocking(tmp_path: Path) -> None:
    make_fifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UnsafeFileError, match="is a FIFO"):
        open_inside(tmp_path, tmp_path / "fifo")
    with open_inside(tmp_path, tmp_path / "file") as handle:
        assert os.get_blocking(handle.fileno())


# ----------------------------------------------------------------------- permissions


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("part_modes", "expected"),
    [((0o644,), 0o644), ((0o600,), 0o600), ((0o640, 0o604), 0o600), ((0o644, 0o640), 0o640), ((0o444,), 0o444)],
)
def test_a_staged_image_and_its_stamp_are_no_more_readable_than_its_parts(
    tmp_path: Path, umask_022, part_modes: tuple[int, ...], expected: int
) -> None:
    blob = gzip.compress(image_bytes(MIB, seed=4))
    step = -(-len(blob) // len(part_modes))
    parts = []
    for index, mode in enumerate(part_modes):
        part = tmp_path / f"img.gz.{index}"
        part.write_bytes(blob[index * step : (index + 1) * step])
        part.chmod(mode)
        parts.append(Part(name=part.name))
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert _mode(staged.path) == expected
    assert _mode(tmp_path / ".img.raw.ready") == expected & 0o644


def test_the_stamp_of_a_private_in_place_image_is_private_too(tmp_path: Path, umask_022) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(image_bytes(MIB, seed=5))
    image.chmod(0o600)
    (tmp_path / "img.raw.sha256").write_text(hashlib.sha256(image.read_bytes()).hexdigest() + "\n")
    disk = DiskImage(source="img.raw")
    Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert _mode(tmp_path / ".img.raw.ready") == 0o600


def test_an_empty_in_place_image_and_a_directory_image_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.raw").write_bytes(b"")
    (tmp_path / "dir.raw").mkdir()
    for source, expected in (("empty.raw", "image is empty (0 bytes)"), ("dir.raw", "is a directory")):
        disk = DiskImage(source=source)
        with pytest.raises(StagingError) as info:
            Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
        assert expected in one_line(str(info.value))


def test_the_http_repository_reads_a_cached_part_only_inside_the_cluster_directory(tmp_path: Path) -> None:
    from httpfaults import FaultServer, write_remote_repository

    from pragma_core.config import ConfigFile, SiteConfig
    from pragma_core.repositories.http import HttpRepository

    www = tmp_path / "www"
    www.mkdir()
    write_remote_repository(www)
    outside = tmp_path / "outside"
    outside.mkdir()
    with FaultServer(www) as server:
        settings = RepositorySettings(
            repository_class="http",
            repository_dir=tmp_path / "cache",
            repository_url=server.base_url,
            options={"timeout": 2, "retries": 0, "backoff": 0.01},
        )
        source = ConfigFile(path=tmp_path / "site_conf.conf", values={}, lines={})
        site = SiteConfig(conf_dir=tmp_path, source=source, repository=settings)
        repo = HttpRepository(settings, site=site)
        description = repo.describe("demo")
        part = description.directory / description.frontend.disk.parts[0].name
        shutil.copyfile(www / "clusters" / "demo" / part.name, outside / part.name)
        part.symlink_to(outside / part.name)  # the very bytes the server has: following it would "work"
        with pytest.raises(StagingError) as info:
            repo.stage(description, Stager(progress=False))
    line = one_line(str(info.value))
    assert line.startswith(f"{part}: cannot read part: ") and "outside" in line
    assert not (description.directory / "demo-frontend.img").exists()
