"""The resumable, verified downloader (pragma_core.download) against a real loopback HTTP server."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
from pathlib import Path

import pytest
from httpfaults import Fault, FaultServer

from pragma_core.download import (
    HttpClient,
    RemoteChangedError,
    RetriesExhaustedError,
    install_redaction,
    redact_text,
    redact_url,
    sidecar_path,
)
from pragma_core.errors import ChecksumError, RepositoryError
from pragma_core.model import Checksum

SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    data = random.Random(7).randbytes(SIZE)
    (root / "blob.bin").write_bytes(data)
    with FaultServer(root) as server:
        yield server, root, data


def client(**kwargs) -> HttpClient:
    options = {"timeout": 2.0, "retries": 3, "backoff": 0.01, "progress": False}
    options.update(kwargs)
    return HttpClient(**options)


def sha256(data: bytes) -> Checksum:
    return Checksum(algorithm="sha256", hexdigest=hashlib.sha256(data).hexdigest())


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


# --------------------------------------------------------------------------- download


def test_download_writes_the_verified_file_and_leaves_no_part(served, tmp_path):
    server, _, data = served
    dest = tmp_path / "out" / "blob.bin"
    client().download(server.url("blob.bin"), dest, size=SIZE, checksum=sha256(data))
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == ["blob.bin"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_download_resumes_with_range_after_drops_at_random_offsets(served, tmp_path, seed):
    server, _, data = served
    rng = random.Random(seed)
    for offset in sorted(rng.sample(range(1, SIZE // 3), 3)):
        server.add_fault("/blob.bin", Fault(drop_after=offset, times=1))
    dest = tmp_path / "blob.bin"
    client().download(server.url("blob.bin"), dest, checksum=sha256(data))
    assert dest.read_bytes() == data
    requests = server.requests_for("blob.bin")
    assert len(requests) == 4
    assert all("Range" in r.headers and "If-Range" in r.headers for r in requests[1:])
    # resumed, not restarted: about one copy went over the wire
    assert server.bytes_sent("blob.bin") == SIZE


def test_download_restarts_from_zero_when_the_server_ignores_range(served, tmp_path):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(drop_after=SIZE // 2, times=1))
    server.add_fault("/blob.bin", Fault(ignore_range=True))
    dest = tmp_path / "blob.bin"
    client().download(server.url("blob.bin"), dest, size=SIZE, checksum=sha256(data))
    assert dest.read_bytes() == data
    statuses = [r.status for r in server.requests_for("blob.bin")]
    assert statuses == [200, 200]


def test_download_restarts_when_the_remote_file_changed_between_attempts(served, tmp_path):
    server, root, _ = served
    dest = tmp_path / "blob.bin"
    server.add_fault("/blob.bin", Fault(drop_after=1000, times=1))
    with pytest.raises(RetriesExhaustedError):
        client(retries=0).download(server.url("blob.bin"), dest)
    assert (tmp_path / "blob.bin.part").stat().st_size == 1000
    new = random.Random(99).randbytes(SIZE - 5)
    (root / "blob.bin").write_bytes(new)
    os.utime(root / "blob.bin", ns=(1, 1))
    client().download(server.url("blob.bin"), dest)
    assert dest.read_bytes() == new


def test_download_resumes_a_part_file_left_by_an_earlier_run(served, tmp_path):
    server, _, data = served
    dest = tmp_path / "blob.bin"
    server.add_fault("/blob.bin", Fault(drop_after=SIZE // 3, times=1))
    with pytest.raises(RetriesExhaustedError) as info:
        client(retries=0).download(server.url("blob.bin"), dest)
    assert "gave up" in str(info.value) and "\n" not in str(info.value)
    assert not dest.exists()
    server.reset_log()
    client().download(server.url("blob.bin"), dest, checksum=sha256(data))
    assert dest.read_bytes() == data
    (request,) = server.requests_for("blob.bin")
    assert request.headers["Range"] == f"bytes={SIZE // 3}-"


@pytest.mark.parametrize("status", [404, 403])
def test_download_of_a_refused_url_is_one_line_naming_the_url(served, tmp_path, status):
    server, _, _ = served
    server.add_fault("/blob.bin", Fault(status=status))
    dest = tmp_path / "blob.bin"
    with pytest.raises(RepositoryError) as info:
        client().download(server.url("blob.bin"), dest)
    message = str(info.value)
    assert message == f"{server.url('blob.bin')}: HTTP {status} {'Not Found' if status == 404 else 'Forbidden'}"
    assert len(server.requests_for("blob.bin")) == 1, "4xx is not retried"
    assert leftovers(tmp_path) == ["www"]


def test_download_retries_server_errors_with_backoff(served, tmp_path):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(status=503, times=2))
    dest = tmp_path / "blob.bin"
    client().download(server.url("blob.bin"), dest)
    assert dest.read_bytes() == data
    assert [r.status for r in server.requests_for("blob.bin")] == [503, 503, 200]


def test_download_with_a_lying_content_length_fails_and_publishes_nothing(served, tmp_path):
    server, _, _ = served
    server.add_fault("/blob.bin", Fault(extra_length=100))
    dest = tmp_path / "blob.bin"
    with pytest.raises(RepositoryError) as info:
        client(retries=2).download(server.url("blob.bin"), dest)
    assert server.url("blob.bin") in str(info.value)
    assert not dest.exists()


def test_download_of_corrupt_data_raises_checksum_error_and_keeps_nothing(served, tmp_path):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(corrupt_at=12345))
    dest = tmp_path / "blob.bin"
    with pytest.raises(ChecksumError):
        client().download(server.url("blob.bin"), dest, checksum=sha256(data))
    assert leftovers(tmp_path) == ["www"]


def test_download_of_a_wrong_size_is_refused_before_reading(served, tmp_path):
    server, _, _ = served
    dest = tmp_path / "blob.bin"
    with pytest.raises(RepositoryError, match="expected 10"):
        client().download(server.url("blob.bin"), dest, size=10)
    assert not dest.exists()


def test_a_slow_server_times_out_then_succeeds_on_retry(served, tmp_path):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(delay=1.0, times=1))
    dest = tmp_path / "blob.bin"
    client(timeout=0.3).download(server.url("blob.bin"), dest)
    assert dest.read_bytes() == data


def test_a_server_that_stalls_mid_body_is_resumed(served, tmp_path):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(stall=1.0, stall_after=SIZE // 2, times=1))
    dest = tmp_path / "blob.bin"
    client(timeout=0.3).download(server.url("blob.bin"), dest)
    assert dest.read_bytes() == data
    assert "Range" in server.requests_for("blob.bin")[-1].headers


def test_a_server_that_never_answers_in_time_gives_a_timeout_error(served, tmp_path):
    server, _, _ = served
    server.add_fault("/blob.bin", Fault(delay=1.0))
    with pytest.raises(RepositoryError, match="timed out"):
        client(timeout=0.2, retries=1).download(server.url("blob.bin"), tmp_path / "blob.bin")


def test_a_redirect_loop_is_a_clean_error(served, tmp_path):
    server, _, _ = served
    server.add_fault("/a", Fault(redirect="/b"))
    server.add_fault("/b", Fault(redirect="/a"))
    with pytest.raises(RepositoryError, match="too many redirects"):
        client().download(server.url("a"), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_a_redirect_is_followed(served, tmp_path):
    server, _, data = served
    server.add_fault("/moved.bin", Fault(redirect="/blob.bin"))
    client().download(server.url("moved.bin"), tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == data


def test_a_refused_connection_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x?Signature=SECRET"
    with pytest.raises(RetriesExhaustedError) as info:
        client(retries=1).download(url, tmp_path / "x")
    message = str(info.value)
    assert message.startswith(f"http://127.0.0.1:{port}/x?...: ")
    assert "SECRET" not in message and "refused" in message.lower()


def test_concurrent_downloads_of_one_file_do_not_corrupt_it(served, tmp_path):
    server, _, data = served
    dest = tmp_path / "blob.bin"
    errors = []

    def run():
        try:
            client().download(server.url("blob.bin"), dest, checksum=sha256(data))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert dest.read_bytes() == data


# --------------------------------------------------------------------------- conditional fetch


def test_fetch_if_newer_uses_validators_and_gets_304(served, tmp_path):
    server, root, _ = served
    (root / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    dest = tmp_path / "vcdb.txt"
    c = client()
    assert c.fetch_if_newer(server.url("vcdb.txt"), dest) is True
    assert sidecar_path(dest).is_file()
    assert c.fetch_if_newer(server.url("vcdb.txt"), dest) is False
    second = server.requests_for("vcdb.txt")[-1]
    assert second.status == 304 and "If-None-Match" in second.headers
    (root / "vcdb.txt").write_text("demo,demo/demo.xml\nother,other/other.xml\n")
    assert c.fetch_if_newer(server.url("vcdb.txt"), dest) is True
    assert dest.read_text().count("\n") == 2


def test_fetch_if_newer_keeps_the_old_copy_when_validation_fails(served, tmp_path):
    server, root, _ = served
    (root / "vcdb.txt").write_text("good\n")
    dest = tmp_path / "vcdb.txt"
    c = client()
    c.fetch_if_newer(server.url("vcdb.txt"), dest)
    (root / "vcdb.txt").write_text("bad\n")

    def refuse(path: Path) -> None:
        raise RepositoryError(f"refused {path.read_text().strip()}")

    with pytest.raises(RepositoryError, match="refused bad"):
        c.fetch_if_newer(server.url("vcdb.txt"), dest, validate=refuse)
    assert dest.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vcdb.txt.http.json", "vcdb.txt", "www"]


# --------------------------------------------------------------------------- streams


def read_all(stream, size=65536) -> bytes:
    chunks = []
    while chunk := stream.read(size):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("seed", [11, 12])
def test_stream_resumes_transparently_after_drops(served, seed):
    server, _, data = served
    rng = random.Random(seed)
    for offset in sorted(rng.sample(range(1, SIZE // 3), 3)):
        server.add_fault("/blob.bin", Fault(drop_after=offset, times=1))
    stream = client().open_stream(server.url("blob.bin"), size=SIZE, checksum=sha256(data))
    assert stream.resumable
    with stream:
        assert read_all(stream) == data
    assert server.bytes_sent("blob.bin") == SIZE


def test_stream_skips_what_it_read_when_the_server_ignores_range(served):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(drop_after=SIZE // 2, times=1))
    server.add_fault("/blob.bin", Fault(ignore_range=True))
    with client().open_stream(server.url("blob.bin")) as stream:
        assert read_all(stream) == data


def test_stream_raises_when_the_file_changes_while_read(served):
    server, root, _ = served
    server.add_fault("/blob.bin", Fault(drop_after=1000, times=1))
    stream = client().open_stream(server.url("blob.bin"))
    assert len(stream.read(1000)) == 1000
    (root / "blob.bin").write_bytes(b"new content")
    with pytest.raises(RemoteChangedError):
        read_all(stream)


def test_stream_checks_the_checksum_before_the_end(served):
    server, _, data = served
    server.add_fault("/blob.bin", Fault(corrupt_at=SIZE - 1))
    stream = client().open_stream(server.url("blob.bin"), checksum=sha256(data))
    with pytest.raises(ChecksumError):
        read_all(stream)


def test_stream_without_validators_is_not_resumable_and_a_drop_is_an_error(served):
    server, _, _ = served
    server.add_fault("/blob.bin", Fault(no_validators=True, drop_after=5000))
    stream = client().open_stream(server.url("blob.bin"))
    assert not stream.resumable
    with pytest.raises(RepositoryError, match="cannot resume"):
        read_all(stream)


# --------------------------------------------------------------------------- redaction


def test_redact_url_removes_query_and_credentials():
    assert redact_url("https://u:p@h.example/a/b?Expires=1&Signature=abc") == "https://h.example/a/b?..."
    assert redact_url("http://h/a") == "http://h/a"
    text = redact_text("GET /x?Expires=1&Signature=s3cr3t HTTP/1.1 from http://u:pw@h/y")
    assert "s3cr3t" not in text and "pw" not in text


def test_urllib3_request_lines_are_redacted_in_logs(served, caplog):
    server, _, _ = served
    install_redaction()
    url = server.url("blob.bin") + "?Expires=1&Signature=TOPSECRET"
    with caplog.at_level(logging.DEBUG), client().open_stream(url) as stream:
        stream.read(10)
    assert "/blob.bin" in caplog.text, "urllib3 logged the request line"
    assert "TOPSECRET" not in caplog.text
