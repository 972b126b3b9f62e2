"""External tools, run bounded: a deadline for the whole run, a cap on what they print, a process group of their own.

pragma runs tools (qemu-img, sfdisk, debugfs, e2image, partclone, ssh...) on
files a repository sent, as root. Such a file can make a tool spin for ever
or print without end, so a plugin runs them through :func:`run_tool`:

* the tool starts in a process group of its own and, at the ``deadline``
  (a :class:`~pragma_core.http.Deadline`), the whole group is killed --
  whatever the tool started dies with it -- and the call raises;
* what it prints is read as it comes, at most ``max_output`` bytes of
  stdout and of stderr (:data:`MAX_TOOL_OUTPUT` by default); a tool printing
  more is killed the same way, so memory stays bounded too;
* a missing tool, a deadline passed and too much output are each one
  ``error`` (the caller's :class:`~pragma_core.errors.PragmaError` class) in
  one line naming ``what``, and the ``setting`` that bounds the time if any.

The exit status is the caller's to judge. A tool fed through a pipe over a
long run (partclone) is started with :func:`start_tool` and fed inside
:func:`watch_tool`, which kills it at the deadline the same way.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from .errors import PragmaError

if TYPE_CHECKING:
    from .http import Deadline

__all__ = ["MAX_TOOL_OUTPUT", "overdue_error", "run_tool", "start_tool", "stop_tool", "watch_tool"]

#: What a tool may print on each of stdout and stderr before it is stopped, bytes.
MAX_TOOL_OUTPUT = 16 * 1024 * 1024

_READ = 65536


def overdue_error(what: str, deadline: Deadline, setting: str | None = None,
            error: type[PragmaError] = PragmaError) -> PragmaError:
    """The error of ``what``, stopped at ``deadline``."""
    bound = f"{setting} ({deadline.seconds:g} s)" if setting else f"{deadline.seconds:g} s"
    return error(f"{what}: not done within {bound}; stopped")


def start_tool(argv: Sequence[str], *, what: str, error: type[PragmaError] = PragmaError,
               **popen: Any) -> subprocess.Popen[bytes]:
    """``argv`` started in a process group of its own (``popen``: :class:`subprocess.Popen`'s arguments)."""
    try:
        return subprocess.Popen(list(argv), start_new_session=True, **popen)
    except FileNotFoundError:
        raise error(f"{what}: {argv[0]} is not installed") from None
    except OSError as exc:
        raise error(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None


def stop_tool(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process``'s group (the tool and what it started), reap the tool and close its pipes."""
    _kill_group(process)
    process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:  # a write still buffered to a pipe nobody reads
                pass


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:  # reaped: its id may be another process's by now
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _TooMuch(Exception):
    pass


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    deadline: Deadline,
    setting: str | None = None,
    error: type[PragmaError] = PragmaError,
    input: bytes | None = None,  # noqa: A002 - subprocess's name
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] = subprocess.PIPE,
    stderr: int | IO[Any] = subprocess.PIPE,
    max_output: int = MAX_TOOL_OUTPUT,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to its end within ``deadline``; its exit status, stdout (unless redirected) and stderr.

    ``input`` is written to its stdin (else ``stdin``, else nothing);
    ``stdout`` and ``stderr`` may go elsewhere (a log file, ``STDOUT``);
    ``env`` replaces the environment. Raises
    ``error`` when the tool is missing, when ``deadline`` passes (the tool
    and its group are killed) or when it prints more than ``max_output``
    bytes on stdout or stderr.
    """
    source = subprocess.PIPE if input is not None else (stdin if stdin is not None else subprocess.DEVNULL)
    process = start_tool(argv, what=what, error=error, stdin=source, stdout=stdout, stderr=stderr,
                         pass_fds=tuple(pass_fds), env=env)
    try:
        out, err = _communicate(process, input, deadline, max_output)
        status = process.wait(timeout=max(deadline.remaining(), 0.001))
    except subprocess.TimeoutExpired:
        stop_tool(process)
        raise overdue_error(what, deadline, setting, error) from None
    except _TooMuch:
        stop_tool(process)
        raise error(f"{what}: printed more than {max_output} bytes; stopped") from None
    except BaseException:
        stop_tool(process)
        raise
    return subprocess.CompletedProcess(list(argv), status, out, err)


def _communicate(process: subprocess.Popen[bytes], data: bytes | None, deadline: Deadline,
                 cap: int) -> tuple[bytes, bytes]:
    """Write ``data`` and read stdout and stderr (each at most ``cap`` bytes) until both close."""
    buffers: dict[int, bytearray] = {}
    pending = memoryview(data or b"")
    with selectors.DefaultSelector() as selector:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                buffers[pipe.fileno()] = bytearray()
                selector.register(pipe.fileno(), selectors.EVENT_READ)
        writer, writer_fd = process.stdin, -1
        if writer is not None:
            if pending:
                writer_fd = writer.fileno()
                os.set_blocking(writer_fd, False)
                selector.register(writer_fd, selectors.EVENT_WRITE)
            else:
                writer.close()
        while selector.get_map():
            remaining = deadline.remaining()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(process.args, deadline.seconds)
            for key, _events in selector.select(remaining):
                fd = key.fd
                if fd == writer_fd:
                    try:
                        pending = pending[os.write(fd, pending[:_READ]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(fd)
                        assert writer is not None
                        writer.close()
                    continue
                chunk = os.read(fd, _READ)
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffers[fd] += chunk
                if len(buffers[fd]) > cap:
                    raise _TooMuch
    out = bytes(buffers[process.stdout.fileno()]) if process.stdout is not None else b""
    err = bytes(buffers[process.stderr.fileno()]) if process.stderr is not None else b""
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return out, err


@contextmanager
def watch_tool(process: subprocess.Popen[bytes], *, what: str, deadline: Deadline, setting: str | None = None,
            error: type[PragmaError] = PragmaError) -> Iterator[None]:
    """Kill ``process``'s group at ``deadline`` while the block feeds it or waits for it; then ``error``.

    A write to a killed tool fails with a broken pipe and its ``wait()``
    returns, so the block always ends.
    """
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        _kill_group(process)

    timer = threading.Timer(max(deadline.remaining(), 0.0), expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except BaseException:
        if fired.is_set():
            process.wait()
            raise overdue_error(what, deadline, setting, error) from None
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        process.wait()
        raise overdue_error(what, deadline, setting, error)
