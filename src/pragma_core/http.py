"""The one HTTP client of pragma: deadlines, size caps, retries, redaction, pluggable authentication.

Everything pragma fetches over HTTP -- the ``http`` and ``cloudfront``
repositories, the clonezilla repository's Google Drive client, the CloudStack
API client -- goes through :class:`HttpClient`. What it guarantees:

* **An overall deadline per call** (:class:`Deadline`, on the monotonic
  clock), not only a per-read timeout: the socket timeout is shrunk to the
  time left before each read, the clock is checked after each chunk, and a
  watchdog shuts the connection's socket down when the deadline passes, so a
  server that drips one byte at a time (headers or body) cannot keep a call
  alive. Retries share the call's deadline.
* **A byte cap per call** (``max_bytes``): a ``Content-Length`` above it is
  refused before the body is read; without a length, reading stops at the
  cap plus one byte and the answer is refused (:class:`TooLargeError`).
* **Retries** with exponential backoff (honouring ``Retry-After``) on
  connection errors, timeouts and HTTP 408/429/5xx -- never for a call the
  caller marks ``idempotent=False``.
* **Redaction**: every error and log line names the URL through
  :func:`pragma_core.download.redact_url` (no query string, no user
  information) and every library message through
  :func:`pragma_core.download.redact_text`.
* **Pluggable authentication** (:class:`Auth`), applied afresh to every
  attempt so a signature never goes stale: :class:`UrlSigner` (CloudFront
  signed URLs), :class:`HeaderAuth` (Google Drive's API key), or a plugin's
  own subclass (CloudStack's HMAC-signed parameters).

:func:`poll` is the one poll-with-backoff helper (CloudStack jobs...).

**Plugin-helper surface.** Plugins may import from this module (besides the
top-level ``pragma_core`` names): :class:`HttpClient`, :class:`Reply`,
:class:`Deadline`, :class:`Auth`, :class:`Outgoing`, :class:`UrlSigner`,
:class:`HeaderAuth`, :func:`poll`, :func:`redact_logs`, the errors
:class:`TransferError`, :class:`TransientError`,
:class:`RetriesExhaustedError`, :class:`DeadlineExceededError`,
:class:`TooLargeError`, and the constants :data:`CHUNK_SIZE`,
:data:`MAX_API_BYTES`, :data:`MAX_ERROR_BYTES`, :data:`RETRY_STATUSES`,
:data:`DEFAULT_DEADLINE`, :data:`DEFAULT_IMAGE_DEADLINE`.

``requests`` is imported when a client sends its first request, not when
this module is imported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import RepositoryError

if TYPE_CHECKING:  # pragma: no cover
    import requests

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_DEADLINE",
    "DEFAULT_IMAGE_DEADLINE",
    "MAX_API_BYTES",
    "MAX_ERROR_BYTES",
    "RETRY_STATUSES",
    "Auth",
    "Deadline",
    "DeadlineExceededError",
    "HeaderAuth",
    "HttpClient",
    "Outgoing",
    "RedirectRefused",
    "Reply",
    "RetriesExhaustedError",
    "TooLargeError",
    "TransferError",
    "TransientError",
    "UrlSigner",
    "poll",
    "redact_logs",
]

#: Bytes read from the network per call.
CHUNK_SIZE = 1 << 20
#: The default cap on an API answer read whole into memory (a CloudStack page, a Drive listing).
MAX_API_BYTES = 32 << 20
#: How much of an error answer is read (to find the server's reason in it).
MAX_ERROR_BYTES = 1 << 20
#: Statuses retried by default: the server or a proxy asks to come back later.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Seconds a call (a catalogue, a description, an API request) may take, retries included.
DEFAULT_DEADLINE = 600.0
#: Seconds one image (or image part) may take to download, resumes included.
DEFAULT_IMAGE_DEADLINE = 6 * 3600.0
_MAX_BACKOFF = 30.0

T = TypeVar("T")


def _redact_url(url: str) -> str:
    # the redaction functions live in pragma_core.download (their documented home)
    from .download import redact_url

    return redact_url(url)


def _redact_text(text: str) -> str:
    from .download import redact_text

    return redact_text(text)


# --------------------------------------------------------------------------- errors


class TransferError(RepositoryError):
    """An HTTP call failed; one line naming the (redacted) URL and the ``reason``."""

    def __init__(self, reason: str, *, url: str | None = None) -> None:
        self.reason = reason
        self.url = url
        super().__init__(f"{url}: {reason}" if url else reason)


class TransientError(TransferError):
    """A failure worth retrying: connection error, timeout, dropped body, HTTP 408/429/5xx.

    ``reply`` is the answer when the failure is its status (its body read, at
    most :data:`MAX_ERROR_BYTES`); ``timed_out`` tells a timeout from a refused
    or dropped connection.
    """

    def __init__(self, reason: str, *, url: str | None = None, retry_after: float | None = None,
                 timed_out: bool = False, reply: Reply | None = None) -> None:
        super().__init__(reason, url=url)
        self.retry_after = retry_after
        self.timed_out = timed_out
        self.reply = reply


class RetriesExhaustedError(TransferError):
    """Every attempt failed with a connection error, a timeout or HTTP 408/429/5xx.

    ``reply`` is the last answer when the last failure was its status.
    """

    def __init__(self, reason: str, *, url: str | None, attempts: int, timed_out: bool = False,
                 reply: Reply | None = None, note: str = "") -> None:
        self.attempts = attempts
        self.timed_out = timed_out
        self.reply = reply
        super().__init__(reason, url=url)
        self.args = (f"{self.args[0]} (gave up after {attempts} attempts{note})",)


class DeadlineExceededError(TransferError):
    """The call's overall deadline passed while it was under way."""


class TooLargeError(TransferError):
    """The answer is (or announces to be) larger than the call's byte cap."""


# --------------------------------------------------------------------------- deadline


class Deadline:
    """The moment, on the monotonic clock, by which a call must be over."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    @classmethod
    def of(cls, value: float | Deadline | None, default: float) -> Deadline:
        """``value`` when it is a :class:`Deadline`, else one of ``value`` (or ``default``) seconds from now."""
        if isinstance(value, Deadline):
            return value
        return cls(default if value is None else value)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.remaining() <= 0

    def timeout(self, per_read: float) -> float:
        """``per_read`` shrunk to the time left (never zero: that would mean non-blocking)."""
        return max(0.001, min(per_read, self.remaining()))

    def error(self, url: str | None) -> DeadlineExceededError:
        """The error of a call whose deadline passed."""
        return DeadlineExceededError(f"not done within its {self.seconds:g} s deadline", url=url)


# --------------------------------------------------------------------------- authentication


class Outgoing:
    """One request about to be sent; an :class:`Auth` may change any field."""

    __slots__ = ("data", "headers", "method", "params", "url")

    def __init__(self, method: str, url: str, params: dict[str, str], data: Any, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.params = params
        self.data = data
        self.headers = headers


class Auth:
    """How a client authenticates its requests: :meth:`apply` runs for every attempt.

    Subclasses sign or decorate the :class:`Outgoing` request in place and
    list the secret values they put in it (:meth:`secrets`) so they can be
    masked wherever they might show.
    """

    def apply(self, request: Outgoing) -> None:
        """Authenticate ``request`` (in place)."""

    def secrets(self) -> tuple[str, ...]:
        """The secret values this authentication puts in requests."""
        return ()


class UrlSigner(Auth):
    """Authenticates by rewriting the URL (CloudFront signed URLs): ``sign(url) -> signed url``."""

    def __init__(self, sign: Callable[[str], str]) -> None:
        self.sign = sign

    def apply(self, request: Outgoing) -> None:
        if request.params:
            from urllib.parse import urlencode

            request.url += ("&" if "?" in request.url else "?") + urlencode(request.params)
            request.params = {}
        request.url = self.sign(request.url)


class HeaderAuth(Auth):
    """Authenticates with one header (``X-Goog-Api-Key: <key>``); the value never travels in a URL."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def __repr__(self) -> str:
        return f"HeaderAuth({self.name!r}, '***')"

    def apply(self, request: Outgoing) -> None:
        request.headers[self.name] = self._value

    def secrets(self) -> tuple[str, ...]:
        return (self._value,)


# --------------------------------------------------------------------------- the watchdog

_local = threading.local()


class _Watch:
    """Shuts down the sockets of one exchange when its deadline passes.

    A blocked ``recv`` then returns at once, however slowly the server drips
    its headers or body. Each socket is watched through a duplicate of its
    descriptor (kept until :meth:`stop`), so the shutdown can never reach a
    descriptor number the system has handed to another connection.
    """

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.fired = False
        self.live: socket.socket | None = None
        self._dups: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(max(0.0, deadline.remaining()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock`` (the one the exchange now reads from)."""
        with self._lock:
            if self._stopped or sock is self.live:
                return
            self.live = sock
            try:
                dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
            except (OSError, ValueError):
                return
            self._dups.append(dup)
            fired = self.fired
        if fired:
            _shutdown(dup)

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            dups = list(self._dups)
        for dup in dups:
            _shutdown(dup)

    def shrink(self, per_read: float) -> None:
        """Set the socket's timeout to ``per_read`` or the time left, whichever is shorter."""
        live = self.live
        if live is not None:
            with contextlib.suppress(OSError):
                live.settimeout(self.deadline.timeout(per_read))

    def stop(self) -> None:
        """The exchange is over: cancel the timer and let go of the sockets."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            dups, self._dups, self.live = self._dups, [], None
        self._timer.cancel()
        for dup in dups:
            with contextlib.suppress(OSError):
                dup.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _attach(sock: Any) -> None:
    """Called by the watched connections: hand ``sock`` to this thread's current watch."""
    watch = getattr(_local, "watch", None)
    if watch is not None and isinstance(sock, socket.socket):
        watch.attach(sock)


@contextlib.contextmanager
def _watching(watch: _Watch) -> Iterator[None]:
    previous = getattr(_local, "watch", None)
    _local.watch = watch
    try:
        yield
    finally:
        _local.watch = previous


_ADAPTER: Any = None


def _adapter_class() -> Any:
    """A ``requests`` adapter whose connections hand their sockets to the current watch (made once)."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _Watched:
        sock: Any
        host: str
        proxy: Any

        def _new_conn(self) -> Any:
            sock = super()._new_conn()  # type: ignore[misc]
            try:
                _check_peer(self, sock)
            except RedirectRefused:
                sock.close()
                raise
            _attach(sock)  # the plain socket: covers a TLS handshake too
            return sock

        def connect(self) -> None:
            super().connect()  # type: ignore[misc]
            _attach(self.sock)

        def request(self, *args: Any, **kwargs: Any) -> None:
            if self.sock is not None:  # a kept-alive connection, made for another request
                _check_peer(self, self.sock)
                _attach(self.sock)
            super().request(*args, **kwargs)  # type: ignore[misc]

    class _HTTPConnection(_Watched, HTTPConnection):
        pass

    class _HTTPSConnection(_Watched, HTTPSConnection):
        pass

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTPConnection

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPSConnection

    pools = {"http": _HTTPPool, "https": _HTTPSPool}

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: Any, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if hasattr(manager, "pool_classes_by_scheme"):
                manager.pool_classes_by_scheme = pools
            return manager

    _ADAPTER = WatchedAdapter
    return _ADAPTER


def _skip_redirect_body(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A ``response`` hook: never read the body of a redirect (``requests`` would read all of it)."""
    if response.is_redirect:
        with contextlib.suppress(Exception):
            response.raw.close()
    return response


# --------------------------------------------------------------------------- redirects


class RedirectRefused(TransferError):
    """A redirect this client does not follow: from https to http, or to another origin with the request's
    credentials in a body that would be sent again."""


class _RedirectPolicy:
    """What a redirect of one request may do: stay on https, and leave its origin without its credentials.

    ``requests`` strips only ``Authorization`` when a redirect changes host;
    a credential header an :class:`Auth` adds (``X-Goog-Api-Key``) and a
    signed body re-sent by a 307/308 (CloudStack's POST) would go along.
    """

    __slots__ = ("_allowed", "body", "headers", "origin", "scheme")

    def __init__(self, url: str, headers: frozenset[str], body: bool) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.scheme, self.origin = parts.scheme.lower(), _origin(parts)
        self.headers, self.body = headers, body
        self._allowed: set[str] | None = None

    @property
    def allowed(self) -> set[str]:
        """The kinds of non-public address another host may have: those of the origin, never link-local."""
        if self._allowed is None:
            self._allowed = _reach(self.origin[1]) - {"link-local"}
        return self._allowed

    def check(self, request: Any) -> None:
        """Make the next hop ``request`` (a prepared request) safe to send, or raise :class:`RedirectRefused`."""
        from urllib.parse import urlsplit

        parts = urlsplit(request.url)
        if self.scheme == "https" and parts.scheme.lower() != "https":
            raise RedirectRefused(f"redirected to {_redact_url(request.url)}: a redirect from https to"
                                  f" {parts.scheme or '?'} is not followed")
        if _origin(parts) == self.origin:
            return
        for name in self.headers:
            request.headers.pop(name, None)
        if self.body and request.body is not None:
            raise RedirectRefused(f"redirected to {_redact_url(request.url)}: a redirect to another host would"
                                  " carry the request's credentials")
        inside = _reach(parts.hostname or "") - self.allowed
        if inside:
            raise RedirectRefused(f"redirected to {_redact_url(request.url)}: a redirect to a"
                                  f" {' or '.join(sorted(inside))} address is not followed")

    def check_peer(self, host: str, sock: socket.socket) -> None:
        """Refuse a connection to another host than the origin whose peer is a kind of address
        :attr:`allowed` does not hold.

        This is the address actually connected: :meth:`check` resolved the
        name before, and a DNS server may answer differently by the time the
        connection is made (DNS rebinding).
        """
        if host.strip("[]").lower() == self.origin[1]:
            return
        try:
            kind = _kind(sock.getpeername()[0])
        except (OSError, IndexError, ValueError):
            return  # not connected: nothing is sent
        if kind is not None and kind not in self.allowed:
            raise RedirectRefused(f"redirected to {host[:255]}: it connected to a {kind} address;"
                                  " a redirect there is not followed")


def _check_peer(conn: Any, sock: Any) -> None:
    """Called by the watched connections: hold a connection made while a redirect is followed to its policy."""
    policy = getattr(_redirects, "policy", None)
    if policy is not None and getattr(conn, "proxy", None) is None and isinstance(sock, socket.socket):
        policy.check_peer(str(conn.host), sock)  # through a proxy, the proxy makes the onward connection


def _reach(host: str) -> set[str]:
    """The kinds of non-public address ``host`` is or resolves to (see :func:`_kind`); empty for a public host.

    A redirect may lead only where its origin already was: a public repository cannot send pragma,
    root on the head node, to the cloud's metadata service or to services on the head itself.
    Link-local is never a redirect's place. The name is resolved here to refuse early; the address
    connected is checked again (:meth:`_RedirectPolicy.check_peer`).
    """
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()  # the connection will fail on its own
    return {kind for text in found if (kind := _kind(text)) is not None}


def _kind(text: str) -> str | None:
    """``link-local`` (where clouds serve instance credentials: 169.254.169.254), ``loopback``,
    ``private`` (also reserved, unspecified, multicast), or ``None`` for a public address."""
    import ipaddress

    address = ipaddress.ip_address(text.split("%", 1)[0])
    address = getattr(address, "ipv4_mapped", None) or address
    if address.is_link_local:
        return "link-local"
    if address.is_loopback:
        return "loopback"
    if address.is_private or address.is_reserved or address.is_unspecified or address.is_multicast:
        return "private"
    return None


def _origin(parts: Any) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


_redirects: threading.local = threading.local()  # the policy of the request this thread is sending


_SESSION: Any = None


def _session_class() -> Any:
    """``requests.Session`` that applies the current request's :class:`_RedirectPolicy` at every hop."""
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    import requests

    class PolicySession(requests.Session):  # type: ignore[misc]
        def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
            super().rebuild_auth(prepared_request, response)
            policy = getattr(_redirects, "policy", None)
            if policy is not None:
                policy.check(prepared_request)

    _SESSION = PolicySession
    return _SESSION


# --------------------------------------------------------------------------- answers


class Reply:
    """One HTTP answer: status and headers, and a body read under the call's deadline and byte cap.

    Read the body with :meth:`read` / :meth:`chunks` (streamed) or
    :meth:`load` / :attr:`content` / :meth:`json` (whole). Close it (or use
    ``with``) when done.
    """

    def __init__(self, response: requests.Response, *, url: str, watch: _Watch, per_read: float,
                 max_bytes: int | None, cap_name: str | None) -> None:
        self._response = response
        self._watch = watch
        self._per_read = per_read
        self.url = url
        self.status: int = response.status_code
        self.reason: str = response.reason or ""
        self.headers: Mapping[str, str] = response.headers
        self.length = _int_header(self.headers.get("Content-Length"))
        self.chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        self.received = 0
        self.max_bytes: int | None = None
        self._cap_name: str | None = None
        self._body: bytes | None = None
        self._done = False
        self.cap(max_bytes, cap_name)

    def __enter__(self) -> Reply:  # noqa: PYI034 - a final class
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def framed(self) -> bool:
        """Whether the end of the body can be told from a dropped connection (a length, or chunked)."""
        return self.length is not None or self.chunked

    @property
    def deadline(self) -> Deadline:
        """The call's deadline."""
        return self._watch.deadline

    def cap(self, max_bytes: int | None, name: str | None = None) -> None:
        """Refuse a body of more than ``max_bytes`` bytes: an announced length above it at once, else as it arrives.

        ``name`` says what the cap is in the error (``the declared size of
        N bytes``); by default ``the N-byte limit``.
        """
        self.max_bytes = max_bytes
        self._cap_name = name
        if max_bytes is not None and self.length is not None and self.length > max_bytes:
            self.close()
            raise TooLargeError(f"the server announces {self.length} bytes, more than {self._limit()}; refused",
                                url=self.url)

    def _limit(self) -> str:
        return self._cap_name or f"the {self.max_bytes}-byte limit"

    def read(self, amt: int = CHUNK_SIZE) -> bytes:
        """Up to ``amt`` bytes of the body; ``b""`` at its end.

        Raises :class:`TransientError` when the connection drops or a read
        times out, :class:`DeadlineExceededError` once the deadline passes,
        :class:`TooLargeError` past the cap.
        """
        if self._done or amt <= 0:
            return b""
        want = amt if self.max_bytes is None else max(1, min(amt, self.max_bytes + 1 - self.received))
        if self.deadline.expired:
            self.close()
            raise self.deadline.error(self.url)
        self._watch.shrink(self._per_read)
        try:
            chunk = self._response.raw.read(want, decode_content=False)
        except Exception as exc:  # noqa: BLE001 - urllib3 ProtocolError, ReadTimeoutError, OSError...
            self.close()
            if self._watch.fired or self.deadline.expired:
                raise self.deadline.error(self.url) from None
            raise TransientError(_describe(exc), timed_out="timed out" in str(exc).lower()) from None
        if self._watch.fired or (chunk and self.deadline.expired):
            self.close()
            raise self.deadline.error(self.url)
        if not chunk:
            self._done = True
            self._watch.stop()  # nothing more to read: the connection may serve someone else now
            return b""
        self.received += len(chunk)
        if self.max_bytes is not None and self.received > self.max_bytes:
            self.close()
            raise TooLargeError(f"the server sends more than {self._limit()}; refused", url=self.url)
        return chunk

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The rest of the body, chunk by chunk."""
        while chunk := self.read(size):
            yield chunk

    def load(self, max_bytes: int | None = None, *, truncate: bool = False) -> bytes:
        """Read the whole body (at most ``max_bytes`` more, when given) and keep it as :attr:`content`.

        With ``truncate``, a longer body is cut at ``max_bytes`` instead of refused.
        """
        if self._body is not None:
            return self._body
        if max_bytes is not None and (self.max_bytes is None or max_bytes < self.max_bytes - self.received):
            if truncate:
                parts, left = [], max_bytes
                while left > 0 and (chunk := self._read_quietly(min(CHUNK_SIZE, left))):
                    parts.append(chunk)
                    left -= len(chunk)
                self._body = b"".join(parts)
                self.close()
                return self._body
            self.cap(self.received + max_bytes, self._cap_name)
        self._body = b"".join(self.chunks())
        self.close()
        return self._body

    def _read_quietly(self, amt: int) -> bytes:
        try:
            return self.read(amt)
        except TransientError:
            return b""

    @property
    def content(self) -> bytes:
        """The whole body (read on first use, within the cap)."""
        return self.load()

    @property
    def text(self) -> str:
        """The body as text (the charset the answer names, else UTF-8; bad bytes replaced)."""
        match = re.search(r"charset=([\w.-]+)", self.headers.get("Content-Type", ""), re.IGNORECASE)
        encoding = match.group(1) if match else "utf-8"
        try:
            return self.content.decode(encoding, errors="replace")
        except (LookupError, UnicodeError):  # no such codec, or one that is not a text encoding ("undefined", "idna")
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; :class:`ValueError` when it is not JSON."""
        return json.loads(self.content)

    def close(self) -> None:
        """Let go of the connection (an unread body is not read)."""
        self._done = True
        self._watch.stop()
        with contextlib.suppress(Exception):
            self._response.close()


# --------------------------------------------------------------------------- the client


def _default_retry(reply: Reply) -> bool:
    return reply.status in RETRY_STATUSES


class HttpClient:
    """Sends requests with deadlines, caps, retries and authentication, and downloads files.

    ``auth`` authenticates every attempt (``signer``, a URL-rewriting
    function, is the same as ``auth=UrlSigner(signer)``). ``timeout`` is
    seconds to connect and between two reads; ``deadline`` the seconds a call
    may take in all (retries included) and ``image_deadline`` those of a
    :meth:`download` or :meth:`open_stream`; ``retries`` the extra attempts
    after a transient failure, waiting ``backoff * 2**n`` seconds (at most
    30) between them. A retry that made progress (resumed further than the
    last) does not count against the limit. ``sleep`` waits (tests may count
    the waits); ``verify`` checks TLS certificates; ``pool_size`` is the
    number of connections kept per host (for callers that use threads).
    """

    def __init__(
        self,
        *,
        auth: Auth | None = None,
        signer: Callable[[str], str] | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        deadline: float = DEFAULT_DEADLINE,
        image_deadline: float = DEFAULT_IMAGE_DEADLINE,
        max_redirects: int = 10,
        progress: bool | None = None,
        user_agent: str | None = None,
        verify: bool = True,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.auth = auth if auth is not None else (UrlSigner(signer) if signer is not None else None)
        if self.auth is not None:
            from .redaction import register_secret

            for secret in self.auth.secrets():
                register_secret(secret, name=f"{type(self.auth).__name__} credential")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline
        self.image_deadline = image_deadline
        self.max_redirects = max_redirects
        self.progress = progress
        self.user_agent = user_agent
        self.verify = verify
        self.pool_size = pool_size
        self.sleep = sleep
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<HttpClient auth={type(self.auth).__name__ if self.auth else None}>"

    # ------------------------------------------------------------------ plumbing

    @property
    def session(self) -> requests.Session:
        """The ``requests`` session (made on first use)."""
        with self._lock:
            if self._session is None:
                from . import __version__

                session = _session_class()()
                session.max_redirects = self.max_redirects
                session.verify = self.verify
                session.headers["User-Agent"] = self.user_agent or f"pragma/{__version__}"
                # the bytes as stored: a gzip part must not be un-gzipped by a proxy
                session.headers["Accept-Encoding"] = "identity"
                # no transport-level retries: this client decides what may be repeated
                adapter = _adapter_class()(pool_connections=4, pool_maxsize=max(1, self.pool_size), max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._session = session
            return self._session

    def close(self) -> None:
        """Close pooled connections."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    # ------------------------------------------------------------------ one exchange

    def open(self, method: str, url: str, *, params: Mapping[str, str] | None = None, data: Any = None,
             headers: Mapping[str, str] | None = None, deadline: float | Deadline | None = None,
             max_bytes: int | None = None, cap_name: str | None = None) -> Reply:
        """Send one request (no retry); the answer, whatever its status, its body not yet read.

        Raises :class:`TransientError` (connection error, timeout),
        :class:`DeadlineExceededError`, :class:`TooLargeError` (an announced
        length above ``max_bytes``) or :class:`TransferError`.
        """
        import requests

        limit = Deadline.of(deadline, self.deadline)
        plain = _redact_url(url)
        if limit.expired:
            raise limit.error(plain)
        request = Outgoing(method, url, dict(params or {}), data, dict(headers or {}))
        given, body = dict(request.headers), request.data
        if self.auth is not None:
            self.auth.apply(request)
        credentials = frozenset(k for k, v in request.headers.items() if given.get(k) != v)
        _redirects.policy = _RedirectPolicy(request.url, credentials, request.data is not body)
        watch = _Watch(limit)
        wait = limit.timeout(self.timeout)
        try:
            with _watching(watch):
                response = self.session.request(
                    request.method, request.url, params=request.params or None, data=request.data,
                    headers=request.headers, stream=True, timeout=(wait, wait), allow_redirects=True,
                    hooks={"response": [_skip_redirect_body]},
                    # explicit: a CA bundle named in the environment must not turn checking back on
                    verify=None if self.verify else False,
                )
        except RedirectRefused as exc:
            watch.stop()
            raise RedirectRefused(exc.reason, url=plain) from None
        except requests.TooManyRedirects:
            watch.stop()
            raise TransferError(f"too many redirects (more than {self.max_redirects})", url=plain) from None
        except requests.exceptions.SSLError as exc:  # a certificate problem does not go away by retrying
            watch.stop()
            raise TransferError(_describe(exc), url=plain) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            watch.stop()
            if watch.fired or limit.expired:
                raise limit.error(plain) from None
            raise TransientError(_describe(exc), timed_out=isinstance(exc, requests.Timeout)) from None
        except requests.RequestException as exc:  # before OSError, its base: an invalid URL or scheme is final
            watch.stop()
            raise TransferError(_describe(exc), url=plain) from None
        except OSError as exc:
            watch.stop()
            if watch.fired or limit.expired:
                raise limit.error(plain) from None
            raise TransientError(_describe(exc)) from None
        finally:
            _redirects.policy = None
        if watch.fired or limit.expired:  # the headers were cut short when the deadline passed
            watch.stop()
            response.close()
            raise limit.error(plain)
        return Reply(response, url=plain, watch=watch, per_read=self.timeout, max_bytes=max_bytes, cap_name=cap_name)

    def get(self, url: str, headers: Mapping[str, str] | None = None, *, deadline: float | Deadline | None = None,
            max_bytes: int | None = None, cap_name: str | None = None) -> Reply:
        """One streamed ``GET`` (no retry) for a file: 200, 206, 304 and 416 are returned.

        Raises :class:`TransientError` for HTTP 408/429/5xx and
        :class:`TransferError` for every other status.
        """
        reply = self.open("GET", url, headers=headers, deadline=deadline, max_bytes=max_bytes, cap_name=cap_name)
        status = reply.status
        if status in (200, 206, 304, 416):
            return reply
        reply.close()
        text = f"HTTP {status} {reply.reason}".strip()
        if status in RETRY_STATUSES:
            raise TransientError(text, retry_after=_int_header(reply.headers.get("Retry-After")))
        raise TransferError(text, url=reply.url)

    # ------------------------------------------------------------------ calls

    def call(self, method: str, url: str, *, params: Mapping[str, str] | None = None, data: Any = None,
             headers: Mapping[str, str] | None = None, idempotent: bool = True, retries: int | None = None,
             retry_if: Callable[[Reply], bool] | None = None, deadline: float | Deadline | None = None,
             max_bytes: int | None = MAX_API_BYTES, cap_name: str | None = None, stream: bool = False) -> Reply:
        """Send a request, retried on transient failures; the answer, whatever its status.

        Without ``stream`` the body is read (at most ``max_bytes``) before
        the answer is returned; with it, only an error answer's body is read
        (at most :data:`MAX_ERROR_BYTES`). ``retry_if`` decides from an
        answer whether to try again (default: HTTP 408/429/5xx). A call that
        is not ``idempotent`` is sent once, whatever happens. When the
        attempts run out, :class:`RetriesExhaustedError` carries the last
        answer (if there was one).
        """
        limit = Deadline.of(deadline, self.deadline)
        again = retry_if or _default_retry

        def attempt() -> Reply:
            reply = self.open(method, url, params=params, data=data, headers=headers, deadline=limit,
                              max_bytes=max_bytes, cap_name=cap_name)
            try:
                if not stream:
                    reply.load()
                elif reply.status >= 400:
                    reply.load(MAX_ERROR_BYTES, truncate=True)
            except BaseException:
                reply.close()
                raise
            if again(reply):
                reply.close()
                raise TransientError(f"HTTP {reply.status} {reply.reason}".strip(), reply=reply,
                                     retry_after=_int_header(reply.headers.get("Retry-After")))
            return reply

        return self.retrying(url, attempt, retries=retries if idempotent else 0, deadline=limit)

    def _delay(self, failures: int, exc: TransientError) -> float:
        delay = min(_MAX_BACKOFF, self.backoff * (2 ** (failures - 1)))
        if exc.retry_after is not None:
            delay = min(_MAX_BACKOFF, max(delay, float(exc.retry_after)))
        return delay

    def retrying(self, url: str, attempt: Callable[[], T], *, progress: Callable[[], int] | None = None,
                  retries: int | None = None, deadline: Deadline | None = None) -> T:
        """Run ``attempt`` until it succeeds or transient failures exhaust the retries (or the deadline)."""
        limit = self.retries if retries is None else retries
        failures = 0
        total = 0
        last = progress() if progress else 0
        while True:
            try:
                return attempt()
            except TransientError as exc:
                total += 1
                now = progress() if progress else 0
                if now > last:  # made progress: a flaky link, not a dead one
                    failures, last = 0, now
                failures += 1
                delay = self._delay(failures, exc)
                late = deadline is not None and deadline.remaining() <= delay
                if failures > limit or total > 20 * (limit + 1) or late:
                    note = f"; its {deadline.seconds:g} s deadline is near" if late and deadline else ""
                    raise RetriesExhaustedError(exc.reason, url=_redact_url(url), attempts=total,
                                                timed_out=exc.timed_out, reply=exc.reply, note=note) from None
                log.info("%s: %s; retrying (%d/%d)", _redact_url(url), exc.reason, failures, limit)
                if delay > 0:
                    self.sleep(delay)

    # ------------------------------------------------------------------ files (pragma_core.download)

    def fetch_if_newer(self, url: str, dest: Any, *, validate: Callable[[Any], None] | None = None,
                       retries: int | None = None, max_bytes: int | None = None, cap_name: str | None = None,
                       deadline: float | None = None) -> bool:
        """Fetch a small file unless the local copy is current: :func:`pragma_core.download.fetch_if_newer`."""
        from .download import fetch_if_newer

        return fetch_if_newer(self, url, dest, validate=validate, retries=retries, max_bytes=max_bytes,
                              cap_name=cap_name, deadline=deadline)

    def download(self, url: str, dest: Any, *, size: int | None = None, checksum: Any = None,
                 label: str | None = None, deadline: float | Deadline | None = None) -> Any:
        """Download a whole file, resumable and verified: :func:`pragma_core.download.download`."""
        from .download import download

        return download(self, url, dest, size=size, checksum=checksum, label=label, deadline=deadline)

    def open_stream(self, url: str, *, size: int | None = None, checksum: Any = None,
                    deadline: float | Deadline | None = None, checked_elsewhere: bool = False) -> Any:
        """Start reading a remote file: a :class:`pragma_core.download.RemoteStream` at byte 0."""
        from .download import RemoteStream

        stream = RemoteStream(self, url, size=size, checksum=checksum, deadline=deadline,
                              checked_elsewhere=checked_elsewhere)
        stream.connect()
        return stream


# --------------------------------------------------------------------------- polling


def poll(check: Callable[[], T | None], *, timeout: float, interval: float, max_interval: float,
         timed_out: Callable[[], BaseException], sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``check`` until it returns something other than ``None``; that value.

    Waits ``interval`` seconds after the first call, doubling each time up
    to ``max_interval``, never past ``timeout`` seconds from the start; then
    raises ``timed_out()``. An exception from ``check`` ends the polling.
    """
    deadline = Deadline(timeout)
    while True:
        result = check()
        if result is not None:
            return result
        remaining = deadline.remaining()
        if remaining <= 0:
            raise timed_out()
        sleep(min(interval, remaining))
        interval = min(interval * 2, max_interval)


# --------------------------------------------------------------------------- redaction


_FILTERS: dict[Callable[[str], str], logging.Filter] = {}
_FILTERS_LOCK = threading.Lock()


def redact_logs(redact: Callable[[str], str], *loggers: str) -> None:
    """Rewrite every record of ``loggers`` with ``redact`` (idempotent): for a plugin's own secrets."""
    from .redaction import RedactingFilter, add_filter

    with _FILTERS_LOCK:
        found = _FILTERS.get(redact)
        if found is None:
            found = _FILTERS[redact] = RedactingFilter(redact)
    add_filter(found, *loggers)


# --------------------------------------------------------------------------- helpers


#: A whole number in a header: ASCII digits only (``str.isdigit`` takes "²"), and few enough that
#: ``int()`` and ``float()`` take it at once (a 5,000-digit Retry-After must not end the command).
_HEADER_INT = re.compile(r"[0-9]{1,32}")


def _int_header(value: str | None) -> int | None:
    """A header's whole number, or ``None`` when it is absent or not a plain number of at most 32 digits."""
    if value is None or not _HEADER_INT.fullmatch(value.strip()):
        return None
    return int(value)


def _describe(exc: BaseException) -> str:
    """A one-line, redacted description of a network exception."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    # requests/urllib3 nest the interesting part: "(Caused by NewConnectionError(...: [Errno 111] ..."
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    certificate = re.search(r"certificate verify failed: ([^'\")(]+)", text, re.IGNORECASE)
    if certificate:
        text = f"certificate verify failed: {certificate.group(1).strip()}"
    elif match:
        text = match.group(1).strip()
    elif "timed out" in text.lower():
        text = "timed out"
    elif len(text) > 160:
        text = text[:160] + "..."
    text = _redact_text(text)
    return f"{name}: {text}" if text else name
