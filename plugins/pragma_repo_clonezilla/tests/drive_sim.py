"""A Google Drive simulator over loopback HTTP, faithful to what the clonezilla repository uses.

API v3 (``/drive/v3``): ``files.list`` checks the ``q`` expression and the
API key (header ``X-Goog-Api-Key`` or ``key=`` parameter), pages with
``pageToken`` (``page_size`` items per page, whatever ``pageSize`` asks);
``files/<id>?alt=media`` serves bytes with ``Range``. Web (no key):
``/embeddedfolderview?id=`` renders Google's ``flip-entry`` markup; ``/download?id=&export=download``
serves small files directly and gives large ones the "can't scan for viruses"
page whose form carries ``confirm`` and a one-time ``uuid``.

Faults, queued per file id: ``quota`` and ``rate`` (403 with Drive's JSON
error body), ``error500``, ``drop`` (close the connection halfway through
the body), ``corrupt`` (flip a byte), ``drip`` (one byte every
:data:`DRIP` seconds), ``oversize`` (4 KiB more than the listed size). A
hostile server's listing: ``listing``, when set, is called with the page token
asked for (``None`` for the first page) and its result is sent as the JSON
answer of every ``files.list``. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

FOLDER = "application/vnd.google-apps.folder"
#: Seconds between two bytes of a ``drip`` fault.
DRIP = 0.02
_Q = re.compile(r"'([A-Za-z0-9_-]+)' in parents and trashed=false")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (a deadline passed) is expected, not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class DriveSim:
    def __init__(self, *, api_key: str | None = "sim-key-0123456789", page_size: int = 2, large: int = 64 * 1024) -> None:
        self.api_key = api_key
        #: answer a wrong API key with a message that repeats it (raw, URL-encoded, JSON-quoted), as a careless server may
        self.echo_keys = False
        self.page_size = page_size
        self.large = large
        self.items: dict[str, dict] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self.uuids: set[str] = set()
        #: a hostile listing: page token asked for -> the JSON body sent instead of the real page
        self.listing: Callable[[str | None], object] | None = None
        self.root = self.add_folder("pragma-root", None)
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------ content

    def _new_id(self) -> str:
        return "1" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")[:32]

    def add_folder(self, name: str, parent: str | None) -> str:
        ident = self._new_id()
        self.items[ident] = {"id": ident, "name": name, "parent": parent, "mime": FOLDER, "modified": time.time()}
        return ident

    def add_file(self, name: str, parent: str, data: bytes, *, modified: float | None = None, mime: str = "application/octet-stream") -> str:
        ident = self._new_id()
        self.items[ident] = {"id": ident, "name": name, "parent": parent, "mime": mime, "data": data, "modified": modified or time.time()}
        return ident

    def update_file(self, ident: str, data: bytes, *, modified: float | None = None) -> None:
        self.items[ident].update(data=data, modified=modified or time.time())

    def remove(self, ident: str) -> None:
        del self.items[ident]

    def fail(self, ident: str, *kinds: str) -> None:
        self.faults.setdefault(ident, []).extend(kinds)

    def media_requests(self, ident: str | None = None) -> list[dict]:
        return [
            r for r in self.requests
            if (r["path"].startswith("/drive/v3/files/") or r["path"] == "/download")
            and (ident is None or ident in r["path"] or r["query"].get("id") == [ident])
        ]

    # ------------------------------------------------------------ server

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DriveSim:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                sim.requests.append({"path": parts.path, "query": query, "headers": dict(self.headers), "raw": self.path})
                if parts.path == "/drive/v3/files":
                    return self.api_list(query)
                if parts.path.startswith("/drive/v3/files/"):
                    return self.api_media(parts.path.rsplit("/", 1)[1], query)
                if parts.path == "/embeddedfolderview":
                    return self.folder_view(query)
                if parts.path == "/download":
                    return self.web_download(query)
                self.send_json(404, {"error": {"code": 404, "message": "Not Found"}})

            # ---- helpers
            def send_json(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def send_html(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def api_error(self, status: int, reason: str, message: str) -> None:
                domain = "usageLimits" if "Limit" in reason or "Quota" in reason else "global"
                self.send_json(status, {"error": {"errors": [{"domain": domain, "reason": reason, "message": message}], "code": status, "message": message}})

            def key_ok(self, query: dict) -> bool:
                given = self.headers.get("X-Goog-Api-Key") or (query.get("key") or [None])[0]
                if given != sim.api_key:
                    message = "API key not valid. Please pass a valid API key." if given else "The request is missing a valid API key."
                    if given and sim.echo_keys:
                        message += f" Got {given} ({quote(given, safe='')}, {quote_plus(given)}, {json.dumps(given)}, {self.path})"
                    self.api_error(400 if given else 403, "keyInvalid" if given else "forbidden", message)
                    return False
                return True

            def take_fault(self, ident: str) -> str | None:
                queue = sim.faults.get(ident)
                return queue.pop(0) if queue else None

            # ---- API
            def api_list(self, query: dict) -> None:
                if not self.key_ok(query):
                    return
                if sim.listing is not None:
                    return self.send_json(200, sim.listing((query.get("pageToken") or [None])[0]))
                match = _Q.fullmatch((query.get("q") or [""])[0])
                if not match:
                    return self.api_error(400, "invalid", "Invalid Value")
                fields = (query.get("fields") or [""])[0]
                for needed in ("nextPageToken", "id", "name", "mimeType", "modifiedTime", "md5Checksum", "size"):
                    if needed not in fields:
                        return self.api_error(400, "invalid", f"fields must ask for {needed}")
                children = sorted((i for i in sim.items.values() if i["parent"] == match.group(1)), key=lambda i: i["id"])
                start = 0
                token = (query.get("pageToken") or [None])[0]
                if token is not None:
                    if not token.startswith("tok-"):
                        return self.api_error(400, "invalid", "Invalid pageToken")
                    start = int(token[4:])
                page = children[start : start + sim.page_size]
                body: dict = {"files": [self.api_entry(i) for i in page]}
                if start + sim.page_size < len(children):
                    body["nextPageToken"] = f"tok-{start + sim.page_size}"
                self.send_json(200, body)

            def api_entry(self, item: dict) -> dict:
                entry = {
                    "id": item["id"],
                    "name": item["name"],
                    "mimeType": item["mime"],
                    "modifiedTime": datetime.fromtimestamp(item["modified"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                }
                if item["mime"] != FOLDER:
                    entry["md5Checksum"] = hashlib.md5(item["data"]).hexdigest()
                    entry["size"] = str(len(item["data"]))
                return entry

            def api_media(self, ident: str, query: dict) -> None:
                if not self.key_ok(query):
                    return
                if query.get("alt") != ["media"]:
                    return self.send_json(200, self.api_entry(sim.items[ident]))
                item = sim.items.get(ident)
                if item is None or item["mime"] == FOLDER:
                    return self.api_error(404, "notFound", f"File not found: {ident}.")
                self.serve_bytes(item)

            def serve_bytes(self, item: dict) -> None:
                fault = self.take_fault(item["id"])
                if fault == "quota":
                    return self.api_error(403, "downloadQuotaExceeded", "The download quota for this file has been exceeded.")
                if fault == "rate":
                    return self.api_error(403, "userRateLimitExceeded", "User Rate Limit Exceeded.")
                if fault == "error500":
                    return self.api_error(500, "backendError", "Backend Error")
                data: bytes = item["data"]
                if fault == "corrupt":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if fault == "oversize":
                    data += b"\xee" * 4096
                start, status = 0, 200
                header = self.headers.get("Range")
                if header:
                    m = re.fullmatch(r"bytes=(\d+)-", header)
                    if not m or int(m.group(1)) >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start, status = int(m.group(1)), 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "drip":
                    self.close_connection = True
                    try:
                        for index in range(len(body)):
                            time.sleep(DRIP)
                            self.wfile.write(body[index : index + 1])
                    except OSError:  # the client gave up
                        pass
                    return
                self.wfile.write(body)

            # ---- web (no key)
            def folder_view(self, query: dict) -> None:
                ident = (query.get("id") or [""])[0]
                folder = sim.items.get(ident)
                if folder is None or folder["mime"] != FOLDER:
                    return self.send_html(404, "<html><head><title>Google Drive - Page Not Found</title></head><body>Sorry</body></html>")
                rows = []
                for item in sorted((i for i in sim.items.values() if i["parent"] == ident), key=lambda i: i["name"]):
                    if item["mime"] == FOLDER:
                        href = f"https://drive.google.com/drive/folders/{item['id']}"
                    else:
                        href = f"https://drive.google.com/file/d/{item['id']}/view?usp=drive_web"
                    when = datetime.fromtimestamp(item["modified"])
                    stamp = when.strftime("%-I:%M %p") if when.date() == datetime.now().date() else when.strftime("%b %-d, %Y")
                    rows.append(
                        f'<div class="flip-entry" id="entry-{item["id"]}" tabindex="0" role="link">'
                        f'<div class="flip-entry-info"><a href="{href}" target="_blank">'
                        f'<div class="flip-entry-visual"><div class="flip-entry-visual-card"><img src="x.png"></div></div>'
                        f'<div class="flip-entry-title">{html.escape(item["name"])}</div></a></div>'
                        f'<div class="flip-entry-last-modified"><div>{stamp}</div></div></div>'
                    )
                page = (
                    "<!DOCTYPE html><html><head><meta charset=utf-8><title>" + html.escape(folder["name"]) + "</title></head>"
                    '<body><div class="flip-list" role="list">' + "".join(rows) + "</div></body></html>"
                )
                self.send_html(200, page)

            def web_download(self, query: dict) -> None:
                ident = (query.get("id") or [""])[0]
                item = sim.items.get(ident)
                if item is None or item["mime"] == FOLDER:
                    return self.send_html(404, "<html><head><title>Google Drive - 404</title></head></html>")
                if len(item["data"]) > sim.large:
                    uuid = (query.get("uuid") or [""])[0]
                    if query.get("confirm") != ["t"] or uuid not in sim.uuids:
                        uuid = secrets.token_hex(8)
                        sim.uuids.add(uuid)
                        return self.send_html(
                            200,
                            "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
                            "<p>Google Drive can't scan this file for viruses.</p>"
                            f'<form id="download-form" action="{sim.url}/download" method="get">'
                            '<input type="submit" id="uc-download-link" value="Download anyway"/>'
                            f'<input type="hidden" name="id" value="{ident}">'
                            '<input type="hidden" name="export" value="download">'
                            '<input type="hidden" name="confirm" value="t">'
                            f'<input type="hidden" name="uuid" value="{uuid}"></form></body></html>',
                        )
                fault = sim.faults.get(ident, [None])[0]
                if fault == "quota":
                    sim.faults[ident].pop(0)
                    return self.send_html(
                        200,
                        "<html><head><title>Google Drive - Quota exceeded</title></head><body>"
                        "Too many users have viewed or downloaded this file recently.</body></html>",
                    )
                self.serve_bytes(item)

        return Handler
