"""A small CloudStack API client on :mod:`requests`.

* One :class:`requests.Session` (connection reuse across threads), a timeout on
  every request.
* Retries with backoff only for calls that are safe to repeat (``list*`` and
  ``queryAsyncJobResult``): on a dropped connection, a timeout or an HTTP
  500/502/503/504. Every attempt is signed afresh, so ``expires`` is never stale.
* Calls carrying ``userdata`` go as POST (CloudStack allows 32 KiB there,
  only 4 KiB in a GET).
* Async commands are polled through ``queryAsyncJobResult`` with exponential
  backoff up to a timeout; a failed job raises with CloudStack's ``errortext``.
* ``list*`` calls page through every result with ``page``/``pagesize``.
* Errors are one line: ``CloudStack <command>: <errortext> (error <code>)``.
  The secret key, the API key and signatures never appear in an error or a
  log line (not even in urllib3's debug lines, which are redacted).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pragma_core.errors import CapacityError, DriverError
from pragma_core.redaction import RedactingFilter, add_filter

from .signing import signed_params

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

#: Job status values of ``queryAsyncJobResult``.
JOB_PENDING, JOB_SUCCEEDED, JOB_FAILED = 0, 1, 2
#: CloudStack error codes meaning "not enough resources" (insufficient capacity, resource limit).
CAPACITY_ERROR_CODES = frozenset({533, 534, 535})
#: HTTP statuses worth retrying for idempotent calls (a proxy or a restarting server).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Largest base64 ``userdata`` CloudStack accepts in a POST (in a GET: 4096).
MAX_USERDATA_POST = 32768

_SECRET_IN_TEXT = re.compile(r"(?i)\b(signature|apikey|secretkey)=[^&\s'\"]*")


def redact(text: str) -> str:
    """``text`` with the values of ``signature``, ``apikey`` and ``secretkey`` replaced by ``***``.

    The one masking of :func:`pragma_core.redaction.redact`: by pattern, and
    by value for the keys and every signature made (all registered).
    """
    from pragma_core.redaction import redact as redact_secrets

    return redact_secrets(text)


_FILTER = RedactingFilter(redact)


def _install_log_redaction() -> None:
    """Scrub signed query strings out of urllib3's debug lines (which log the request URL).

    Every log record of the process is masked by :mod:`pragma_core.redaction`;
    this only makes sure its record factory is in place.
    """
    from pragma_core.redaction import install

    install()


class CloudStackError(DriverError):
    """CloudStack refused or failed a command; ``errortext`` is CloudStack's own words."""

    def __init__(self, command: str, errortext: str, errorcode: int | None = None) -> None:
        self.command = command
        self.errortext = redact(errortext)
        self.errorcode = errorcode
        code = f" (error {errorcode})" if errorcode is not None else ""
        super().__init__(f"CloudStack {command}: {self.errortext}{code}")


class CloudStackCapacityError(CloudStackError, CapacityError):
    """CloudStack has not enough capacity or the account hit a resource limit."""


class CloudStackJobTimeout(CloudStackError):
    """An async job did not finish in time."""


def api_error(command: str, errortext: str, errorcode: int | None) -> CloudStackError:
    """The right :class:`CloudStackError` subclass for an error code."""
    cls = CloudStackCapacityError if errorcode in CAPACITY_ERROR_CODES else CloudStackError
    return cls(command, errortext, errorcode)


def is_idempotent(command: str) -> bool:
    """Whether ``command`` may be repeated safely (``list*`` and ``queryAsyncJobResult``)."""
    return command.startswith("list") or command == "queryAsyncJobResult"


class CloudStackClient:
    """Signed calls to one CloudStack endpoint.

    ``endpoint`` is the API URL (``http://host:8080/client/api``); a trailing
    ``?`` (the legacy ``baseurl`` form) is dropped. Times are in seconds.
    ``sleep`` is the function used to wait (tests may count the waits).
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        secret_key: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        retry_backoff: float = 0.5,
        expires_after: float | None = 600.0,
        page_size: int = 500,
        poll_interval: float = 1.0,
        poll_max_interval: float = 10.0,
        job_timeout: float = 600.0,
        verify_tls: bool = True,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.endpoint = endpoint.rstrip("?")
        self._api_key = api_key
        self._secret_key = secret_key
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.expires_after = expires_after
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.job_timeout = job_timeout
        self._sleep = sleep
        self._requests = requests
        self.session: requests.Session = requests.Session()
        self.session.verify = verify_tls
        # No transport-level retries: we decide what may be repeated.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        _install_log_redaction()

    def __repr__(self) -> str:
        return f"<CloudStackClient {self.endpoint}>"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    # ------------------------------------------------------------------ one request

    def request(self, command: str, params: Mapping[str, Any] | None = None, *, post: bool | None = None) -> dict:
        """Send ``command`` and return the body of its ``<command>response`` object.

        ``post`` defaults to POST when the parameters carry ``userdata``.
        Raises :class:`CloudStackError` (one line) on any failure.
        """
        clean = {k: _as_param(v) for k, v in (params or {}).items() if v is not None}
        use_post = ("userdata" in clean) if post is None else post
        attempts = 1 + (self.retries if is_idempotent(command) else 0)
        for attempt in range(1, attempts + 1):
            try:
                return self._send(command, clean, use_post)
            except _Retryable as exc:
                if attempt >= attempts:
                    raise CloudStackError(command, exc.reason) from None
                delay = self.retry_backoff * 2 ** (attempt - 1)
                log.debug("CloudStack %s: %s; retry %d/%d in %.2fs", command, exc.reason, attempt, attempts - 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, command: str, params: dict[str, str], post: bool) -> dict:
        requests = self._requests
        signed = signed_params(
            command, params, api_key=self._api_key, secret_key=self._secret_key, expires_after=self.expires_after
        )
        method = "POST" if post else "GET"
        log.debug("CloudStack %s %s", method, command)
        try:
            if post:
                response = self.session.post(self.endpoint, data=signed, timeout=self.timeout)
            else:
                response = self.session.get(self.endpoint, params=signed, timeout=self.timeout)
        except requests.Timeout:
            raise _Retryable(f"no answer from {self.endpoint} within {self.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"cannot talk to {self.endpoint}: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise CloudStackError(command, f"request failed: {_reason(exc)}") from None
        return self._parse(command, response)

    def _parse(self, command: str, response: requests.Response) -> dict:
        key = command.lower() + "response"
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code in RETRY_STATUSES and not _has_errortext(body):
            raise _Retryable(f"HTTP {response.status_code} {response.reason or ''}".strip())
        if not isinstance(body, dict):
            if response.status_code >= 400:
                raise CloudStackError(command, f"HTTP {response.status_code} {response.reason or ''}".strip())
            raise CloudStackError(command, "the answer is not a JSON object")
        inner = body.get(key)
        if inner is None and len(body) == 1:
            # Errors may come wrapped under another name (e.g. "errorresponse").
            inner = next(iter(body.values()))
        if not isinstance(inner, dict):
            raise CloudStackError(command, f"the answer has no {key!r} object")
        if response.status_code >= 400 or "errortext" in inner:
            text = str(inner.get("errortext") or f"HTTP {response.status_code}")
            code = inner.get("errorcode", response.status_code)
            raise api_error(command, text, _code(code))
        return inner

    # ------------------------------------------------------------------ lists

    def list(self, command: str, params: Mapping[str, Any] | None = None, *, key: str | None = None) -> list[dict]:
        """Every item of a ``list*`` command, fetched page by page.

        ``key`` is the item name in the answer (``virtualmachine`` for
        ``listVirtualMachines``); by default the one list in the answer.
        """
        items: list[dict] = []
        page = 1
        while True:
            query = dict(params or {})
            query.update(page=page, pagesize=self.page_size)
            answer = self.request(command, query)
            chunk = _items(answer, key)
            items.extend(chunk)
            total = answer.get("count")
            if not chunk or len(chunk) < self.page_size:
                break
            if isinstance(total, int) and len(items) >= total:
                break
            page += 1
        return items

    # ------------------------------------------------------------------ async jobs

    def start_job(self, command: str, params: Mapping[str, Any] | None = None, *, post: bool | None = None) -> tuple[str, dict]:
        """Start an async command; its job id and the immediate answer (``id`` of the object...)."""
        answer = self.request(command, params, post=post)
        jobid = answer.get("jobid")
        if not jobid:
            raise CloudStackError(command, "the answer carries no jobid")
        return str(jobid), answer

    def wait_job(self, command: str, jobid: str, *, timeout: float | None = None) -> dict:
        """Poll job ``jobid`` of ``command`` until it ends; its ``jobresult``.

        Waits ``poll_interval``, doubling up to ``poll_max_interval``, for at
        most ``timeout`` (default ``job_timeout``) seconds.
        """
        limit = self.job_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        interval = self.poll_interval
        while True:
            answer = self.request("queryAsyncJobResult", {"jobid": jobid})
            status = answer.get("jobstatus")
            if status == JOB_SUCCEEDED:
                result = answer.get("jobresult")
                return result if isinstance(result, dict) else {}
            if status == JOB_FAILED:
                failure = answer.get("jobresult")
                result = failure if isinstance(failure, dict) else {}
                text = str(result.get("errortext") or "the job failed")
                code = result.get("errorcode", answer.get("jobresultcode"))
                raise api_error(command, text, _code(code))
            if status != JOB_PENDING:
                raise CloudStackError(command, f"job {jobid} has an unknown status {status!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CloudStackJobTimeout(command, f"job {jobid} did not finish within {limit:g} s")
            self._sleep(min(interval, remaining))
            interval = min(interval * 2, self.poll_max_interval)

    def call(self, command: str, params: Mapping[str, Any] | None = None, *, post: bool | None = None) -> dict:
        """Run an async command to its end; its ``jobresult``."""
        jobid, _ = self.start_job(command, params, post=post)
        return self.wait_job(command, jobid)


class _Retryable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _as_param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a transport error (requests puts the signed URL in its text)."""
    text = re.sub(r"with url: \S+ ?", "", redact(str(exc)))
    return f"{type(exc).__name__}: {text}"[:300]


def _code(value: Any) -> int | None:
    """An error code as a number, ``None`` when it is not one."""
    text = str(value)
    return int(text) if text.isdigit() else None


def _has_errortext(body: Any) -> bool:
    return isinstance(body, dict) and any(isinstance(v, dict) and "errortext" in v for v in body.values())


def _items(answer: dict, key: str | None) -> list[dict]:
    if key is not None:
        value = answer.get(key, [])
        return list(value) if isinstance(value, list) else []
    for name, value in answer.items():
        if name != "count" and isinstance(value, list):
            return list(value)
    return []
