"""Helpers for the hostile-repository tests: cluster descriptions, tree snapshots, tripwires.

A *tripwire* is something a hostile repository points pragma at that must
never be touched: a loopback TCP or Unix listener that counts connections,
a FIFO whose writer end is opened (to unblock and expose the reader) if
someone waits on it too long.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MIB = 1 << 20

#: What a hung open of a FIFO is given before the tripwire releases it (only a bug makes anyone wait).
FIFO_PATIENCE = 30.0


def cluster_xml(
    directory: Path,
    name: str = "demo",
    *,
    source: str,
    fmt: str = "raw",
    file_type: str | None = None,
    parts: tuple[str, ...] = (),
    compute: tuple[str, str | None, tuple[str, ...]] | None = None,
    kernel: str | None = None,
    xml_name: str | None = None,
) -> Path:
    """Write a cluster description into ``directory`` and return its path.

    ``compute``: (source, file type, parts) of a separate compute image.
    """

    def section(role: str, src: str, kind: str | None, names: tuple[str, ...]) -> str:
        file_element = ""
        if kind is not None:
            file_element = f'<file type="{kind}">' + "".join(f"<part>{p}</part>" for p in names) + "</file>"
        os_extra = f"<kernel>{kernel}</kernel>" if kernel else ""
        return (
            f'<{role}><domain type="kvm"><name>{name}-{role}</name><memory unit="MiB">256</memory><vcpu>1</vcpu>'
            f'<os><type arch="x86_64">hvm</type>{os_extra}</os><devices><disk type="file" device="disk">'
            f'<driver name="qemu" type="{fmt}"/><source file="{src}"/>{file_element}'
            f'<target dev="vda" bus="virtio"/></disk></devices></domain></{role}>'
        )

    body = section("frontend", source, file_type, parts)
    if compute is not None:
        body += section("compute", *compute)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (xml_name or f"{name}.xml")
    path.write_text(
        f'<vc version="0.1"><virtualization engine="kvm" type="hvm" arch="x86_64"/>{body}</vc>\n'
    )
    return path


def snapshot(*roots: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``roots`` (not following links): kind and content digest, link target or mode."""
    seen: dict[str, tuple[str, str]] = {}
    for root in roots:
        for here, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(here, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    seen[path] = ("link", os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as fh:
                        seen[path] = ("file", hashlib.sha256(fh.read()).hexdigest() + f" {stat.S_IMODE(st.st_mode):o}")
                else:
                    seen[path] = ("other", f"{stat.S_IFMT(st.st_mode):o}")
    return seen


class Listener:
    """A loopback TCP server and a Unix socket server that accept and count every connection."""

    def __init__(self, directory: Path) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.unix_path = directory / "tripwire.sock"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(self.unix_path))
        self.unix.listen(16)
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in (self.tcp, self.unix)]
        for thread in self._threads:
            thread.start()

    def _serve(self, server: socket.socket) -> None:
        server.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()  # whoever connected gets EOF at once instead of waiting

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.tcp.close()
        self.unix.close()


@contextmanager
def listening(directory: Path) -> Iterator[Listener]:
    listener = Listener(directory)
    try:
        yield listener
    finally:
        listener.close()


def make_fifo(path: Path) -> Path:
    """A FIFO at ``path`` with a tripwire: a reader stuck on it is released after :data:`FIFO_PATIENCE` s."""
    os.mkfifo(path)

    def release() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while someone waits to read
        except OSError:
            return
        os.write(fd, b"a reader blocked on this FIFO\n")
        os.close(fd)

    timer = threading.Timer(FIFO_PATIENCE, release)
    timer.daemon = True
    timer.start()
    return path


def make_socket_file(path: Path) -> Path:
    """A bound Unix socket at ``path`` (left bound for the test's lifetime).

    Bound under a short directory first (a socket path is limited to 107
    bytes, which deep test directories exceed), then renamed into place.
    """
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="pragma-sock-", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(short / "s"))
    os.rename(short / "s", path)
    os.rmdir(short)
    _KEEP.append(sock)
    return path


_KEEP: list[socket.socket] = []


def one_line(text: str) -> str:
    """The single line of an error message (asserting there is exactly one)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qcow2_by_hand(
    path: Path,
    *,
    backing: bytes | None = None,
    backing_format: bytes | None = None,
    data_file: bytes | None = None,
    incompatible: int = 0,
    version: int = 3,
    size: int = 16 * MIB,
) -> Path:
    """A qcow2 header with exactly the references given, for payloads ``qemu-img create`` refuses to make."""

    def ext(kind: int, data: bytes) -> bytes:
        return struct.pack(">II", kind, len(data)) + data + bytes(-len(data) % 8)

    exts = b""
    if backing_format is not None:
        exts += ext(0xE2792ACA, backing_format)
    if data_file is not None:
        exts += ext(0x44415441, data_file)
    exts += struct.pack(">II", 0, 0)
    header_length = 104 if version == 3 else 72
    backing_offset = header_length + (len(exts) if version == 3 else 0) if backing is not None else 0
    fields = struct.pack(
        ">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing_offset, len(backing or b""), 16, size, 0, 0, 0, 0, 0, 0, 0
    )
    if version == 3:
        fields += struct.pack(">QQQII", incompatible, 0, 0, 4, header_length)
        blob = fields + exts + (backing or b"")
    else:
        blob = fields + (backing or b"")
    path.write_bytes(blob + bytes(65536 - len(blob)))
    return path
