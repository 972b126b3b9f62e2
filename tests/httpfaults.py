"""A loopback HTTP file server with ``Range`` support and fault injection, for tests.

Serves the files under a directory on ``127.0.0.1`` (a random port), the way
a plain web server or an S3/CloudFront origin would: ``ETag`` (strong, from
size and mtime), ``Last-Modified``, ``Accept-Ranges: bytes``, single
``Range`` requests (``206`` / ``416``), ``If-Range``, ``If-None-Match`` and
``If-Modified-Since`` (``304``). Every request is recorded.

Faults are attached to a URL path and apply to the next ``times`` requests
(``None``: all of them)::

    with FaultServer(tmp_path) as server:
        server.add_fault("/demo/a.img", Fault(drop_after=4096, times=2))
        url = server.url("demo/a.img")

``authorize`` (a callable taking a :class:`Request` and returning ``None`` to
allow or an HTTP status to refuse) lets a test check signed URLs.

Hostile servers, for the transfer-bounding tests: ``drip`` (one byte every
``drip`` seconds, the headers too with ``drip_headers``), ``no_length`` (no
``Content-Length``: the body ends when the connection closes), ``endless``
(after the file, zeros until the client hangs up), ``chunked`` (chunked
transfer encoding), ``trailing`` (bytes beyond the file), ``announce`` (a
``Content-Length`` of its own); ``drop_after`` cuts any of them short.

Usable outside pytest (the benchmark runs it in its own process): ``python
tests/httpfaults.py DIR`` serves ``DIR`` and prints the base URL.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Fault:
    """What goes wrong on a request for one path."""

    #: answer with this status and no body (404, 403, 500, 503...)
    status: int | None = None
    #: close the connection after this many body bytes
    drop_after: int | None = None
    #: answer every request with the whole file (200), ignoring Range
    ignore_range: bool = False
    #: seconds to wait before sending the headers
    delay: float = 0.0
    #: seconds to stall after ``drop_after``-less ``stall_after`` body bytes (then continue)
    stall: float = 0.0
    stall_after: int = 0
    #: announce a Content-Length this many bytes larger than the body, then close
    extra_length: int = 0
    #: redirect to this location (with ``redirect_status``)
    redirect: str | None = None
    redirect_status: int = 302
    #: no ETag, Last-Modified or Accept-Ranges headers
    no_validators: bool = False
    #: flip one bit of the body at this offset
    corrupt_at: int | None = None
    #: send the body one byte at a time, this many seconds apart
    drip: float = 0.0
    #: drip the status line and headers too
    drip_headers: bool = False
    #: no Content-Length: the body ends when the connection closes
    no_length: bool = False
    #: after the body, send zeros until the client hangs up (or the server stops)
    endless: bool = False
    #: send the body with chunked transfer encoding (no Content-Length, but framed)
    chunked: bool = False
    #: this many bytes beyond the file (counted in Content-Length unless no_length)
    trailing: int = 0
    #: announce this Content-Length whatever the body
    announce: int | None = None
    #: how many requests this applies to (None: every request)
    times: int | None = None

    @property
    def hostile(self) -> bool:
        """Whether the answer needs the hand-written path (:meth:`_Handler._hostile`)."""
        return bool(self.drip or self.drip_headers or self.no_length or self.endless or self.trailing
                    or self.chunked or self.announce is not None)


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str  # decoded, without the query string
    query: str  # raw query string
    headers: dict[str, str]
    target: str = ""  # the request-target exactly as sent (raw path and query)
    body: bytes = b""  # a POST's body
    status: int = 0
    sent: int = 0
    #: set when the server has finished answering (every body byte written or the connection dropped)
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class _State:
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def etag_of(path: Path) -> str:
    st = path.stat()
    return '"' + hashlib.sha1(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}".encode()).hexdigest()[:16] + '"'


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_POST(self) -> None:
        self._serve(head=False)

    def _take_fault(self, path: str) -> Fault | None:
        state = self.server.state
        with state.lock:
            faults = state.faults.get(path, [])
            for fault in faults:
                if fault.times is None:
                    return fault
                if fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _reply(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.record.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.record.sent = len(body)

    def _serve(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.record = Request(self.command, path, parts.query, dict(self.headers.items()), target=self.path)
        if self.command == "POST":
            self.record.body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
        with self.server.state.lock:
            self.server.state.requests.append(self.record)
        try:
            self._answer(path, head=head)
        finally:
            self.record.done.set()

    def _answer(self, path: str, *, head: bool) -> None:
        fault = self._take_fault(path)
        if fault is not None and fault.delay:
            self.server.stopping.wait(fault.delay)
        if self.server.authorize is not None:
            refused = self.server.authorize(self.record)
            if refused is not None:
                self._reply(refused, {"Content-Type": "text/plain"}, b"Access denied\n")
                return
        if fault is not None and fault.redirect is not None:
            self._reply(fault.redirect_status, {"Location": fault.redirect})
            return
        if fault is not None and fault.status is not None:
            self._reply(fault.status, {"Content-Type": "text/plain"}, f"error {fault.status}\n".encode())
            return
        file = self._resolve(path)
        if file is None:
            self._reply(404, {"Content-Type": "text/plain"}, b"Not Found\n")
            return
        st = file.stat()
        size = st.st_size
        etag = etag_of(file)
        modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        validators = fault is None or not fault.no_validators
        headers = {"Content-Type": "application/octet-stream"}
        if validators:
            headers.update({"ETag": etag, "Last-Modified": modified, "Accept-Ranges": "bytes"})
            if self._not_modified(etag, st.st_mtime):
                self.record.status = 304
                self.send_response(304)
                for key in ("ETag", "Last-Modified"):
                    self.send_header(key, headers[key])
                self.end_headers()
                return
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted and validators and not (fault is not None and fault.ignore_range):
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range in (etag, modified):
                parsed = self._parse_range(wanted, size)
                if parsed == "unsatisfiable":
                    self._reply(416, {"Content-Range": f"bytes */{size}"})
                    return
                if parsed is not None:
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        if fault is not None and fault.hostile:
            self._hostile(file, status, headers, start, length, fault, head=head)
            return
        announced = length + (fault.extra_length if fault is not None else 0)
        self.record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if head:
            return
        limit = length
        if fault is not None and fault.drop_after is not None:
            limit = min(limit, max(0, fault.drop_after))
        self._send_body(file, start, limit, fault)
        if limit < announced:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _hostile(self, file: Path, status: int, headers: dict[str, str], start: int, length: int, fault: Fault,
                 *, head: bool) -> None:
        """Answer as a hostile server would: drip, no length, endless, trailing bytes, a false length."""
        self.record.status = status
        self.close_connection = True
        with open(file, "rb") as handle:
            handle.seek(start)
            body = handle.read(length) + b"\xee" * fault.trailing
        if fault.announce is not None:
            headers["Content-Length"] = str(fault.announce)
        elif fault.chunked:
            headers["Transfer-Encoding"] = "chunked"
        elif not fault.no_length and not fault.endless:
            headers["Content-Length"] = str(len(body))
        if fault.drop_after is not None:
            body = body[: fault.drop_after]
        headers["Connection"] = "close"
        reason = self.responses.get(status, ("",))[0]
        head_bytes = (f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                      + "\r\n").encode("latin-1")
        try:
            self._write(head_bytes, fault.drip if fault.drip_headers else 0.0)
            if head:
                return
            self._write(self._framed(body, fault), fault.drip)
            while fault.endless and not self.server.stopping.is_set():
                self._write(self._framed(b"\0" * 65536, fault), fault.drip)
            if fault.chunked and fault.drop_after is None:
                self._write(b"0\r\n\r\n", fault.drip)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return
        finally:
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _framed(data: bytes, fault: Fault) -> bytes:
        """``data`` as one chunk of a chunked body when the fault asks for one."""
        if not fault.chunked or not data:
            return data
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def _write(self, data: bytes, drip: float) -> None:
        """Send ``data``: at once, or one byte every ``drip`` seconds (until the server stops)."""
        if not drip:
            self.wfile.write(data)
            self.record.sent += len(data)
            return
        for index in range(len(data)):
            if self.server.stopping.wait(drip):
                return
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()
            self.record.sent += 1

    def _send_body(self, file: Path, start: int, count: int, fault: Fault | None) -> None:
        with open(file, "rb") as handle:
            try:
                if fault is None or (fault.corrupt_at is None and not fault.stall):
                    sent = 0
                    while sent < count:
                        n = self.connection.sendfile(handle, start + sent, count - sent)
                        if n == 0:
                            break
                        sent += n
                        self.record.sent = sent
                    return
                handle.seek(start)
                pos = start
                sent = 0
                stalled = False
                while sent < count:
                    chunk = handle.read(min(65536, count - sent))
                    if not chunk:
                        break
                    if fault.corrupt_at is not None and pos <= fault.corrupt_at < pos + len(chunk):
                        buf = bytearray(chunk)
                        buf[fault.corrupt_at - pos] ^= 0x01
                        chunk = bytes(buf)
                    if fault.stall and not stalled and sent + len(chunk) > fault.stall_after:
                        head = fault.stall_after - sent
                        self.wfile.write(chunk[:head])
                        self.server.stopping.wait(fault.stall)
                        stalled = True
                        self.wfile.write(chunk[head:])
                    else:
                        self.wfile.write(chunk)
                    pos += len(chunk)
                    sent += len(chunk)
                    self.record.sent = sent
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _resolve(self, path: str) -> Path | None:
        root = self.server.root
        candidate = Path(os.path.normpath(os.path.join(root, path.lstrip("/"))))
        if candidate != root and root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return etag in [v.strip() for v in inm.split(",")] or inm.strip() == "*"
        ims = self.headers.get("If-Modified-Since")
        if ims is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= since
        return False

    @staticmethod
    def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
        match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
        if not match or (not match.group(1) and not match.group(2)):
            return None  # multiple or malformed ranges: serve the whole file
        if match.group(1):
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else size - 1
        else:
            suffix = int(match.group(2))
            start, end = max(0, size - suffix), size - 1
        if start >= size:
            return "unsatisfiable"
        return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, authorize: Callable[[Request], int | None] | None, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.root = Path(os.path.abspath(root))
        self.authorize = authorize
        self.state = _State()
        self.stopping = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        # clients hang up on purpose (a response closed before its end); that is not a server bug
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FaultServer:
    """Serve ``root`` on 127.0.0.1 (or another loopback ``host``) in a background thread (a context manager)."""

    def __init__(self, root: Path, *, authorize: Callable[[Request], int | None] | None = None,
                 tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self._server = _Server(Path(root), authorize, host)
        self.scheme = "http"
        if tls is not None:  # (certificate, key): serve https
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultserver", daemon=True
        )

    def __enter__(self) -> FaultServer:  # noqa: PYI034 - a final class
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, path: str = "") -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    @property
    def authorize(self) -> Callable[[Request], int | None] | None:
        return self._server.authorize

    @authorize.setter
    def authorize(self, check: Callable[[Request], int | None] | None) -> None:
        self._server.authorize = check

    def add_fault(self, path: str, fault: Fault) -> Fault:
        """Attach ``fault`` to requests for URL path ``path`` (``/a/b``)."""
        path = "/" + path.lstrip("/")
        with self._server.state.lock:
            self._server.state.faults.setdefault(path, []).append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._server.state.lock:
            self._server.state.faults.clear()

    @property
    def requests(self) -> list[Request]:
        with self._server.state.lock:
            return list(self._server.state.requests)

    def requests_for(self, path: str) -> list[Request]:
        path = "/" + path.lstrip("/")
        return [r for r in self.requests if r.path == path]

    def bytes_sent(self, path: str | None = None, *, settle: float = 10.0) -> int:
        """Body bytes written for ``path`` (or every path), once each answer is finished.

        A client can read the last byte before the server thread has recorded
        it, so this waits (up to ``settle`` seconds each) for answers in flight.
        """
        records = self.requests_for(path) if path else self.requests
        for record in records:
            record.done.wait(settle)
        return sum(r.sent for r in records)

    def reset_log(self) -> None:
        with self._server.state.lock:
            self._server.state.requests.clear()


def make_image(size: int, seed: int) -> bytes:
    """A disk-like image: about 90% zeros, 10% random bytes in runs of 4-64 KiB."""
    import random

    rng = random.Random(seed)
    image = bytearray(size)
    filled = 0
    while filled < size // 10:
        run = rng.randrange(4096, 65536)
        start = rng.randrange(0, max(1, size - run))
        image[start : start + run] = rng.randbytes(min(run, size - start))
        filled += run
    image[:16] = b"PRAGMA-TEST-DISK"
    return bytes(image)


@dataclass
class RemoteCluster:
    """What :func:`write_remote_repository` put on the server side."""

    name: str
    xml: str  # path of the XML relative to the repository root
    frontend: bytes  # the frontend image, split-gzipped into parts
    compute: bytes  # the compute image, served raw
    parts: list[str]  # paths of the parts relative to the repository root


def write_remote_repository(root: Path, *, size: int = 4 << 20, parts: int = 3,
                            checksums: bool = True, level: int = 1) -> list[RemoteCluster]:
    """Lay out a repository as a web server would hold it: a catalogue, two clusters.

    ``demo`` lives in ``clusters/demo/`` (a nested catalogue path: the XML and
    its parts must be fetched relative to it), with a split-gzip frontend
    (``parts`` parts, sha256 and size on each part and on the image) and a
    raw compute image. ``other`` is a second cluster that booting ``demo``
    must never fetch.
    """
    import gzip

    clusters = []
    lines = []
    for name, directory, seed in (("demo", "clusters/demo", 1), ("other", "other", 2)):
        folder = root / directory
        folder.mkdir(parents=True, exist_ok=True)
        frontend = make_image(size, seed)
        compute = make_image(size // 2, seed + 100)
        packed = gzip.compress(frontend, compresslevel=level, mtime=0)
        step = -(-len(packed) // parts)
        names = []
        part_xml = []
        for index in range(parts):
            chunk = packed[index * step : (index + 1) * step]
            part_name = f"{name}-frontend.img.gz.a{chr(ord('a') + index)}"
            (folder / part_name).write_bytes(chunk)
            names.append(f"{directory}/{part_name}")
            digest = f' sha256="{hashlib.sha256(chunk).hexdigest()}"' if checksums else ""
            part_xml.append(f'<part size="{len(chunk)}"{digest}>{part_name}</part>')
        (folder / f"{name}-compute.img").write_bytes(compute)
        image_sum = f' sha256="{hashlib.sha256(frontend).hexdigest()}"' if checksums else ""
        compute_sum = f' sha256="{hashlib.sha256(compute).hexdigest()}"' if checksums else ""
        xml = f"""<vc version="0.1">
  <virtualization engine="kvm" type="hvm" arch="x86_64"/>
  <frontend>
    <domain type="kvm">
      <name>{name}-frontend</name>
      <memory unit="MiB">512</memory>
      <vcpu>1</vcpu>
      <devices>
        <disk type="file" device="disk">
          <driver name="qemu" type="raw"/>
          <source file="{name}-frontend.img"{image_sum}/>
          <target dev="vda" bus="virtio"/>
          <file type="splited_gzip">{"".join(part_xml)}</file>
        </disk>
      </devices>
    </domain>
  </frontend>
  <compute>
    <domain type="kvm">
      <name>{name}-compute</name>
      <memory unit="MiB">512</memory>
      <vcpu>1</vcpu>
      <devices>
        <disk type="file" device="disk">
          <driver name="qemu" type="raw"/>
          <source file="{name}-compute.img"{compute_sum}/>
          <target dev="vda" bus="virtio"/>
        </disk>
      </devices>
    </domain>
  </compute>
</vc>
"""
        (folder / f"{name}.xml").write_text(xml)
        lines.append(f"{name},{directory}/{name}.xml\n")
        clusters.append(RemoteCluster(name=name, xml=f"{directory}/{name}.xml", frontend=frontend,
                                      compute=compute, parts=names))
    (root / "vcdb.txt").write_text("".join(lines))
    return clusters


def main(argv: list[str] | None = None) -> int:
    """``python tests/httpfaults.py DIR``: serve DIR until killed; print the URL on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tests/httpfaults.py DIR", file=sys.stderr)
        return 2
    server = FaultServer(Path(args[0]))
    server.start()
    print(server.base_url, flush=True)
    try:
        signal.pause()  # serve until a signal (Ctrl-C, or the benchmark's terminate)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
