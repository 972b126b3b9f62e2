"""The Drive client against the loopback simulator: listing, paging, download, resume, checks, faults."""

from __future__ import annotations

import hashlib
import logging
import json
import os
import time
from pathlib import Path

import pytest
from pragma_core.http import HeaderAuth

from pragma_repo_clonezilla import drive
from pragma_repo_clonezilla.drive import DriveClient, DriveError, DriveFile, DriveQuotaError
from pragma_repo_clonezilla.drivepage import parse_modified
from pragma_repo_clonezilla.settings import ClonezillaSettings


def client(sim, *, api: bool = True, **extra) -> DriveClient:
    settings = ClonezillaSettings(
        api_key=sim.api_key if api else None,
        drive_api_url=f"{sim.url}/drive/v3",
        drive_web_url=sim.url,
        drive_download_url=f"{sim.url}/download",
        retry_delay=0,
        timeout=5,
        **extra,
    )
    return DriveClient(settings, progress=False)


def test_api_listing_follows_page_tokens_and_keeps_the_key_out_of_urls_and_logs(drive_sim, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    names = [f"file-{i}.xml" for i in range(5)]
    for name in names:
        drive_sim.add_file(name, drive_sim.root, b"x")
    drive_sim.add_folder("sub", drive_sim.root)
    items = client(drive_sim).list_folder(drive_sim.root)
    assert [i.name for i in items] == sorted([*names, "sub"])
    assert [i.is_folder for i in items if i.name == "sub"] == [True]
    assert len([r for r in drive_sim.requests if r["path"] == "/drive/v3/files"]) == 3  # 6 items, 2 per page
    assert all(drive_sim.api_key not in r["raw"] for r in drive_sim.requests)
    assert all(r["headers"].get("X-Goog-Api-Key") == drive_sim.api_key for r in drive_sim.requests)
    assert drive_sim.api_key not in caplog.text


def test_wrong_api_key_is_one_line_without_the_key(drive_sim) -> None:
    drive_sim.api_key = "the-right-key"
    with pytest.raises(DriveError) as info:
        client(drive_sim, api=False).__class__(
            ClonezillaSettings(api_key="wrong-secret-key", drive_api_url=f"{drive_sim.url}/drive/v3", retry_delay=0), progress=False
        ).list_folder(drive_sim.root)
    assert "keyInvalid" in str(info.value) and "wrong-secret-key" not in str(info.value)


def test_api_download_resumes_after_a_dropped_connection_and_checks_md5(drive_sim, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    ident = drive_sim.add_file("big-frontend.iso", drive_sim.root, data, modified=1_600_000_000)
    drive_sim.fail(ident, "drop", "error500", "rate")
    c = client(drive_sim)
    item = next(i for i in c.list_folder(drive_sim.root) if i.id == ident)
    dest = tmp_path / "big-frontend.iso"
    c.download(item, dest)
    assert dest.read_bytes() == data
    assert dest.stat().st_mtime == 1_600_000_000
    assert not list(tmp_path.glob("*.part*"))
    ranges = [r["headers"].get("Range") for r in drive_sim.media_requests(ident)]
    assert ranges[0] is None and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"


def test_md5_mismatch_removes_the_part_and_fails(drive_sim, tmp_path: Path) -> None:
    ident = drive_sim.add_file("a.iso", drive_sim.root, os.urandom(1000))
    drive_sim.fail(ident, *["corrupt"] * 10)
    c = client(drive_sim, retries=1)
    item = c.list_folder(drive_sim.root)[0]
    with pytest.raises(DriveError, match="MD5"):
        c.download(item, tmp_path / "a.iso")
    assert not (tmp_path / "a.iso").exists() and not (tmp_path / "a.iso.part").exists()


def test_download_quota_is_a_one_line_error_and_not_retried(drive_sim, tmp_path: Path) -> None:
    ident = drive_sim.add_file("q.iso", drive_sim.root, b"data")
    drive_sim.fail(ident, "quota")
    c = client(drive_sim)
    with pytest.raises(DriveQuotaError) as info:
        c.download(c.list_folder(drive_sim.root)[0], tmp_path / "q.iso")
    assert "downloadQuotaExceeded" in str(info.value) and "\n" not in str(info.value)
    assert len(drive_sim.media_requests(ident)) == 1
    assert not (tmp_path / "q.iso").exists()


def test_web_mode_lists_the_embedded_view_and_follows_the_confirm_form(drive_sim, tmp_path: Path) -> None:
    small, large = b"<vc/>", os.urandom(200_000)
    folder = drive_sim.add_folder("demo", drive_sim.root)
    drive_sim.add_file("demo.xml", folder, small)
    big = drive_sim.add_file("demo-frontend.iso", folder, large)
    c = client(drive_sim, api=False)
    top = c.list_folder(drive_sim.root)
    assert [(i.name, i.is_folder, i.id) for i in top] == [("demo", True, folder)]
    items = {i.name: i for i in c.list_folder(folder)}
    assert set(items) == {"demo.xml", "demo-frontend.iso"}
    assert items["demo.xml"].modified is not None
    c.download(items["demo.xml"], tmp_path / "demo.xml")
    c.download(items["demo-frontend.iso"], tmp_path / "demo-frontend.iso")
    assert (tmp_path / "demo.xml").read_bytes() == small
    assert hashlib.sha256((tmp_path / "demo-frontend.iso").read_bytes()).digest() == hashlib.sha256(large).digest()
    confirmed = [r for r in drive_sim.media_requests(big) if "uuid" in r["query"]]
    assert len(confirmed) == 1 and confirmed[0]["query"]["confirm"] == ["t"]
    assert not any("X-Goog-Api-Key" in r["headers"] for r in drive_sim.requests)


def test_web_mode_quota_page_is_a_quota_error(drive_sim, tmp_path: Path) -> None:
    ident = drive_sim.add_file("x.xml", drive_sim.root, b"<vc/>")
    drive_sim.fail(ident, "quota")
    c = client(drive_sim, api=False)
    with pytest.raises(DriveQuotaError):
        c.download(c.list_folder(drive_sim.root)[0], tmp_path / "x.xml")


def test_folder_view_dates_are_read_without_the_locale() -> None:
    now = 1_700_000_000.0  # 2023-11-14
    from datetime import datetime

    assert datetime.fromtimestamp(parse_modified("Nov 3, 2021", now=now)).date().isoformat() == "2021-11-03"
    assert datetime.fromtimestamp(parse_modified("Nov 3", now=now)).date().isoformat() == "2023-11-03"
    assert datetime.fromtimestamp(parse_modified("Dec 25", now=now)).date().isoformat() == "2022-12-25"
    assert datetime.fromtimestamp(parse_modified("3:05 PM", now=now)).strftime("%H:%M") == "15:05"
    assert parse_modified("", now=now) is None and parse_modified("yesterday-ish", now=now) is None


# --------------------------------------------------------------------------- bounded by core's HTTP client


@pytest.mark.parametrize("api", [True, False], ids=["api", "web"])
def test_a_download_dripping_under_the_read_timeout_ends_at_the_deadline(drive_sim, tmp_path: Path, api: bool) -> None:
    ident = drive_sim.add_file("slow.iso", drive_sim.root, os.urandom(20_000))
    settings = ClonezillaSettings(
        api_key=drive_sim.api_key if api else None, drive_api_url=f"{drive_sim.url}/drive/v3",
        drive_web_url=drive_sim.url, drive_download_url=f"{drive_sim.url}/download", retry_delay=0, timeout=5,
    )
    c = DriveClient(settings, progress=False, download_deadline=0.5)
    item = c.list_folder(drive_sim.root)[0]
    drive_sim.fail(ident, *["drip"] * 10)
    start = time.monotonic()
    with pytest.raises(DriveError) as info:
        c.download(item, tmp_path / "slow.iso")
    assert time.monotonic() - start < 30, "the download outlived its deadline"
    assert str(info.value).startswith("downloading slow.iso: not done within its 0.5 s deadline")
    assert len(drive_sim.media_requests(ident)) == 1, "the deadline is not retried"
    assert not (tmp_path / "slow.iso").exists()


def test_a_download_never_grows_past_the_listed_size(drive_sim, tmp_path: Path) -> None:
    ident = drive_sim.add_file("big.iso", drive_sim.root, os.urandom(10_000))
    drive_sim.fail(ident, "oversize")
    c = client(drive_sim)
    with pytest.raises(DriveError) as info:
        c.download(c.list_folder(drive_sim.root)[0], tmp_path / "big.iso")
    assert str(info.value) == "downloading big.iso: the server announces 14096 bytes, more than the listed size of 10000 bytes; refused"
    assert not (tmp_path / "big.iso").exists() and not (tmp_path / "big.iso.part").exists()


def test_a_listing_larger_than_the_page_cap_is_refused(drive_sim, monkeypatch) -> None:
    for i in range(3):
        drive_sim.add_file(f"file-{i}.xml", drive_sim.root, b"x")
    monkeypatch.setattr(drive, "MAX_PAGE_BYTES", 200)
    with pytest.raises(DriveError) as info:
        client(drive_sim).list_folder(drive_sim.root)
    assert str(info.value).startswith(f"listing Google Drive folder {drive_sim.root}: the server announces ")
    assert str(info.value).endswith("more than the 200-byte limit of a Drive answer; refused")


def test_the_api_key_is_the_shared_clients_header_authentication(drive_sim) -> None:
    c = client(drive_sim)
    assert isinstance(c.http.auth, HeaderAuth)
    assert c.http.auth.secrets() == (drive_sim.api_key,)
    assert drive_sim.api_key not in repr(c.http.auth)
    assert client(drive_sim, api=False).http.auth is None


def _listed(drive_sim, name: str) -> tuple[bytes, str, DriveClient, DriveFile]:
    """A new 50 kB file ``name`` in the shared folder: its bytes, its id, a client, and its listed item."""
    data = os.urandom(50_000)
    ident = drive_sim.add_file(name, drive_sim.root, data, modified=1_600_000_000)
    c = client(drive_sim)
    return data, ident, c, next(i for i in c.list_folder(drive_sim.root) if i.id == ident)


def _victim(tmp_path: Path) -> Path:
    """A file a planted link points at (it must keep its bytes), and the download directory ``dl``."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "dl").mkdir()
    return victim


def test_a_link_planted_at_the_part_file_is_never_written_through(drive_sim, tmp_path: Path) -> None:
    data, ident, c, item = _listed(drive_sim, "x-frontend.iso")
    victim = _victim(tmp_path)
    dest = tmp_path / "dl" / "x-frontend.iso"
    (tmp_path / "dl" / "x-frontend.iso.part").symlink_to(victim)
    # a matching resume record: the download would continue the "part" (the victim) from its end
    (tmp_path / "dl" / "x-frontend.iso.part.json").write_text(json.dumps(item.version()))
    c.download(item, dest)
    assert dest.read_bytes() == data and not dest.is_symlink()
    assert victim.read_bytes() == b"keep me"


def test_a_link_planted_at_the_resume_record_is_never_written_through(drive_sim, tmp_path: Path) -> None:
    data, ident, c, item = _listed(drive_sim, "y-frontend.iso")
    victim = _victim(tmp_path)
    record = tmp_path / "dl" / "y-frontend.iso.part.json"
    record.symlink_to(victim)
    drive_sim.fail(ident, *["quota"])  # stop after the record is written: it must not have gone through the link
    with pytest.raises(DriveQuotaError):
        c.download(item, tmp_path / "dl" / "y-frontend.iso")
    assert victim.read_bytes() == b"keep me"
    assert not record.is_symlink() and json.loads(record.read_text()) == item.version()
    c.download(item, tmp_path / "dl" / "y-frontend.iso")
    assert (tmp_path / "dl" / "y-frontend.iso").read_bytes() == data and victim.read_bytes() == b"keep me"


# --------------------------------------------------------------------------- a hostile listing


def _pages(count: int, *, per_page: int = 1, delay: float = 0.0):
    """A listing of ``count`` pages, each with a new page token (a server that pages on and on)."""

    def listing(token: str | None) -> dict:
        time.sleep(delay)
        page = int(token[4:]) if token else 0
        body: dict = {"files": [{"id": f"id{page}x{i}", "name": f"f{page}-{i}.xml", "mimeType": "text/xml"} for i in range(per_page)]}
        if page + 1 < count:
            body["nextPageToken"] = f"tok-{page + 1}"
        return body

    return listing


def test_a_listing_that_pages_on_and_on_stops_at_the_page_cap(drive_sim, monkeypatch) -> None:
    monkeypatch.setattr(drive, "MAX_LIST_PAGES", 5)
    drive_sim.listing = _pages(50, per_page=0)
    with pytest.raises(DriveError) as info:
        client(drive_sim).list_folder(drive_sim.root)
    assert str(info.value) == f"listing Google Drive folder {drive_sim.root}: more than 5 pages; refused"
    assert len([r for r in drive_sim.requests if r["path"] == "/drive/v3/files"]) == 5


def test_a_listing_of_more_items_than_the_cap_is_refused(drive_sim, monkeypatch) -> None:
    monkeypatch.setattr(drive, "MAX_LIST_ITEMS", 5)
    drive_sim.listing = _pages(4, per_page=2)
    with pytest.raises(DriveError) as info:
        client(drive_sim).list_folder(drive_sim.root)
    assert str(info.value) == f"listing Google Drive folder {drive_sim.root}: more than 5 items; refused"
    assert len([r for r in drive_sim.requests if r["path"] == "/drive/v3/files"]) == 3
    drive_sim.listing = None
    for i in range(6):
        drive_sim.add_file(f"file-{i}.xml", drive_sim.root, b"x")
    with pytest.raises(DriveError, match="more than 5 items; refused"):
        client(drive_sim, api=False).list_folder(drive_sim.root)


def test_a_whole_listing_ends_within_one_deadline_however_quick_each_page(drive_sim, tmp_path: Path) -> None:
    drive_sim.listing = _pages(30, delay=0.1)
    settings = ClonezillaSettings(api_key=drive_sim.api_key, drive_api_url=f"{drive_sim.url}/drive/v3", retry_delay=0, timeout=5)
    start = time.monotonic()
    with pytest.raises(DriveError) as info:
        DriveClient(settings, progress=False, deadline=0.5).list_folder(drive_sim.root)
    assert time.monotonic() - start < 2.5, "each page had its own deadline"
    assert str(info.value) == f"listing Google Drive folder {drive_sim.root}: not done within its 0.5 s deadline"


@pytest.mark.parametrize(
    "body",
    [
        {"files": ["x"]},
        {"files": None},
        {"files": "abc"},
        {"files": {"id": "a"}},
        [],
        "files",
        {"files": [], "nextPageToken": {"a": 1}},
        {"files": [], "nextPageToken": "t" * 5000},
        {"files": [{"id": {"x": 1}, "name": "a.xml"}]},
        {"files": [{"id": "a'x", "name": "a.xml"}]},
        {"files": [{"id": "abc", "name": ["a.xml"]}]},
        {"files": [{"id": "abc", "name": "a.xml", "md5Checksum": 5}]},
        {"files": [{"id": "abc", "name": "a.xml", "md5Checksum": "not-hex\nsecond line"}]},
        {"files": [{"id": "abc", "name": "a.xml", "modifiedTime": 1_700_000_000}]},
        {"files": [{"id": "abc", "name": "a.xml", "mimeType": {"x": 1}}]},
        {"files": [{"id": "abc", "name": "a.xml", "size": "\u00b2"}]},
        {"files": [{"id": "abc", "name": "a.xml", "size": "9" * 5000}]},
        {"files": [{"id": "abc", "name": "a.xml", "size": -1}]},
    ],
    ids=lambda body: json.dumps(body)[:40],
)
def test_listing_json_of_the_wrong_shape_is_one_drive_error(drive_sim, body) -> None:
    drive_sim.listing = lambda token: body
    with pytest.raises(DriveError) as info:
        client(drive_sim).list_folder(drive_sim.root)
    assert str(info.value).startswith(f"listing Google Drive folder {drive_sim.root}: ")
    assert "\n" not in str(info.value)
