"""Parsers for the two Google Drive web pages the no-API-key mode reads.

* The public folder's embedded view (``/embeddedfolderview?id=<folder>``):
  one ``<div class="flip-entry" id="entry-<id>">`` per item, holding an
  ``<a href>`` (``/drive/folders/<id>`` for a folder, ``/file/d/<id>/...``
  for a file), a ``flip-entry-title`` and a ``flip-entry-last-modified`` text.
* The "can't scan this file for viruses" page large downloads get: an HTML
  ``<form id="download-form" action=...>`` whose hidden inputs (``id``,
  ``export``, ``confirm``, ``uuid``...) must be sent back to get the bytes.

Both are read with :mod:`html.parser` (tolerant of unclosed tags and
attribute order), never with regular expressions over the raw page.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from html.parser import HTMLParser

from attrs import define, field

_FOLDER_HREF = re.compile(r"/drive/(?:u/\d+/)?folders/([A-Za-z0-9_-]+)")
_FILE_HREF = re.compile(r"/file/d/([A-Za-z0-9_-]+)")
_ID_PARAM = re.compile(r"[?&]id=([A-Za-z0-9_-]+)")
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DATE_MDY = re.compile(r"([A-Za-z]{3})[a-z]*\.?\s+(\d{1,2})(?:,\s*(\d{4}))?")
_DATE_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATE_SLASH = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{2,4})")
_TIME = re.compile(r"(\d{1,2}):(\d{2})\s*([AaPp][Mm])?")


@define
class FolderEntry:
    """One item of an embedded folder view."""

    id: str
    name: str = ""
    is_folder: bool = False
    modified_text: str = ""


@define
class DownloadForm:
    """The confirm form of a large download: where to send it and its fields."""

    action: str
    fields: dict[str, str] = field(factory=dict)


class _EntryParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.entries: list[FolderEntry] = []
        self._current: FolderEntry | None = None
        self._depth = 0
        self._capture: str | None = None
        self._capture_depth = 0
        self._text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        classes = attributes.get("class", "").split()
        if tag == "title":
            self._in_title = True
        if self._current is None:
            if tag == "div" and "flip-entry" in classes and attributes.get("id", "").startswith("entry-"):
                self._current = FolderEntry(id=attributes["id"][len("entry-") :])
                self._depth = 1
            return
        if tag not in _VOID:
            self._depth += 1
        if tag == "a" and "href" in attributes:
            href = attributes["href"]
            if match := _FOLDER_HREF.search(href):
                self._current.is_folder = True
                self._current.id = self._current.id or match.group(1)
            elif (match := _FILE_HREF.search(href)) or (match := _ID_PARAM.search(href)):
                self._current.id = self._current.id or match.group(1)
        if self._capture is None and tag == "div":
            if "flip-entry-title" in classes:
                self._capture, self._capture_depth, self._text = "title", self._depth, []
            elif "flip-entry-last-modified" in classes:
                self._capture, self._capture_depth, self._text = "modified", self._depth, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._current is None or tag in _VOID:
            return
        if self._capture is not None and self._depth == self._capture_depth:
            text = " ".join("".join(self._text).split())
            if self._capture == "title":
                self._current.name = text
            else:
                self._current.modified_text = text
            self._capture = None
        self._depth -= 1
        if self._depth == 0:
            if self._current.id and self._current.name:
                self.entries.append(self._current)
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._capture is not None:
            self._text.append(data)


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def parse_folder_view(html: str) -> list[FolderEntry]:
    """The entries of an embedded folder view page, in page order."""
    parser = _EntryParser()
    parser.feed(html)
    parser.close()
    return parser.entries


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[DownloadForm] = []
        self._form: DownloadForm | None = None
        self._is_download = False
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "form":
            self._form = DownloadForm(action=attributes.get("action", ""))
            self._is_download = attributes.get("id") == "download-form"
        elif tag == "input" and self._form is not None and attributes.get("name"):
            if attributes.get("type", "text").lower() in ("hidden", "text"):
                self._form.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "form" and self._form is not None:
            if self._is_download:
                self.forms.insert(0, self._form)
            else:
                self.forms.append(self._form)
            self._form = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def parse_download_form(html: str) -> tuple[DownloadForm | None, str]:
    """The confirm form of a download page (``None`` if it has none) and the page title."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    if parser._form is not None:  # an unclosed form at the end of the page
        parser.forms.append(parser._form)
    form = next((f for f in parser.forms if "id" in f.fields and ("confirm" in f.fields or "uuid" in f.fields)), None)
    return form, " ".join(parser.title.split())


def parse_modified(text: str, *, now: float | None = None) -> float | None:
    """Epoch seconds of a folder view's "last modified" text, ``None`` when unreadable.

    The view shows ``10:42 AM`` for today, ``Nov 3`` for this year and
    ``Nov 3, 2024`` before that (or numeric dates). Month names are matched in
    English by table, never through the C library's locale (legacy bug B37).
    Times are local time; a day-only date means the start of that day.
    """
    text = text.strip()
    if not text:
        return None
    today = datetime.fromtimestamp(time.time() if now is None else now)
    day: datetime | None = None
    if match := _DATE_ISO.search(text):
        day = _date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    elif match := _DATE_MDY.search(text):
        month = _MONTHS.get(match.group(1).lower())
        if month is not None:
            year = int(match.group(3)) if match.group(3) else today.year
            day = _date(year, month, int(match.group(2)))
            if day is not None and not match.group(3) and day > today + timedelta(days=1):
                day = _date(year - 1, month, int(match.group(2)))
    elif match := _DATE_SLASH.search(text):
        year = int(match.group(3))
        day = _date(year + 2000 if year < 100 else year, int(match.group(1)), int(match.group(2)))
    clock = _TIME.search(text)
    if day is None and clock is None:
        return None
    base = day or today.replace(hour=0, minute=0, second=0, microsecond=0)
    if clock is not None:
        hour, minute = int(clock.group(1)), int(clock.group(2))
        if clock.group(3):
            hour = hour % 12 + (12 if clock.group(3).lower() == "pm" else 0)
        if hour > 23 or minute > 59:
            return None
        base = base.replace(hour=hour, minute=minute)
    return base.timestamp()


def _date(year: int, month: int, day: int) -> datetime | None:
    try:
        return datetime(year, month, day)
    except ValueError:
        return None
