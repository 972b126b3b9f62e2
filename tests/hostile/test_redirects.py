"""A server's redirect cannot take the request's credentials elsewhere, nor downgrade https to http.

``requests`` strips only ``Authorization`` when a redirect changes host. The
credentials pragma's clients carry are other headers (the Drive key,
``X-Goog-Api-Key``) and signed bodies (CloudStack's POST, re-sent as it is by
a 307 or 308). Each test runs real loopback servers (:mod:`httpfaults`): one
redirects, the other records what reaches it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from httpfaults import Fault, FaultServer

from pragma_core.http import HeaderAuth, HttpClient, Outgoing, RedirectRefused

KEY = "AIzaSy-not-a-real-key-0123456789abcdef"
FAST = {"timeout": 2.0, "retries": 0, "backoff": 0.01, "progress": False, "deadline": 5.0}


class SignedBody(HeaderAuth):
    """Credentials in the body, as CloudStack's POST carries them."""

    def __init__(self) -> None:
        super().__init__("X-Unused", "")

    def apply(self, request: Outgoing) -> None:
        request.data = {**(request.data or {}), "apiKey": KEY, "signature": "c2lnbmVk"}


@pytest.fixture
def two_hosts(tmp_path: Path):
    """``(origin, elsewhere)``: two servers on different ports (two origins); ``elsewhere`` serves ``/x``."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "b" / "x").write_bytes(b"payload")
    with FaultServer(tmp_path / "a") as origin, FaultServer(tmp_path / "b") as elsewhere:
        yield origin, elsewhere


def test_a_redirect_to_another_host_never_carries_a_credential_header(two_hosts) -> None:
    origin, elsewhere = two_hosts
    origin.add_fault("/file", Fault(redirect=elsewhere.url("x")))
    client = HttpClient(**FAST, auth=HeaderAuth("X-Goog-Api-Key", KEY))  # type: ignore[arg-type]
    reply = client.get(origin.url("file"))
    assert reply.status == 200 and reply.load() == b"payload"
    assert origin.requests_for("/file")[0].headers.get("X-Goog-Api-Key") == KEY
    (arrived,) = elsewhere.requests_for("/x")
    assert "X-Goog-Api-Key" not in arrived.headers and KEY not in str(arrived.headers)


def test_a_redirect_on_the_same_origin_keeps_the_credential_header(two_hosts) -> None:
    origin, _ = two_hosts
    (Path(origin._server.root) / "there").write_bytes(b"here")
    origin.add_fault("/file", Fault(redirect=origin.url("there")))
    client = HttpClient(**FAST, auth=HeaderAuth("X-Goog-Api-Key", KEY))  # type: ignore[arg-type]
    assert client.get(origin.url("file")).load() == b"here"
    assert origin.requests_for("/there")[0].headers.get("X-Goog-Api-Key") == KEY


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_that_would_resend_a_signed_body_to_another_host_is_refused(two_hosts, status: int) -> None:
    origin, elsewhere = two_hosts
    origin.add_fault("/api", Fault(redirect=elsewhere.url("x"), redirect_status=status))
    client = HttpClient(**FAST, auth=SignedBody())  # type: ignore[arg-type]
    with pytest.raises(RedirectRefused) as info:
        client.call("POST", origin.url("api"), data={"command": "deployVirtualMachine"}, idempotent=False)
    message = str(info.value)
    assert "a redirect to another host would carry the request's credentials" in message
    assert KEY not in message and "\n" not in message
    assert elsewhere.requests == [], "nothing reached the other host"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_a_redirect_from_https_to_http_is_not_followed(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "b" / "x").write_bytes(b"payload")
    with FaultServer(tmp_path / "a", tls=certificate) as secure, FaultServer(tmp_path / "b") as plain:
        secure.add_fault("/file", Fault(redirect=plain.url("x")))
        client = HttpClient(**{**FAST, "verify": False})  # type: ignore[arg-type]
        with pytest.raises(RedirectRefused, match=r"a redirect from https to http is not followed"):
            client.get(secure.url("file"))
        assert plain.requests == [], "nothing went out in clear"


class _Odd:
    """A loopback server answering every request with the status line and headers it is given."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes = b"{}") -> None:
        import http.server
        import threading

        answer = (status, headers, body)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                code, fields, data = answer
                self.wfile.write(f"HTTP/1.1 {code}\r\n".encode())
                for name, value in fields:
                    self.wfile.write(f"{name}: {value}\r\n".encode())
                self.wfile.write(b"Connection: close\r\n\r\n" + data)
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/x"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "headers"), [
    ("200 OK", [("Content-Length", "\u00b2")]),
    ("200 OK", [("Content-Length", "9" * 5000)]),
    ("503 Busy", [("Retry-After", "9" * 4000), ("Content-Length", "2")]),
    ("200 OK", [("Content-Type", "application/json; charset=undefined"), ("Content-Length", "2")]),
    ("200 OK", [("Content-Type", "text/plain; charset=idna"), ("Content-Length", "2")]),
])
def test_odd_header_values_give_an_answer_or_one_error_line_never_an_internal_error(status, headers) -> None:
    from pragma_core.errors import PragmaError

    server = _Odd(status, headers)
    try:
        client = HttpClient(**{**FAST, "retries": 1, "backoff": 0.01})  # type: ignore[arg-type]
        try:
            reply = client.call("GET", server.url)
        except PragmaError as exc:
            assert "\n" not in str(exc)
        else:
            assert reply.text == "{}"
    finally:
        server.close()


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                    "http://[fe80::1]/", "http://[::ffff:169.254.169.254]/"])
def test_a_redirect_to_a_link_local_address_is_never_followed(two_hosts, target: str) -> None:
    origin, _ = two_hosts
    origin.add_fault("/part", Fault(redirect=target))
    with pytest.raises(RedirectRefused, match=r"a redirect to a link-local address is not followed"):
        HttpClient(**FAST).get(origin.url("part"))  # type: ignore[arg-type]


def test_a_redirect_between_two_loopback_hosts_is_followed(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_bytes(b"payload")
    with FaultServer(tmp_path / "b") as elsewhere:
        (tmp_path / "a").mkdir()
        with FaultServer(tmp_path / "a") as origin:
            origin.add_fault("/file", Fault(redirect=elsewhere.url("x").replace("127.0.0.1", "localhost")))
            assert HttpClient(**FAST).get(origin.url("file")).load() == b"payload"  # type: ignore[arg-type]


def test_a_redirect_whose_name_resolves_elsewhere_when_connecting_is_refused(tmp_path: Path, monkeypatch) -> None:
    """DNS rebinding: the redirect's host name resolves to an address of the origin's kind when the
    redirect is checked, then to the metadata service's kind when the connection is made. The address
    connected is what counts. (Here 127.0.0.2 plays the link-local metadata service, 127.0.0.1 a
    public host: the loopback servers stand for both.)"""
    import socket

    from pragma_core import http

    kinds = {"127.0.0.1": None, "127.0.0.2": "link-local"}
    monkeypatch.setattr(http, "_kind", lambda text: kinds.get(text, "private"))
    answers = iter(["127.0.0.1"])  # the first lookup (the check) gets the public address, every later one not
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.invalid":
            return real(next(answers, "127.0.0.2"), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "secret").write_bytes(b"instance credentials")
    with FaultServer(tmp_path / "a") as origin, FaultServer(tmp_path / "b", host="127.0.0.2") as metadata:
        origin.add_fault("/part", Fault(redirect=f"http://rebind.invalid:{metadata.port}/secret"))
        with pytest.raises(RedirectRefused, match=r"it connected to a link-local address; a redirect there is not followed"):
            HttpClient(**FAST).get(origin.url("part"))  # type: ignore[arg-type]
        assert metadata.requests == [], "nothing was sent to the address the name turned into"


def test_a_redirect_to_a_host_of_the_origins_kind_is_followed_after_the_connection_check(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    import socket

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **k: real("127.0.0.1" if host == "mirror.invalid" else host, *a, **k))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "b" / "x").write_bytes(b"payload")
    with FaultServer(tmp_path / "a") as origin, FaultServer(tmp_path / "b") as mirror:
        origin.add_fault("/file", Fault(redirect=f"http://mirror.invalid:{mirror.port}/x"))
        assert HttpClient(**FAST).get(origin.url("file")).load() == b"payload"  # type: ignore[arg-type]
