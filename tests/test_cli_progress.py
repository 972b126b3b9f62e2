"""Progress of long commands: stage lines and node counts on a terminal's stderr, nothing on a pipe or with --json.

The real ``pragma`` program runs on the fake driver with its standard error
on a pseudo-terminal (``pty.openpty``), as a user at a terminal sees it.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Site, build_site

#: A generous bound that only detects a hang.
HANG = 120
STAGES = ("resolve", "stage", "allocate", "render", "deploy")


def on_terminal(site: Site, *args: str) -> tuple[int, str, str]:
    """Run ``pragma --conf ETC ARGS`` with stderr on a pseudo-terminal: (exit status, stdout, terminal text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pragma_core.cli", "--conf", str(site.etc), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], HANG)
            assert ready, "pragma hung"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the program closed its end
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read().decode() if proc.stdout else ""
        code = proc.wait(HANG)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
    return code, out, b"".join(chunks).decode().replace("\r\n", "\n")


def stage_lines(*stages: str) -> list[str]:
    return [line for stage in stages for line in (f"{stage}: started", f"{stage}: done (#)")]


def normalised(text: str) -> list[str]:
    """The terminal's lines with durations replaced by ``#``."""
    return [re.sub(r"\(\d+\.\d s\)", "(#)", line) for line in text.splitlines()]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path)


def test_boot_on_a_terminal_shows_each_stage_and_nodes_started(site: Site) -> None:
    code, out, terminal = on_terminal(site, "boot", "demo", "5", f"key={site.key}")
    assert code == 0, terminal
    assert normalised(terminal) == [
        *stage_lines("resolve", "stage", "allocate", "render"),
        "deploy: started",
        "deploy: nodes started 1/3",
        "deploy: nodes started 2/3",
        "deploy: nodes started 3/3",
        "deploy: done (#)",
    ]
    assert out.startswith("Cluster vc1 booted: frontend vc1, 2 compute nodes (5 CPUs)\n"), "stdout is the result only"


def test_boot_wait_on_a_terminal_shows_nodes_ready_as_they_come(site: Site) -> None:
    code, out, terminal = on_terminal(site, "boot", "demo", "1", f"key={site.key}", "wait=30")
    assert code == 0, terminal
    lines = normalised(terminal)
    assert lines[lines.index("deploy: done (#)") + 1 :] == [
        "wait: started",
        "wait: nodes ready 0/2",
        "wait: nodes ready 1/2",
        "wait: nodes ready 2/2",
        "wait: done (#), nodes ready 2/2",
    ]
    assert [line.split() for line in out.splitlines()[-2:]] == [["vc1", "ready"], ["vc1-compute-0", "ready"]]


def test_a_failed_boot_on_a_terminal_shows_the_failed_stage_and_the_rollback_then_the_error(tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf="fail_deploy = True\n")
    code, out, terminal = on_terminal(site, "boot", "demo", "2", f"key={site.key}")
    assert code == 1 and out == ""
    assert normalised(terminal)[-4:] == [
        "deploy: failed (#)",
        "rollback: started",
        "rollback: done (#)",
        "Error: fake driver: deploy of vc1 failed (fail_deploy is set)",
    ]


def test_stage_on_a_terminal_shows_its_stages(site: Site) -> None:
    code, out, terminal = on_terminal(site, "stage", "demo")
    assert code == 0, terminal
    assert normalised(terminal) == stage_lines("resolve", "stage")
    assert out.startswith("frontend: ")


@pytest.mark.parametrize("command", [("boot", "demo", "2", "wait=30"), ("stage", "demo")])
def test_json_output_on_a_terminal_shows_no_progress(site: Site, command: tuple[str, ...]) -> None:
    args = (*command, f"key={site.key}") if command[0] == "boot" else command
    code, out, terminal = on_terminal(site, *args, "--json")
    assert code == 0, terminal
    assert terminal == ""
    assert out.startswith("{")


@pytest.mark.parametrize("command", [("boot", "demo", "2", "wait=30"), ("stage", "demo")])
def test_stderr_on_a_pipe_shows_no_progress(site: Site, command: tuple[str, ...]) -> None:
    args = (*command, f"key={site.key}") if command[0] == "boot" else command
    result = site.subprocess(*args)
    assert result.code == 0, result.err
    assert result.err == ""


def test_commands_that_are_not_long_print_nothing_on_a_terminal(site: Site) -> None:
    code, out, terminal = on_terminal(site, "list", "repository")
    assert (code, out, terminal) == (0, "VIRTUAL IMAGE\ndemo\n", "")


def test_boot_json_is_the_allocation(site: Site) -> None:
    import json

    result = site.run("boot", "demo", "5", f"key={site.key}", "wait=30", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["cluster"] == "vc1" and data["computes"] == ["vc1-compute-0", "vc1-compute-1"]
    assert data["ready"] == {"vc1": "ready", "vc1-compute-0": "ready", "vc1-compute-1": "ready"}


class Collector:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None, int | None]] = []

    def __call__(self, event) -> None:
        self.events.append((event.stage, event.status, event.done, event.total))


def test_the_library_reports_the_same_events_to_any_progress_reporter(site: Site) -> None:
    from pragma_core import Site as Library

    collector = Collector()
    with Library.open(site.etc, progress=collector) as lib:
        lib.boot("demo", 1, key=str(site.key), wait=5)
    assert [e for e in collector.events if e[1] in ("start", "done")] == [
        (stage, status, None, None) for stage in STAGES for status in ("start", "done")
    ] + [("wait", "start", None, None), ("wait", "done", 2, 2)]
    assert [e for e in collector.events if e[1] == "progress"] == [
        ("deploy", "progress", 1, 2), ("deploy", "progress", 2, 2),
        ("wait", "progress", 0, 2), ("wait", "progress", 1, 2), ("wait", "progress", 2, 2),
    ]


def test_hook_plugins_see_no_node_counts(site: Site) -> None:
    """Node counts go to the progress reporter only: plugins observe exactly the pipeline's stages."""
    from pragma_core import Site as Library
    from pragma_core import hookimpl
    from pragma_core.hooks import Hooks
    from pragma_core.plugins import get_plugin_manager

    seen: list[tuple[str, str]] = []

    class Observer:
        @hookimpl
        def pragma_stage_event(self, event):
            seen.append((event.stage, event.status))

    from pragma_core.config import load_site_config

    hooks = Hooks(get_plugin_manager(extra=[("observer", Observer())], strict=True))
    with Library(load_site_config(site.etc), hooks=hooks, progress=Collector()) as lib:
        lib.boot("demo", 1, key=str(site.key), wait=5)
    assert seen == [(stage, status) for stage in STAGES for status in ("start", "done")]


def test_a_driver_without_progress_boots_and_shows_stages_only(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from pragma_core import Site as Library
    from pragma_core.testing.fake import FakeDriver

    native = FakeDriver.deploy

    def deploy(self, allocation, cluster, vcout):  # a driver written before progress existed
        native(self, allocation, cluster, vcout)

    monkeypatch.setattr(FakeDriver, "deploy", deploy)
    collector = Collector()
    with Library.open(site.etc, progress=collector) as lib:
        lib.boot("demo", 1, key=str(site.key))
    assert [e for e in collector.events if e[0] == "deploy"] == [("deploy", "start", None, None), ("deploy", "done", None, None)]


@pytest.mark.parametrize("counts", [(3, 2), (-1, 2), (1, True), ("1", 2), (1.0, 2)])
def test_a_driver_s_miscount_is_ignored(counts: tuple) -> None:
    from pragma_core.events import node_progress

    collector = Collector()
    node_progress(collector, "deploy", "demo", "vc1")(*counts)
    assert collector.events == []


def test_a_reporter_that_raises_does_not_stop_the_boot(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    from pragma_core import Site as Library

    calls = []

    def broken(event) -> None:
        calls.append(event)
        raise RuntimeError("display gone")

    with Library.open(site.etc, progress=broken) as lib:
        booted = lib.boot("demo", 1, key=str(site.key))
        assert [c.name for c in lib.clusters()] == [booted.name]
    assert len(calls) == 1, "a reporter that failed is not called again"
    assert "progress reporter failed, no more progress shown: RuntimeError: display gone" in caplog.text


def test_terminal_lines_are_written_once_per_count_and_survive_a_closed_stream() -> None:
    from pragma_core.events import StageEvent
    from pragma_core.progress import TerminalProgress

    stream = io.StringIO()
    show = TerminalProgress(stream)
    for done in (0, 1, 1, 2):
        show(StageEvent(stage="deploy", status="progress", cluster="demo", done=done, total=2))
    assert stream.getvalue() == "deploy: nodes started 0/2\ndeploy: nodes started 1/2\ndeploy: nodes started 2/2\n"
    stream.close()
    show(StageEvent(stage="deploy", status="done", cluster="demo", duration=1.0))  # no exception
