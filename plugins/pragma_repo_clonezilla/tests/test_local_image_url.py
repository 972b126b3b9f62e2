"""``local_image_url`` in the original README's forms: images beside the clusters, in the repository root.

``file://$repository_dir/$imagename.raw`` (``.img``, ``.qcow2``) restores into
the repository root; the ``-local.xml`` goes beside the images and names them
as plain file names, and nothing outside the repository can be reached.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import COMPUTE_FILES, FRONTEND_FILES
from czbuild import check_ext4
from pragma_core.errors import ConfigError, FormatError, RepositoryError
from pragma_core.staging import Stager
from pragma_repo_clonezilla.localxml import local_xml_location, render_local_xml
from pragma_repo_clonezilla.target import resolve_target
from test_sync import COMPUTE, XML, make_repo, publish

ROOT = Path("/srv/repo")


# --------------------------------------------------------------------------- where targets may go (no restore)


@pytest.mark.parametrize(
    ("template", "path", "fmt"),
    [
        ("file://$repository_dir/$imagename.raw", ROOT / "img-frontend.raw", "raw"),
        ("file://$repository_dir/$imagename.img", ROOT / "img-frontend.img", "raw"),
        ("file://$repository_dir/$imagename.qcow2", ROOT / "img-frontend.qcow2", "qcow2"),
        ("file://$repository_dir/$cluster/$imagename.raw", ROOT / "vc1" / "img-frontend.raw", "raw"),
        ("file://$repository_dir/images/./$imagename.raw", ROOT / "images" / "img-frontend.raw", "raw"),
    ],
)
def test_the_readme_forms_resolve_inside_the_repository(template: str, path: Path, fmt: str) -> None:
    target = resolve_target(template, imagename="img-frontend", repository_dir=ROOT, cluster="vc1")
    assert (target.kind, target.path, target.format) == ("file", path, fmt)


@pytest.mark.parametrize(
    "template",
    [
        "file://$repository_dir/../$imagename.raw",
        "file://$repository_dir/$cluster/../../elsewhere/$imagename.raw",
        "file:///var/lib/images/$imagename.raw",
        "file://$repository_dir.raw",
        "file:///srv/repository/$imagename.raw",  # a sibling whose name starts like the root
    ],
)
def test_a_file_target_outside_the_repository_is_a_config_error(template: str) -> None:
    with pytest.raises(ConfigError, match="outside the repository /srv/repo"):
        resolve_target(template, imagename="img-frontend", repository_dir=ROOT, cluster="vc1")


def test_the_local_xml_stays_beside_the_description_when_the_images_are_in_the_cluster_directory() -> None:
    xml = ROOT / "vc1" / "biolinux.xml"
    inside = resolve_target("file://$repository_dir/$cluster/$imagename.raw", imagename="a", repository_dir=ROOT, cluster="vc1")
    zfs = resolve_target("zfs://nas/tank/$imagename", imagename="b", repository_dir=ROOT, cluster="vc1")
    assert local_xml_location(xml, {"frontend": inside, "compute": zfs}, "vc1") == ROOT / "vc1" / "biolinux-local.xml"
    assert local_xml_location(xml, {}, "vc1") == ROOT / "vc1" / "biolinux-local.xml"


def test_the_local_xml_goes_beside_images_kept_in_the_repository_root() -> None:
    xml = ROOT / "vc1" / "biolinux.xml"
    images = {
        role: resolve_target("file://$repository_dir/$imagename.raw", imagename=f"x-{role}", repository_dir=ROOT, cluster="vc1")
        for role in ("frontend", "compute")
    }
    assert local_xml_location(xml, images, "vc1") == ROOT / "vc1-local.xml"  # type: ignore[arg-type]


def test_images_outside_the_cluster_directory_in_two_directories_are_a_config_error() -> None:
    front = resolve_target("file://$repository_dir/$imagename.raw", imagename="f", repository_dir=ROOT, cluster="vc1")
    comp = resolve_target("file://$repository_dir/$cluster/$imagename.raw", imagename="c", repository_dir=ROOT, cluster="vc1")
    with pytest.raises(ConfigError, match="must share one directory"):
        local_xml_location(ROOT / "vc1" / "vc1.xml", {"frontend": front, "compute": comp}, "vc1")


KERNEL = b"""<compute><domain type="kvm"><name>c</name><os><type>hvm</type><kernel>vmlinuz</kernel></os>
  <devices><disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="c.img"/></disk></devices>
  </domain></compute>"""


@pytest.mark.parametrize(
    ("section", "roles", "problem"),
    [
        (COMPUTE, ("frontend",), "<compute> has no compute ISO"),
        (KERNEL, ("frontend", "compute"), "<compute> boots an <os><kernel> file"),
    ],
)
def test_a_description_beside_root_images_may_name_only_its_restored_images(
    tmp_path: Path, section: bytes, roles: tuple[str, ...], problem: str
) -> None:
    root = tmp_path / "repo"
    (root / "vc1").mkdir(parents=True)
    source = root / "vc1" / "vc1.xml"
    source.write_bytes(XML % section)
    images = {
        role: resolve_target("file://$repository_dir/$imagename.raw", imagename=f"vc1-{role}", repository_dir=root, cluster="vc1")
        for role in roles
    }
    with pytest.raises(FormatError, match=problem):
        render_local_xml(source, images, root)  # type: ignore[arg-type]
    # the same description beside its images in the cluster directory keeps the legacy behaviour
    inside = {
        role: resolve_target("file://$repository_dir/$cluster/$imagename.raw", imagename=f"vc1-{role}", repository_dir=root, cluster="vc1")
        for role in roles
    }
    assert b"vc1-frontend.raw" in render_local_xml(source, inside, root / "vc1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- end to end: sync, describe, stage


@pytest.mark.parametrize("suffix", [".raw", ".img", ".qcow2"])
def test_sync_with_a_readme_form_restores_into_the_root_and_the_images_stage(
    drive_sim, isos, tmp_path: Path, suffix: str
) -> None:
    publish(drive_sim, isos, "demo")
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root, local_image_url=f"file://$repository_dir/$imagename{suffix}")
    assert repo.sync() is True
    assert (root / "vcdb.txt").read_text() == "demo,demo-local.xml\n"
    desc = repo.describe("demo")
    assert desc.directory == root
    assert desc.frontend.disk.source == f"clonezilla-live-demo-frontend{suffix}"
    assert desc.compute is not None and desc.compute.disk.source == f"clonezilla-live-demo-compute{suffix}"
    assert desc.frontend.disk.format == ("qcow2" if suffix == ".qcow2" else "raw")
    assert not list((root / "demo").glob(f"*{suffix}")), "nothing restored into the cluster directory"

    staged = repo.stage(desc, Stager(progress=False))
    assert staged.frontend.path == root / f"clonezilla-live-demo-frontend{suffix}"
    for image, files in ((staged.frontend.path, FRONTEND_FILES), (staged.compute.path, COMPUTE_FILES)):
        raw = image
        if suffix == ".qcow2":
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True, check=True).stdout)
            assert info["format"] == "qcow2" and info.get("backing-filename") is None
            raw = tmp_path / f"{image.stem}.raw"
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
        check_ext4(raw, 0, tmp_path, files)
    assert repo.sync() is False, "a second sync has nothing to do"


def test_two_clusters_restoring_into_one_root_image_fail_the_second(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "demo", compute=False)
    publish(drive_sim, isos, "twin", compute=False)  # the same ISO name, so the same $imagename
    repo = make_repo(drive_sim, tmp_path / "repo", local_image_url="file://$repository_dir/$imagename.raw")
    with pytest.raises(RepositoryError, match=r"twin: .*clonezilla-live-demo-frontend.raw is already the image of demo"):
        repo.sync()
    assert repo.list() == ["demo"]


# --------------------------------------------------------------------------- the cziso log


def test_cziso_restore_never_writes_its_log_through_a_planted_link(tmp_path: Path) -> None:
    import stat

    from pragma_repo_clonezilla.target import cziso_restore

    cziso = tmp_path / "cziso"
    cziso.write_text("#!/bin/sh\necho \"cziso $*\"\n")
    cziso.chmod(cziso.stat().st_mode | stat.S_IXUSR)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "vc1").mkdir()
    log = tmp_path / "vc1" / "img-frontend-restore.log"
    log.symlink_to(victim)
    target = resolve_target("zfs://nas/tank/$imagename", imagename="img-frontend", repository_dir=tmp_path, cluster="vc1")
    cziso_restore(cziso, tmp_path / "vc1" / "img-frontend.iso", target, size_setting=None, log_file=log)
    assert victim.read_bytes() == b"keep me"
    assert not log.is_symlink() and log.read_text().startswith("cziso restore ")
    assert [p.name for p in (tmp_path / "vc1").iterdir()] == [log.name], "no temporary file is left behind"
