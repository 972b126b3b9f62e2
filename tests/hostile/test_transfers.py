"""Hostile servers cannot make a remote transfer unbounded, nor leave a cached file that is not whole.

Every test talks to a real loopback server (:mod:`httpfaults`) that
misbehaves on purpose: it drips its answer under the per-read timeout, sends
a body that never ends, announces a huge length, sends more than a file's
declared size, sends no length at all. Each one asserts one clear error line,
no ready file in the cache, and that the call ended (a generous bound that
only detects a hang: the deadlines here are about a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from httpfaults import Fault, FaultServer, write_remote_repository

from pragma_core.clusterxml import MAX_DESCRIPTION_BYTES
from pragma_core.config import ConfigFile, RepositorySettings, SiteConfig
from pragma_core.download import sidecar_path
from pragma_core.errors import PragmaError, RepositoryError
from pragma_core.http import HttpClient
from pragma_core.model import Checksum, ClusterDescription, DiskImage
from pragma_core.repositories.http import HttpRepository
from pragma_core.staging import Stager
from pragma_core.vcdb import MAX_CATALOGUE_BYTES

#: A hang, not a slow run: every deadline below is a second or less.
HANG = 30.0
SIZE = 256 * 1024
#: Seconds between two bytes of a dripping server: far under the per-read timeout.
DRIP = 0.02
FAST = {"timeout": 2.0, "retries": 1, "backoff": 0.01, "progress": False}


def client(**options: object) -> HttpClient:
    return HttpClient(**{**FAST, "deadline": 0.8, "image_deadline": 0.8, **options})  # type: ignore[arg-type]


def sha256(data: bytes) -> Checksum:
    return Checksum(algorithm="sha256", hexdigest=hashlib.sha256(data).hexdigest())


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "blob.bin").write_bytes(data)
    (root / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    with FaultServer(root) as server:
        yield server, data


def failing(call: Callable[[], object], error: type[BaseException] = RepositoryError) -> str:
    """The one-line message ``call`` fails with, checking it ends in bounded time."""
    start = time.monotonic()
    with pytest.raises(error) as info:
        call()
    assert time.monotonic() - start < HANG, "the transfer outlived its deadline"
    message = str(info.value)
    assert message and "\n" not in message
    return message


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def read_stream(c: HttpClient, url: str, **options: object) -> bytes:
    with c.open_stream(url, **options) as stream:  # type: ignore[arg-type]
        return stream.readall()


# the three ways to fetch a file, each given a destination directory
FETCHES: dict[str, Callable[[HttpClient, str, Path], object]] = {
    "fetch_if_newer": lambda c, url, out: c.fetch_if_newer(url, out / "file"),
    "download": lambda c, url, out: c.download(url, out / "file", size=SIZE),
    "stream": lambda c, url, out: read_stream(c, url, size=SIZE),
}


# --------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("how", sorted(FETCHES))
@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_server_dripping_under_the_read_timeout_cannot_outlive_the_deadline(served, tmp_path, how, headers):
    server, _ = served
    server.add_fault("/blob.bin", Fault(drip=DRIP, drip_headers=headers))
    out = tmp_path / "out"
    out.mkdir()
    message = failing(lambda: FETCHES[how](client(), server.url("blob.bin"), out))
    assert "deadline" in message and "blob.bin" in message
    assert "file" not in leftovers(out), "nothing is cached as ready"


def test_the_deadline_covers_the_retries_too(served, tmp_path):
    server, _ = served
    server.add_fault("/blob.bin", Fault(drip=DRIP, drop_after=3))
    message = failing(lambda: client(retries=50).download(server.url("blob.bin"), tmp_path / "x", size=SIZE))
    assert "deadline" in message
    assert not (tmp_path / "x").exists()


def test_an_http_repository_catalogue_from_a_dripping_server_is_refused_in_time(served, tmp_path):
    server, _ = served
    server.add_fault("/vcdb.txt", Fault(drip=DRIP, drip_headers=True))
    repo = make_repo(tmp_path, server.base_url, deadline=0.8)
    message = failing(repo.list)
    assert "vcdb.txt" in message and "deadline" in message
    assert not repo.vcdb_path.exists()


# --------------------------------------------------------------------------- caps


@pytest.mark.parametrize(("cap", "how"), [
    (1000, "fetch_if_newer"), (SIZE, "download"), (SIZE, "stream"),
])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "until-close"])
def test_an_endless_body_without_length_is_cut_at_the_cap(served, tmp_path, cap, how, chunked):
    server, _ = served
    server.add_fault("/blob.bin", Fault(endless=True, chunked=chunked))
    out = tmp_path / "out"
    out.mkdir()
    c = client(deadline=20, image_deadline=20)
    calls = {
        "fetch_if_newer": lambda: c.fetch_if_newer(server.url("blob.bin"), out / "file", max_bytes=cap),
        "download": lambda: c.download(server.url("blob.bin"), out / "file", size=cap),
        "stream": lambda: read_stream(c, server.url("blob.bin"), size=cap),
    }
    message = failing(calls[how])
    if how == "fetch_if_newer" and not chunked:  # nothing would tell the end of the file from a drop
        assert "completeness cannot be verified" in message
    else:
        assert f"more than the {cap}-byte limit" in message or f"declared size of {cap} bytes" in message
    assert leftovers(out) == []


def remote_repo(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    clusters = write_remote_repository(root, size=1 << 20, parts=2)
    return root, clusters


@pytest.mark.parametrize(("target", "limit", "what"), [
    ("vcdb.txt", MAX_CATALOGUE_BYTES, "an image catalogue"),
    ("clusters/demo/demo.xml", MAX_DESCRIPTION_BYTES, "a cluster description"),
])
@pytest.mark.parametrize("announce", [MAX_DESCRIPTION_BYTES + 1, 10**12, 2**63])
def test_a_huge_declared_length_is_refused_before_reading_the_body(tmp_path, target, limit, what, announce):
    root, _ = remote_repo(tmp_path)
    with FaultServer(root) as server:
        server.add_fault(target, Fault(announce=announce, drip=0.2))  # the body would take minutes
        repo = make_repo(tmp_path, server.base_url)
        message = failing(lambda: repo.describe("demo"))
        assert message == (f"{server.url(target)}: the server announces {announce} bytes, "
                           f"more than the {limit}-byte limit of {what}; refused")
        assert not (repo.root / target).exists()
        assert not list(repo.root.rglob("*.tmp"))


@pytest.mark.parametrize("target", ["vcdb.txt", "clusters/demo/demo.xml"])
def test_a_catalogue_or_description_over_the_local_cap_without_a_length_is_refused(tmp_path, target):
    root, _ = remote_repo(tmp_path)
    with FaultServer(root) as server:
        server.add_fault(target, Fault(endless=True, chunked=True))
        repo = make_repo(tmp_path, server.base_url)
        message = failing(lambda: repo.describe("demo"))
        assert "-byte limit of" in message and "refused" in message
        assert not (repo.root / target).exists()


# --------------------------------------------------------------------------- declared sizes


@pytest.mark.parametrize("trailing", [1, 4096, SIZE])
@pytest.mark.parametrize("length", [True, False], ids=["announced", "no-length"])
def test_a_download_never_grows_past_its_declared_size(served, tmp_path, trailing, length):
    server, data = served
    server.add_fault("/blob.bin", Fault(trailing=trailing, no_length=not length))
    dest = tmp_path / "out" / "blob.bin"
    message = failing(lambda: client().download(server.url("blob.bin"), dest, size=SIZE, checksum=sha256(data)))
    assert f"{SIZE}" in message and ("declared size" in message or "expected" in message)
    assert leftovers(dest.parent) == [], "no ready file, no spool"


@pytest.mark.parametrize("trailing", [1, SIZE])
def test_a_stream_never_reads_past_its_declared_size(served, trailing):
    server, _ = served
    server.add_fault("/blob.bin", Fault(trailing=trailing, no_length=True))
    message = failing(lambda: read_stream(client(), server.url("blob.bin"), size=SIZE))
    assert f"more than the declared size of {SIZE} bytes" in message


def test_a_staged_image_whose_part_is_longer_than_declared_is_not_cached(tmp_path):
    root, clusters = remote_repo(tmp_path)
    demo = clusters[0]
    with FaultServer(root) as server:
        server.add_fault(demo.parts[1], Fault(trailing=10, no_length=True))
        repo = make_repo(tmp_path, server.base_url)
        description = repo.describe("demo")
        message = failing(lambda: repo.stage(description, Stager(progress=False)), PragmaError)
        assert "declared size" in message
        assert not (description.directory / "demo-frontend.img").exists()


# --------------------------------------------------------------------------- unverifiable bodies


@pytest.mark.parametrize("how", sorted(FETCHES))
@pytest.mark.parametrize("validators", [True, False])
def test_a_body_without_length_or_checksum_is_never_cached(served, tmp_path, how, validators):
    server, _ = served
    server.add_fault("/blob.bin", Fault(no_length=True, no_validators=not validators))
    out = tmp_path / "out"
    out.mkdir()
    c = client()
    calls = {
        "fetch_if_newer": lambda: c.fetch_if_newer(server.url("blob.bin"), out / "file"),
        "download": lambda: c.download(server.url("blob.bin"), out / "file"),
        "stream": lambda: read_stream(c, server.url("blob.bin")),
    }
    message = failing(calls[how])
    assert "completeness cannot be verified" in message
    assert leftovers(out) == []


@pytest.mark.parametrize("known", ["size", "checksum", "chunked"])
def test_a_body_without_length_is_accepted_when_a_size_a_checksum_or_its_framing_checks_it(served, tmp_path, known):
    server, data = served
    server.add_fault("/blob.bin", Fault(no_length=True, chunked=known == "chunked"))
    check = {"size": {"size": SIZE}, "checksum": {"checksum": sha256(data)}, "chunked": {}}[known]
    dest = tmp_path / "blob.bin"
    client().download(server.url("blob.bin"), dest, **check)  # type: ignore[arg-type]
    assert dest.read_bytes() == data
    assert read_stream(client(), server.url("blob.bin"), **check) == data
    if known == "chunked":
        assert client().fetch_if_newer(server.url("blob.bin"), tmp_path / "small") is True
        assert (tmp_path / "small").read_bytes() == data


def test_a_truncated_body_without_length_is_not_taken_for_a_whole_one(served, tmp_path):
    server, _ = served
    server.add_fault("/blob.bin", Fault(no_length=True, no_validators=True, drop_after=SIZE // 2))
    message = failing(lambda: client().download(server.url("blob.bin"), tmp_path / "x", size=SIZE))
    assert f"connection closed after {SIZE // 2} of {SIZE} bytes" in message
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- stale spools


@pytest.mark.parametrize("state", [
    None,
    {"url": "http://elsewhere.example/blob.bin", "validator": '"x"', "etag": '"x"', "total": SIZE},
    {"url": "SELF", "validator": None, "etag": None, "total": SIZE},
    {"url": "SELF", "validator": '"x"', "etag": '"x"', "total": 10},
], ids=["no-state", "other-url", "no-validator", "larger-than-the-file"])
def test_a_stale_part_is_removed_and_never_promoted(served, tmp_path, state):
    server, data = served
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"\xaa" * 4096)
    if state is not None:
        state = {**state, "url": server.url("blob.bin") if state["url"] == "SELF" else state["url"]}
        (tmp_path / "blob.bin.part.json").write_text(json.dumps(state))
    client().download(server.url("blob.bin"), dest, size=SIZE, checksum=sha256(data))
    assert dest.read_bytes() == data
    assert leftovers(tmp_path) == ["blob.bin", "www"]
    assert "Range" not in server.requests_for("blob.bin")[0].headers


def test_a_stale_temporary_catalogue_is_swept_and_a_live_one_kept(served, tmp_path):
    server, _ = served
    dest = tmp_path / "vcdb.txt"
    stale = tmp_path / ".vcdb.txt.crashed.tmp"
    live = tmp_path / ".vcdb.txt.running.tmp"
    stale.write_text("half a cat")
    live.write_text("another run is writing this")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    client(deadline=60).fetch_if_newer(server.url("vcdb.txt"), dest)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "www") == sorted(
        [dest.name, live.name, sidecar_path(dest).name]
    )


def test_a_crashed_runs_spool_of_a_part_is_removed_when_the_part_is_streamed(tmp_path):
    root, clusters = remote_repo(tmp_path)
    demo = clusters[0]
    with FaultServer(root) as server:
        repo = make_repo(tmp_path, server.base_url)
        description = repo.describe("demo")
        part = description.directory / Path(demo.parts[0]).name
        spool = part.with_name(f".{part.name}.download")
        leftovers_of_a_crash = [spool.with_name(spool.name + ".part"), spool.with_name(spool.name + ".part.json")]
        for path in leftovers_of_a_crash:
            path.write_bytes(b"{}")
        repo.stage(description, Stager(progress=False))
        assert not [p for p in leftovers_of_a_crash if p.exists()]
        assert (description.directory / "demo-frontend.img").is_file()


# --------------------------------------------------------------------------- helpers


def make_repo(tmp_path: Path, url: str, **options: object) -> HttpRepository:
    settings = RepositorySettings(
        repository_class="http",
        repository_dir=tmp_path / "cache",
        repository_url=url,
        options={"timeout": 0.5, "retries": 1, "backoff": 0.01, "deadline": 5, "image_deadline": 5, **options},
    )
    source = ConfigFile(path=tmp_path / "etc" / "site_conf.conf", values={}, lines={})
    site = SiteConfig(conf_dir=tmp_path / "etc", source=source, repository=settings)
    return HttpRepository(site.repository, site=site)


# --------------------------------------------------------------------------- the spool's own files


@pytest.mark.parametrize("resume_record", [False, True], ids=["fresh", "resume-record"])
def test_a_link_planted_at_the_download_spool_is_never_written_through(served, tmp_path, resume_record):
    server, data = served
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (out / "file.part").symlink_to(victim)
    if resume_record:  # what a resumable start of this very file would have written
        (out / "file.part.json").write_text(json.dumps(
            {"url": server.url("blob.bin"), "validator": "W/x", "etag": None, "total": SIZE}))
    client(deadline=30, image_deadline=30).download(server.url("blob.bin"), out / "file", size=SIZE)
    assert (out / "file").read_bytes() == data and not (out / "file").is_symlink()
    assert victim.read_bytes() == b"keep me"


def test_a_link_planted_at_the_download_lock_is_refused_and_its_target_untouched(served, tmp_path):
    server, _ = served
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (out / ".file.lock").symlink_to(victim)
    message = failing(lambda: client().download(server.url("blob.bin"), out / "file", size=SIZE), PragmaError)
    assert ".file.lock" in message, message
    assert victim.read_bytes() == b"keep me"
    assert not (out / "file").exists()


def _bomb(tmp_path: Path, size: int) -> tuple[Stager, ClusterDescription, DiskImage]:
    """A 1-part gzip image of ``size`` bytes of 0x01 (no holes: every byte is written)."""
    import gzip

    from stagingkit import describe

    from pragma_core.model import Part

    compressor = gzip.GzipFile(tmp_path / "img.raw.gz.0", "wb", compresslevel=9)
    block = b"\x01" * (1 << 20)
    for _ in range(size >> 20):
        compressor.write(block)
    compressor.close()
    disk = DiskImage(source="img.raw", processor="gzip", parts=[Part(name="img.raw.gz.0")])
    return Stager(progress=False, max_image_size=8 << 20), describe(tmp_path, disk), disk


def test_a_part_that_decompresses_past_max_image_size_is_refused_and_nothing_is_left(tmp_path):
    stager, description, disk = _bomb(tmp_path, 32 << 20)
    assert (tmp_path / "img.raw.gz.0").stat().st_size < 100_000, "a small part..."
    with pytest.raises(PragmaError) as info:
        stager.stage_image(description, disk)
    assert str(info.value) == f"{tmp_path / 'img.raw'}: the image grows past {8 << 20} bytes (max_image_size); refused"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["img.raw.gz.0"], \
        "no image, no temporary file"


def test_staging_stops_before_it_would_take_the_last_free_space_of_its_filesystem(tmp_path, monkeypatch):
    from pragma_core import staging

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    monkeypatch.setattr(staging, "FREE_SPACE_RESERVE", free)  # as if this filesystem were that full
    stager, description, disk = _bomb(tmp_path, 4 << 20)
    with pytest.raises(PragmaError, match=r"would stay free on its filesystem; refused"):
        stager.stage_image(description, disk)
    assert not (tmp_path / "img.raw").exists()


def test_one_deadline_covers_every_part_of_a_staging_not_each_part_its_own(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (demo, _other) = write_remote_repository(root, size=1 << 20, parts=4)
    with FaultServer(root) as server:
        for part in demo.parts:
            server.add_fault(part, Fault(delay=0.4))  # each part in time; all four together are not
        repo = make_repo(tmp_path, server.base_url, timeout=2.0, image_deadline=1.0)
        description = repo.describe("demo")
        started = time.monotonic()
        message = failing(lambda: repo.stage(description, Stager(progress=False)), PragmaError)
        assert time.monotonic() - started < 1.0 + 0.4 + HANG / 10
        assert "deadline" in message.lower() and "\n" not in message
        assert not (description.directory / "demo-frontend.img").exists()
