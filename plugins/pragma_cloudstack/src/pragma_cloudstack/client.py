"""A small CloudStack API client on core's HTTP client (:mod:`pragma_core.http`).

* One :class:`~pragma_core.http.HttpClient` (connection reuse across
  threads): a per-read timeout and an overall deadline on every call, and a
  cap on the size of every answer (:data:`MAX_ANSWER_BYTES`).
* Requests are signed by :class:`CloudStackAuth`, the client's pluggable
  authentication, afresh for every attempt, so ``expires`` is never stale.
* Retries with backoff only for calls that are safe to repeat (``list*`` and
  ``queryAsyncJobResult``): on a dropped connection, a timeout or an HTTP
  500/502/503/504 without a CloudStack error. Any other call is sent once.
* Calls carrying ``userdata`` go as POST (CloudStack allows 32 KiB there,
  only 4 KiB in a GET).
* Async commands are polled through ``queryAsyncJobResult`` with core's
  :func:`~pragma_core.http.poll` (exponential backoff up to a timeout); a
  failed job raises with CloudStack's ``errortext``.
* ``list*`` calls page through every result with ``page``/``pagesize``, up
  to :data:`MAX_LIST_PAGES` pages and :data:`MAX_LIST_ITEMS` items.
* Errors are one line: ``CloudStack <command>: <errortext> (error <code>)``.
  The secret key, the API key and signatures never appear in an error or a
  log line (not even in urllib3's debug lines, which are redacted).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from pragma_core import CapacityError, DriverError
from pragma_core.pluginkit import (
    Auth,
    HttpClient,
    Outgoing,
    Reply,
    RetriesExhaustedError,
    TransferError,
    poll,
)

from .signing import signed_params

log = logging.getLogger(__name__)

#: Job status values of ``queryAsyncJobResult``.
JOB_PENDING, JOB_SUCCEEDED, JOB_FAILED = 0, 1, 2
#: CloudStack error codes meaning "not enough resources" (insufficient capacity, resource limit).
CAPACITY_ERROR_CODES = frozenset({533, 534, 535})
#: HTTP statuses worth retrying for idempotent calls (a proxy or a restarting server).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Largest base64 ``userdata`` CloudStack accepts in a POST (in a GET: 4096).
MAX_USERDATA_POST = 32768
#: Largest answer read (a page of ``page_size`` items is far below it).
MAX_ANSWER_BYTES = 32 << 20
#: Most pages one ``list*`` call fetches before it is refused (a server sending full pages forever).
MAX_LIST_PAGES = 1000
#: Most items one ``list*`` call gathers before it is refused.
MAX_LIST_ITEMS = 100_000
#: Seconds one API call may take in all, retries included (by default).
DEFAULT_CALL_DEADLINE = 300.0

_SECRET_IN_TEXT = re.compile(r"(?i)\b(signature|apikey|secretkey)=[^&\s'\"]*")


def redact(text: str) -> str:
    """``text`` with the values of ``signature``, ``apikey`` and ``secretkey`` replaced by ``***``.

    The one masking of :func:`pragma_core.redaction.redact`: by pattern, and
    by value for the keys and every signature made (all registered).
    """
    from pragma_core.pluginkit import redact as redact_secrets

    return redact_secrets(text)


def _install_log_redaction() -> None:
    """Scrub signed query strings out of urllib3's debug lines (which log the request URL).

    Every log record of the process is masked by :mod:`pragma_core.redaction`;
    this only makes sure its record factory is in place.
    """
    from pragma_core.pluginkit import install_log_redaction as install

    install()


class CloudStackAuth(Auth):
    """Signs each request the way the management server checks it (:mod:`.signing`).

    The client puts ``command`` among the parameters (the query of a GET,
    the form of a POST); this replaces them by the full signed set.
    """

    def __init__(self, api_key: str, secret_key: str, *, expires_after: float | None = 600.0) -> None:
        self._api_key = api_key
        self._secret_key = secret_key
        self.expires_after = expires_after

    def __repr__(self) -> str:
        return "<CloudStackAuth>"

    def apply(self, request: Outgoing) -> None:
        post = request.method == "POST"
        params = dict(request.data if post else request.params)
        command = params.pop("command")
        signed = signed_params(
            command, params, api_key=self._api_key, secret_key=self._secret_key, expires_after=self.expires_after
        )
        if post:
            request.data = signed
        else:
            request.params = signed

    def secrets(self) -> tuple[str, ...]:
        return (self._api_key, self._secret_key)


class CloudStackError(DriverError):
    """CloudStack refused or failed a command; ``errortext`` is CloudStack's own words."""

    def __init__(self, command: str, errortext: str, errorcode: int | None = None) -> None:
        self.command = command
        self.errortext = redact(errortext)
        self.errorcode = errorcode
        code = f" (error {errorcode})" if errorcode is not None else ""
        super().__init__(f"CloudStack {command}: {self.errortext}{code}")


class CloudStackNoAnswer(CloudStackError):
    """No answer came (the connection failed, the time ran out): the command may or may not have taken effect."""


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
    ``?`` (the legacy ``baseurl`` form) is dropped. Times are in seconds:
    ``timeout`` to connect and between two reads, ``deadline`` for a whole
    call (retries included). ``sleep`` is the function used to wait (tests
    may count the waits).
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
        deadline: float = DEFAULT_CALL_DEADLINE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint.rstrip("?")
        self.timeout = timeout
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.job_timeout = job_timeout
        self._sleep = sleep
        self.http = HttpClient(
            auth=CloudStackAuth(api_key, secret_key, expires_after=expires_after),
            timeout=timeout,
            retries=retries,
            backoff=retry_backoff,
            deadline=deadline,
            verify=verify_tls,
            pool_size=pool_size,
            progress=False,
            user_agent="pragma-cloudstack",
            sleep=sleep,
        )
        _install_log_redaction()

    def __repr__(self) -> str:
        return f"<CloudStackClient {self.endpoint}>"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    # ------------------------------------------------------------------ one request

    def request(self, command: str, params: Mapping[str, Any] | None = None, *, post: bool | None = None) -> dict:
        """Send ``command`` and return the body of its ``<command>response`` object.

        ``post`` defaults to POST when the parameters carry ``userdata``.
        Raises :class:`CloudStackError` (one line) on any failure.
        """
        clean = {k: _as_param(v) for k, v in (params or {}).items() if v is not None}
        use_post = ("userdata" in clean) if post is None else post
        fields = {"command": command, **clean}
        method = "POST" if use_post else "GET"
        log.debug("CloudStack %s %s", method, command)
        try:
            reply = self.http.call(
                method,
                self.endpoint,
                params=None if use_post else fields,
                data=fields if use_post else None,
                idempotent=is_idempotent(command),
                retry_if=_worth_retrying,
                max_bytes=MAX_ANSWER_BYTES,
                cap_name=f"the {MAX_ANSWER_BYTES}-byte limit of an API answer",
            )
        except RetriesExhaustedError as exc:
            if exc.reply is not None:
                return self._parse(command, exc.reply)
            if exc.timed_out:
                raise CloudStackNoAnswer(command, f"no answer from {self.endpoint} within {self.timeout:g} s") from None
            raise CloudStackNoAnswer(command, f"cannot talk to {self.endpoint}: {exc.reason}") from None
        except TransferError as exc:  # the deadline passed, the answer is too large, a redirect loop
            raise CloudStackNoAnswer(command, f"{self.endpoint}: {exc.reason}") from None
        return self._parse(command, reply)

    def _parse(self, command: str, reply: Reply) -> dict:
        key = command.lower() + "response"
        body = _json_or_none(reply)
        if not isinstance(body, dict):
            if reply.status >= 400:
                raise CloudStackError(command, f"HTTP {reply.status} {reply.reason}".strip())
            raise CloudStackError(command, "the answer is not a JSON object")
        inner = body.get(key)
        if inner is None and len(body) == 1:
            # Errors may come wrapped under another name (e.g. "errorresponse").
            inner = next(iter(body.values()))
        if not isinstance(inner, dict):
            raise CloudStackError(command, f"the answer has no {key!r} object")
        if reply.status >= 400 or "errortext" in inner:
            text = str(inner.get("errortext") or f"HTTP {reply.status}")
            code = inner.get("errorcode", reply.status)
            raise api_error(command, text, _code(code))
        return inner

    # ------------------------------------------------------------------ lists

    def list(self, command: str, params: Mapping[str, Any] | None = None, *, key: str | None = None) -> list[dict]:
        """Every item of a ``list*`` command, fetched page by page.

        ``key`` is the item name in the answer (``virtualmachine`` for
        ``listVirtualMachines``); by default the one list in the answer.
        Stops on a short page or once ``count`` items came; a server that
        keeps sending full pages is cut off after :data:`MAX_LIST_PAGES`
        pages or :data:`MAX_LIST_ITEMS` items with one :class:`CloudStackError`.
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
            self._check_list_size(command, page, len(items))
            page += 1
        return items

    def _check_list_size(self, command: str, pages: int, items: int) -> None:
        """Raise when a listing that is not over yet already holds too many pages or items."""
        if items >= MAX_LIST_ITEMS:
            raise CloudStackError(command, f"the list goes on past {MAX_LIST_ITEMS} items ({pages} pages); refused")
        if pages >= MAX_LIST_PAGES:
            raise CloudStackError(command, f"the list goes on past {MAX_LIST_PAGES} pages of {self.page_size}; refused")

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

        def check() -> dict | None:
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
            return None

        return poll(
            check,
            timeout=limit,
            interval=self.poll_interval,
            max_interval=self.poll_max_interval,
            sleep=self._sleep,
            timed_out=lambda: CloudStackJobTimeout(command, f"job {jobid} did not finish within {limit:g} s"),
        )

    def call(self, command: str, params: Mapping[str, Any] | None = None, *, post: bool | None = None) -> dict:
        """Run an async command to its end; its ``jobresult``."""
        jobid, _ = self.start_job(command, params, post=post)
        return self.wait_job(command, jobid)


def _as_param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _code(value: Any) -> int | None:
    """An error code as a number, ``None`` when it is not one."""
    text = str(value)
    return int(text) if text.isdigit() else None


def _has_errortext(body: Any) -> bool:
    return isinstance(body, dict) and any(isinstance(v, dict) and "errortext" in v for v in body.values())


def _json_or_none(reply: Reply) -> Any:
    try:
        return reply.json()
    except ValueError:
        return None


def _worth_retrying(reply: Reply) -> bool:
    """An HTTP 5xx from a proxy or a restarting server, not one carrying CloudStack's own error."""
    return reply.status in RETRY_STATUSES and not _has_errortext(_json_or_none(reply))


def _items(answer: dict, key: str | None) -> list[dict]:
    if key is not None:
        value = answer.get(key, [])
        return list(value) if isinstance(value, list) else []
    for name, value in answer.items():
        if name != "count" and isinstance(value, list):
            return list(value)
    return []
