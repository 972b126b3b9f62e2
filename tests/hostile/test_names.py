"""Names before effects: a name from the command line or a repository is checked first.

``vc-name`` (``boot``, ``stage``, ``shutdown``, ``clean``, ``list cluster``)
and every name a driver reads back from its state go through the one name
rule (:func:`pragma_core.vcdb.is_valid_name`) before anything touches the
filesystem: a refused name leaves the site exactly as it was -- no log file,
no directory, no state file -- and is one ``Error:`` line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Site, build_site
from oneline import assert_one_error_line

from pragma_core.errors import DriverError
from pragma_core.vcdb import MAX_NAME_LENGTH, is_valid_name

BAD_NAMES = {
    "parent": "../../evil",
    "one-up": "../evil",
    "dotdot": "..",
    "dot": ".",
    "hidden": ".hidden",
    "absolute": "{root}/outside/evil",
    "slash": "a/b",
    "backslash": "a\\b",
    "nul": "a\x00b",
    "newline-forged-error": "a\nError: forged",
    "carriage-return": "a\rb",
    "terminal-escape": "\x1b[2Jx",
    "bidi-override": "abc\u202e",
    "too-long": "x" * (MAX_NAME_LENGTH + 1),
    "very-long": "x" * 100_000,
    "space": "a b",
    "non-ascii": "caf\u00e9",
    "shell": "a;touch pwned",
    "glob": "*",
    "tilde": "~root",
    "colon": "a:b",
    "empty": "",
}

COMMANDS = {
    "boot": ("boot", "{name}", "1", "key={key}"),
    "stage": ("stage", "{name}"),
    "shutdown": ("shutdown", "{name}"),
    "clean": ("clean", "{name}"),
    "list-cluster": ("list", "cluster", "{name}"),
}


def tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, relative."""
    found = set()
    for directory, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            found.add(os.path.relpath(os.path.join(directory, entry), root))
    return found


def command_line(site: Site, command: str, name: str) -> list[str]:
    name = name.replace("{root}", str(site.root))
    return [part.format(name=name, key=site.key) if "{" in part else part for part in COMMANDS[command]]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_a_bad_name_is_refused_before_anything_is_made(site: Site, command: str, name: str) -> None:
    before = tree(site.root)
    result = site.run(*command_line(site, command, name))
    line = assert_one_error_line(result, "invalid vc-name")
    assert result.code == 2
    assert len(line) < 400, "a long name is shortened in the message"
    assert tree(site.root) == before, "nothing may be created for a refused name"


@pytest.mark.parametrize("name", ["../../evil", "a\nError: forged", "x" * 5000])
def test_the_real_program_refuses_a_bad_name_with_one_line(site: Site, name: str) -> None:
    before = tree(site.root)
    result = site.subprocess("boot", name, "1", f"key={site.key}")
    assert_one_error_line(result, "invalid vc-name")
    assert tree(site.root) == before


def test_every_allowed_character_and_the_longest_name_are_accepted(tmp_path: Path) -> None:
    names = ("a.b_c+d-e", "x" * MAX_NAME_LENGTH)
    site = build_site(tmp_path, names=names)
    for name in names:
        assert is_valid_name(name)
        result = site.run("boot", name, "1", f"key={site.key}")
        assert result.code == 0, result.err
    logs = sorted(p.name for p in (site.root / "log").iterdir())
    assert [n.rsplit("-", 2)[0] for n in logs] == sorted(names), "the default log file is <name>-<date>.log"


def test_an_explicit_logfile_never_creates_its_directory(site: Site) -> None:
    missing = site.root / "nodir" / "sub"
    result = site.run("boot", "demo", "1", f"key={site.key}", f"logfile={missing / 'boot.log'}")
    assert_one_error_line(result, f"directory {missing} does not exist")
    assert not (site.root / "nodir").exists()
    assert site.run("list", "cluster").out.splitlines()[1:] == [], "nothing booted"


def test_sync_with_a_logfile_in_a_missing_directory_is_refused(site: Site) -> None:
    result = site.run("sync", "repository", f"logfile={site.root / 'nodir' / 'sync.log'}")
    assert_one_error_line(result, "does not exist")
    assert not (site.root / "nodir").exists()


def test_a_nul_byte_in_an_explicit_logfile_is_one_error(site: Site) -> None:
    result = site.run("boot", "demo", "1", f"key={site.key}", f"logfile={site.root}/a\x00b.log")
    assert_one_error_line(result, "invalid file name")


@pytest.mark.parametrize("name", ["../../evil", "a/b", ".hidden", "x" * 200])
def test_the_fake_driver_refuses_a_bad_cluster_name_in_its_state(site: Site, name: str) -> None:
    state = site.root / "state" / "fake.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"serial": 1, "clusters": {name: {"public_ip": "192.0.2.10", "nodes": []}}}))
    before = tree(site.root)
    for args in (("list", "cluster"), ("clean", "vc1"), ("shutdown", "vc1")):
        assert_one_error_line(site.run(*args), str(state), "invalid cluster name")
    assert tree(site.root) - before <= {"state/fake.json.lock"}


def test_the_fake_driver_never_makes_a_vcout_directory_from_a_bad_name(site: Site) -> None:
    from pragma_core.testing.fake import FakeDriver

    driver = FakeDriver(None, site=site_config(site))
    with pytest.raises(DriverError, match="invalid cluster name"):
        driver.vcout_dir("../../evil")


def site_config(site: Site) -> object:
    from pragma_core.config import load_site_config

    return load_site_config(site.etc)


@pytest.mark.parametrize("name", ["../../evil", "a/b", "", "x" * 200])
def test_kvm_rocks_records_refuse_a_bad_cluster_name_before_any_file(tmp_path: Path, name: str) -> None:
    records = pytest.importorskip("pragma_kvm_rocks.records")
    store = records.RecordStore(tmp_path / "state")
    with pytest.raises(DriverError, match="invalid cluster name"):
        store.get(name)
    with pytest.raises(DriverError, match="invalid cluster name"):
        store.delete(name)
    record = records.ClusterRecord(cluster=name, image="demo", fqdn="x", vlan=2, public_ip="192.0.2.1", nodes=())
    with pytest.raises(DriverError, match="invalid cluster name"):
        store.put(record)
    assert tree(tmp_path) <= {"state", "state/clusters"}
    assert not list((tmp_path / "state").rglob("*.json"))


@pytest.mark.parametrize(
    ("cluster", "node", "fragment"),
    [("vc-a", "../../evil", "invalid node name"), ("vc-a", "a\nb", "invalid node name"), ("other", "vc-a", "names cluster")],
)
def test_kvm_rocks_record_with_a_bad_name_inside_is_one_error(tmp_path: Path, cluster: str, node: str, fragment: str) -> None:
    records = pytest.importorskip("pragma_kvm_rocks.records")
    store = records.RecordStore(tmp_path)
    store.directory.mkdir(parents=True)
    data = {
        "cluster": cluster, "image": "demo", "fqdn": "vc-a", "vlan": 2, "public_ip": "192.0.2.1", "owner_pid": 1,
        "nodes": [{"cluster": cluster, "name": node, "hostname": "h", "role": "frontend", "host": "localhost",
                   "cpus": 1, "memory_mib": 256}],
    }
    (store.directory / "vc-a.json").write_text(json.dumps(data))
    with pytest.raises(DriverError, match=fragment) as info:
        store.get("vc-a")
    assert "\n" not in str(info.value).replace("\\n", "")
    with pytest.raises(DriverError, match=fragment):
        list(store.all())


def test_a_plugin_command_declaring_vc_name_gets_the_same_check(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    import pluggy

    from pragma_core import cli, hookimpl, hookspecs

    made = site.root / "made"
    made.mkdir()

    def touch(args: list[str], params: dict[str, str], ctx: object) -> int:
        (made / args[0]).touch()
        return 0

    class Plugin:
        @hookimpl
        def pragma_cli_commands(self, register: object) -> None:
            register("touch name", touch, usage="{vc-name}", help="make a file named after a cluster")  # type: ignore[operator]

    manager = pluggy.PluginManager("pragma")
    manager.add_hookspecs(hookspecs)
    manager.register(Plugin())
    monkeypatch.setattr(cli, "_has_hook_plugins", lambda: True)
    from pragma_core.hooks import Hooks

    monkeypatch.setattr(cli.Context, "hooks", property(lambda self: Hooks(manager)))
    assert site.run("touch", "name", "vc-a").code == 0
    for name in ("../evil", "a\nb", "x" * 200):
        assert_one_error_line(site.run("touch", "name", name), "invalid vc-name")
    assert_one_error_line(site.run("touch", "name"), "missing argument {vc-name}")
    assert sorted(p.name for p in made.iterdir()) == ["vc-a"]
    assert not (site.root / "evil").exists()
