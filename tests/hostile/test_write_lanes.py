"""Staging writes only its own outputs, in the cluster's directory, never through a link.

Each payload is a repository whose description (or whose files) would make
staging write somewhere it must not: over the catalogue, over its own
description or parts, over another cluster's description, image, part or
stamp (clusters sharing a directory, or nested), over the other node's
files, through a link standing where the image, its stamp or its lock goes,
or into a directory reached through a link. ``pragma stage`` must refuse it
in one line and leave every file of the repository, and outside it, as it
was (a link's target is not truncated, no file appears).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hostilekit import cluster_xml, one_line, snapshot
from stagingkit import describe, image_bytes

from pragma_core.errors import StagingError
from pragma_core.model import DiskImage, Part
from pragma_core.staging import Stager

MIB = 1 << 20


def gz(path: Path, seed: int = 1) -> str:
    """A gzip part at ``path``; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image_bytes(MIB, seed=seed)))
    return path.name


def raw(path: Path, seed: int = 2) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(MIB, seed=seed))
    return path.name


def listed(repo: Path, name: str, xml: Path) -> None:
    with open(repo / "vcdb.txt", "a") as catalogue:
        catalogue.write(f"{name},{xml.relative_to(repo)}\n")


def staged_over(repo: Path, directory: Path, source: str, name: str = "evil") -> None:
    """List a cluster ``name`` in ``directory`` whose image ``source`` is made from a gzip part."""
    part = gz(directory / f"{name}-part.gz")
    listed(repo, name, cluster_xml(directory, name, source=source, file_type="gzip", parts=(part,)))


def _shared(repo: Path) -> Path:
    """Cluster ``b`` (image b.img from part b.img.gz, checksum file) in repo/shared, where ``evil`` goes too."""
    shared = repo / "shared"
    part = gz(shared / "b.img.gz")
    (shared / "b.img.gz.sha256").write_text(hashlib.sha256((shared / part).read_bytes()).hexdigest() + "\n")
    listed(repo, "b", cluster_xml(shared, "b", source="b.img", file_type="gzip", parts=(part,)))
    return shared


def _catalogue(repo: Path, outside: Path) -> tuple[str, str]:
    staged_over(repo, repo, "vcdb.txt")
    return "evil", f"would write {repo / 'vcdb.txt'}, which is the image catalogue"


def _shared_payload(source: str, what: str) -> Callable[[Path, Path], tuple[str, str]]:
    def build(repo: Path, outside: Path) -> tuple[str, str]:
        shared = _shared(repo)
        staged_over(repo, shared, source)
        return "evil", f"would write {shared / source}, which is {what}"

    return build


def _nested(source: str, what: str) -> Callable[[Path, Path], tuple[str, str]]:
    def build(repo: Path, outside: Path) -> tuple[str, str]:
        outer, inner = repo / "outer", repo / "outer" / "inner"
        listed(repo, "inner", cluster_xml(inner, "inner", source=raw(inner / "inner.img")))
        staged_over(repo, outer, source)
        return "evil", f"would write {outer / source}, which is {what}"

    return build


def _parent_part(repo: Path, outside: Path) -> tuple[str, str]:
    kid = repo / "kid"
    gz(kid / "x.gz")
    listed(repo, "parent", cluster_xml(repo, "parent", source="parent.img", file_type="gzip", parts=("kid/x.gz",)))
    staged_over(repo, kid, "x.gz")
    return "evil", f"would write {kid / 'x.gz'}, which is part kid/x.gz of cluster parent"


def _own_description(repo: Path, outside: Path) -> tuple[str, str]:
    staged_over(repo, repo / "evil", "evil.xml")
    return "evil", f"would write {repo / 'evil' / 'evil.xml'}, which is the cluster description itself"


def _own_part(repo: Path, outside: Path) -> tuple[str, str]:
    staged_over(repo, repo / "evil", "evil-part.gz")
    return "evil", "image evil-part.gz is also listed as one of its own parts"


def _own_part_checksum(repo: Path, outside: Path) -> tuple[str, str]:
    staged_over(repo, repo / "evil", "evil-part.gz.sha256")
    return "evil", "which is the checksum file of part evil-part.gz"


def _two_nodes(front_source: str, what: str) -> Callable[[Path, Path], tuple[str, str]]:
    def build(repo: Path, outside: Path) -> tuple[str, str]:
        directory = repo / "evil"
        front = gz(directory / "front.gz", seed=3)
        back = gz(directory / "back.gz", seed=4)
        xml = cluster_xml(
            directory, "evil", source=front_source, file_type="gzip", parts=(front,),
            compute=("compute.img", "gzip", (back,)),
        )
        listed(repo, "evil", xml)
        return "evil", f"would write {directory / front_source}, which is {what}"

    return build


def _link(name: str, target: Callable[[Path], Path], expected: str) -> Callable[[Path, Path], tuple[str, str]]:
    """A cluster staging ``img.raw`` from a part, with a link ``name`` in its directory."""

    def build(repo: Path, outside: Path) -> tuple[str, str]:
        directory = repo / "evil"
        staged_over(repo, directory, "img.raw")
        (directory / name).symlink_to(target(outside))
        return "evil", f"{directory / name}: {expected}"

    return build


def _victim(outside: Path) -> Path:
    victim = outside / "victim"
    victim.write_bytes(b"must stay exactly as it is\n")
    return victim


def _linked_directory(target: Callable[[Path, Path], Path]) -> Callable[[Path, Path], tuple[str, str]]:
    def build(repo: Path, outside: Path) -> tuple[str, str]:
        directory = repo / "evil"
        staged_over(repo, directory, "sub/img.raw")
        (directory / "sub").symlink_to(target(repo, outside))
        return "evil", f"cannot stage image: {directory / 'sub'}: is a symbolic link; pragma does not write through"

    return build


def _directory_output(repo: Path, outside: Path) -> tuple[str, str]:
    directory = repo / "evil"
    staged_over(repo, directory, "img.raw")
    (directory / "img.raw").mkdir()
    return "evil", f"{directory / 'img.raw'}: is not a regular file; pragma will not replace it"


_NO_LINK = "is a symbolic link; pragma does not write through symbolic links"

PAYLOADS: dict[str, Callable[[Path, Path], tuple[str, str]]] = {
    "catalogue": _catalogue,
    "shared-description": _shared_payload("b.xml", "the cluster description of b"),
    "shared-image": _shared_payload("b.img", "image b.img of cluster b"),
    "shared-part": _shared_payload("b.img.gz", "part b.img.gz of cluster b"),
    "shared-part-checksum": _shared_payload("b.img.gz.sha256", "the checksum file of part b.img.gz of cluster b"),
    "shared-stamp": _shared_payload(".b.img.ready", "the stamp of image b.img of cluster b"),
    "shared-lock": _shared_payload(".b.img.lock", "the lock of image b.img of cluster b"),
    "nested-description": _nested("inner/inner.xml", "the cluster description of inner"),
    "nested-image": _nested("inner/inner.img", "image inner.img of cluster inner"),
    "parent-part": _parent_part,
    "own-description": _own_description,
    "own-part": _own_part,
    "own-part-checksum": _own_part_checksum,
    "compute-part": _two_nodes("back.gz", "part back.gz of image compute.img"),
    "compute-stamp": _two_nodes(".compute.img.ready", "the stamp of image compute.img"),
    "compute-lock": _two_nodes(".compute.img.lock", "the lock of image compute.img"),
    "image-link-out": _link("img.raw", _victim, _NO_LINK),
    "image-link-dangling": _link("img.raw", lambda o: o / "new-file", _NO_LINK),
    "stamp-link-out": _link(".img.raw.ready", _victim, _NO_LINK),
    "lock-link-out": _link(".img.raw.lock", _victim, _NO_LINK),
    "lock-link-dangling": _link(".img.raw.lock", lambda o: o / "new-file", _NO_LINK),
    "lock-link-to-catalogue": _link(".img.raw.lock", lambda o: o.parent / "repo" / "vcdb.txt", _NO_LINK),
    "directory-link-out": _linked_directory(lambda repo, outside: outside),
    "directory-link-to-other-cluster": _linked_directory(lambda repo, outside: repo / "demo"),
    "image-is-a-directory": _directory_output,
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_pragma_stage_writes_nothing_outside_its_lane(site, payload: str) -> None:
    outside = site.root / "outside"
    outside.mkdir()
    name, expected = PAYLOADS[payload](site.repo, outside)
    before = snapshot(site.repo, outside)
    result = site.run("stage", name)
    assert result.code == 1
    line = one_line(result.err)
    assert line.startswith("Error: ") and expected in line, line
    assert snapshot(site.repo, outside) == before


@pytest.mark.parametrize("payload", ["catalogue", "shared-image", "lock-link-out", "directory-link-out"])
def test_pragma_boot_writes_nothing_outside_its_lane(site, payload: str) -> None:
    outside = site.root / "outside"
    outside.mkdir()
    name, expected = PAYLOADS[payload](site.repo, outside)
    before = snapshot(site.repo, outside)
    result = site.run("boot", name, "2", f"key={site.key}")
    assert result.code == 1 and expected in one_line(result.err)
    assert snapshot(site.repo, outside) == before


def test_the_same_description_stages_in_a_clean_directory(site) -> None:
    """The control: what the payloads are made of stages fine when nothing collides."""
    staged_over(site.repo, site.repo / "evil", "img.raw")
    _shared(site.repo)
    staged_over(site.repo, site.repo / "shared", "evil.img", name="fine")
    for name in ("evil", "b", "fine"):
        result = site.run("stage", name)
        assert result.code == 0, result.err


def test_a_leftover_temporary_name_that_is_a_link_is_neither_followed_nor_removed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"must stay\n")
    cluster = tmp_path / "cluster"
    part = gz(cluster / "img.gz")
    leftover = cluster / f".img.raw.staging-{os.getpid()}-deadbeef"
    leftover.symlink_to(victim)
    disk = DiskImage(source="img.raw", processor="gzip", parts=[Part(name=part)])
    Stager(progress=False).stage_image(describe(cluster, disk), disk)
    assert leftover.is_symlink() and victim.read_bytes() == b"must stay\n"


def test_the_stager_alone_refuses_writing_over_its_description(tmp_path: Path) -> None:
    part = gz(tmp_path / "p.gz")
    disk = DiskImage(source="demo.xml", processor="gzip", parts=[Part(name=part)])
    (tmp_path / "demo.xml").write_text("<vc/>\n")
    with pytest.raises(StagingError, match="which is the cluster description itself"):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert (tmp_path / "demo.xml").read_text() == "<vc/>\n"
