"""The vcdb.txt catalogue: reading, validation and atomic writing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pragma_core import vcdb as vcdb_module
from pragma_core.errors import FormatError, RepositoryError
from pragma_core.vcdb import is_valid_name, read_vcdb, write_vcdb


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    root.mkdir()
    return root


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_lines_map_names_to_absolute_paths_in_file_order(repo: Path) -> None:
    db = write_text(
        repo / "vcdb.txt", "wa-dock,wa-dock/wa-dock.xml\nrocks-sge-ipop,rocks-sge-ipop/rocks-sge-ipop.xml\n"
    )
    entries = read_vcdb(db, repo)
    assert list(entries) == ["wa-dock", "rocks-sge-ipop"]
    assert entries["wa-dock"] == repo / "wa-dock" / "wa-dock.xml"
    assert all(p.is_absolute() for p in entries.values())


def test_blank_and_comment_lines_are_ignored_even_indented(repo: Path) -> None:
    db = write_text(
        repo / "vcdb.txt",
        "# the catalogue\n\n   \n   # indented comment\n\tdemo , demo/demo.xml \r\n\n#tail,x/y.xml\n",
    )
    assert read_vcdb(db, repo) == {"demo": repo / "demo" / "demo.xml"}


def test_utf8_byte_order_mark_is_accepted(repo: Path) -> None:
    db = repo / "vcdb.txt"
    db.write_bytes(b"\xef\xbb\xbfdemo,demo/demo.xml\n")
    assert list(read_vcdb(db, repo)) == ["demo"]


@pytest.mark.parametrize(
    "bad_line",
    ["justaname", "a,b/c.xml,extra", "demo,", ",demo/demo.xml", " , "],
)
def test_malformed_line_is_reported_with_file_and_line_number(repo: Path, bad_line: str) -> None:
    db = write_text(repo / "vcdb.txt", f"# header\ngood,good/good.xml\n\n{bad_line}\n")
    with pytest.raises(FormatError) as info:
        read_vcdb(db, repo)
    assert str(info.value).startswith(f"{db} line 4: expected '<name>,<path to cluster xml>'")
    assert info.value.line == 4


@pytest.mark.parametrize("name", [".hidden", "a/b", "with space", "ünï", "semi;colon"])
def test_invalid_image_name_is_a_format_error(repo: Path, name: str) -> None:
    db = write_text(repo / "vcdb.txt", f"{name},x/x.xml\n")
    with pytest.raises(FormatError, match=r"line 1: invalid image name"):
        read_vcdb(db, repo)


def test_names_allow_letters_digits_dot_dash_underscore_plus() -> None:
    assert is_valid_name("hku_biolinux-2.0+gpu")
    assert is_valid_name("0day")
    assert not is_valid_name("")


def test_duplicate_name_names_both_lines(repo: Path) -> None:
    db = write_text(repo / "vcdb.txt", "a,a/a.xml\nb,b/b.xml\n# c\na,other/a.xml\n")
    with pytest.raises(FormatError) as info:
        read_vcdb(db, repo)
    assert "image 'a' is listed twice (lines 1 and 4)" in str(info.value)


def test_path_escaping_the_repository_is_refused_with_its_line(repo: Path) -> None:
    db = write_text(repo / "vcdb.txt", "ok,ok/ok.xml\nevil,../../etc/passwd\n")
    with pytest.raises(FormatError) as info:
        read_vcdb(db, repo)
    message = str(info.value)
    assert message.startswith(f"{db} line 2:")
    assert "'../../etc/passwd' escapes the directory" in message


def test_absolute_path_inside_the_repository_is_accepted(repo: Path) -> None:
    target = repo / "hku_biolinux" / "hku_biolinux.xml"
    db = write_text(repo / "vcdb.txt", f"hku_biolinux,{target}\n")
    assert read_vcdb(db, repo) == {"hku_biolinux": target}


def test_absolute_path_outside_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "x.xml"
    db = write_text(repo / "vcdb.txt", f"x,{outside}\n")
    with pytest.raises(FormatError, match=r"line 1: .* escapes the directory"):
        read_vcdb(db, repo)


def test_missing_catalogue_is_a_repository_error_naming_it(repo: Path) -> None:
    missing = repo / "vcdb.txt"
    with pytest.raises(RepositoryError, match=f"^{missing}: image catalogue does not exist$"):
        read_vcdb(missing, repo)


def test_missing_catalogue_reads_as_empty_when_allowed(repo: Path) -> None:
    assert read_vcdb(repo / "vcdb.txt", repo, missing_ok=True) == {}


def test_non_utf8_catalogue_names_the_line(repo: Path) -> None:
    db = repo / "vcdb.txt"
    db.write_bytes(b"a,a/a.xml\nb,b/\xff.xml\n")
    with pytest.raises(FormatError, match=r"line 2: not UTF-8 text"):
        read_vcdb(db, repo)


def test_a_thousand_entries_are_read(repo: Path) -> None:
    db = write_text(repo / "vcdb.txt", "".join(f"vc{i:04d},vc{i:04d}/vc{i:04d}.xml\n" for i in range(1000)))
    entries = read_vcdb(db, repo)
    assert len(entries) == 1000
    assert entries["vc0999"] == repo / "vc0999" / "vc0999.xml"


def test_write_then_read_round_trips_sorted_and_relative(repo: Path) -> None:
    db = repo / "vcdb.txt"
    entries = {
        "zeta": repo / "zeta" / "zeta-local.xml",  # absolute inside: written relative
        "alpha": "alpha/alpha.xml",
        "mid": Path("mid/./sub/../mid.xml"),
    }
    write_vcdb(db, entries, repo)
    assert db.read_text() == "alpha,alpha/alpha.xml\nmid,mid/mid.xml\nzeta,zeta/zeta-local.xml\n"
    assert read_vcdb(db, repo) == {
        "alpha": repo / "alpha" / "alpha.xml",
        "mid": repo / "mid" / "mid.xml",
        "zeta": repo / "zeta" / "zeta-local.xml",
    }


def test_write_defaults_repository_dir_to_the_catalogue_directory(repo: Path) -> None:
    db = repo / "vcdb.txt"
    write_vcdb(db, {"a": repo / "a" / "a.xml"})
    assert db.read_text() == "a,a/a.xml\n"


def test_atomic_write_leaves_no_temporary_file(repo: Path) -> None:
    db = repo / "vcdb.txt"
    write_vcdb(db, {"a": "a/a.xml"}, repo)
    write_vcdb(db, {"b": "b/b.xml"}, repo)
    assert sorted(p.name for p in repo.iterdir()) == ["vcdb.txt"]
    assert db.read_text() == "b,b/b.xml\n"


def test_new_catalogue_is_world_readable_and_existing_mode_is_kept(repo: Path) -> None:
    db = repo / "vcdb.txt"
    write_vcdb(db, {"a": "a/a.xml"}, repo)
    assert stat.S_IMODE(db.stat().st_mode) == 0o644
    db.chmod(0o600)
    write_vcdb(db, {"b": "b/b.xml"}, repo)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_failed_rename_keeps_the_old_catalogue_and_removes_the_temporary(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = write_text(repo / "vcdb.txt", "old,old/old.xml\n")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vcdb_module.os, "replace", refuse)
    with pytest.raises(RepositoryError, match="cannot write image catalogue: No space left on device"):
        write_vcdb(db, {"new": "new/new.xml"}, repo)
    assert db.read_text() == "old,old/old.xml\n"
    assert sorted(p.name for p in repo.iterdir()) == ["vcdb.txt"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"evil": "../outside.xml"}, "escapes the directory"),
        ({"evil": "/etc/passwd"}, "escapes the directory"),
        ({".dot": "a/a.xml"}, "invalid image name"),
        ({"comma": "a,b.xml"}, "may not contain a comma"),
    ],
)
def test_write_refuses_entries_the_reader_would_refuse_and_changes_nothing(
    repo: Path, entries: dict[str, str], message: str
) -> None:
    db = write_text(repo / "vcdb.txt", "old,old/old.xml\n")
    with pytest.raises(FormatError, match=message):
        write_vcdb(db, entries, repo)
    assert db.read_text() == "old,old/old.xml\n"
    assert sorted(p.name for p in repo.iterdir()) == ["vcdb.txt"]


def test_write_into_missing_directory_is_a_repository_error(repo: Path) -> None:
    with pytest.raises(RepositoryError, match="cannot write image catalogue"):
        write_vcdb(repo / "absent" / "vcdb.txt", {"a": "a.xml"}, repo)


def test_importing_vcdb_loads_neither_attrs_nor_xml() -> None:
    code = "import sys, pragma_core.vcdb; print(sorted(m for m in ('attrs', 'xml', 'defusedxml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env={**os.environ})
    assert out.stdout.strip() == "[]"
