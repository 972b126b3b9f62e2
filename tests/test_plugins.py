"""Plugin loading: named backends by entry point, hook plugins in isolation, controls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Site
from distkit import make_distribution

AUDIT = """
    import json, os
    from pragma_core import hookimpl

    @hookimpl
    def pragma_stage_event(event):
        with open(os.environ["AUDIT_FILE"], "a") as fh:
            fh.write(json.dumps(event.as_dict()) + "\\n")
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    return tmp_path / "plugins-site"


def run(site: Site, plugin_path: Path, *args: str, **env: str):
    return site.subprocess(*args, env={"PYTHONPATH": f"{plugin_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env})


def test_hook_plugin_sees_every_stage_in_order(site: Site, plugin_path: Path, tmp_path: Path) -> None:
    make_distribution(plugin_path, "audit-plugin", "1.0", entry_points="[pragma.plugins]\nstage-audit = audit_plugin\n", modules={"audit_plugin": AUDIT})
    audit = tmp_path / "audit.jsonl"
    result = run(site, plugin_path, "boot", "demo", "2", f"key={site.key}", AUDIT_FILE=str(audit))
    assert result.code == 0, result.err
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["stage"], e["status"]) for e in events] == [
        (stage, status) for stage in ("resolve", "stage", "allocate", "render", "deploy") for status in ("start", "done")
    ]
    assert events[-1]["allocation"] == "vc1" and events[-1]["duration"] >= 0


def test_broken_hook_plugin_is_reported_in_one_line_and_skipped(site: Site, plugin_path: Path) -> None:
    make_distribution(plugin_path, "broken-plugin", "0.3", entry_points="[pragma.plugins]\nbroken = broken_plugin\n",
                      modules={"broken_plugin": "import does_not_exist\n"})
    result = run(site, plugin_path, "boot", "demo", "1", f"key={site.key}")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "broken" in line]
    assert len(warnings) == 1
    assert "plugin 'broken' (broken-plugin 0.3): failed: ModuleNotFoundError: No module named 'does_not_exist'" in warnings[0]
    listing = json.loads(run(site, plugin_path, "plugins", "--json").out)
    (entry,) = [p for p in listing if p["name"] == "broken"]
    assert entry["status"] == "failed" and "does_not_exist" in entry["reason"]


def test_misspelled_hook_is_caught_and_the_plugin_skipped(site: Site, plugin_path: Path) -> None:
    source = "from pragma_core import hookimpl\n\n@hookimpl\ndef pragma_stage_evnt(event):\n    pass\n"
    make_distribution(plugin_path, "typo-plugin", "1.0", entry_points="[pragma.plugins]\ntypo = typo_plugin\n", modules={"typo_plugin": source})
    listing = json.loads(run(site, plugin_path, "plugins", "--json").out)
    (entry,) = [p for p in listing if p["name"] == "typo"]
    assert entry["status"] == "failed" and "pragma_stage_evnt" in entry["reason"]


def test_incompatible_plugin_is_not_loaded_and_names_both_versions(site: Site, plugin_path: Path) -> None:
    make_distribution(plugin_path, "future-plugin", "2.0", requires="pragma-core>=9", entry_points="[pragma.plugins]\nfuture = future_plugin\n",
                      modules={"future_plugin": "raise RuntimeError('must not be imported')\n"})
    listing = json.loads(run(site, plugin_path, "plugins", "--json").out)
    (entry,) = [p for p in listing if p["name"] == "future"]
    assert entry["status"] == "incompatible"
    assert "requires pragma-core>=9" in entry["reason"] and "pragma-core 0.1.0 is installed" in entry["reason"]


def test_strict_mode_turns_a_plugin_failure_into_an_error(site: Site, plugin_path: Path) -> None:
    make_distribution(plugin_path, "broken-plugin", "0.3", entry_points="[pragma.plugins]\nbroken = broken_plugin\n",
                      modules={"broken_plugin": "raise ValueError('boom')\n"})
    result = run(site, plugin_path, "boot", "demo", "1", f"key={site.key}", PRAGMA_PLUGINS_STRICT="1")
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == "Error: plugin 'broken' (broken-plugin 0.3): failed: ValueError: boom"


def test_block_and_allow_lists_control_hook_plugins(site: Site, plugin_path: Path, tmp_path: Path) -> None:
    make_distribution(plugin_path, "audit-plugin", "1.0", entry_points="[pragma.plugins]\nstage-audit = audit_plugin\n", modules={"audit_plugin": AUDIT})
    audit = tmp_path / "audit.jsonl"
    blocked = run(site, plugin_path, "boot", "demo", "1", f"key={site.key}", AUDIT_FILE=str(audit), PRAGMA_PLUGINS_BLOCK="audit-plugin")
    assert blocked.code == 0 and not audit.exists()
    listing = json.loads(run(site, plugin_path, "plugins", "--json", PRAGMA_PLUGINS_ALLOW="other").out)
    (entry,) = [p for p in listing if p["name"] == "stage-audit"]
    assert entry["status"] == "disabled"


def test_observer_that_raises_does_not_stop_the_boot(site: Site, plugin_path: Path) -> None:
    source = "from pragma_core import hookimpl\n\n@hookimpl\ndef pragma_stage_event(event):\n    raise RuntimeError('observer bug')\n"
    make_distribution(plugin_path, "bad-observer", "1.0", entry_points="[pragma.plugins]\nbad = bad_observer\n", modules={"bad_observer": source})
    result = run(site, plugin_path, "boot", "demo", "1", f"key={site.key}")
    assert result.code == 0
    assert "plugin 'bad': pragma_stage_event failed: RuntimeError: observer bug" in result.err


def test_requested_driver_that_fails_to_load_is_an_error_with_the_cause(site: Site, plugin_path: Path) -> None:
    make_distribution(plugin_path, "pragma-badvm", "1.0", entry_points="[pragma.drivers]\nbadvm = badvm:Driver\n",
                      modules={"badvm": "import sdk_that_is_missing\n"})
    conf = site.etc / "site_conf.conf"
    conf.write_text(conf.read_text().replace('"fake"', '"badvm"'))
    result = run(site, plugin_path, "list", "cluster")
    assert result.code == 1
    assert result.err == "Error: driver 'badvm' (badvm:Driver) failed to load: ModuleNotFoundError: No module named 'sdk_that_is_missing'\n"
    # a broken driver the site did not ask for never breaks a run
    conf.write_text(conf.read_text().replace('"badvm"', '"fake"'))
    assert run(site, plugin_path, "list", "cluster").code == 0


def test_plugin_command_is_added_through_the_hook(site: Site, plugin_path: Path) -> None:
    source = """
        from pragma_core import hookimpl

        def hello(args, params, ctx):
            ctx.print("hello " + " ".join(args))
            return 0

        @hookimpl
        def pragma_cli_commands(register):
            register("hello world", hello, usage="[names]", help="say hello")
            register("list hellos", hello)
            register("boot", hello)
    """
    make_distribution(plugin_path, "hello-plugin", "1.0", entry_points="[pragma.plugins]\nhello = hello_plugin\n", modules={"hello_plugin": source})
    result = run(site, plugin_path, "hello", "world", "there")
    assert (result.code, result.out) == (0, "hello there\n")
    assert "hello world [names]" in run(site, plugin_path, "help").out
    assert run(site, plugin_path, "list", "hellos", "all").out == "hello all\n"  # under a built-in group
    assert "clashes with an existing command" in run(site, plugin_path, "help").err
