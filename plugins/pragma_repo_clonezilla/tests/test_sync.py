"""End to end: `pragma sync repository` against the Drive simulator with real restore ISOs."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from filelock import FileLock

from conftest import COMPUTE_FILES, FRONTEND_FILES
from czbuild import check_ext4
from pragma_core.config import parse_legacy, site_config_from
from pragma_core.errors import ConfigError, NotFoundError, PragmaError, RepositoryError
from pragma_repo_clonezilla.repository import ClonezillaRepository
from pragma_repo_clonezilla.sync import LOCK_NAME, Syncer

XML = b"""<vc version="0.1">
  <virtualization engine="kvm" type="hvm" arch="x86_64"/>
  <frontend><domain type="kvm"><name>fe</name><memory>1048576</memory><vcpu>1</vcpu><devices>
    <disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="old-frontend.img"/>
      <target dev="hda" bus="ide"/><file type="gzip"><part>old.gz</part></file></disk>
  </devices></domain></frontend>
  %s
</vc>
"""
COMPUTE = b"""<compute><domain type="kvm"><name>c</name><devices><disk type="file" device="disk">
    <driver name="qemu" type="raw"/><source file="old-compute.img"/></disk></devices></domain></compute>"""


def make_repo(sim, root: Path, *, api: bool = True, **options) -> ClonezillaRepository:
    settings = {
        "repository_class": "clonezilla",
        "repository_dir": str(root),
        "repository_url": f"https://drive.google.com/drive/folders/{sim.root}",
        "drive_api_url": f"{sim.url}/drive/v3",
        "drive_web_url": sim.url,
        "drive_download_url": f"{sim.url}/download",
        "retry_delay": 0,
        **options,
    }
    if api:
        settings["api_key"] = sim.api_key
    conf = root.parent / "site_conf.conf"
    conf.write_text(f"repository_settings = {settings!r}\n")
    site = site_config_from(parse_legacy(conf.read_text(), conf), root.parent)
    return ClonezillaRepository(site.require_repository(), site=site)


def publish(sim, isos, name: str, *, compute: bool = True) -> dict[str, str]:
    folder = sim.add_folder(name, sim.root)
    ids = {"folder": folder, "xml": sim.add_file(f"{name}.xml", folder, XML % (COMPUTE if compute else b""))}
    ids["frontend"] = sim.add_file(isos["frontend"].name, folder, isos["frontend"].read_bytes(), modified=1_700_000_000)
    if compute:
        ids["compute"] = sim.add_file(isos["compute"].name, folder, isos["compute"].read_bytes(), modified=1_700_000_000)
    return ids


def test_sync_restores_images_writes_local_xml_and_vcdb_then_does_nothing(drive_sim, isos, tmp_path: Path, caplog) -> None:
    publish(drive_sim, isos, "demo")
    publish(drive_sim, isos, "solo", compute=False)
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root)
    assert repo.list() == []
    caplog.set_level(logging.INFO)
    assert repo.sync() is True
    assert repo.list() == ["demo", "solo"]
    assert (root / "vcdb.txt").read_text() == "demo,demo/demo-local.xml\nsolo,solo/solo-local.xml\n"

    demo = repo.describe("demo")
    assert demo.frontend.disk.source == "clonezilla-live-demo-frontend.raw"  # no ".1G", fix B33
    assert demo.compute is not None and demo.compute.disk.source == "clonezilla-live-demo-compute.raw"
    local = (root / "demo" / "demo-local.xml").read_text()
    assert local.count("<source") == 2 and "old-frontend.img" not in local and "<part>" not in local  # fix B35
    check_ext4(root / "demo" / demo.frontend.disk.source, 0, tmp_path, FRONTEND_FILES)
    check_ext4(root / "demo" / demo.compute.disk.source, 0, tmp_path, COMPUTE_FILES)
    assert repo.describe("solo").compute is None
    with pytest.raises(NotFoundError):
        repo.describe("nope")

    # second run: nothing downloaded, restored or rewritten (fix B32), and quiet
    media = len(drive_sim.media_requests())
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    caplog.clear()
    assert repo.sync() is False
    assert len(drive_sim.media_requests()) == media
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("pragma")]


def test_a_newer_iso_on_drive_is_downloaded_and_restored_again(drive_sim, isos, tmp_path: Path) -> None:
    ids = publish(drive_sim, isos, "demo", compute=False)
    repo = make_repo(drive_sim, tmp_path / "repo")
    repo.sync()
    image = tmp_path / "repo" / "demo" / "clonezilla-live-demo-frontend.raw"
    before = image.stat().st_mtime_ns
    drive_sim.update_file(ids["frontend"], isos["frontend"].read_bytes(), modified=2_000_000_000)
    assert repo.sync() is True
    assert image.stat().st_mtime_ns > before
    assert len(drive_sim.media_requests(ids["frontend"])) == 2
    assert len(drive_sim.media_requests(ids["xml"])) == 1


def test_bad_clusters_fail_one_line_each_and_the_rest_still_syncs(drive_sim, isos, tmp_path: Path, caplog) -> None:
    publish(drive_sim, isos, "good", compute=False)
    noxml = drive_sim.add_folder("noxml", drive_sim.root)
    drive_sim.add_file("noxml-frontend.iso", noxml, isos["frontend"].read_bytes())
    noiso = drive_sim.add_folder("noiso", drive_sim.root)
    drive_sim.add_file("noiso.xml", noiso, XML % b"")
    junk = drive_sim.add_folder("junk", drive_sim.root)
    drive_sim.add_file("junk.xml", junk, XML % b"")
    junk_iso = drive_sim.add_file("junk-frontend.iso", junk, b"<html>not an iso</html>" * 50)
    quota = drive_sim.add_folder("quota", drive_sim.root)
    drive_sim.add_file("quota.xml", quota, XML % b"")
    quota_iso = drive_sim.add_file("quota-frontend.iso", quota, isos["frontend"].read_bytes())
    drive_sim.fail(quota_iso, "quota")
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root)
    with pytest.raises(RepositoryError) as info:
        repo.sync()
    message = str(info.value)
    assert message.startswith("4 of 5 clusters failed") and "\n" not in message
    for words in ("noxml: no cluster description", "noiso: no frontend restore ISO", "junk: junk-frontend.iso: not an ISO 9660", "quota: ", "downloadQuotaExceeded"):
        assert words in message
    assert repo.list() == ["good"]  # no entry for a failed cluster (fix B31)
    assert not (root / "junk" / "junk-frontend.iso").exists(), "a bad ISO is removed so the next sync retries"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 4 and all("\n" not in r.getMessage() for r in errors)
    assert "sim-key" not in caplog.text

    # the owner fixes the folders; the next sync picks them up
    drive_sim.update_file(junk_iso, isos["frontend"].read_bytes())
    drive_sim.remove(noxml)
    drive_sim.remove(noiso)
    assert repo.sync() is True
    assert repo.list() == ["good", "junk", "quota"]


def test_include_and_exclude_match_at_the_start_of_folder_names(drive_sim, isos, tmp_path: Path) -> None:
    for name in ("rocks-a", "rocks-b", "other"):
        publish(drive_sim, isos, name, compute=False)
    repo = make_repo(drive_sim, tmp_path / "repo", include_images="rocks", exclude_images="rocks-b")
    repo.sync()
    assert repo.list() == ["rocks-a"]


def test_a_second_sync_while_one_runs_fails_clearly(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "demo", compute=False)
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root)
    root.mkdir()
    with FileLock(str(root / LOCK_NAME)):
        with pytest.raises(RepositoryError, match="another sync .* is running"):
            repo.sync()
    assert not drive_sim.media_requests()


def test_web_mode_sync_without_api_key_and_qcow2_output(drive_sim, isos, tmp_path: Path) -> None:
    drive_sim.large = 100_000  # the ISOs take the confirm-page path
    publish(drive_sim, isos, "demo", compute=False)
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root, api=False, local_image_url="file://$repository_dir/$cluster/$imagename.qcow2")
    assert repo.sync() is True
    desc = repo.describe("demo")
    assert desc.frontend.disk.format == "qcow2"
    image = root / "demo" / desc.frontend.disk.source
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30
    raw = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    check_ext4(raw, 0, tmp_path, FRONTEND_FILES)
    assert any("uuid" in r["query"] for r in drive_sim.requests)


def _zfs_repo(drive_sim, isos, tmp_path: Path, monkeypatch, *, available: int):  # noqa: ANN001, ANN202
    """A repository restoring to ``zfs://nas-0-0/tank/...`` through a fake ``ssh`` that logs every call
    (and its stdin's length) and says the pool has ``available`` bytes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ssh.log"
    fake = bin_dir / "ssh"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "count = 0\n"
        "while block := sys.stdin.buffer.read(1 << 20):\n"
        "    count += len(block)\n"
        f"with open({str(record)!r}, 'a') as f: f.write(json.dumps({{'argv': sys.argv[1:], 'stdin': count}}) + '\\n')\n"
        "if sys.argv[-2:] == ['available', 'tank']:\n"
        f"    print({available})\n"
        "    sys.exit(0)\n"
        "sys.exit(1 if sys.argv[-4:-1] == ['value', 'creation', 'tank/vc-demo'] or 'get' in sys.argv else 0)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    publish(drive_sim, isos, "demo", compute=False)
    return make_repo(drive_sim, tmp_path / "repo", local_image_url="zfs://nas-0-0/tank/vc-$imagename"), record


def test_zfs_target_runs_ssh_and_zfs_as_argument_lists(drive_sim, isos, tmp_path: Path, monkeypatch) -> None:
    repo, record = _zfs_repo(drive_sim, isos, tmp_path, monkeypatch, available=50 << 30)
    assert repo.sync() is True
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    vol = "tank/vc-clonezilla-live-demo-frontend"
    remote = [c["argv"][c["argv"].index("--") + 1 :] for c in calls]
    assert all(c["argv"][:4] == ["-o", "BatchMode=yes", "nas-0-0", "--"] for c in calls)
    assert ["zfs", "get", "-Hp", "-o", "value", "creation", vol] in remote  # fix B37: no locale parsing
    assert ["zfs", "create", "-s", "-V", str(1 << 30), f"{vol}-pragma-new"] in remote  # fix B34: name from the URL
    dd = next(c for c in calls if c["argv"][4] == "dd")
    assert dd["argv"][5] == f"of=/dev/zvol/{vol}-pragma-new" and dd["stdin"] == 1 << 30
    assert dd["argv"][7] == "conv=notrunc,sparse", "zero blocks are skipped: the sparse volume stays sparse"
    assert remote.index(["zfs", "get", "-Hp", "-o", "value", "available", "tank"]) < remote.index(
        ["zfs", "create", "-s", "-V", str(1 << 30), f"{vol}-pragma-new"])
    assert remote[-1] == ["zfs", "rename", f"{vol}-pragma-new", vol]
    local = (tmp_path / "repo" / "demo" / "demo-local.xml").read_text()
    assert 'volume="vc-clonezilla-live-demo-frontend"' in local and 'pool="tank"' in local and 'host="nas-0-0"' in local


def test_a_zfs_restore_that_would_fill_the_pool_is_refused_before_the_volume_is_made(
    drive_sim, isos, tmp_path: Path, monkeypatch
) -> None:
    repo, record = _zfs_repo(drive_sim, isos, tmp_path, monkeypatch, available=(1 << 30) + (1 << 20))
    with pytest.raises(RepositoryError) as info:
        repo.sync()
    assert "vc-clonezilla-live-demo-frontend: refused: pool tank on nas-0-0 has 1074790400 bytes available" in str(info.value)
    remote = [c["argv"][4:] for c in map(json.loads, record.read_text().splitlines())]
    assert not any(argv[:2] in (["zfs", "create"], ["dd", "of=/dev/zvol/tank/vc-clonezilla-live-demo-frontend-pragma-new"])
                   for argv in remote), "nothing was made on the NAS"


def test_bad_settings_name_the_setting(drive_sim, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="include_images"):
        make_repo(drive_sim, tmp_path / "repo", include_images="(")
    with pytest.raises(ConfigError, match="repository_url"):
        make_repo(drive_sim, tmp_path / "repo", repository_url="https://example.org/nothing")


def test_template_outside_the_repository_or_unknown_variable_fails_the_cluster(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "demo", compute=False)
    repo = make_repo(drive_sim, tmp_path / "repo", local_image_url="file://$repository_dir/../$imagename.raw")
    with pytest.raises(RepositoryError, match="outside the repository"):
        repo.sync()
    repo = make_repo(drive_sim, tmp_path / "repo", local_image_url="file://$repository_dir/$cluster/$nope.raw")
    with pytest.raises(RepositoryError, match=r"unknown variable \$nope"):
        repo.sync()


# --------------------------------------------------------------------------- hostile repository and ISOs


def test_a_link_planted_at_the_default_work_directory_stops_the_sync_before_anything_is_fetched(
    drive_sim, isos, tmp_path: Path
) -> None:
    publish(drive_sim, isos, "good", compute=False)
    root, outside = tmp_path / "repo", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / ".pragma-work").symlink_to(outside)
    repo = make_repo(drive_sim, root)
    with pytest.raises(PragmaError) as info:
        repo.sync()
    assert str(info.value).endswith(f"{root / '.pragma-work'}: is a symbolic link; pragma does not write through"
                                    " symbolic links")
    assert drive_sim.media_requests() == [] and list(outside.iterdir()) == []


def test_a_work_dir_the_site_names_is_used_by_the_real_path_its_links_lead_to(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "good", compute=False)
    real = tmp_path / "scratch" / "pragma"
    real.mkdir(parents=True)
    (tmp_path / "work").symlink_to(real)  # the site's own link, e.g. /scratch -> /data/scratch
    repo = make_repo(drive_sim, tmp_path / "repo", work_dir=str(tmp_path / "work"))
    assert repo.sync()
    assert repo.list() == ["good"]
    syncer = Syncer(repo.config, root=repo.root, vcdb_path=repo.settings.vcdb_path, folder_id=repo.folder_id,
                    client=repo.client)
    syncer._check_work_dir()
    assert syncer.work_dir == real  # scratch disks and logs are written by this path, not through the link


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775], ids=["777", "1777-like-tmp", "775"])
def test_a_work_dir_the_site_names_that_others_may_write_is_refused_before_anything_is_fetched(
    drive_sim, isos, tmp_path: Path, mode: int
) -> None:
    publish(drive_sim, isos, "good", compute=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)  # /tmp-like: another user could put a link at a scratch disk's or log's name
    (tmp_path / "work").symlink_to(shared)
    root = tmp_path / "repo"
    with pytest.raises(RepositoryError) as info:
        make_repo(drive_sim, root, work_dir=str(tmp_path / "work")).sync()
    assert str(info.value) == (f"work_dir {shared}: can be written by others (mode {mode & 0o7777:o}): they could put a"
                               f" link in place of what pragma writes there; chmod go-w {shared}")
    assert drive_sim.media_requests() == [] and list(shared.iterdir()) == []


def test_a_work_dir_the_site_names_is_made_when_missing(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "good", compute=False)
    work = tmp_path / "scratch" / "pragma-work"
    repo = make_repo(drive_sim, tmp_path / "repo", work_dir=str(work))
    assert repo.sync()
    assert work.is_dir() and not work.stat().st_mode & 0o022


def test_a_repository_directory_others_may_write_is_refused_before_anything_is_fetched(
    drive_sim, isos, tmp_path: Path
) -> None:
    publish(drive_sim, isos, "good", compute=False)
    root = tmp_path / "repo"
    root.mkdir()
    os.chmod(root, 0o775)  # a local user of the group could swap a cluster folder for a link mid-sync
    with pytest.raises(RepositoryError) as info:
        make_repo(drive_sim, root).sync()
    assert str(info.value) == (f"repository_dir {root}: can be written by others (mode 775): they could put a link in"
                               f" place of what pragma writes there; chmod go-w {root}")
    assert drive_sim.media_requests() == [] and sorted(p.name for p in root.iterdir()) == []


def test_a_cluster_folder_others_may_write_fails_that_cluster_alone(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "good", compute=False)
    publish(drive_sim, isos, "open", compute=False)
    root = tmp_path / "repo"
    (root / "open").mkdir(parents=True)
    os.chmod(root / "open", 0o777)
    repo = make_repo(drive_sim, root)
    with pytest.raises(RepositoryError) as info:
        repo.sync()
    assert f"open: {root / 'open'}: can be written by others (mode 777)" in str(info.value)
    assert list((root / "open").iterdir()) == []
    assert repo.list() == ["good"]


def test_a_link_at_a_cluster_folder_is_refused_and_nothing_is_written_through_it(drive_sim, isos, tmp_path: Path) -> None:
    publish(drive_sim, isos, "good", compute=False)
    publish(drive_sim, isos, "linked", compute=False)
    publish(drive_sim, isos, "plain", compute=False)
    root, outside = tmp_path / "repo", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside)
    (root / "plain").write_text("a file where the cluster folder goes\n")
    repo = make_repo(drive_sim, root)
    with pytest.raises(RepositoryError) as info:
        repo.sync()
    message = str(info.value)
    assert message.startswith("2 of 3 clusters failed") and "\n" not in message
    assert f"linked: {root / 'linked'}: is a symbolic link" in message
    assert f"plain: {root / 'plain'}: is not a directory" in message
    assert list(outside.iterdir()) == [], "nothing may be downloaded or restored through the link"
    assert (root / "linked").is_symlink() and (root / "plain").is_file()
    assert repo.list() == ["good"]
    good = next(ident for ident, item in drive_sim.items.items() if item["name"] == "good")
    fetched = {r["path"].rsplit("/", 1)[1] for r in drive_sim.media_requests()}
    assert fetched and all(drive_sim.items[ident]["parent"] == good for ident in fetched)


def test_a_malformed_iso_that_trips_pycdlib_fails_only_its_cluster(drive_sim, isos, tmp_path: Path, caplog) -> None:
    from czbuild import joliet_file_as_directory

    publish(drive_sim, isos, "good", compute=False)
    hostile = drive_sim.add_folder("hostile", drive_sim.root)
    drive_sim.add_file("hostile.xml", hostile, XML % b"")
    drive_sim.add_file("hostile-frontend.iso", hostile, joliet_file_as_directory(isos["frontend"].read_bytes(), "clonezilla-img"))
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root)
    with pytest.raises(RepositoryError) as info:
        repo.sync()
    message = str(info.value)
    assert message.startswith("1 of 2 clusters failed to sync: hostile: hostile-frontend.iso: unreadable ISO 9660 image (KeyError: ")
    assert "\n" not in message
    assert repo.list() == ["good"] and (root / "vcdb.txt").read_text() == "good,good/good-local.xml\n"
    assert not (root / "hostile" / "hostile-frontend.iso").exists(), "a bad ISO is removed so the next sync retries"
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_an_unexpected_error_in_one_cluster_is_its_failure_and_vcdb_is_still_written(
    drive_sim, isos, tmp_path: Path, monkeypatch, caplog
) -> None:
    from pragma_repo_clonezilla import sync

    real = sync.classify

    def classify(folder: str, files: list) -> sync.ClusterFiles:
        if folder == "boom":
            raise AttributeError("'list' object has no attribute 'get'")
        return real(folder, files)

    monkeypatch.setattr(sync, "classify", classify)
    publish(drive_sim, isos, "good", compute=False)
    publish(drive_sim, isos, "boom", compute=False)
    root = tmp_path / "repo"
    repo = make_repo(drive_sim, root)
    with pytest.raises(RepositoryError) as info:
        repo.sync()
    assert str(info.value) == "1 of 2 clusters failed to sync: boom: unexpected error: AttributeError: 'list' object has no attribute 'get'"
    assert repo.list() == ["good"] and (root / "vcdb.txt").read_text() == "good,good/good-local.xml\n"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["sync boom: unexpected error: AttributeError: 'list' object has no attribute 'get'"]
