"""The external tools a restore runs (sfdisk, partclone, mkswap, qemu-img, cziso, ssh), each under a deadline.

A hostile image can make a tool spin for ever or print without end, and a
NAS can stop reading what ssh sends it. Every tool that one image's restore
runs shares that image's deadline (``restore_timeout``) and goes through
core's bounded runner (:func:`pragma_core.pluginkit.run_tool`): at the
deadline the tool's whole process group is killed (whatever cziso or ssh
started with it too), and the failure is a :class:`ToolError` naming the
setting. This module binds that runner to this plugin's error and setting.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from pragma_core import RepositoryError
from pragma_core.pluginkit import Deadline, overdue_error, run_tool, start_tool, watch_tool

#: The setting that bounds one image's restore, named in the error when it passes.
SETTING = "restore_timeout"


class ToolError(RepositoryError):
    """An external tool failed, is missing, or did not finish within ``restore_timeout``."""


def overdue(what: str, deadline: Deadline) -> ToolError:
    """The error of ``what``, stopped at ``deadline``."""
    error = overdue_error(what, deadline, SETTING, ToolError)
    assert isinstance(error, ToolError)
    return error


def start(argv: Sequence[str], what: str, **popen: Any) -> subprocess.Popen[bytes]:
    """``argv`` started in a process group of its own; a :class:`ToolError` when it cannot be."""
    return start_tool(argv, what=what, error=ToolError, **popen)


def run(
    argv: Sequence[str],
    what: str,
    deadline: Deadline,
    *,
    input: bytes | None = None,  # noqa: A002 - subprocess's name
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to its end within ``deadline`` (its exit status is the caller's to judge).

    With ``stdout`` redirected (a log file), stderr goes there too.
    """
    stderr = subprocess.PIPE if stdout is subprocess.PIPE else subprocess.STDOUT
    return run_tool(argv, what=what, deadline=deadline, setting=SETTING, error=ToolError, input=input, stdin=stdin,
                    stdout=stdout, stderr=stderr)


@contextmanager
def watched(process: subprocess.Popen[bytes], what: str, deadline: Deadline) -> Iterator[None]:
    """Kill ``process``'s group at ``deadline`` while the block feeds or waits for it; then a :class:`ToolError`."""
    with watch_tool(process, what=what, deadline=deadline, setting=SETTING, error=ToolError):
        yield
