"""Secrets by value: no configured secret, request signature or key material reaches stdout, stderr or a log.

Each secret is checked in every form a server, a library or an error message
may show it (:func:`pragma_core.testing.secrets.secret_forms`: raw,
URL-encoded once or twice, JSON-quoted, inside a quoted URL, repr, HTML...),
at every sink: log records of pragma's, plugins', ``urllib3``'s and
``requests``' loggers (whatever handler a program puts on them), the
``Error:`` line of the ``pragma`` command for every kind of mistake in a
configuration file, and the exceptions pragma raises when a hostile server
on loopback echoes the request -- and the secrets -- in its answers.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import attrs
import pytest

from pragma_core import cli
from pragma_core.config import build_settings, read_config_file
from pragma_core.errors import ConfigError, PragmaError
from pragma_core.redaction import MIN_SECRET_LENGTH, redact, register_secret
from pragma_core.testing import make_cluster, make_site
from pragma_core.testing.secrets import assert_no_secret, leaked_forms, restored_root_logging, secret_forms

#: Secrets of the shapes sites use: a base64 API key, a password with every awkward character, a non-ASCII one.
#: Each test makes its own (:func:`new_secret`): one registered by an earlier test must not make a later one pass.
SHAPES = {
    "base64-key": "Kx9/+vQ=eR~t2Lm_{}Zq+/",
    "password": "p@ss w0rd/é&x=1\"'<{}>%41",
    "unicode": "пароль-秘密-{}",
    "bare": "Sk{}BareSecretWord",  # also a Python name: written without quotes by mistake
}


def new_secret(shape: str) -> str:
    """A secret of ``shape`` nobody has seen (nor registered) yet."""
    return SHAPES[shape].format(secrets.token_hex(6))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were (the command adds its log file)."""
    with restored_root_logging():
        yield


@dataclass
class Captured:
    code: int
    out: str
    err: str
    log: str

    def everything(self) -> str:
        return "\n".join((self.out, self.err, self.log))


def run_pragma(etc: Path, *args: str, caplog: pytest.LogCaptureFixture) -> Captured:
    """``pragma --conf ETC ARGS`` in-process; stdout, stderr and every log record (DEBUG up) captured."""
    cli._plugin_cache = None
    out, err = io.StringIO(), io.StringIO()
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        code = cli.run(["--conf", str(etc), *args], out=out, err=err)
    return Captured(code, out.getvalue(), err.getvalue(), caplog.text)


# --------------------------------------------------------------------------- the masking itself

CONTEXTS = (
    "plain {} text",
    "GET /client/api?command=listZones&apikey={}&response=json HTTP/1.1",
    '{{"errorresponse": {{"errortext": "rejected {}", "errorcode": 431}}}}',
    "<html><body>{}</body></html>",
    "{}",
)


@pytest.mark.parametrize(
    ("shape", "form"),
    [pytest.param(k, f, id=f"{k}-{f}") for k in SHAPES for f in secret_forms(new_secret(k))],
)
def test_redact_masks_a_registered_secret_in_every_form_and_context(shape: str, form: str) -> None:
    secret = new_secret(shape)
    register_secret(secret, name="test")
    for context in CONTEXTS:
        text = context.format(secret_forms(secret)[form])
        assert form in leaked_forms(text, secret), "the form is in the text before masking"
        masked = redact(text)
        assert_no_secret(masked, secret, where=f"masked text ({context!r})")
        assert "***" in masked


@pytest.mark.parametrize(
    "text",
    [
        "GET /a?Expires=1&Signature=UNREGISTERED-sig~1&Key-Pair-Id=K1",
        "/client/api?apiKey=UNREGISTERED%2Bkey&signature=UNREGISTERED%3D",
        "url=http%3A%2F%2Fh%2Fa%3Fsignature%3DUNREGISTERED%2Bsig%26x%3D1",
        '{"apikey": "UNREGISTERED-key", "secretkey": "UNREGISTERED-sk"}',
        '"{\\"apiKey\\": \\"UNREGISTERED-key\\"}"',
        "{'password': 'UNREGISTERED-pw', 'token': 'UNREGISTERED-tok'}",
        "fetching https://user:UNREGISTERED-pw@host/x failed",
    ],
)
def test_secret_parameters_are_masked_by_pattern_even_unregistered(text: str) -> None:
    masked = redact(text)
    assert "UNREGISTERED" not in masked
    assert "***" in masked


@pytest.mark.parametrize("value", ["1", "yes", "true", "admin", "x" * (MIN_SECRET_LENGTH - 1)])
def test_values_shorter_than_the_minimum_are_not_masked_everywhere(value: str) -> None:
    register_secret(value, name="too short")
    assert redact(f"retry 1 of 3: yes, admin said true to {value}") == f"retry 1 of 3: yes, admin said true to {value}"


# --------------------------------------------------------------------------- log records


LOGGERS = ("pragma_core.staging", "pragma_cloudstack.client", "urllib3.connectionpool", "requests", "some.library")


@pytest.mark.parametrize("logger_name", LOGGERS)
@pytest.mark.parametrize("key", sorted(SHAPES))
def test_no_log_record_of_any_logger_shows_a_secret_through_any_handler(logger_name: str, key: str, tmp_path: Path) -> None:
    """A program's own handlers on any logger (not only pragma's) get masked records, tracebacks included."""
    secret = new_secret(key)
    register_secret(secret, name="test")
    payload = " | ".join(secret_forms(secret).values())
    logger = logging.getLogger(logger_name)
    stream = io.StringIO()
    handlers = [logging.StreamHandler(stream), logging.FileHandler(tmp_path / "app.log", encoding="utf-8")]
    saved = (logger.level, logger.propagate)
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.warning("server said: %s", payload)
        logger.debug(f"formatted beforehand: {payload}")
        logger.info("mapping: %(body)s", {"body": payload})
        try:
            raise RuntimeError(f"request failed: {payload}")
        except RuntimeError:
            logger.exception("with traceback")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    text = stream.getvalue() + (tmp_path / "app.log").read_text(encoding="utf-8")
    assert text.count("server said") == 2 and "Traceback" in text, "the records were written"
    assert_no_secret(text, secret, where=f"{logger_name} log")


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every request with the request line itself in its reason phrase and body."""

    server: EchoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.targets.append(self.path)
        status, reason, body = self.server.answer(self.path)
        data = body.encode("utf-8")
        self.send_response(status, reason)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class Echo:
    """What the hostile server sends back: status, and which secrets it echoes besides the request."""

    status: int
    reason: bool = True  # echo in the reason phrase (ASCII forms only: it is a header line)
    body: str = ""  # "vcdb": a catalogue whose bad line echoes everything
    secrets: list[str] = field(default_factory=list)


class EchoServer(ThreadingHTTPServer):
    """A careless server on loopback: every answer repeats the request target and the given secrets."""

    daemon_threads = True

    def __init__(self, echo: Echo) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.echo = echo
        self.targets: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def forms(self, target: str, *, ascii_only: bool) -> list[str]:
        values = [target, *self.echo.secrets]
        found = [f for v in values for f in secret_forms(v).values()]
        return [f for f in found if f.isascii() and "\n" not in f] if ascii_only else found

    def answer(self, target: str) -> tuple[int, str, str]:
        reason = ("rejected " + " ".join(self.forms(target, ascii_only=True)))[:6000] if self.echo.reason else "Nope"
        if self.echo.body == "vcdb":
            return 200, "OK", "# catalogue\n" + " ".join(self.forms(target, ascii_only=False)).replace(",", ";") + "\n"
        return self.echo.status, reason, json.dumps({"error": {"message": self.forms(target, ascii_only=False)}})

    def __enter__(self) -> EchoServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def test_urllib3_and_requests_debug_lines_never_show_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    import requests

    secret = new_secret("base64-key")
    register_secret(secret, name="test")
    with EchoServer(Echo(status=200, reason=False)) as server, caplog.at_level(logging.DEBUG):
        path = f"/{quote(secret, safe='')}/x?apikey={quote_plus(secret)}&next={quote(quote(secret, safe=''))}"
        requests.get(server.url + path, timeout=10).close()
    assert any(r.name.startswith("urllib3") and "GET /" in r.getMessage() for r in caplog.records), "urllib3 logged the request"
    assert server.targets == [path]
    assert_no_secret(caplog.text, secret, where="urllib3 log")


# --------------------------------------------------------------------------- config errors


@dataclass(frozen=True)
class Mistake:
    """A configuration mistake: extra lines for ``site_conf.conf`` and ``fake.conf``; ``{q}`` is the quoted secret."""

    site: str = ""
    fake: str = ""
    says: str = ""  # what the error line must mention (it is about the right key)
    bare: bool = False  # uses {bare}: the secret written as a Python name


MISTAKES = {
    "other-key-equals-secret-vcout": Mistake(site="api_key = {q}\nvcout_format = {q}\n", says="vcout_format"),
    "other-key-equals-secret-bool": Mistake(site="password = {q}\ndelete_parts_after_staging = {q}\n", says="delete_parts_after_staging"),
    "other-key-equals-secret-driver": Mistake(site="secretkey = {q}\nsite_ve_driver = {q}\n", says="site_ve_driver"),
    "repository-option-equals-secret": Mistake(
        site='repository_settings = {{"repository_class": "http", "repository_dir": "{repo}", '
        '"repository_url": "http://127.0.0.1:9", "api_key": {q}, "timeout": {q}}}\n',
        says="timeout",
    ),
    "repository-class-equals-secret": Mistake(
        site='repository_settings = {{"repository_class": {q}, "repository_dir": "{repo}", "client_secret": {q}}}\n',
        says="repository",
    ),
    "repository-dir-wrong-type": Mistake(
        site='repository_settings = {{"repository_class": "local", "repository_dir": 5, "token": {q}}}\n',
        says="repository_dir",
    ),
    "driver-setting-equals-secret": Mistake(fake="api_token = {q}\ntotal_cpus = {q}\n", says="total_cpus"),
    "driver-list-holds-secret": Mistake(fake="password = {q}\npublic_ips = [{q}]\n", says="public_ips"),
    "secret-combined-with-number": Mistake(site="secretkey = {q} + 5\n", says="cannot combine"),
    "secret-in-a-set-of-lists": Mistake(site="secretkey = {q}\nlog_directory = {{[{q}]}}\n", says="line"),
    "secret-unquoted": Mistake(site="secretkey = {bare}\n", says="unknown name", bare=True),
    "other-key-unquoted-secret": Mistake(site='secretkey = "{bare}"\nlog_directory = {bare}\n', says="unknown name", bare=True),
    "secret-called": Mistake(site="secretkey = {bare}()\n", says="not allowed", bare=True),
    "secret-in-driver-unquoted": Mistake(fake="api_token = {bare}\n", says="unknown name", bare=True),
    "syntax-error-on-secret-line": Mistake(site='secretkey = "{raw}\n', says="syntax error"),
}


def _mistake_cases() -> list[object]:
    cases = []
    for name, mistake in MISTAKES.items():
        keys = ["bare"] if mistake.bare else sorted(set(SHAPES) - {"bare"})
        if "{raw}" in mistake.site:
            keys = ["base64-key"]  # a line break or quote in the value would change the mistake
        cases += [pytest.param(mistake, key, id=f"{name}-{key}") for key in keys]
    return cases


def _write_site(root: Path, mistake: Mistake, secret: str) -> Path:
    repo = root / "repo"
    make_cluster(repo / "demo", name="demo")
    (repo / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    values = {"q": repr(secret), "bare": secret, "raw": secret, "repo": repo}
    etc = make_site(root, repository=repo, extra=mistake.site.format(**values))
    (etc / "fake.conf").write_text(f'state_file = "{root / "fake.json"}"\n' + mistake.fake.format(**values))
    return etc


@pytest.mark.parametrize(("mistake", "key"), _mistake_cases())
def test_a_config_error_never_prints_a_secret(mistake: Mistake, key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = new_secret(key)
    etc = _write_site(tmp_path, mistake, secret)
    result = run_pragma(etc, "list", "repository", caplog=caplog)
    assert result.code != 0, result
    assert result.err.startswith("Error: ") and mistake.says in result.err, result.err
    assert_no_secret(result.everything(), secret, where="pragma output")


def test_a_config_error_hides_even_a_secret_too_short_to_register(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    etc = _write_site(tmp_path, Mistake(site='secretkey = "Ab3"\nvcout_format = "Ab3"\n'), "Ab3")
    result = run_pragma(etc, "list", "repository", caplog=caplog)
    assert result.code == 1 and "vcout_format: must be" in result.err
    assert "Ab3" not in result.err


@attrs.frozen(kw_only=True)
class _CredentialSettings:
    """A plugin's settings whose secret has an innocent name: declared by metadata, not guessed."""

    endpoint: str = "http://127.0.0.1:9"
    credential: str = attrs.field(metadata={"secret": True})
    shown_as: str = attrs.field(default="")

    @credential.validator
    def _prefixed(self, attribute: object, value: object) -> None:
        if not isinstance(value, str) or not value.startswith("cred-"):
            raise ValueError(f"credential: {value!r} does not start with cred-")

    @shown_as.validator
    def _short(self, attribute: object, value: str) -> None:
        if len(value) > 10:
            raise ValueError(f"shown_as: {value!r} is longer than 10 characters")


@pytest.mark.parametrize("key", sorted(SHAPES))
@pytest.mark.parametrize("other", [False, True], ids=["about-the-secret", "about-another-key"])
def test_a_setting_declared_secret_never_appears_in_its_errors(key: str, other: bool, tmp_path: Path) -> None:
    secret = "cred-" + new_secret(key) if other else new_secret(key)
    path = tmp_path / "plugin.conf"
    path.write_text(f"credential = {secret!r}\n" + (f"shown_as = {secret!r}\n" if other else ""))
    with pytest.raises(ConfigError) as info:
        build_settings(_CredentialSettings, read_config_file(path))
    text = str(info.value) + "".join(traceback.format_exception(info.value))
    assert ("shown_as: '***' is longer" if other else "credential: '***' does not start") in str(info.value)
    assert_no_secret(text, secret, where="ConfigError")


def test_a_config_file_holding_secrets_readable_by_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = new_secret("base64-key")
    etc = _write_site(tmp_path, Mistake(site="api_key = {q}\n"), secret)
    (etc / "site_conf.conf").chmod(0o644)
    result = run_pragma(etc, "list", "repository", caplog=caplog)
    assert result.code == 0, result.err
    assert "site_conf.conf holds secrets (api_key) and is readable by group or others" in result.log
    assert_no_secret(result.everything(), secret, where="pragma output")
    (etc / "site_conf.conf").chmod(0o600)
    assert "readable by group or others" not in run_pragma(etc, "list", "repository", caplog=caplog).log


# --------------------------------------------------------------------------- hostile servers


@pytest.fixture(scope="module")
def private_key_pem() -> bytes:
    crypto = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization

    pytest.importorskip("botocore")
    key = crypto.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _pem_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


ECHOES = {
    "403-reason": (Echo(status=403), "HTTP 403"),
    "503-reason-retried": (Echo(status=503), "HTTP 503"),
    "404-json-body": (Echo(status=404, reason=False), "HTTP 404"),
    "catalogue-echo": (Echo(status=200, body="vcdb"), "expected '<name>,<path to cluster xml>'"),
}


def _cloudfront_site(root: Path, server: EchoServer, pem: bytes, secret: str) -> Path:
    key_file = root / "cloudfront.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    settings = {
        "repository_class": "cloudfront",
        "repository_dir": str(root / "cache"),
        "repository_url": server.url + "/pragma",
        "keypair_id": "K2JCJMDEHXQW5F",
        "private_key_file": str(key_file),
        "retries": 1,
        "backoff": 0,
        "api_token": secret,
    }
    etc = make_site(root, extra=f"repository_settings = {settings!r}\n")
    (etc / "site_conf.conf").chmod(0o600)
    return etc


def _signatures(targets: list[str]) -> list[str]:
    found = {t.split("Signature=")[1].split("&")[0] for t in targets if "Signature=" in t}
    assert found, "the requests were signed"
    return sorted(found)


@pytest.mark.parametrize("echo_name", sorted(ECHOES))
def test_a_server_echoing_the_request_and_secrets_reaches_no_output(
    echo_name: str, tmp_path: Path, private_key_pem: bytes, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    """``pragma sync repository loglevel=DEBUG``: stdout, stderr, the log file and every record stay clean."""
    echo, expected = ECHOES[echo_name]
    secret = new_secret("password")
    pem_lines = _pem_lines(private_key_pem)
    echo = Echo(status=echo.status, reason=echo.reason, body=echo.body, secrets=[secret, *pem_lines[:3]])
    with EchoServer(echo) as server:
        etc = _cloudfront_site(tmp_path, server, private_key_pem, secret)
        logfile = tmp_path / "sync.log"
        result = run_pragma(etc, "sync", "repository", "loglevel=DEBUG", f"logfile={logfile}", caplog=caplog)
    assert result.code == 1 and expected in result.err, result.err
    assert "Traceback" in result.err, "loglevel=DEBUG prints the traceback, masked"
    written = logfile.read_text(encoding="utf-8")
    assert "/pragma/vcdb.txt" in written, "urllib3's request lines reached the log file"
    captured = result.everything() + written
    assert_no_secret(captured, secret, *pem_lines, *_signatures(server.targets), where=f"sync output ({echo_name})")


def test_a_library_user_gets_masked_exceptions_from_a_hostile_server(tmp_path: Path, private_key_pem: bytes) -> None:
    """Without the command: ``str(exc)`` and the formatted traceback of what the repository raises."""
    from pragma_core.config import load_site_config
    from pragma_core.plugins import make_repository

    secret = new_secret("unicode")
    with EchoServer(Echo(status=403, secrets=[secret, *_pem_lines(private_key_pem)])) as server:
        etc = _cloudfront_site(tmp_path, server, private_key_pem, secret)
        repository = make_repository(load_site_config(etc))
        with pytest.raises(PragmaError) as info:
            repository.sync()
    text = str(info.value) + "".join(traceback.format_exception(info.value))
    assert "HTTP 403" in text
    assert_no_secret(text, secret, *_pem_lines(private_key_pem), *_signatures(server.targets), where="exception")


def test_the_echo_server_does_echo_every_form() -> None:
    """The hostile server is hostile: unmasked, its answers hold every form of the secrets it is given."""
    import requests

    secret = new_secret("password")
    with EchoServer(Echo(status=403, secrets=[secret])) as server:
        response = requests.get(server.url + "/x?Signature=abc", timeout=10)
    ascii_forms = {name for name, form in secret_forms(secret).items() if form.isascii()}
    assert ascii_forms and ascii_forms <= set(leaked_forms(response.reason, secret))
    echoed = " ".join(json.loads(response.text)["error"]["message"])
    assert set(leaked_forms(echoed, secret)) == set(secret_forms(secret))
