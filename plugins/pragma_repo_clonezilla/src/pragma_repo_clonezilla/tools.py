"""The external tools a restore runs (sfdisk, partclone, mkswap, qemu-img, cziso, ssh), each under a deadline.

A hostile image can make a tool spin for ever, and a NAS can stop reading
what ssh sends it. Every tool that one image's restore runs shares that
image's deadline (``restore_timeout``, a
:class:`~pragma_core.pluginkit.Deadline`): at the deadline the tool's whole
process group is killed (whatever cziso or ssh started with it too) and a
:class:`ToolError` names the setting. No tool is waited for without a bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from pragma_core import RepositoryError
from pragma_core.pluginkit import Deadline

#: The setting that bounds one image's restore, named in the error when it passes.
SETTING = "restore_timeout"


class ToolError(RepositoryError):
    """An external tool failed, is missing, or did not finish within ``restore_timeout``."""


def overdue(what: str, deadline: Deadline) -> ToolError:
    """The error of a tool stopped at ``deadline``."""
    return ToolError(f"{what}: not done within {SETTING} ({deadline.seconds:g} s); stopped")


def start(argv: Sequence[str], what: str, **options: Any) -> subprocess.Popen[bytes]:
    """``argv`` started in a process group of its own (so it can be stopped whole); :class:`ToolError` when missing."""
    try:
        return subprocess.Popen(list(argv), start_new_session=True, **options)
    except FileNotFoundError:
        raise ToolError(f"{what}: {argv[0]} is not installed") from None
    except OSError as exc:
        raise ToolError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process``'s group and reap it."""
    _kill_group(process)
    process.wait()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:  # reaped: its id may be another's by now
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(
    argv: Sequence[str],
    what: str,
    deadline: Deadline,
    *,
    input: bytes | None = None,  # noqa: A002 - subprocess's name
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to its end within ``deadline``; its output (stderr captured; stdout unless redirected).

    The exit status is the caller's to judge.
    """
    source = subprocess.PIPE if input is not None else (stdin if stdin is not None else subprocess.DEVNULL)
    process = start(argv, what, stdin=source, stdout=stdout,
                    stderr=subprocess.STDOUT if stdout is not subprocess.PIPE else subprocess.PIPE)
    try:
        out, err = process.communicate(input, timeout=max(deadline.remaining(), 0.001))
    except subprocess.TimeoutExpired:
        stop(process)
        raise overdue(what, deadline) from None
    except BaseException:
        stop(process)
        raise
    return subprocess.CompletedProcess(list(argv), process.returncode, out or b"", err or b"")


@contextmanager
def watched(process: subprocess.Popen[bytes], what: str, deadline: Deadline) -> Iterator[None]:
    """Stop ``process`` at ``deadline`` while the block feeds it or waits for it; then a :class:`ToolError`.

    For a tool fed through a pipe: a write to a stopped tool fails with a
    broken pipe, and its ``wait()`` returns, so the block always ends.
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
            raise overdue(what, deadline) from None
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        process.wait()
        raise overdue(what, deadline)
