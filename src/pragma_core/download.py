"""Resumable, verified HTTP downloads for the remote repositories.

Three ways to get a remote file, all through one
:class:`~pragma_core.http.HttpClient` (which bounds every call in time and
size, retries, authenticates and redacts; see :mod:`pragma_core.http`):

* :func:`fetch_if_newer` -- small files (``vcdb.txt``, cluster XML): a
  conditional ``GET`` (``If-None-Match`` / ``If-Modified-Since``, the
  validators kept in a hidden sidecar ``.<name>.http.json`` beside the file),
  capped in size (a larger ``Content-Length`` is refused before the body is
  read), written to a unique temporary name and renamed over the old copy, so
  concurrent readers see the old or the new file, never half of one.
* :func:`download` -- a whole file to disk: streamed into ``<dest>.part``
  (validators in ``<dest>.part.json``), resumed with ``Range`` + ``If-Range``
  after a dropped connection or in a later run, restarted from zero when the
  server's copy changed or it ignores ``Range``, never grown past its
  declared size, checked for size and checksum, then renamed to ``dest``. A
  file lock (``.<name>.lock``) keeps two processes from writing the same
  ``.part``; a ``.part`` that does not belong to the file asked for (left by
  a crash, another URL, no validator to resume it with) is removed.
* :class:`RemoteStream` (``HttpClient.open_stream``) -- a readable binary
  stream over one ``GET`` that reconnects with ``Range`` where the previous
  connection dropped, so a consumer (the staging engine) reads the file once,
  straight from the network. A stream whose server cannot resume safely
  (no ``Accept-Ranges: bytes``, no strong validator) says so through
  :attr:`RemoteStream.resumable`; a stream whose remote file changes while
  it is read raises :class:`RemoteChangedError`.

A body whose completeness cannot be verified -- no ``Content-Length``, not
chunked (so a dropped connection looks like its end), and no declared size
or checksum to check it against -- is refused: it never becomes a cached,
"ready" file.

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
import glob
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ChecksumError, RepositoryError
from .http import (
    CHUNK_SIZE,
    Deadline,
    HttpClient,
    Reply,
    RetriesExhaustedError,
    TooLargeError,
    TransferError,
    TransientError,
)
from .model import Checksum
from .paths import no_follow
from .redaction import RedactingFilter, add_filter

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_SIZE",
    "HttpClient",
    "RemoteChangedError",
    "RemoteStream",
    "RetriesExhaustedError",
    "discard_spool",
    "download",
    "fetch_if_newer",
    "install_redaction",
    "redact_text",
    "redact_url",
    "sidecar_path",
]


class RemoteChangedError(TransferError):
    """The remote file changed (new ETag, size or date) while it was being read."""


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
    "pragma_core.http",
    __name__,
)


def install_redaction(*extra_loggers: str) -> None:
    """Scrub query strings from the records of the HTTP loggers (idempotent).

    A logger's filters see only the records logged on that very logger, so
    the filter goes on each one that logs request lines.
    """
    add_filter(_FILTER, *_REDACTED_LOGGERS, *extra_loggers)


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
    """Where :func:`fetch_if_newer` keeps the validators of ``path``."""
    return path.parent / f".{path.name}.http.json"


def _spool_files(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def discard_spool(dest: Path) -> bool:
    """Remove what a :func:`download` of ``dest`` may have left (``.part``, its state, its lock); whether any was there.

    Only for a caller that knows no download of ``dest`` is under way (it
    holds a lock covering ``dest``).
    """
    dest = Path(dest)
    found = False
    for path in (*_spool_files(dest), dest.parent / f".{dest.name}.lock"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            found = True
    return found


def _sweep_temporaries(dest: Path, older_than: float) -> None:
    """Remove temporary copies of ``dest`` that no live fetch can own (older than any fetch may last)."""
    cutoff = time.time() - older_than
    for path in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if path.lstat().st_mtime < cutoff:
                path.unlink()
                log.info("removed the stale temporary file %s", path)


def _unverifiable(url: str) -> TransferError:
    return TransferError(
        "the server sends no Content-Length and there is no size or checksum to check the body against: "
        "its completeness cannot be verified; refused",
        url=url,
    )


# --------------------------------------------------------------------------- small files


def fetch_if_newer(client: HttpClient, url: str, dest: Path, *, validate: Callable[[Path], None] | None = None,
                   retries: int | None = None, max_bytes: int | None = None, cap_name: str | None = None,
                   deadline: float | None = None) -> bool:
    """Fetch ``url`` to ``dest`` unless the copy there is current; whether it changed.

    The request is conditional when ``dest`` and its sidecar exist. An answer
    larger than ``max_bytes`` is refused (``cap_name`` says what the limit is,
    e.g. ``the 4194304-byte limit of an image catalogue``); the whole fetch,
    retries included, ends within ``deadline`` seconds (default: the
    client's). The new content goes to a unique temporary file, is passed to
    ``validate`` (which may raise to refuse it, leaving the old copy) and is
    renamed over ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limit = Deadline.of(deadline, client.deadline)
    _sweep_temporaries(dest, older_than=max(limit.seconds, client.deadline) + 60)
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
        with client.get(url, headers, deadline=limit, max_bytes=max_bytes, cap_name=cap_name) as reply:
            if reply.status == 304:
                log.debug("%s: not modified", plain)
                return False
            if reply.status != 200:
                raise TransferError(f"unexpected HTTP {reply.status}", url=plain)
            if not reply.framed:
                raise _unverifiable(plain)
            _save_reply(reply, dest, validate)
            _atomic_write_json(sidecar, {
                "url": plain,
                "etag": _strong_etag(reply.headers.get("ETag")) or reply.headers.get("ETag"),
                "last_modified": reply.headers.get("Last-Modified"),
            })
            log.debug("%s: fetched %d bytes", plain, reply.received)
            return True

    return client.retrying(url, attempt, retries=retries, deadline=limit)


def _save_reply(reply: Reply, dest: Path, validate: Callable[[Path], None] | None) -> None:
    """Write the body of ``reply`` to a temporary file, validate it and rename it over ``dest``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in reply.chunks():
                handle.write(chunk)
            if reply.length is not None and reply.received != reply.length:
                raise TransientError(f"got {reply.received} of {reply.length} bytes")
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


# --------------------------------------------------------------------------- whole files


def download(client: HttpClient, url: str, dest: Path, *, size: int | None = None,
             checksum: Checksum | None = None, label: str | None = None,
             deadline: float | Deadline | None = None) -> Path:
    """Download ``url`` to ``dest`` through a resumable ``<dest>.part``; returns ``dest``.

    ``size`` and ``checksum`` (when known) are checked before the rename; a
    body longer than ``size`` is refused as it arrives. A checksum mismatch
    deletes the ``.part`` and tries once more from zero, then raises. The
    whole download, waiting for the lock included, ends within ``deadline``
    seconds (default: the client's ``image_deadline``). ``dest`` is replaced
    atomically.
    """
    import filelock

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    limit = Deadline.of(deadline, client.image_deadline)
    lock_path = dest.parent / f".{dest.name}.lock"
    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=max(0.001, limit.remaining()))
    except filelock.Timeout:
        raise limit.error(f"{redact_url(url)} (waiting for {dest})") from None
    except OSError as exc:  # a symbolic link there is never followed (ELOOP)
        raise RepositoryError(f"{lock_path}: cannot take the download lock: {exc.strerror or exc}") from None
    try:
        for attempt in (1, 2):
            try:
                return _Download(client, url, dest, size=size, checksum=checksum, label=label, deadline=limit).run()
            except ChecksumError:
                if attempt == 2:
                    raise
                log.warning("%s: checksum mismatch; downloading again from the start", redact_url(url))
    finally:
        lock.release()
    raise AssertionError("unreachable")  # pragma: no cover


class _Download:
    """One :func:`download`: the ``.part`` file and its resume state."""

    def __init__(self, client: HttpClient, url: str, dest: Path, *, size: int | None,
                 checksum: Checksum | None, label: str | None, deadline: Deadline) -> None:
        self.client = client
        self.url = url
        self.plain = redact_url(url)
        self.dest = dest
        self.part, self.state_path = _spool_files(dest)
        self.size = size
        self.checksum = checksum
        self.label = label or dest.name
        self.deadline = deadline
        self.validator: str | None = None
        self.etag: str | None = None
        self.total: int | None = None
        self.offset = 0
        self.bar: Any = None

    def run(self) -> Path:
        state = _read_json(self.state_path)
        if self._belongs(state):
            self.offset = self.part.stat().st_size
            self.validator = state["validator"]
            self.etag = state.get("etag")
            self.total = state.get("total")
            log.info("%s: resuming at byte %d", self.plain, self.offset)
        else:
            if self.part.exists() or self.state_path.exists():
                log.info("%s: removing the stale spool %s", self.plain, self.part)
            self._restart()
        show = self.client.progress if self.client.progress is not None else True
        self.bar = _progress_bar(self.total, self.label, self.offset) if show else None
        try:
            self.client.retrying(self.url, self._attempt, progress=lambda: self.offset, deadline=self.deadline)
        except BaseException as exc:
            self._close_bar()
            # keep a good start of the file for a later run to resume; nothing else
            if not self.offset or not self.validator or isinstance(exc, TooLargeError):
                self._discard()
            raise
        self._close_bar()
        return self._finish()

    def _belongs(self, state: dict[str, Any]) -> bool:
        """Whether the ``.part`` on disk is a resumable start of this very file."""
        if self.part.is_symlink() or not (self.part.is_file() and state.get("url") == self.plain and state.get("validator")):
            return False
        have = self.part.stat().st_size
        total = state.get("total")
        return (self.size is None or have <= self.size) and (not isinstance(total, int) or have <= total)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _restart(self) -> None:
        self.offset = 0
        self.validator = self.etag = self.total = None
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self.part.unlink(missing_ok=True)  # whatever is there, a link included: never truncated through
        with open(self.part, "xb", opener=no_follow):
            pass

    def _save_state(self) -> None:
        _atomic_write_json(self.state_path, {
            "url": self.plain, "validator": self.validator, "etag": self.etag, "total": self.total,
        })

    def _expected(self) -> int | None:
        return self.size if self.size is not None else self.total

    def _cap_name(self) -> str:
        if self.size is not None:
            return f"the declared size of {self.size} bytes"
        return f"the announced size of {self.total} bytes"

    def _attempt(self) -> None:
        headers: dict[str, str] = {}
        if self.offset > 0 and self.validator:
            headers["Range"] = f"bytes={self.offset}-"
            headers["If-Range"] = self.validator
        elif self.offset > 0:
            self._restart()
        with self.client.get(self.url, headers, deadline=self.deadline) as reply:
            status = reply.status
            etag = _strong_etag(reply.headers.get("ETag"))
            if status == 416:
                if self.offset and self.total == self.offset:
                    return  # the .part is already complete
                log.info("%s: range not satisfiable; starting over", self.plain)
                self._restart()
                raise TransientError("range not satisfiable")
            if status == 206:
                rng = _content_range(reply.headers.get("Content-Range"))
                changed = (
                    rng is None
                    or rng[0] != self.offset
                    or (self.total is not None and rng[2] is not None and rng[2] != self.total)
                    or (self.etag is not None and etag is not None and etag != self.etag)
                )
                if changed:
                    log.info("%s: the remote file changed; starting over", self.plain)
                    self._restart()
                    raise TransientError("remote file changed")
                mode = "ab"
            elif status == 200:
                self._start(reply, etag)
                mode = "wb"
            else:
                raise TransferError(f"unexpected HTTP {status}", url=self.plain)
            expected = self._expected()
            if expected is not None:
                reply.cap(expected - self.offset, self._cap_name())
            with open(self.part, mode, opener=no_follow) as handle:
                try:
                    for chunk in reply.chunks():
                        handle.write(chunk)
                        if self.bar is not None:
                            self.bar.update(len(chunk))
                finally:
                    handle.flush()
                    self.offset = handle.tell()
            if expected is not None and self.offset < expected:
                raise TransientError(f"connection closed after {self.offset} of {expected} bytes")

    def _start(self, reply: Reply, etag: str | None) -> None:
        """A ``200``: the whole file from byte 0; check what the server announces."""
        if self.offset:
            log.info("%s: server sent the whole file; starting over", self.plain)
        self.offset = 0
        self.etag = etag
        self.validator = etag or reply.headers.get("Last-Modified")
        self.total = reply.length
        if self.size is not None and self.total is not None and self.total != self.size:
            raise TransferError(f"server announces {self.total} bytes, expected {self.size}", url=self.plain)
        if self.size is None and self.checksum is None and not reply.framed:
            raise _unverifiable(self.plain)
        self._save_state()
        if self.bar is not None:
            self.bar.reset(total=self.total)

    def _finish(self) -> Path:
        actual = self.part.stat().st_size
        expected = self._expected()
        if (self.total is not None and actual != self.total) or (expected is not None and actual != expected):
            self._discard()
            raise TransferError(f"got {actual} bytes, expected {expected}", url=self.plain)
        if self.checksum is not None:
            hasher = _hasher(self.checksum)
            with open(self.part, "rb", opener=no_follow) as handle:
                while block := handle.read(CHUNK_SIZE):
                    hasher.update(block)
            digest = hasher.hexdigest()
            if digest != self.checksum.hexdigest:
                self._discard()
                raise ChecksumError(self.plain, self.checksum.algorithm, self.checksum.hexdigest, digest)
        with open(self.part, "rb+", opener=no_follow) as handle:
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
    cleanly; more than ``size`` bytes are refused as they arrive. The whole
    stream, resumes included, ends within ``deadline`` seconds (default: the
    client's ``image_deadline``). A stream with no length, no ``size`` and no
    ``checksum`` is refused unless the caller checks the bytes itself
    (``checked_elsewhere``).
    """

    def __init__(self, client: HttpClient, url: str, *, size: int | None = None,
                 checksum: Checksum | None = None, deadline: float | Deadline | None = None,
                 checked_elsewhere: bool = False) -> None:
        super().__init__()
        self.client = client
        self.url = url
        self.plain = redact_url(url)
        self.size = size
        self.checksum = checksum
        self.deadline = Deadline.of(deadline, client.image_deadline)
        self.checked_elsewhere = checked_elsewhere
        self.position = 0
        self.total: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.accept_ranges = False
        self._response: Reply | None = None
        self._hasher = _hasher(checksum)
        self._done = False

    @property
    def resumable(self) -> bool:
        """Whether a dropped connection can be resumed without re-reading from 0."""
        return self.accept_ranges and self.total is not None and bool(self.etag or self.last_modified)

    def readable(self) -> bool:
        return True

    def _expected(self) -> int | None:
        return self.size if self.size is not None else self.total

    def _cap(self, reply: Reply, start: int | None = None) -> None:
        """No more body in ``reply`` (which starts at byte ``start``, by default here) than the file has."""
        expected = self._expected()
        if expected is not None:
            name = f"the declared size of {self.size} bytes" if self.size is not None else None
            begin = self.position if start is None else start
            reply.cap(expected - begin, name or f"the announced size of {expected} bytes")

    def connect(self) -> None:
        """Send the first request (retried on transient failures)."""

        def attempt() -> None:
            reply = self.client.get(self.url, deadline=self.deadline)
            if reply.status != 200:
                reply.close()
                raise TransferError(f"unexpected HTTP {reply.status}", url=self.plain)
            headers = reply.headers
            self.total = reply.length
            self.etag = _strong_etag(headers.get("ETag"))
            self.last_modified = headers.get("Last-Modified")
            self.accept_ranges = headers.get("Accept-Ranges", "").strip().lower() == "bytes"
            if self.size is not None and self.total is not None and self.total != self.size:
                reply.close()
                raise TransferError(f"server announces {self.total} bytes, expected {self.size}", url=self.plain)
            if self.size is None and self.checksum is None and not self.checked_elsewhere and not reply.framed:
                reply.close()
                raise _unverifiable(self.plain)
            self._cap(reply)
            self._response = reply

        self.client.retrying(self.url, attempt, deadline=self.deadline)

    def _resume(self) -> None:
        validator = self.etag or self.last_modified or ""
        headers = {"Range": f"bytes={self.position}-", "If-Range": validator}
        reply = self.client.get(self.url, headers, deadline=self.deadline)
        status = reply.status
        etag = _strong_etag(reply.headers.get("ETag"))
        same = (etag == self.etag) if self.etag else (reply.headers.get("Last-Modified") == self.last_modified)
        if status == 206:
            rng = _content_range(reply.headers.get("Content-Range"))
            if rng is not None and rng[0] == self.position and rng[2] in (None, self.total) and same:
                self._cap(reply)
                self._response = reply
                return
        elif status == 200 and same and reply.length == self.total:
            # the server ignores Range: read again from 0 and skip what was already read
            log.info("%s: server ignored Range; skipping %d bytes", self.plain, self.position)
            skip = self.position
            try:
                self._cap(reply, start=0)
                while skip:
                    chunk = reply.read(min(skip, CHUNK_SIZE))
                    if not chunk:
                        raise TransientError("connection closed while skipping")
                    skip -= len(chunk)
            except BaseException:
                reply.close()
                raise
            self._response = reply
            return
        reply.close()
        raise RemoteChangedError("the remote file changed while it was being read", url=self.plain)

    def read(self, size: int | None = -1) -> bytes:
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
                self.client.retrying(self.url, self._resume, progress=lambda: self.position, deadline=self.deadline)
            assert self._response is not None
            try:
                chunk = self._response.read(size)
            except TransientError as exc:  # dropped connection, read timeout
                self._drop()
                if not self.resumable:
                    raise TransferError(f"{exc.reason} at byte {self.position}; cannot resume", url=self.plain) from None
                log.info("%s: %s at byte %d; resuming", self.plain, exc.reason, self.position)
                continue
            except BaseException:
                self._drop()
                raise
            if chunk:
                self.position += len(chunk)
                if self._hasher is not None:
                    self._hasher.update(chunk)
                return chunk
            if self.total is not None and self.position < self.total:
                self._drop()
                if not self.resumable:
                    raise TransferError(
                        f"connection closed after {self.position} of {self.total} bytes; cannot resume", url=self.plain
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
            raise TransferError(f"got {self.position} bytes, expected {self.size}", url=self.plain)
        if self._hasher is not None and self.checksum is not None:
            digest = self._hasher.hexdigest()
            if digest != self.checksum.hexdigest:
                raise ChecksumError(self.plain, self.checksum.algorithm, self.checksum.hexdigest, digest)
        self._done = True

    def _drop(self) -> None:
        if self._response is not None:
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
