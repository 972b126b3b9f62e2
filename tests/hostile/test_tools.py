"""An external tool run on hostile input ends by its deadline and cannot fill memory (``pragma_core.tools``).

A file from a repository can make qemu-img, debugfs or partclone spin for
ever or print without end. ``run_tool`` kills the tool's whole process group
at the deadline or once it has printed past its cap, and says so in one line.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pragma_core import DriverError, PragmaError
from pragma_core.pluginkit import Deadline, process_alive, run_tool, start_tool, watch_tool

#: Starts a child, prints both process ids, then sleeps: a tool that never ends, with a child of its own.
NEVER_ENDS = (
    "import os, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(os.getpid(), child.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def _gone(pids: list[int]) -> bool:
    until = time.monotonic() + 5
    while any(process_alive(p) for p in pids) and time.monotonic() < until:
        time.sleep(0.05)
    return not any(process_alive(p) for p in pids)


def test_a_tool_gives_its_status_output_and_errors_and_reads_input_larger_than_a_pipe() -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: more than a pipe holds, written while the output is read
    done = run_tool([sys.executable, "-c", "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d);"
                     " sys.stderr.write('note'); sys.exit(3)"], what="echo", deadline=Deadline(30), input=data)
    assert (done.returncode, done.stdout == data, done.stderr) == (3, True, b"note")


def test_a_tool_that_never_ends_is_killed_with_its_children_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(PragmaError) as info:
        run_tool([sys.executable, "-c", NEVER_ENDS], what="spinner on base.img", deadline=Deadline(1.0),
                 setting="tool_timeout")
    assert time.monotonic() - started < 10
    assert str(info.value) == "spinner on base.img: not done within tool_timeout (1 s); stopped"


def test_the_children_of_a_stopped_tool_are_stopped_too(tmp_path: Path) -> None:
    out = tmp_path / "pids"
    with out.open("wb") as fh, pytest.raises(PragmaError, match="not done within 1 s"):
        run_tool([sys.executable, "-c", NEVER_ENDS], what="spinner", deadline=Deadline(1.0), stdout=fh)
    pids = [int(p) for p in out.read_text().split()]
    assert len(pids) == 2 and _gone(pids)


def test_a_tool_that_prints_without_end_is_stopped_past_its_cap() -> None:
    started = time.monotonic()
    with pytest.raises(DriverError) as info:
        run_tool(["yes", "a long line from a hostile directory listing"], what="debugfs ls on base.img",
                 deadline=Deadline(60), max_output=1 << 20, error=DriverError)
    assert str(info.value) == "debugfs ls on base.img: printed more than 1048576 bytes; stopped"
    assert time.monotonic() - started < 30, "stopped at the cap, not at the deadline"


def test_a_missing_tool_is_one_error_of_the_callers_class() -> None:
    with pytest.raises(DriverError) as info:
        run_tool(["/nonexistent/debugfs", "-R", "ls"], what="reading base.img", deadline=Deadline(5),
                 error=DriverError)
    assert str(info.value) == "reading base.img: /nonexistent/debugfs is not installed"


def test_a_tool_fed_through_a_pipe_is_killed_at_the_deadline_and_the_feeding_ends() -> None:
    process = start_tool(["sleep", "600"], what="partclone", stdin=subprocess.PIPE)  # never reads
    assert process.stdin is not None
    started = time.monotonic()
    with pytest.raises(PragmaError) as info, watch_tool(process, what="partclone", deadline=Deadline(1.0),
                                                         setting="restore_timeout"):
        try:
            while True:  # blocks once the pipe is full, until the tool is killed
                process.stdin.write(b"\0" * 65536)
        except BrokenPipeError:
            pass
        process.wait()
    assert str(info.value) == "partclone: not done within restore_timeout (1 s); stopped"
    assert process.returncode is not None and time.monotonic() - started < 10


def test_a_tool_that_ends_in_time_is_left_alone_by_its_watch() -> None:
    process = start_tool(["true"], what="true")
    with watch_tool(process, what="true", deadline=Deadline(30)):
        process.wait()
    assert process.returncode == 0


def test_process_alive_counts_a_running_process_but_not_a_zombie_or_a_gone_one() -> None:
    process = subprocess.Popen(["sleep", "600"])
    try:
        assert process_alive(process.pid)
    finally:
        process.kill()
    until = time.monotonic() + 5
    while process_alive(process.pid) and time.monotonic() < until:  # dead, not reaped yet: a zombie
        time.sleep(0.01)
    assert Path(f"/proc/{process.pid}").exists() and not process_alive(process.pid)
    process.wait()
    assert not process_alive(process.pid)
