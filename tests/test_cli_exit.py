"""The ``pragma`` console script's exit: quick (no interpreter teardown), yet nothing of the command lost."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

from conftest import Site, build_site


def _console(tmp_path: Path, before: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``before`` then the console script with ``args`` in a child interpreter."""
    code = (
        "import sys\n"
        f"sys.argv = ['pragma', *{list(args)!r}]\n"
        f"{before}\n"
        "from pragma_core.cli import console\n"
        "console()\n"
        "print('console returned', file=sys.stderr)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_the_pragma_script_runs_the_console_entry_point() -> None:
    scripts = {ep.name: ep.value for ep in distribution("pragma-core").entry_points if ep.group == "console_scripts"}
    assert scripts["pragma"] == "pragma_core.cli:console"


def test_console_exits_with_the_commands_status_and_never_returns(tmp_path: Path) -> None:
    ok = _console(tmp_path, "", "--version")
    assert (ok.returncode, ok.stdout.startswith("pragma "), "console returned" in ok.stderr) == (0, True, False)
    bad = _console(tmp_path, "", "--conf", str(tmp_path / "nowhere"), "list", "repository")
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error: configuration file not found")
    assert "console returned" not in bad.stderr


def test_console_runs_the_exit_handlers_before_it_ends(tmp_path: Path) -> None:
    mark = tmp_path / "handler-ran"
    before = f"import atexit, pathlib\natexit.register(pathlib.Path({str(mark)!r}).write_text, 'yes')"
    proc = _console(tmp_path, before, "--version")
    assert proc.returncode == 0
    assert mark.read_text() == "yes", "a plugin's atexit handler (temporary files, log files) must still run"


def test_console_waits_for_a_non_daemon_thread_still_running(tmp_path: Path) -> None:
    mark = tmp_path / "thread-done"
    before = (
        "import threading, time, pathlib\n"
        f"threading.Thread(target=lambda: (time.sleep(0.5), pathlib.Path({str(mark)!r}).write_text('done'))).start()"
    )
    proc = _console(tmp_path, before, "--version")
    assert proc.returncode == 0
    assert mark.read_text() == "done", "the quick exit would have killed the thread"


def test_a_large_listing_reaches_a_pipe_whole(tmp_path: Path) -> None:
    names = tuple(f"image{i:04d}" for i in range(1500))
    site: Site = build_site(tmp_path, names=names)
    result = site.subprocess("list", "repository", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == sorted(names)


def test_a_boot_log_file_is_complete_when_the_process_has_ended(tmp_path: Path) -> None:
    site = build_site(tmp_path)
    logfile = tmp_path / "boot.log"
    result = site.subprocess("boot", "demo", "2", f"key={site.key}", f"logfile={logfile}")
    assert result.code == 0, result.err
    text = logfile.read_text()
    assert text.endswith("\n")
    assert "stage deploy done in" in text
