"""Resumable, verified HTTP downloads for the remote repositories.

Three ways to get a remote file, all through one :class:`HttpClient`:

* :meth:`HttpClient.fetch_if_newer` -- small files (``vcdb.txt``, cluster
  XML): a conditional ``GET`` (``If-None-Match`` / ``If-Modified-Since``, the
  validators kept in a hidden sidecar ``.<name>.http.json`` beside the file),
  written to a unique temporary name and renamed over the old copy, so
  concurrent readers see the old or the new file, never half of one.
* :meth:`HttpClient.download` -- a whole file to disk: streamed into
  ``<dest>.part`` (validators in ``<dest>.part.json``), resumed with
  ``Range`` + ``If-Range`` after a dropped connection or in a later run,
  restarted from zero when the server's copy changed or it ignores ``Range``,
  checked for size and checksum, then renamed to ``dest``. A file lock
  (``.<name>.lock``) keeps two processes from writing the same ``.part``.
* :meth:`HttpClient.open_stream` -- a :class:`RemoteStream`: a readable binary
  stream over one ``GET`` that reconnects with ``Range`` where the previous
  connection dropped, so a consumer (the staging engine) reads the file once,
  straight from the network. A stream whose server cannot resume safely
  (no ``Accept-Ranges: bytes``, no strong validator) says so through
  :attr:`RemoteStream.resumable`; a stream whose remote file changes while
  it is read raises :class:`RemoteChangedError`.

Every request is retried with exponential backoff on connection errors,
timeouts and HTTP 5xx/429; other HTTP errors (404, 403...) fail at once.
Every failure is a :class:`~pragma_core.errors.RepositoryError` (or
:class:`~pragma_core.errors.ChecksumError`) of one line naming the URL with
its query string and user information removed (:func:`redact_url`): signed
URLs carry their signature in the query string, and it must never reach a log
line or an error message. :func:`install_redaction` adds a logging filter
that scrubs signatures from the records of ``urllib3`` and ``requests``.

``requests`` is imported when a client sends its first request, not when this
module is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ChecksumError, RepositoryError
from .model import Checksum
from .redaction import RedactingFilter, add_filter

if TYPE_CHECKING:  # pragma: no cover
    import requests

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_SIZE",
    "HttpClient",
    "RemoteChangedError",
    "RemoteStream",
    "RetriesExhaustedError",
    "install_redaction",
    "redact_text",
    "redact_url",
]

#: Bytes read from the network per call.
CHUNK_SIZE = 1 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_BACKOFF = 30.0

Signer = Callable[[str], str]


class RemoteChangedError(RepositoryError):
    """The remote file changed (new ETag, size or date) while it was being read."""


class RetriesExhaustedError(RepositoryError):
    """Every attempt failed with a connection error, a timeout or HTTP 5xx/429."""


class _Transient(Exception):
    """A failure worth retrying: connection error, timeout, 5xx, 429."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


# --------------------------------------------------------------------------- redaction

_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>)]*")
_SECRET_PARAM = re.compile(r"((?:Signature|Policy|X-Amz-Signature|X-Amz-Credential|signature)=)[^&\s'\"<>)]*")
_USERINFO = re.compile(r"(://)[^/\s@'\"]+@")


def redact_url(url: str) -> str:
    """``url`` without user information and query string (``?...`` when it had one), secrets masked."""
    from .redaction import redact

    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "..." if parts.query else ""
    text = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return redact(f"{text}?{query}" if query else text)


def redact_text(text: str) -> str:
    """``text`` with every query string and ``user:password@`` removed, and secrets masked.

    Registered secrets and ``signature=``-like values go first
    (:func:`pragma_core.redaction.redact`), then every query string.
    """
    from .redaction import redact

    text = _USERINFO.sub(r"\1", redact(text))
    return _QUERY_IN_TEXT.sub("?...", text)


_FILTER = RedactingFilter(redact_text)
_REDACTED_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
    __name__,
)


def install_redaction(*extra_loggers: str) -> None:
    """Scrub query strings from the records of the HTTP loggers (idempotent).

    A logger's filters see only the records logged on that very logger, so
    the filter goes on each one that logs request lines.
    """
    add_filter(_FILTER, *_REDACTED_LOGGERS, *extra_loggers)


def _describe(exc: BaseException) -> str:
    """A one-line, redacted description of a network exception."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    # requests/urllib3 nest the interesting part: "(Caused by NewConnectionError(...: [Errno 111] ..."
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        text = match.group(1).strip()
    elif "timed out" in text.lower():
        text = "timed out"
    elif len(text) > 160:
        text = text[:160] + "..."
    text = redact_text(text)
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------- helpers


def _hasher(checksum: Checksum | None) -> Any:
    return hashlib.new(checksum.algorithm) if checksum is not None else None


def _strong_etag(value: str | None) -> str | None:
    if value and not value.startswith("W/") and value.startswith('"'):
        return value
    return None


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` -> ``(a, b, total)``; ``total`` ``None`` for ``*``."""
    if not value:
        return None
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _int_header(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _progress_bar(total: int | None, desc: str, initial: int = 0) -> Any:
    """A tqdm bar on stderr when it is a terminal, else ``None``."""
    try:
        if not sys.stderr.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sidecar_path(path: Path) -> Path:
    """Where :meth:`HttpClient.fetch_if_newer` keeps the validators of ``path``."""
    return path.parent / f".{path.name}.http.json"


# --------------------------------------------------------------------------- client


class HttpClient:
    """Sends signed ``GET`` requests with timeouts and retries, and downloads files.

    ``signer`` turns a plain URL into the URL actually requested (CloudFront
    signs it); it is called for every request, so a long download never
    outlives its signature. ``timeout`` is seconds to connect and between two
    reads; ``retries`` the extra attempts after a transient failure, waiting
    ``backoff * 2**n`` seconds (at most 30) between them. A retry that made
    progress (resumed further than the last) does not count against the limit.
    """

    def __init__(
        self,
        *,
        signer: Signer | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_redirects: int = 10,
        progress: bool | None = None,
        user_agent: str | None = None,
    ) -> None:
        self.signer = signer
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_redirects = max_redirects
        self.progress = progress
        self.user_agent = user_agent
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ requests

    @property
    def session(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                import requests

                from . import __version__

                session = requests.Session()
                session.max_redirects = self.max_redirects
                session.headers["User-Agent"] = self.user_agent or f"pragma/{__version__}"
                # the bytes as stored: a gzip part must not be un-gzipped by a proxy
                session.headers["Accept-Encoding"] = "identity"
                self._session = session
            return self._session

    def close(self) -> None:
        """Close pooled connections."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _sign(self, url: str) -> str:
        return self.signer(url) if self.signer is not None else url

    def get(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """One streamed ``GET`` (no retry): 200, 206, 304 and 416 are returned.

        Raises :class:`_Transient` for what is worth retrying and
        :class:`RepositoryError` for the rest.
        """
        import requests

        try:
            response = self.session.get(
                self._sign(url),
                headers=headers or {},
                stream=True,
                timeout=(self.timeout, self.timeout),
                allow_redirects=True,
            )
        except requests.TooManyRedirects:
            raise RepositoryError(
                f"{redact_url(url)}: too many redirects (more than {self.max_redirects})"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(_describe(exc)) from None
        except requests.RequestException as exc:
            raise RepositoryError(f"{redact_url(url)}: {_describe(exc)}") from None
        except OSError as exc:
            raise _Transient(_describe(exc)) from None
        status = response.status_code
        if status in (200, 206, 304, 416):
            return response
        reason = response.reason or ""
        response.close()
        if status in _RETRY_STATUS:
            retry_after = _int_header(response.headers.get("Retry-After"))
            raise _Transient(f"HTTP {status} {reason}".strip(), retry_after=retry_after)
        raise RepositoryError(f"{redact_url(url)}: HTTP {status} {reason}".rstrip())

    def _wait(self, failures: int, exc: _Transient) -> None:
        delay = min(_MAX_BACKOFF, self.backoff * (2 ** (failures - 1)))
        if exc.retry_after is not None:
            delay = min(_MAX_BACKOFF, max(delay, float(exc.retry_after)))
        if delay > 0:
            time.sleep(delay)

    def _retrying(self, url: str, attempt: Callable[[], Any], *, progress: Callable[[], int] | None = None,
                  retries: int | None = None) -> Any:
        """Run ``attempt`` until it succeeds or transient failures exhaust the retries."""
        limit = self.retries if retries is None else retries
        failures = 0
        total = 0
        last = progress() if progress else 0
        while True:
            try:
                return attempt()
            except _Transient as exc:
                total += 1
                now = progress() if progress else 0
                if now > last:  # made progress: a flaky link, not a dead one
                    failures, last = 0, now
                failures += 1
                if failures > limit or total > 20 * (limit + 1):
                    raise RetriesExhaustedError(
                        f"{redact_url(url)}: {exc.reason} (gave up after {total} attempts)"
                    ) from None
                log.info("%s: %s; retrying (%d/%d)", redact_url(url), exc.reason, failures, limit)
                self._wait(failures, exc)

    # ------------------------------------------------------------------ small files

    def fetch_if_newer(self, url: str, dest: Path, *, validate: Callable[[Path], None] | None = None,
                       retries: int | None = None) -> bool:
        """Fetch ``url`` to ``dest`` unless the copy there is current; whether it changed.

        The request is conditional when ``dest`` and its sidecar exist. The
        new content goes to a unique temporary file, is passed to
        ``validate`` (which may raise to refuse it, leaving the old copy) and
        is renamed over ``dest``.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        sidecar = sidecar_path(dest)
        plain = redact_url(url)
        known = _read_json(sidecar) if dest.is_file() else {}
        headers: dict[str, str] = {}
        if known.get("url") == plain:
            if known.get("etag"):
                headers["If-None-Match"] = known["etag"]
            if known.get("last_modified"):
                headers["If-Modified-Since"] = known["last_modified"]

        def attempt() -> bool:
            response = self.get(url, headers)
            with response:
                if response.status_code == 304:
                    log.debug("%s: not modified", plain)
                    return False
                if response.status_code != 200:
                    raise RepositoryError(f"{plain}: unexpected HTTP {response.status_code}")
                fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as handle:
                        received = self._copy_body(response, handle, url)
                        expected = _int_header(response.headers.get("Content-Length"))
                        if expected is not None and received != expected:
                            raise _Transient(f"got {received} of {expected} bytes")
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.chmod(tmp, 0o644)
                    if validate is not None:
                        validate(tmp)
                    os.replace(tmp, dest)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                    raise
                _atomic_write_json(sidecar, {
                    "url": plain,
                    "etag": _strong_etag(response.headers.get("ETag")) or response.headers.get("ETag"),
                    "last_modified": response.headers.get("Last-Modified"),
                })
                log.debug("%s: fetched %d bytes", plain, received)
                return True

        return self._retrying(url, attempt, retries=retries)

    def _copy_body(self, response: requests.Response, handle: Any, url: str, bar: Any = None,
                   hasher: Any = None) -> int:
        received = 0
        raw = response.raw
        while True:
            try:
                chunk = raw.read(CHUNK_SIZE, decode_content=False)
            except Exception as exc:  # noqa: BLE001 - urllib3 ProtocolError, ReadTimeoutError, OSError
                raise _Transient(_describe(exc)) from None
            if not chunk:
                return received
            handle.write(chunk)
            if hasher is not None:
                hasher.update(chunk)
            received += len(chunk)
            if bar is not None:
                bar.update(len(chunk))

    # ------------------------------------------------------------------ whole files

    def download(self, url: str, dest: Path, *, size: int | None = None, checksum: Checksum | None = None,
                 label: str | None = None) -> Path:
        """Download ``url`` to ``dest`` through a resumable ``<dest>.part``; returns ``dest``.

        ``size`` and ``checksum`` (when known) are checked before the rename;
        a mismatch deletes the ``.part`` and tries once more from zero, then
        raises. ``dest`` is replaced atomically.
        """
        import filelock

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(dest.parent / f".{dest.name}.lock"))
        with lock:
            for attempt in (1, 2):
                try:
                    return _Download(self, url, dest, size=size, checksum=checksum, label=label).run()
                except ChecksumError:
                    if attempt == 2:
                        raise
                    log.warning("%s: checksum mismatch; downloading again from the start", redact_url(url))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ streams

    def open_stream(self, url: str, *, size: int | None = None, checksum: Checksum | None = None) -> RemoteStream:
        """Start reading ``url``: a :class:`RemoteStream` positioned at byte 0."""
        stream = RemoteStream(self, url, size=size, checksum=checksum)
        stream.connect()
        return stream


class _Download:
    """One :meth:`HttpClient.download`: the ``.part`` file and its resume state."""

    def __init__(self, client: HttpClient, url: str, dest: Path, *, size: int | None,
                 checksum: Checksum | None, label: str | None) -> None:
        self.client = client
        self.url = url
        self.plain = redact_url(url)
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        self.state_path = dest.with_name(dest.name + ".part.json")
        self.size = size
        self.checksum = checksum
        self.label = label or dest.name
        self.validator: str | None = None
        self.etag: str | None = None
        self.total: int | None = None
        self.offset = 0
        self.bar: Any = None

    def run(self) -> Path:
        state = _read_json(self.state_path)
        if self.part.exists() and state.get("url") == self.plain and state.get("validator"):
            self.offset = self.part.stat().st_size
            self.validator = state["validator"]
            self.etag = state.get("etag")
            self.total = state.get("total")
            log.info("%s: resuming at byte %d", self.plain, self.offset)
        else:
            self._restart()
        show = self.client.progress if self.client.progress is not None else True
        self.bar = _progress_bar(self.total, self.label, self.offset) if show else None
        try:
            self.client._retrying(self.url, self._attempt, progress=lambda: self.offset)
        except RetriesExhaustedError:
            self._close_bar()
            raise  # keep the .part: a later run resumes it
        except BaseException:
            self._close_bar()
            if not self.offset:
                self._discard()
            raise
        self._close_bar()
        return self._finish()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _restart(self) -> None:
        self.offset = 0
        self.validator = self.etag = self.total = None
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self.part.write_bytes(b"")

    def _save_state(self) -> None:
        _atomic_write_json(self.state_path, {
            "url": self.plain, "validator": self.validator, "etag": self.etag, "total": self.total,
        })

    def _attempt(self) -> None:
        headers: dict[str, str] = {}
        if self.offset > 0 and self.validator:
            headers["Range"] = f"bytes={self.offset}-"
            headers["If-Range"] = self.validator
        elif self.offset > 0:
            self._restart()
        response = self.client.get(self.url, headers)
        with response:
            status = response.status_code
            etag = _strong_etag(response.headers.get("ETag"))
            if status == 416:
                if self.offset and self.total == self.offset:
                    return  # the .part is already complete
                log.info("%s: range not satisfiable; starting over", self.plain)
                self._restart()
                raise _Transient("range not satisfiable")
            if status == 206:
                rng = _content_range(response.headers.get("Content-Range"))
                changed = (
                    rng is None
                    or rng[0] != self.offset
                    or (self.total is not None and rng[2] is not None and rng[2] != self.total)
                    or (self.etag is not None and etag is not None and etag != self.etag)
                )
                if changed:
                    log.info("%s: the remote file changed; starting over", self.plain)
                    self._restart()
                    raise _Transient("remote file changed")
                mode = "ab"
            elif status == 200:
                if self.offset:
                    log.info("%s: server sent the whole file; starting over", self.plain)
                self.offset = 0
                self.etag = etag
                self.validator = etag or response.headers.get("Last-Modified")
                self.total = _int_header(response.headers.get("Content-Length"))
                if self.size is not None and self.total is not None and self.total != self.size:
                    raise RepositoryError(
                        f"{self.plain}: server announces {self.total} bytes, expected {self.size}"
                    )
                self._save_state()
                if self.bar is not None:
                    self.bar.reset(total=self.total)
                mode = "wb"
            else:
                raise RepositoryError(f"{self.plain}: unexpected HTTP {status}")
            with open(self.part, mode) as handle:
                try:
                    self._copy(response, handle)
                finally:
                    handle.flush()
                    self.offset = handle.tell()
            if self.total is not None and self.offset < self.total:
                raise _Transient(f"connection closed after {self.offset} of {self.total} bytes")

    def _copy(self, response: requests.Response, handle: Any) -> None:
        raw = response.raw
        while True:
            try:
                chunk = raw.read(CHUNK_SIZE, decode_content=False)
            except Exception as exc:  # noqa: BLE001 - any failure mid-body is a dropped transfer
                raise _Transient(_describe(exc)) from None
            if not chunk:
                return
            handle.write(chunk)
            if self.bar is not None:
                self.bar.update(len(chunk))

    def _finish(self) -> Path:
        actual = self.part.stat().st_size
        expected = self.size if self.size is not None else self.total
        if (self.total is not None and actual != self.total) or (expected is not None and actual != expected):
            self._discard()
            raise RepositoryError(f"{self.plain}: got {actual} bytes, expected {expected}")
        if self.checksum is not None:
            hasher = _hasher(self.checksum)
            with open(self.part, "rb") as handle:
                while block := handle.read(CHUNK_SIZE):
                    hasher.update(block)
            digest = hasher.hexdigest()
            if digest != self.checksum.hexdigest:
                self._discard()
                raise ChecksumError(self.plain, self.checksum.algorithm, self.checksum.hexdigest, digest)
        with open(self.part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.part, self.dest)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        log.debug("%s: downloaded %d bytes to %s", self.plain, actual, self.dest)
        return self.dest

    def _discard(self) -> None:
        for path in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# --------------------------------------------------------------------------- streams


class RemoteStream(io.RawIOBase):
    """A readable binary stream of one remote file that resumes where a connection dropped.

    After :meth:`connect`, :attr:`resumable` says whether a drop can be
    repaired: the server announced ``Accept-Ranges: bytes``, a size and a
    strong ``ETag`` or a ``Last-Modified`` date. A resume asks for
    ``Range: bytes=<pos>-`` with ``If-Range``; a ``206`` must start at
    ``pos`` and carry the same validator and total; a ``200`` with the same
    validator (a server that ignores ``Range``) is read from 0 and the first
    ``pos`` bytes skipped; anything else raises :class:`RemoteChangedError`.
    At the end the size (and ``checksum`` when given) is checked before the
    final empty read, so a consumer never sees a short or corrupt file end
    cleanly.
    """

    def __init__(self, client: HttpClient, url: str, *, size: int | None = None,
                 checksum: Checksum | None = None) -> None:
        super().__init__()
        self.client = client
        self.url = url
        self.plain = redact_url(url)
        self.size = size
        self.checksum = checksum
        self.position = 0
        self.total: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.accept_ranges = False
        self._response: Any = None
        self._hasher = _hasher(checksum)
        self._done = False

    @property
    def resumable(self) -> bool:
        """Whether a dropped connection can be resumed without re-reading from 0."""
        return self.accept_ranges and self.total is not None and bool(self.etag or self.last_modified)

    def readable(self) -> bool:
        return True

    def connect(self) -> None:
        """Send the first request (retried on transient failures)."""

        def attempt() -> None:
            response = self.client.get(self.url)
            if response.status_code != 200:
                response.close()
                raise RepositoryError(f"{self.plain}: unexpected HTTP {response.status_code}")
            headers = response.headers
            self.total = _int_header(headers.get("Content-Length"))
            self.etag = _strong_etag(headers.get("ETag"))
            self.last_modified = headers.get("Last-Modified")
            self.accept_ranges = headers.get("Accept-Ranges", "").strip().lower() == "bytes"
            if self.size is not None and self.total is not None and self.total != self.size:
                response.close()
                raise RepositoryError(f"{self.plain}: server announces {self.total} bytes, expected {self.size}")
            self._response = response

        self.client._retrying(self.url, attempt)

    def _resume(self) -> None:
        validator = self.etag or self.last_modified or ""
        headers = {"Range": f"bytes={self.position}-", "If-Range": validator}
        response = self.client.get(self.url, headers)
        status = response.status_code
        etag = _strong_etag(response.headers.get("ETag"))
        same = (etag == self.etag) if self.etag else (response.headers.get("Last-Modified") == self.last_modified)
        if status == 206:
            rng = _content_range(response.headers.get("Content-Range"))
            if rng is not None and rng[0] == self.position and rng[2] in (None, self.total) and same:
                self._response = response
                return
        elif status == 200 and same and _int_header(response.headers.get("Content-Length")) == self.total:
            # the server ignores Range: read again from 0 and skip what was already read
            log.info("%s: server ignored Range; skipping %d bytes", self.plain, self.position)
            skip = self.position
            raw = response.raw
            try:
                while skip:
                    chunk = raw.read(min(skip, CHUNK_SIZE), decode_content=False)
                    if not chunk:
                        raise _Transient("connection closed while skipping")
                    skip -= len(chunk)
            except _Transient:
                response.close()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure mid-body is a dropped transfer
                response.close()
                raise _Transient(_describe(exc)) from None
            self._response = response
            return
        response.close()
        raise RemoteChangedError(f"{self.plain}: the remote file changed while it was being read")

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        if self._done:
            return b""
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        while True:
            if self._response is None:
                self.client._retrying(self.url, self._resume, progress=lambda: self.position)
            try:
                chunk = self._response.raw.read(size, decode_content=False)
            except Exception as exc:  # noqa: BLE001 - dropped connection, read timeout
                reason = _describe(exc)
                self._drop()
                if not self.resumable:
                    raise RepositoryError(f"{self.plain}: {reason} at byte {self.position}; cannot resume") from None
                log.info("%s: %s at byte %d; resuming", self.plain, reason, self.position)
                continue
            if chunk:
                self.position += len(chunk)
                if self._hasher is not None:
                    self._hasher.update(chunk)
                return chunk
            if self.total is not None and self.position < self.total:
                self._drop()
                if not self.resumable:
                    raise RepositoryError(
                        f"{self.plain}: connection closed after {self.position} of {self.total} bytes; cannot resume"
                    )
                continue
            self._finish()
            return b""

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(CHUNK_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)

    def _finish(self) -> None:
        self._drop()
        if self.size is not None and self.position != self.size:
            raise RepositoryError(f"{self.plain}: got {self.position} bytes, expected {self.size}")
        if self._hasher is not None and self.checksum is not None:
            digest = self._hasher.hexdigest()
            if digest != self.checksum.hexdigest:
                raise ChecksumError(self.plain, self.checksum.algorithm, self.checksum.hexdigest, digest)
        self._done = True

    def _drop(self) -> None:
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()
            self._response = None

    def close(self) -> None:
        self._drop()
        super().close()


@contextlib.contextmanager
def opened(stream: RemoteStream) -> Iterator[RemoteStream]:
    """Close ``stream`` on exit (for ``with`` in a part opener)."""
    try:
        yield stream
    finally:
        stream.close()
