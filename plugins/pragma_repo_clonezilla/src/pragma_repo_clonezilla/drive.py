"""A small Google Drive client: list a folder, download a file (resumable, verified).

Two modes, chosen by the ``api_key`` setting:

* **API** (``api_key`` set): Drive API v3 ``files.list`` with
  ``q="'<folder>' in parents and trashed=false"``, paged with ``pageToken``;
  downloads with ``files/<id>?alt=media``. The key travels in the
  ``X-Goog-Api-Key`` header, never in a URL, so no log line (ours, requests'
  or urllib3's) and no error message can show it.
* **Web** (no key): the public folder's embedded view page, and the
  ``drive.usercontent.google.com/download`` endpoint, following the confirm
  form large files get (:mod:`.drivepage`).

Every request goes through core's HTTP client (:mod:`pragma_core.http`),
the API key being its pluggable authentication (:class:`~pragma_core.http.HeaderAuth`):
each call has an overall deadline however slowly the server answers, and
each answer a size cap (listings and pages: :data:`MAX_PAGE_BYTES`). A whole
listing, every page of it, ends within the client's ``deadline`` and is
refused past :data:`MAX_LIST_PAGES` pages or :data:`MAX_LIST_ITEMS` items;
an answer whose JSON has the wrong shape is a :class:`DriveError`.

Downloads go to ``<file>.part`` (with ``<file>.part.json`` naming the remote
version it belongs to, replaced by rename: a link planted at either name is
never written through), resume with ``Range`` after a dropped connection or
on the next sync, are retried with back-off on network errors, 5xx and rate
limits, never grow past the listed size, are checked against the listed
size and MD5, then renamed into place with the remote modification time as
their mtime. A download whose completeness cannot be verified (no length,
no listed size, no MD5) is refused. The whole download, retries included,
ends within the client's ``image_deadline``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from attrs import frozen
from pragma_core import RepositoryError
from pragma_core.pluginkit import (
    DEFAULT_DEADLINE,
    DEFAULT_IMAGE_DEADLINE,
    Deadline,
    HeaderAuth,
    HttpClient,
    Reply,
    RetriesExhaustedError,
    TooLargeError,
    TransferError,
    TransientError,
    no_follow,
    open_inside,
)

from .drivepage import parse_download_form, parse_folder_view, parse_modified

if TYPE_CHECKING:
    from .settings import ClonezillaSettings

log = logging.getLogger(__name__)

FOLDER_MIME = "application/vnd.google-apps.folder"
_CHUNK = 1 << 20
#: Small reads: a broken connection loses at most this much of what arrived.
_READ = 64 * 1024
_LIST_FIELDS = "nextPageToken,files(id,name,mimeType,modifiedTime,md5Checksum,size)"
#: Drive error reasons worth waiting for; every other 403 is final.
_RETRY_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "backendError", "internalError"}
_QUOTA_REASONS = {"downloadQuotaExceeded", "quotaExceeded", "dailyLimitExceeded", "sharingRateLimitExceeded"}
_MAX_DELAY = 60.0
#: Largest listing page, folder view or confirm page read.
MAX_PAGE_BYTES = 8 << 20
#: Most pages one folder listing may take (a server handing out page tokens forever is refused).
MAX_LIST_PAGES = 1_000
#: Most items one folder may list.
MAX_LIST_ITEMS = 10_000
#: Most bytes all the pages of one listing may hold together.
MAX_LIST_BYTES = 64 << 20
#: Longest page token accepted (Drive's are a few hundred characters).
_MAX_TOKEN = 4096
#: Largest resume record (``<file>.part.json``) read back.
_MAX_RECORD_BYTES = 64 * 1024
#: What a Drive id looks like (it goes into listing queries and download URLs).
_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
#: The optional string fields of a ``files.list`` entry, and the shape each must have (``None``: any).
_ENTRY_FIELDS: dict[str, re.Pattern[str] | None] = {
    "mimeType": None,
    "modifiedTime": None,
    "md5Checksum": re.compile(r"[0-9A-Fa-f]{32}"),
    "size": re.compile(r"[0-9]{1,20}"),
}


class DriveError(RepositoryError):
    """Google Drive refused or failed a listing or a download (one line, no secret)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class DriveQuotaError(DriveError):
    """Drive's download quota for a file (or the key) is used up; retry on a later sync."""


@frozen(kw_only=True)
class DriveFile:
    """One item of a Drive folder. ``modified`` is epoch seconds, ``None`` when unknown."""

    id: str
    name: str
    mime_type: str = ""
    modified: float | None = None
    md5: str | None = None
    size: int | None = None
    is_folder: bool = False

    def version(self) -> dict[str, Any]:
        """What identifies this version of the file (for resuming a ``.part``)."""
        return {"id": self.id, "modified": self.modified, "size": self.size, "md5": self.md5}


def _parse_rfc3339(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class DriveClient:
    """Lists and downloads from a Google Drive folder tree (see the module docstring)."""

    def __init__(
        self,
        settings: ClonezillaSettings,
        *,
        progress: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float = DEFAULT_DEADLINE,
        download_deadline: float = DEFAULT_IMAGE_DEADLINE,
    ) -> None:
        """``deadline``: seconds a listing request may take, retries included; ``download_deadline``: a download."""
        self.settings = settings
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._sleep = sleep
        self.http = HttpClient(
            auth=HeaderAuth("X-Goog-Api-Key", settings.api_key) if settings.api_key else None,
            timeout=settings.timeout,
            retries=settings.retries,
            backoff=settings.retry_delay,
            deadline=deadline,
            image_deadline=download_deadline,
            progress=False,
            user_agent="pragma-repo-clonezilla",
            sleep=sleep,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    # ------------------------------------------------------------------ requests

    @property
    def uses_api(self) -> bool:
        return bool(self.settings.api_key)

    def _get(self, url: str, what: str, *, params: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None, stream: bool = False,
             deadline: Deadline | None = None) -> Reply:
        """GET with retries for network errors, 5xx and rate limits; a :class:`DriveError` otherwise.

        Without ``stream`` the answer is read whole (at most
        :data:`MAX_PAGE_BYTES`); with it, its body is left to the caller.
        """
        with _drive_errors(what):
            try:
                reply = self.http.call(
                    "GET", url, params=params, headers=headers, stream=stream, retry_if=_worth_retrying,
                    max_bytes=None if stream else MAX_PAGE_BYTES, deadline=deadline,
                    cap_name=f"the {MAX_PAGE_BYTES}-byte limit of a Drive answer",
                )
            except RetriesExhaustedError as exc:
                if exc.reply is not None:
                    raise _http_error(exc.reply, what) from None
                raise DriveError(f"{what}: {exc.reason}", retryable=True) from None
        if reply.status >= 400:
            reply.close()
            raise _http_error(reply, what)
        return reply

    # ------------------------------------------------------------------ listing

    def list_folder(self, folder_id: str, *, label: str = "") -> list[DriveFile]:
        """The items of folder ``folder_id`` (not trashed), sorted by name.

        The whole listing, every page and retry included, ends within the
        client's ``deadline``.
        """
        what = f"listing Google Drive folder {label or folder_id}"
        deadline = Deadline(self.http.deadline)
        if self.uses_api:
            files = self._list_api(folder_id, what, deadline)
        else:
            files = self._list_web(folder_id, what, deadline)
        return sorted(files, key=lambda f: f.name)

    def _list_api(self, folder_id: str, what: str, deadline: Deadline) -> list[DriveFile]:
        files: list[DriveFile] = []
        token: str | None = None
        seen_tokens: set[str] = set()
        received = 0
        for _ in range(MAX_LIST_PAGES):
            params = {
                "q": f"'{folder_id}' in parents and trashed=false",
                "fields": _LIST_FIELDS,
                "pageSize": "1000",
                "supportsAllDrives": "true",
                "includeItemsFromAllDrives": "true",
            }
            if token:
                params["pageToken"] = token
            response = self._get(f"{self.settings.drive_api_url}/files", what, params=params, deadline=deadline)
            received += len(response.content)
            if received > MAX_LIST_BYTES:
                raise DriveError(f"{what}: the pages hold more than {MAX_LIST_BYTES} bytes; refused")
            items, token = _listing_page(response, what)
            if len(files) + len(items) > MAX_LIST_ITEMS:
                raise DriveError(f"{what}: more than {MAX_LIST_ITEMS} items; refused")
            files.extend(_drive_file(item, what) for item in items)
            if not token:
                return files
            if token in seen_tokens:
                raise DriveError(f"{what}: the server repeated page token {token[:40]!r}")
            seen_tokens.add(token)
        raise DriveError(f"{what}: more than {MAX_LIST_PAGES} pages; refused")

    def _list_web(self, folder_id: str, what: str, deadline: Deadline) -> list[DriveFile]:
        response = self._get(f"{self.settings.drive_web_url}/embeddedfolderview", what, params={"id": folder_id},
                             deadline=deadline)
        page = response.text
        entries = parse_folder_view(page)
        if not entries and "flip-entry" not in page and "flip-list" not in page:
            raise DriveError(f"{what}: the page is not a public folder view (is the folder shared with 'anyone with the link'?)")
        if len(entries) > MAX_LIST_ITEMS:
            raise DriveError(f"{what}: more than {MAX_LIST_ITEMS} items; refused")
        return [
            DriveFile(
                id=e.id,
                name=e.name,
                mime_type=FOLDER_MIME if e.is_folder else "",
                modified=parse_modified(e.modified_text),
                is_folder=e.is_folder,
            )
            for e in entries
        ]

    # ------------------------------------------------------------------ download

    def download(self, item: DriveFile, dest: Path, *, max_bytes: int | None = None) -> None:
        """Fetch ``item`` to ``dest`` through ``dest.part``; resumable, verified, atomic.

        A file Drive lists without a size is refused past ``max_bytes`` (when
        given). On failure the ``.part`` stays for the next attempt when the
        data so far is good (network error, quota, deadline), and is removed
        when it is not (size or MD5 mismatch, more bytes than listed).
        """
        part = dest.with_name(dest.name + ".part")
        meta = dest.with_name(dest.name + ".part.json")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._reuse_or_reset(part, meta, item)
        deadline = Deadline(self.http.image_deadline)
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                self._fetch(item, part, dest.name, deadline, max_bytes)
                self._verify(item, part, dest.name)
                break
            except DriveError as exc:
                if not exc.retryable or attempt == attempts - 1:
                    raise
                delay = min(self.settings.retry_delay * 2**attempt, _MAX_DELAY)
                log.debug("%s; resuming in %.1f s", exc, delay)
                self._sleep(delay)
        os.replace(part, dest)
        meta.unlink(missing_ok=True)
        if item.modified is not None:
            os.utime(dest, (item.modified, item.modified), follow_symlinks=False)

    def _reuse_or_reset(self, part: Path, meta: Path, item: DriveFile) -> None:
        if _read_record(meta) != item.version() or (item.modified is None and item.md5 is None) or part.is_symlink():
            part.unlink(missing_ok=True)  # a link is never resumed (nor written through: no_follow)
        _write_record(meta, item.version())

    def _fetch(self, item: DriveFile, part: Path, label: str, deadline: Deadline, max_bytes: int | None) -> None:
        offset = part.stat().st_size if part.exists() else 0
        if item.size is not None and offset == item.size:
            return
        if item.size is not None and offset > item.size:
            part.unlink()
            offset = 0
        what = f"downloading {label}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._open_download(item, what, headers, deadline)
        with response, _drive_errors(what):
            if offset and response.status != 206:
                offset = 0  # the server ignored Range: start over
            elif offset:
                start = _content_range_start(response.headers.get("Content-Range", ""))
                if start != offset:
                    raise DriveError(f"{what}: asked for bytes from {offset}, server sent from {start}", retryable=True)
            expected = _expected_length(response, offset, item.size)
            if expected is None and item.md5 is None and not response.framed:
                raise DriveError(
                    f"{what}: no length, no listed size and no MD5: its completeness cannot be verified; refused"
                )
            self._cap(response, item, offset, max_bytes, part)
            with open(part, "r+b" if offset else "wb", opener=no_follow) as out, self._bar(label, item.size, offset) as bar:
                out.seek(offset)
                out.truncate()
                received = 0
                try:
                    for chunk in response.chunks(_READ):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except TransientError:
                    raise DriveError(f"{what}: connection broken after {offset + received} bytes", retryable=True) from None
                except TooLargeError:
                    out.truncate(0)
                    part.unlink(missing_ok=True)
                    raise
                except OSError as exc:
                    raise DriveError(f"{what}: cannot write {part}: {exc.strerror or exc}") from None
            if expected is not None and received < expected:
                raise DriveError(f"{what}: connection closed after {offset + received} of {offset + expected} bytes", retryable=True)

    @staticmethod
    def _cap(response: Reply, item: DriveFile, offset: int, max_bytes: int | None, part: Path) -> None:
        """No more bytes than Drive lists for the file (or ``max_bytes`` when it lists no size)."""
        limit = item.size if item.size is not None else max_bytes
        if limit is None:
            return
        name = f"the listed size of {item.size} bytes" if item.size is not None else f"the {limit}-byte limit"
        try:
            response.cap(limit - offset, name)
        except TooLargeError:
            part.unlink(missing_ok=True)
            raise

    def _open_download(self, item: DriveFile, what: str, headers: dict[str, str], deadline: Deadline) -> Reply:
        if self.uses_api:
            return self._get(f"{self.settings.drive_api_url}/files/{item.id}", what, params={"alt": "media"},
                             headers=headers, stream=True, deadline=deadline)
        base = self.settings.drive_download_url
        response = self._get(base, what, params={"id": item.id, "export": "download"}, headers=headers, stream=True,
                             deadline=deadline)
        if not response.headers.get("Content-Type", "").startswith("text/html"):
            return response
        page = _page(response, what)
        form, title = parse_download_form(page)
        if form is None:
            if _looks_like_quota(title + " " + page[:4000]):
                raise DriveQuotaError(f"{what}: Google Drive download quota exceeded for this file; the next sync retries")
            raise DriveError(f"{what}: Google Drive answered with a page ({title or 'no title'}) instead of the file")
        action = urljoin(base, form.action or base)
        if urlsplit(action)[:2] != urlsplit(base)[:2]:
            raise DriveError(f"{what}: the confirm form points outside {urlsplit(base).netloc}; refused")
        response = self._get(action, what, params=form.fields, headers=headers, stream=True, deadline=deadline)
        if response.headers.get("Content-Type", "").startswith("text/html"):
            _, title = parse_download_form(_page(response, what))
            raise DriveError(f"{what}: Google Drive answered the confirm form with a page ({title or 'no title'})")
        return response

    def _verify(self, item: DriveFile, part: Path, label: str) -> None:
        size = part.stat().st_size
        if item.size is not None and size != item.size:
            part.unlink(missing_ok=True)
            raise DriveError(f"downloading {label}: got {size} bytes, Drive lists {item.size}", retryable=True)
        if item.md5:
            digest = hashlib.md5(usedforsecurity=False)
            with open(part, "rb", opener=no_follow) as handle:
                while block := handle.read(_CHUNK * 4):
                    digest.update(block)
            if digest.hexdigest() != item.md5.lower():
                part.unlink(missing_ok=True)
                raise DriveError(
                    f"downloading {label}: MD5 {digest.hexdigest()} does not match Drive's {item.md5}", retryable=True
                )

    def _bar(self, label: str, total: int | None, initial: int) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
            disable=not self.progress, leave=False,
        )


def _listing_page(response: Reply, what: str) -> tuple[list[Any], str | None]:
    """The ``files`` and ``nextPageToken`` of one ``files.list`` answer, their types checked."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        raise DriveError(f"{what}: the answer is not Drive API JSON") from None
    if not isinstance(body, dict):
        raise DriveError(f"{what}: the answer is not a Drive API JSON object")
    items = body.get("files", [])
    token = body.get("nextPageToken")
    if not isinstance(items, list):
        raise DriveError(f"{what}: 'files' in the answer is not a list")
    if token is not None and (not isinstance(token, str) or len(token) > _MAX_TOKEN):
        raise DriveError(f"{what}: 'nextPageToken' in the answer is not a string of at most {_MAX_TOKEN} characters")
    return items, token or None


def _drive_file(item: Any, what: str) -> DriveFile:
    """One ``files.list`` entry as a :class:`DriveFile`; a :class:`DriveError` unless every field has its shape."""
    if not isinstance(item, dict):
        raise DriveError(f"{what}: malformed file entry in the answer (not an object)")
    if not isinstance(item.get("id"), str) or not _DRIVE_ID.fullmatch(item["id"]):
        raise DriveError(f"{what}: malformed file entry in the answer ('id' is not a Drive id)")
    if not isinstance(item.get("name"), str) or not item["name"]:
        raise DriveError(f"{what}: malformed file entry in the answer ('name' is not a non-empty string)")
    for key, shape in _ENTRY_FIELDS.items():
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or (shape is not None and not shape.fullmatch(value))):
            raise DriveError(f"{what}: malformed file entry {item['name']!r} in the answer (bad {key!r})")
    size, mime = item.get("size"), item.get("mimeType") or ""
    return DriveFile(
        id=item["id"],
        name=item["name"],
        mime_type=mime,
        modified=_parse_rfc3339(item.get("modifiedTime")),
        md5=item.get("md5Checksum"),
        size=int(size) if size is not None else None,
        is_folder=mime == FOLDER_MIME,
    )


def _read_record(meta: Path) -> Any:
    """The resume record at ``meta``; ``None`` when missing, unreadable, too large or not a regular file in its directory."""
    try:
        with open_inside(meta.parent, meta) as handle:
            data = handle.read(_MAX_RECORD_BYTES + 1)
        return json.loads(data) if len(data) <= _MAX_RECORD_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None


def _write_record(meta: Path, record: dict[str, Any]) -> None:
    """Write the resume record through a fresh file renamed onto ``meta``: whatever was there is replaced, never written through."""
    handle, tmp = tempfile.mkstemp(prefix=f".{meta.name}.", suffix=".tmp", dir=meta.parent)
    try:
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(tmp, meta)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _content_range_start(value: str) -> int | None:
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _expected_length(response: Reply, offset: int, size: int | None) -> int | None:
    if response.length is not None and "Content-Encoding" not in response.headers:
        return response.length
    return size - offset if size is not None else None


def _page(response: Reply, what: str) -> str:
    """The text of an HTML answer (at most :data:`MAX_PAGE_BYTES` of it)."""
    with _drive_errors(what):
        response.load(MAX_PAGE_BYTES, truncate=True)
    return response.text


@contextlib.contextmanager
def _drive_errors(what: str) -> Iterator[None]:
    """Core's transfer errors as one-line :class:`DriveError` s about ``what``."""
    try:
        yield
    except DriveError:
        raise
    except TransientError as exc:
        raise DriveError(f"{what}: {exc.reason}", retryable=True) from None
    except TransferError as exc:  # the deadline passed, more bytes than allowed, a redirect loop
        raise DriveError(f"{what}: {exc.reason}") from None


def _worth_retrying(reply: Reply) -> bool:
    """HTTP 429, 5xx, or a 403 whose Drive reason says "later" (rate limits, backend errors)."""
    if reply.status == 429 or reply.status >= 500:
        return True
    return reply.status == 403 and _drive_reason(reply)[0] in _RETRY_REASONS


def _looks_like_quota(text: str) -> bool:
    lowered = text.lower()
    return "quota" in lowered or "too many users" in lowered


def _drive_reason(reply: Reply) -> tuple[str, str]:
    """The reason and message of Drive's JSON error body (empty when there is none)."""
    try:
        body = reply.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        errors = error.get("errors") or [{}]
        return str(errors[0].get("reason", "") or error.get("status", "")), str(
            error.get("message", "") or errors[0].get("message", "")
        )
    except (ValueError, AttributeError, TypeError, IndexError, RecursionError, TransferError):
        return "", ""


def _http_error(response: Reply, what: str) -> DriveError:
    """A one-line error for an HTTP error answer, from Drive's JSON error body when there is one."""
    reason, message = _drive_reason(response)
    status = response.status
    detail = f"HTTP {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
    if reason in _QUOTA_REASONS:
        return DriveQuotaError(f"{what}: Google Drive quota exceeded ({detail}); the next sync retries")
    if reason in _RETRY_REASONS or status == 429 or status >= 500:
        return DriveError(f"{what}: {detail}", retryable=True)
    if status in (401, 403) and reason in ("keyInvalid", "forbidden", "") and not message:
        detail += " (check api_key and that the folder is shared)"
    if status == 404:
        detail += " (no such file or folder, or it is not shared)"
    return DriveError(f"{what}: {detail}")

