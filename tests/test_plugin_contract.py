"""The plugin contract: one scan with conflicts named, pluggy calling every hook, plugin commands like built-ins.

Plugins here are real distributions (``*.dist-info`` with ``entry_points.txt``)
in a directory put first on ``sys.path`` for the test.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pragma_core import hookimpl, plugins
from pragma_core.errors import PluginError, PragmaError
from pragma_core.events import StageEvent
from pragma_core.hooks import HookManager, Hooks
from pragma_core.model import BootRequest

from conftest import KEY, Site
from distkit import Installed

UNIMPORTABLE = "raise RuntimeError('must not be imported')\n"
FAKE = "from pragma_core.testing.fake import FakeDriver as Driver\n"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installed]:
    path = tmp_path / "site-packages"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    dists = Installed(path)
    yield dists
    dists.forget()
    from pragma_core import cli

    cli._plugin_cache = None


def use_driver(site: Site, name: str) -> None:
    conf = site.etc / "site_conf.conf"
    conf.write_text(conf.read_text().replace('"fake"', f'"{name}"'))
    (site.etc / f"{name}.conf").write_text((site.etc / "fake.conf").read_text())


def twins(installed: Installed, *, b: str = UNIMPORTABLE) -> None:
    installed.add("pragma-twin-a", "1.0", entry_points="[pragma.drivers]\ntwin = twin_a:Driver\n", modules={"twin_a": UNIMPORTABLE})
    installed.add("pragma-twin-b", "2.0", entry_points="[pragma.drivers]\ntwin = twin_b:Driver\n", modules={"twin_b": b})


TWIN_CONFLICT = (
    "'twin' is registered by 2 distributions: pragma-twin-a 1.0 (twin_a:Driver) and pragma-twin-b 2.0 (twin_b:Driver);"
    " uninstall one, or block one with PRAGMA_PLUGINS_BLOCK=<distribution>"
)


# --------------------------------------------------------------------------- one scan, conflicts named


def test_a_driver_name_two_distributions_register_shows_as_a_conflict_naming_both(site: Site, installed: Installed) -> None:
    twins(installed)
    report = [p.as_dict() for p in plugins.list_plugins() if p.name == "twin"]
    assert [(p["distribution"], p["version"], p["status"]) for p in report] == [
        ("pragma-twin-a", "1.0", "conflict"),
        ("pragma-twin-b", "2.0", "conflict"),
    ]
    assert {p["reason"] for p in report} == {TWIN_CONFLICT}
    table = [line for line in site.run("plugins").out.splitlines() if " twin " in line]
    assert len(table) == 2 and all(line.endswith("conflict: " + TWIN_CONFLICT) for line in table)


def test_a_name_one_distribution_registers_twice_is_reported_against_that_distribution_alone(
    site: Site, installed: Installed
) -> None:
    installed.add("pragma-twin-a", "1.0", entry_points="[pragma.drivers]\ntwin = twin_a:Driver\ntwin = twin_a:Other\n",
                  modules={"twin_a": UNIMPORTABLE})
    report = [p.as_dict() for p in plugins.list_plugins() if p.name == "twin"]
    assert [(p["distribution"], p["status"]) for p in report] == [("pragma-twin-a", "conflict")] * 2
    assert {p["reason"] for p in report} == {
        "'twin' is registered 2 times by pragma-twin-a 1.0: twin_a:Driver and twin_a:Other;"
        " its entry points are broken: reinstall pragma-twin-a, or report it to its authors"
    }


def test_a_line_one_distribution_repeats_word_for_word_is_no_conflict(site: Site, installed: Installed) -> None:
    installed.add("pragma-twin-a", "1.0", entry_points="[pragma.drivers]\ntwin = twin_a:Driver\ntwin = twin_a:Driver\n",
                  modules={"twin_a": UNIMPORTABLE})
    (info,) = [p for p in plugins.list_plugins() if p.name == "twin"]
    assert info.status != "conflict"


@pytest.mark.parametrize("command", [["boot", "demo", "1"], ["list", "cluster"]])
def test_using_a_conflicting_driver_name_is_one_error_naming_both_and_imports_neither(
    site: Site, installed: Installed, command: list[str]
) -> None:
    twins(installed)
    use_driver(site, "twin")
    result = site.run(*command, f"key={site.key}") if command[0] == "boot" else site.run(*command)
    assert (result.code, result.err) == (1, f"Error: driver {TWIN_CONFLICT}\n")


def test_blocking_one_of_two_distributions_settles_the_conflict(site: Site, installed: Installed, monkeypatch: pytest.MonkeyPatch) -> None:
    twins(installed, b=FAKE)
    use_driver(site, "twin")
    monkeypatch.setenv("PRAGMA_PLUGINS_BLOCK", "pragma-twin-a")
    assert site.run("list", "cluster").code == 0
    statuses = {(p.distribution, p.status) for p in plugins.list_plugins() if p.name == "twin"}
    assert statuses == {("pragma-twin-a", "blocked"), ("pragma-twin-b", "ok")}


def test_a_second_copy_of_one_distribution_is_not_a_conflict_the_first_on_sys_path_wins(
    installed: Installed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", [*sys.path, str(installed.path / "later")])
    installed.add("pragma-solo", "1.0", entry_points="[pragma.drivers]\nsolo = solo_new:Driver\n", modules={"solo_new": FAKE})
    installed.add("pragma-solo", "0.9", entry_points="[pragma.drivers]\nsolo = solo_old:Driver\n", modules={"solo_old": UNIMPORTABLE},
                  under="later")
    assert [ep.value for ep in plugins.claims(plugins.DRIVERS)["solo"]] == ["solo_new:Driver"]
    assert plugins.load_driver_class("solo").__name__ == "FakeDriver"


def test_an_unknown_driver_name_lists_the_installed_ones_and_a_conflicting_one_is_among_them(installed: Installed) -> None:
    twins(installed)
    with pytest.raises(PluginError, match=r"^unknown driver 'nope' \(installed: .*\btwin\b.*\)$"):
        plugins.load_driver_class("nope")


def test_a_distribution_whose_entry_points_cannot_be_read_is_skipped_with_a_warning(
    site: Site, installed: Installed, caplog: pytest.LogCaptureFixture
) -> None:
    installed.add("pragma-garbled", "1.0", entry_points="[pragma.drivers]\nthis line has no equals sign\n")
    assert site.run("list", "cluster").code == 0
    assert "distribution pragma-garbled: cannot read its entry points: " in caplog.text


def test_a_hook_plugin_name_two_distributions_register_loads_neither(installed: Installed, caplog: pytest.LogCaptureFixture) -> None:
    installed.add("obs-a", "1.0", entry_points="[pragma.plugins]\nobs = obs_a\n", modules={"obs_a": UNIMPORTABLE})
    installed.add("obs-b", "3.1", entry_points="[pragma.plugins]\nobs = obs_b\n", modules={"obs_b": UNIMPORTABLE})
    report: list[plugins.PluginInfo] = []
    pm = plugins.get_plugin_manager(strict=False, report=report)
    assert pm.get_plugin("obs") is None
    assert [(p.distribution, p.status) for p in report if p.name == "obs"] == [("obs-a", "conflict"), ("obs-b", "conflict")]
    warnings = [r.getMessage() for r in caplog.records if "'obs'" in r.getMessage()]
    assert warnings == [
        (
            "plugin 'obs' is registered by 2 distributions: obs-a 1.0 (obs_a) and obs-b 3.1 (obs_b);"
            " uninstall one, or block one with PRAGMA_PLUGINS_BLOCK=<distribution>"
        )
    ]
    with pytest.raises(PluginError, match=r"^plugin 'obs' is registered by 2 distributions: obs-a 1\.0 .* and obs-b 3\.1 "):
        plugins.get_plugin_manager(strict=True)


# --------------------------------------------------------------------------- pluggy calls the hooks

RECORDER = """
    import calls
    from pragma_core import hookimpl

    @hookimpl({opts})
    def pragma_stage_event(event):
        calls.CALLS.append({name!r})
        {extra}
"""

WRAPPER = """
    import calls
    from pragma_core import hookimpl

    @hookimpl(wrapper=True)
    def pragma_stage_event(event):
        calls.CALLS.append("wrap:before")
        {before}
        results = yield
        calls.CALLS.append("wrap:after")
        {after}
        return results
"""


def observers(installed: Installed, specs: dict[str, str]) -> None:
    """One distribution per entry: ``{entry-point name: module source}``, with the shared ``calls`` module."""
    (installed.path / "calls.py").write_text("CALLS = []\n")
    installed.modules.add("calls")
    for name, source in specs.items():
        module = name.replace("-", "_")
        installed.add(f"obs-{name}", "1.0", entry_points=f"[pragma.plugins]\n{name} = {module}\n", modules={module: source})


def recorder(name: str, opts: str = "", extra: str = "") -> str:
    return RECORDER.format(opts=opts, name=name, extra=extra)


def calls() -> list[str]:
    import calls as module

    return module.CALLS


def event() -> StageEvent:
    return StageEvent(stage="resolve", status="start", cluster="demo")


def test_hooks_run_in_pluggys_order_tryfirst_then_last_registered_first_then_trylast_inside_the_wrapper(installed: Installed) -> None:
    observers(installed, {
        "a-plain": recorder("a-plain"),
        "b-plain": recorder("b-plain"),
        "c-first": recorder("c-first", "tryfirst=True"),
        "d-last": recorder("d-last", "trylast=True"),
        "e-wrap": WRAPPER.format(before="", after=""),
    })
    Hooks(plugins.get_plugin_manager(strict=True)).stage_event(event())
    # registered in name order a, b, c, d, e; pluggy calls plain implementations last-registered first
    assert calls() == ["wrap:before", "c-first", "b-plain", "a-plain", "d-last", "wrap:after"]


def test_a_wrapper_sees_the_result_of_the_others_and_may_replace_it(installed: Installed, site: Site) -> None:
    installed.add("adjust-cpus", "1.0", entry_points="[pragma.plugins]\nadjust-cpus = adjust_cpus\n", modules={"adjust_cpus": """
        import attrs
        from pragma_core import hookimpl

        @hookimpl
        def pragma_adjust_request(request):
            return attrs.evolve(request, cpus=4)
    """})
    installed.add("adjust-wrap", "1.0", entry_points="[pragma.plugins]\nadjust-wrap = adjust_wrap\n", modules={"adjust_wrap": """
        import attrs
        from pragma_core import hookimpl

        SEEN = []

        @hookimpl(wrapper=True)
        def pragma_adjust_request(request):
            adjusted = yield
            SEEN.append(adjusted.cpus)
            return attrs.evolve(adjusted, cpus=adjusted.cpus * 2)
    """})
    from pragma_core.config import load_site_config

    hooks = Hooks(plugins.get_plugin_manager(strict=True))
    request = BootRequest(image="demo", cpus=1, key=KEY)
    assert hooks.adjust_request(request, load_site_config(site.etc)).cpus == 8
    import adjust_wrap

    assert adjust_wrap.SEEN == [4]


def test_a_raising_observer_is_logged_once_and_every_other_one_still_runs(installed: Installed, caplog: pytest.LogCaptureFixture) -> None:
    observers(installed, {
        "a-plain": recorder("a-plain"),
        "b-raises": recorder("b-raises", extra="raise RuntimeError('observer bug')"),
        "c-first-raises": recorder("c-first-raises", "tryfirst=True", extra="raise ValueError('early bug')"),
        "d-wrap-raises-after": WRAPPER.format(before="", after="raise KeyError('teardown bug')"),
        "e-wrap-raises-before": WRAPPER.format(before="raise OSError('setup bug')", after=""),
    })
    pm = plugins.get_plugin_manager(strict=True)
    pm.hook.pragma_stage_event(event=event())  # a plain pluggy call: isolation was put in place at registration
    assert calls() == ["wrap:before", "wrap:before", "c-first-raises", "b-raises", "a-plain", "wrap:after"]
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        "plugin 'b-raises': pragma_stage_event failed: RuntimeError: observer bug",
        "plugin 'c-first-raises': pragma_stage_event failed: ValueError: early bug",
        "plugin 'd-wrap-raises-after': pragma_stage_event failed: KeyError: 'teardown bug'",
        "plugin 'e-wrap-raises-before': pragma_stage_event failed: OSError: setup bug",
    ]


def test_a_hook_that_is_no_observer_still_raises_to_refuse_the_request(site: Site) -> None:
    class Refuses:
        @hookimpl
        def pragma_validate_request(self, request):
            raise PragmaError(f"{request.image} is not allowed here")

    from pragma_core.config import load_site_config

    hooks = Hooks(plugins.get_plugin_manager(extra=[("refuses", Refuses())], strict=True))
    with pytest.raises(PragmaError, match="^demo is not allowed here$"):
        hooks.validate_request(BootRequest(image="demo", cpus=1, key=KEY), load_site_config(site.etc))


def test_an_adjusted_request_that_is_not_a_request_is_a_plugin_error(site: Site) -> None:
    class Wrong:
        @hookimpl
        def pragma_adjust_request(self):
            return {"cpus": 3}

    from pragma_core.config import load_site_config

    hooks = Hooks(plugins.get_plugin_manager(extra=[("wrong", Wrong())], strict=True))
    with pytest.raises(PluginError, match="^pragma_adjust_request returned a dict, not a BootRequest$"):
        hooks.adjust_request(BootRequest(image="demo", cpus=1, key=KEY), load_site_config(site.etc))


def test_a_registered_observer_plugin_is_still_the_object_the_caller_registered() -> None:
    class Watcher:
        @hookimpl
        def pragma_stage_event(self, event):
            raise RuntimeError("ignored")

    watcher, pm = Watcher(), HookManager()
    name = pm.register(watcher)
    assert pm.is_registered(watcher) and pm.get_name(watcher) == name
    pm.unregister(watcher)
    assert not pm.is_registered(watcher) and pm.hook.pragma_stage_event.get_hookimpls() == []


def test_a_wrapper_that_is_no_generator_is_refused_like_pluggy_refuses_it(caplog: pytest.LogCaptureFixture) -> None:
    class NotAGenerator:
        @hookimpl(wrapper=True)
        def pragma_stage_event(self, event):
            return None

    with pytest.raises(PluginError, match="not a generator function"):
        plugins.get_plugin_manager(extra=[("bad-wrapper", NotAGenerator())], strict=True)


# --------------------------------------------------------------------------- plugin commands are commands

COMMANDS = """
    from pragma_core import hookimpl

    def foo(args, params, ctx):
        ctx.print("foo " + " ".join(args) + "".join(f" {k}={v}" for k, v in sorted(params.items())))
        return 0

    def described(args, params, ctx):
        ctx.print(f"bar {args} {params}")
        return 3

    @hookimpl
    def pragma_cli_commands(register):
        register("list foo", foo, usage="[names]", help="List the foos.")
        register("list bar", described, help="Described like a built-in.", args=[("name", True, "which bar")],
                 params=[("depth", "int", "how deep")], examples=[("list bar x", "bar x")])
        register("list", foo)
        register("list cluster all", foo)
        register("boot", foo)
"""


def test_a_plugin_command_under_a_built_in_group_is_listed_and_runs(site: Site, installed: Installed) -> None:
    installed.add("pragma-foo", "1.0", entry_points="[pragma.plugins]\nfoo = foo_commands\n", modules={"foo_commands": COMMANDS})
    result = site.run("list", "foo", "a", "b", "x=1")
    assert (result.code, result.out, result.err) == (0, "foo a b x=1\n", "")
    assert "list foo [names]" in site.run("help").out.splitlines()
    assert site.run("list", "cluster").out.startswith("FRONTEND")


def test_a_plugin_command_described_like_a_built_in_is_checked_like_one(site: Site, installed: Installed) -> None:
    installed.add("pragma-foo", "1.0", entry_points="[pragma.plugins]\nfoo = foo_commands\n", modules={"foo_commands": COMMANDS})
    assert (site.run("list", "bar", "x", "depth=2").code, site.run("list", "bar", "x").out) == (3, "bar ['x'] {}\n")
    assert site.run("list", "bar").err == "Error: missing argument {name} (usage: pragma list bar {name} [depth=int])\n"
    assert site.run("list", "bar", "x", "colour=red").code == 2
    assert "\t[depth=int]\n\t\thow deep\n" in site.run("list", "bar", "help").out


def test_a_plugin_command_that_hides_or_extends_a_built_in_one_is_refused(
    site: Site, installed: Installed, caplog: pytest.LogCaptureFixture
) -> None:
    installed.add("pragma-foo", "1.0", entry_points="[pragma.plugins]\nfoo = foo_commands\n", modules={"foo_commands": COMMANDS})
    listing = site.run("help").out.splitlines()
    refused = sorted(r.getMessage() for r in caplog.records if "clashes" in r.getMessage())
    assert refused == [
        "command 'boot' from foo_commands clashes with an existing command 'boot'; ignored",
        "command 'list cluster all' from foo_commands clashes with an existing command 'list cluster'; ignored",
        "command 'list' from foo_commands clashes with an existing command 'list cluster'; ignored",
    ]
    assert not any(line.startswith(("list cluster all", "list [")) or line == "list" for line in listing)
    assert site.run("list").code == 2  # still the list group's help, not a plugin command
