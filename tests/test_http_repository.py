"""The ``http`` repository over real HTTP: a loopback fault-injecting server and a local S3 (moto)."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from pathlib import Path

import pytest
from httpfaults import Fault, FaultServer, write_remote_repository

from pragma_core.config import ConfigFile, RepositorySettings, SiteConfig
from pragma_core.errors import (
    ChecksumError,
    ConfigError,
    FormatError,
    NotFoundError,
    PragmaError,
    RepositoryError,
)
from pragma_core.repositories.http import HttpRepository
from pragma_core.staging import Stager
from pragma_core.testing import RepositoryContract, RepositoryHarness

FAST = {"timeout": 2, "retries": 3, "backoff": 0.01}


def make_site(tmp_path: Path, url: str, cls: str = "http", **options) -> SiteConfig:
    settings = RepositorySettings(
        repository_class=cls,
        repository_dir=tmp_path / "cache",
        repository_url=url,
        options={**FAST, **options},
    )
    source = ConfigFile(path=tmp_path / "etc" / "site_conf.conf", values={}, lines={})
    return SiteConfig(conf_dir=tmp_path / "etc", source=source, repository=settings)


def make_repo(tmp_path: Path, url: str, **options) -> HttpRepository:
    site = make_site(tmp_path, url, **options)
    return HttpRepository(site.repository, site=site)


@pytest.fixture
def remote(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    clusters = write_remote_repository(root)
    with FaultServer(root) as server:
        yield server, root, clusters


def stage(repo: HttpRepository, name: str = "demo"):
    return repo.stage(repo.describe(name), Stager(progress=False))


def cache_files(repo: HttpRepository) -> list[str]:
    """Visible files of the local cache, relative to it."""
    found = []
    for path in repo.root.rglob("*"):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(repo.root).parts):
            found.append(path.relative_to(repo.root).as_posix())
    return sorted(found)


def all_cache_files(repo: HttpRepository) -> list[str]:
    return sorted(p.relative_to(repo.root).as_posix() for p in repo.root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- conformance kit


class TestHttpRepositoryContract(RepositoryContract):
    @pytest.fixture
    def repository_harness(self, tmp_path, remote):
        server, _, clusters = remote
        repo = make_repo(tmp_path, server.base_url)
        return RepositoryHarness(repository=repo, names=[c.name for c in clusters], stager=Stager(progress=False))


# --------------------------------------------------------------------------- catalogue and descriptions


def test_catalogue_is_fetched_when_missing_then_checked_with_a_conditional_request(tmp_path, remote):
    server, root, _ = remote
    assert make_repo(tmp_path, server.base_url).list() == ["demo", "other"]
    assert (tmp_path / "cache" / "vcdb.txt").read_bytes() == (root / "vcdb.txt").read_bytes()
    assert make_repo(tmp_path, server.base_url).list() == ["demo", "other"]
    second = server.requests_for("vcdb.txt")[-1]
    assert second.status == 304 and second.headers.get("If-None-Match")


def test_catalogue_is_refreshed_when_the_server_has_a_newer_one(tmp_path, remote):
    server, root, _ = remote
    make_repo(tmp_path, server.base_url).list()
    with open(root / "vcdb.txt", "a") as handle:
        handle.write("third,other/other.xml\n")
    assert make_repo(tmp_path, server.base_url).list() == ["demo", "other", "third"]


def test_an_unreachable_server_falls_back_to_the_cached_catalogue(tmp_path, remote, caplog):
    server, _, _ = remote
    make_repo(tmp_path, server.base_url).list()
    server.add_fault("/vcdb.txt", Fault(status=503))
    with caplog.at_level(logging.WARNING):
        assert make_repo(tmp_path, server.base_url).list() == ["demo", "other"]
    assert "using the local copy" in caplog.text


def test_sync_refreshes_the_catalogue_and_cached_descriptions(tmp_path, remote):
    server, root, _ = remote
    repo = make_repo(tmp_path, server.base_url)
    repo.describe("demo")
    assert repo.sync() is False
    xml = root / "clusters/demo/demo.xml"
    xml.write_text(xml.read_text().replace("512", "1024", 1))
    assert repo.sync() is True
    assert "1024" in (repo.root / "clusters/demo/demo.xml").read_text()
    assert not server.requests_for("other/other.xml"), "sync fetches only descriptions already cached"


def test_the_description_is_fetched_by_its_catalogue_path_not_its_base_name(tmp_path, remote):
    server, _, _ = remote
    repo = make_repo(tmp_path, server.base_url)
    description = repo.describe("demo")
    assert description.path == repo.root / "clusters" / "demo" / "demo.xml"
    assert description.directory == repo.root / "clusters" / "demo"
    assert [r.status for r in server.requests_for("clusters/demo/demo.xml")] == [200]
    assert not server.requests_for("demo.xml")


def test_describe_of_an_unknown_name_is_not_found(tmp_path, remote):
    server, _, _ = remote
    with pytest.raises(NotFoundError):
        make_repo(tmp_path, server.base_url).describe("nope")


def test_a_catalogue_path_escaping_the_repository_is_refused(tmp_path, remote):
    server, root, _ = remote
    (root / "vcdb.txt").write_text("demo,../../etc/passwd\n")
    with pytest.raises(FormatError) as info:
        make_repo(tmp_path, server.base_url).list()
    assert "escapes" in str(info.value) and "line 1" in str(info.value)
    assert server.url("vcdb.txt") in str(info.value)
    assert not (tmp_path / "cache" / "vcdb.txt").exists(), "a refused catalogue is not stored"


def test_a_broken_new_catalogue_does_not_replace_the_good_one(tmp_path, remote):
    server, root, _ = remote
    make_repo(tmp_path, server.base_url).list()
    good = (tmp_path / "cache" / "vcdb.txt").read_text()
    (root / "vcdb.txt").write_text("demo;no comma\n")
    with pytest.raises(FormatError):
        make_repo(tmp_path, server.base_url).list()
    assert (tmp_path / "cache" / "vcdb.txt").read_text() == good


@pytest.mark.parametrize("part", ["//evil.example/x.gz", "/etc/passwd", "../../../x.gz"])
def test_a_part_name_escaping_the_cluster_directory_is_refused(tmp_path, remote, part):
    server, root, _ = remote
    xml = root / "clusters/demo/demo.xml"
    xml.write_text(xml.read_text().replace("demo-frontend.img.gz.ab<", f"{part}<"))
    with pytest.raises(FormatError) as info:
        make_repo(tmp_path, server.base_url).describe("demo")
    assert "escapes" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache" / "clusters/demo/demo.xml").exists()


def test_an_absolute_url_as_a_part_name_stays_under_the_repository_url(tmp_path, remote):
    server, root, _ = remote
    xml = root / "clusters/demo/demo.xml"
    xml.write_text(xml.read_text().replace("demo-frontend.img.gz.ab<", "http://evil.example/x.gz<"))
    repo = make_repo(tmp_path, server.base_url)
    with pytest.raises(RepositoryError) as info:
        stage(repo)
    assert str(info.value).startswith(server.url("clusters/demo/http%3A/evil.example/x.gz"))
    assert "HTTP 404" in str(info.value)
    assert not (repo.root / "clusters/demo/demo-frontend.img").exists()


def test_the_url_of_a_path_outside_the_cache_is_refused(tmp_path, remote):
    server, _, _ = remote
    repo = make_repo(tmp_path, server.base_url)
    with pytest.raises(RepositoryError, match="not inside repository_dir"):
        repo.url_for(tmp_path / "elsewhere")


# --------------------------------------------------------------------------- staging


def test_stage_streams_the_split_gzip_image_and_stores_no_parts(tmp_path, remote):
    server, _, clusters = remote
    demo = clusters[0]
    repo = make_repo(tmp_path, server.base_url)
    staged = stage(repo)
    assert staged.frontend.path == repo.root / "clusters/demo/demo-frontend.img"
    assert staged.frontend.path.read_bytes() == demo.frontend
    assert staged.compute.path.read_bytes() == demo.compute
    assert cache_files(repo) == [
        "clusters/demo/demo-compute.img",
        "clusters/demo/demo-frontend.img",
        "clusters/demo/demo.xml",
        "vcdb.txt",
    ]
    assert not [p for p in all_cache_files(repo) if p.endswith((".part", ".download", ".tmp"))]
    # the image is sparse: zero runs were not written
    assert staged.frontend.path.stat().st_blocks * 512 < len(demo.frontend) // 2


def test_only_what_the_cluster_needs_is_fetched_and_only_once(tmp_path, remote):
    server, _, clusters = remote
    repo = make_repo(tmp_path, server.base_url)
    stage(repo)
    fetched = sorted({r.path for r in server.requests})
    assert fetched == sorted(
        ["/vcdb.txt", "/clusters/demo/demo.xml", "/clusters/demo/demo-compute.img"]
        + [f"/{p}" for p in clusters[0].parts]
    )
    for part in clusters[0].parts:
        assert len(server.requests_for(part)) == 1
    server.reset_log()
    again = make_repo(tmp_path, server.base_url)
    stage(again)
    assert sorted(r.path for r in server.requests) == ["/clusters/demo/demo.xml", "/vcdb.txt"]
    assert all(r.status == 304 for r in server.requests)


@pytest.mark.parametrize("seed", [5, 6])
def test_drops_at_random_offsets_still_give_a_verified_image(tmp_path, remote, seed):
    server, root, clusters = remote
    demo = clusters[0]
    rng = random.Random(seed)
    for part in demo.parts:
        size = (root / part).stat().st_size
        for offset in sorted(rng.sample(range(1, size), 2)):
            server.add_fault(part, Fault(drop_after=offset, times=1))
    size = len(demo.compute)
    server.add_fault("clusters/demo/demo-compute.img", Fault(drop_after=rng.randrange(1, size), times=1))
    repo = make_repo(tmp_path, server.base_url)
    staged = stage(repo)
    assert staged.frontend.path.read_bytes() == demo.frontend
    assert staged.compute.path.read_bytes() == demo.compute
    for part in demo.parts:
        assert server.bytes_sent(part) == (root / part).stat().st_size, "resumed, not restarted"


def test_a_server_that_ignores_range_still_gives_the_right_image(tmp_path, remote):
    server, root, clusters = remote
    demo = clusters[0]
    for part in demo.parts:
        server.add_fault(part, Fault(drop_after=(root / part).stat().st_size // 2, times=1))
        server.add_fault(part, Fault(ignore_range=True))
    staged = stage(make_repo(tmp_path, server.base_url))
    assert staged.frontend.path.read_bytes() == demo.frontend


def test_a_server_without_range_support_is_downloaded_to_a_part_file_first(tmp_path, remote):
    server, _, clusters = remote
    demo = clusters[0]
    first = demo.parts[0]
    server.add_fault(first, Fault(no_validators=True, drop_after=1000, times=1))
    server.add_fault(first, Fault(no_validators=True))
    repo = make_repo(tmp_path, server.base_url)
    staged = stage(repo)
    assert staged.frontend.path.read_bytes() == demo.frontend
    assert not [p for p in all_cache_files(repo) if ".download" in p]


def test_a_part_that_changes_while_staging_is_staged_again_from_the_new_data(tmp_path, remote):
    server, root, clusters = remote
    demo = clusters[0]
    part = root / demo.parts[1]
    original = part.read_bytes()
    server.add_fault(demo.parts[1], Fault(drop_after=500, times=1))

    def touch(request):
        # the resume request arrives after the drop: the file "changes" (new ETag), same bytes
        if request.path == "/" + demo.parts[1] and "Range" in request.headers:
            part.write_bytes(original)
            os.utime(part, ns=(10**18, 10**18))

    server.authorize = touch
    staged = stage(make_repo(tmp_path, server.base_url))
    assert staged.frontend.path.read_bytes() == demo.frontend


def test_a_corrupt_part_leaves_no_image_in_the_cache(tmp_path, remote):
    server, _, clusters = remote
    demo = clusters[0]
    server.add_fault(demo.parts[1], Fault(corrupt_at=100))
    repo = make_repo(tmp_path, server.base_url)
    with pytest.raises(ChecksumError) as info:
        stage(repo)
    assert "\n" not in str(info.value)
    assert not (repo.root / "clusters/demo/demo-frontend.img").exists()
    assert not [p for p in all_cache_files(repo) if "staging-" in p]


@pytest.mark.parametrize("status", [404, 403])
def test_a_refused_part_is_a_one_line_error_naming_its_url(tmp_path, remote, status):
    server, _, clusters = remote
    demo = clusters[0]
    server.add_fault(demo.parts[2], Fault(status=status))
    repo = make_repo(tmp_path, server.base_url)
    with pytest.raises(RepositoryError) as info:
        stage(repo)
    assert str(info.value).startswith(f"{server.url(demo.parts[2])}: HTTP {status}")
    assert not (repo.root / "clusters/demo/demo-frontend.img").exists()


def test_a_wrong_content_length_never_gives_a_corrupt_image(tmp_path, remote):
    server, _, clusters = remote
    demo = clusters[0]
    server.add_fault(demo.parts[0], Fault(extra_length=10))
    repo = make_repo(tmp_path, server.base_url)
    with pytest.raises(PragmaError):
        stage(repo)
    assert not (repo.root / "clusters/demo/demo-frontend.img").exists()


def test_a_redirect_loop_is_a_clean_error(tmp_path, remote):
    server, _, _ = remote
    server.add_fault("/vcdb.txt", Fault(redirect="/loop"))
    server.add_fault("/loop", Fault(redirect="/vcdb.txt"))
    with pytest.raises(RepositoryError, match="too many redirects"):
        make_repo(tmp_path, server.base_url).list()


def test_a_slow_part_is_retried_after_a_timeout(tmp_path, remote):
    server, _, clusters = remote
    demo = clusters[0]
    server.add_fault(demo.parts[0], Fault(stall=1.0, stall_after=1000, times=1))
    staged = stage(make_repo(tmp_path, server.base_url, timeout=0.3))
    assert staged.frontend.path.read_bytes() == demo.frontend


def test_concurrent_boots_download_each_part_once(tmp_path, remote):
    server, _, clusters = remote
    demo = clusters[0]
    # slow the first part down so both boots are inside staging at once
    server.add_fault(demo.parts[0], Fault(delay=0.3))
    results, errors = [], []

    def boot():
        try:
            results.append(stage(make_repo(tmp_path, server.base_url)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0].frontend.path.read_bytes() == demo.frontend
    for part in demo.parts:
        assert len(server.requests_for(part)) == 1
    assert len(server.requests_for("clusters/demo/demo-compute.img")) == 1


def test_parts_already_in_the_cache_are_read_from_disk(tmp_path, remote):
    server, root, clusters = remote
    demo = clusters[0]
    repo = make_repo(tmp_path, server.base_url)
    description = repo.describe("demo")
    for part in demo.parts:
        target = repo.root / part
        target.write_bytes((root / part).read_bytes())
    (repo.root / "clusters/demo/demo-compute.img").write_bytes(demo.compute)
    repo.stage(description, Stager(progress=False))
    assert (repo.root / "clusters/demo/demo-frontend.img").read_bytes() == demo.frontend
    assert not any(server.requests_for(p) for p in demo.parts)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("url", "message"),
    [(None, "repository_url"), ("ftp://host/x", "http:// or https://"), ("http://h/x?a=1", "query string")],
)
def test_a_bad_repository_url_is_a_config_error(tmp_path, url, message):
    site = make_site(tmp_path, url)
    with pytest.raises(ConfigError, match=message) as info:
        HttpRepository(site.repository, site=site)
    assert "site_conf.conf" in str(info.value)


@pytest.mark.parametrize(("key", "value"), [("timeout", "soon"), ("retries", -1), ("retries", 1.5), ("backoff", None)])
def test_a_bad_option_is_a_config_error_naming_it(tmp_path, key, value):
    site = make_site(tmp_path, "http://127.0.0.1:9/x", **{key: value})
    with pytest.raises(ConfigError, match=key):
        HttpRepository(site.repository, site=site)


def test_the_entry_point_loads_the_http_repository_without_importing_requests():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(ep,) = [e for e in entry_points(group='pragma.repositories') if e.name == 'http']\n"
        "cls = ep.load()\n"
        "print(cls.__name__, 'requests' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["HttpRepository", "False"]


# --------------------------------------------------------------------------- S3 (moto server)


@pytest.fixture(scope="module")
def s3_server():
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        yield f"http://{host}:{port}", client
    finally:
        server.stop()


def test_a_public_s3_bucket_serves_as_an_http_repository(tmp_path, s3_server):
    endpoint, s3 = s3_server
    bucket = "pragma-images"
    s3.create_bucket(Bucket=bucket)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    root = tmp_path / "upload"
    clusters = write_remote_repository(root)
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, path.relative_to(root).as_posix())
    repo = make_repo(tmp_path, f"{endpoint}/{bucket}")
    assert repo.list() == ["demo", "other"]
    staged = stage(repo)
    assert staged.frontend.path.read_bytes() == clusters[0].frontend
    assert staged.compute.path.read_bytes() == clusters[0].compute
    # a second run: the catalogue is answered with 304 by S3, nothing is staged again
    before = staged.frontend.path.stat().st_mtime_ns
    again = make_repo(tmp_path, f"{endpoint}/{bucket}")
    stage(again)
    assert staged.frontend.path.stat().st_mtime_ns == before
    with pytest.raises(RepositoryError, match="HTTP 404"):
        make_repo(tmp_path / "x", f"{endpoint}/{bucket}/missing").list()
