"""pragma_core.entrypoints reads what importlib.metadata reads, from the same files, without importing it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from distkit import make_distribution

from pragma_core import entrypoints
from pragma_core.plugins import GROUPS

PROBE = ["pragma.drivers", "pragma.repositories", "pragma.plugins", "console_scripts", "pytest11"]


def _stdlib_view(groups: list[str], path: list[str]) -> list[tuple[str, str, str, str, str]]:
    seen: set[str] = set()
    rows = []
    for dist in metadata.distributions(path=path):
        name = dist.metadata["Name"]
        if entrypoints.normalize(name) in seen:
            continue
        seen.add(entrypoints.normalize(name))
        rows.extend((ep.group, ep.name, ep.value, name, dist.version) for ep in dist.entry_points if ep.group in groups)
    return sorted(rows)


def _our_view(groups: list[str], path: list[str]) -> list[tuple[str, str, str, str, str]]:
    return sorted((ep.group, ep.name, ep.value, ep.dist.name, ep.dist.version) for ep in entrypoints.entry_points(groups, path))


def test_the_installed_entry_points_are_exactly_what_importlib_metadata_finds() -> None:
    path = list(sys.path)
    ours = _our_view(PROBE, path)
    assert ours == _stdlib_view(PROBE, path)
    assert any(row[:2] == ("pragma.repositories", "local") for row in ours)


def test_requirements_and_loaded_objects_match_importlib_metadata() -> None:
    by_name = {(ep.group, ep.name): ep for group in GROUPS for ep in metadata.entry_points(group=group)}
    for ep in entrypoints.entry_points(GROUPS):
        theirs = by_name[(ep.group, ep.name)]
        assert ep.attr == theirs.attr and ep.module == theirs.module
        assert ep.dist.requires == tuple(metadata.requires(theirs.dist.name) or ())
        assert ep.load() is theirs.load()


def test_dist_info_egg_info_and_a_later_copy_on_the_path(tmp_path: Path) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    make_distribution(first, "pragma-one", "1.2", entry_points="[pragma.drivers]\none = one_mod:Driver [extra]\n", modules={})
    make_distribution(later, "pragma-one", "0.9", entry_points="[pragma.drivers]\none = old_mod:Driver\n", modules={})
    egg = later / "pragma_egg.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: pragma-egg\nVersion: 3.0\n")
    (egg / "entry_points.txt").write_text("# comment\n[pragma.plugins]\negg = egg_mod\n\n[other]\nx = y:z\n")
    (egg / "requires.txt").write_text("pragma-core>=0.1\n\n[docs]\nsphinx\n")
    path = [str(first), str(later)]
    assert _our_view(PROBE + ["other"], path) == _stdlib_view(PROBE + ["other"], path)
    eps = {ep.name: ep for ep in entrypoints.entry_points(GROUPS, path)}
    assert eps["one"].attr == "Driver" and eps["one"].dist.version == "1.2"
    assert eps["egg"].attr is None and eps["egg"].dist.requires == ("pragma-core>=0.1",)


def test_a_distribution_without_a_wanted_group_has_no_metadata_read(tmp_path: Path) -> None:
    make_distribution(tmp_path, "unrelated", "1.0", entry_points="[console_scripts]\nu = u:main\n", modules={})
    (tmp_path / "unrelated-1.0.dist-info" / "METADATA").chmod(0)
    (tmp_path / "unrelated-1.0.dist-info" / "METADATA").write_bytes(b"\xff not read")
    assert entrypoints.entry_points(GROUPS, [str(tmp_path)]) == []


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[pragma.drivers]\n" + b"x" * (entrypoints.MAX_METADATA_BYTES + 1)])
def test_an_unreadable_or_oversized_entry_points_file_is_skipped_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    make_distribution(tmp_path, "pragma-bad", "1.0", entry_points="[pragma.drivers]\nbad = b:D\n", modules={})
    make_distribution(tmp_path, "pragma-good", "1.0", entry_points="[pragma.drivers]\ngood = g:D\n", modules={})
    (tmp_path / "pragma_bad-1.0.dist-info" / "entry_points.txt").write_bytes(content)
    assert [ep.name for ep in entrypoints.entry_points(GROUPS, [str(tmp_path)])] == ["good"]
    assert "distribution pragma_bad-1.0.dist-info: cannot read its entry points" in caplog.text


def test_a_pragma_command_does_not_import_importlib_metadata_or_email(tmp_path: Path) -> None:
    code = ("import sys; from pragma_core import plugins; plugins.load_repository_class('local'); "
            "print(sorted(m for m in sys.modules if m.startswith(('importlib.metadata', 'email', 'zipfile'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


VERSIONS = ["0.1", "0.1.0", "0.1.5", "0.2", "0.2.0", "1.0", "1.4.5", "1.4.9", "1.5", "2", "10.0.1", "0.2.0.dev1", "0.1.0+local"]
SPECIFIERS = [">=0.1,<0.2", ">=0.1", "<0.2", "==0.1", "==0.1.0", "!=0.1", "~=0.1", "~=1.4.5", "<=1.4.9", ">1.4.5",
              ">=0.1, <0.2", "==0.*", "~=1", ">=1.0rc1", "", ">= 0.1 , < 1.0", "===0.1.0", "<1.5,!=1.4.9"]


@pytest.mark.parametrize("specifier", SPECIFIERS)
def test_the_core_version_check_agrees_with_packaging(specifier: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from pragma_core.plugins import _allows

    for version in VERSIONS:
        try:
            expected = SpecifierSet(specifier).contains(version, prereleases=True)
        except InvalidSpecifier:
            expected = True
        assert _allows(specifier, version) is expected, (specifier, version)


@pytest.mark.parametrize(("requirement", "specifier"), [
    ("pragma-core>=0.1,<0.2", ">=0.1,<0.2"), ("pragma_core (>=0.1)", ">=0.1"), ("Pragma.Core[x]>=0.1", ">=0.1"),
    ("pragma-core", ""), ("pragma-core-extras>=1", None), ("requests>=2", None), ("libvirt-python", None),
    ("pragma-core>=9; extra == 'docs'", None), ("pragma-core>=9; python_version >= '3'", ">=9"),
])
def test_only_a_pragma_core_requirement_that_applies_is_checked(requirement: str, specifier: str | None) -> None:
    from pragma_core.plugins import _core_specifier

    assert _core_specifier(requirement) == specifier


def test_checking_a_plugin_that_requires_pragma_core_imports_no_packaging() -> None:
    code = ("import sys; from pragma_core import plugins; "
            "[plugins.incompatibility(ep) for g in plugins.GROUPS for eps in plugins.claims(g).values() for ep in eps]; "
            "print(sorted(m for m in sys.modules if m.startswith('packaging')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_older_copy_later_on_the_path_never_brings_back_a_plugin_the_first_copy_dropped(tmp_path: Path) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    make_distribution(first, "pragma-one", "2.0", entry_points="[console_scripts]\none = one_mod:main\n", modules={})
    make_distribution(later, "pragma-one", "1.0", entry_points="[pragma.plugins]\nold = old_mod\n", modules={})
    (make_distribution(tmp_path / "bare", "pragma-two", "2.0", entry_points="", modules={})
     / "pragma_two-2.0.dist-info" / "entry_points.txt").unlink()  # a version with no entry points at all
    make_distribution(tmp_path / "older", "pragma-two", "1.0", entry_points="[pragma.plugins]\ngone = gone_mod\n",
                      modules={})
    path = [str(first), str(later), str(tmp_path / "bare"), str(tmp_path / "older")]
    assert _our_view(PROBE, path) == _stdlib_view(PROBE, path)
    assert [ep.name for ep in entrypoints.entry_points(["pragma.plugins"], path)] == []
