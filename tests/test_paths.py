"""pragma_core.paths: directories only this user can use."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_private_directory_is_made_0700_and_an_unsafe_one_is_refused(tmp_path: Path) -> None:
    import os

    from pragma_core.paths import UnsafeFileError, private_directory

    made = private_directory(tmp_path / "mine")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    assert private_directory(made) == made, "an existing safe one is used as it is"
    (tmp_path / "target").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(UnsafeFileError, match="is not a directory"):
        private_directory(tmp_path / "link")
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    with pytest.raises(UnsafeFileError, match="can be written by others"):
        private_directory(tmp_path / "open")
    if os.geteuid() == 0:
        (tmp_path / "theirs").mkdir(mode=0o700)
        os.chown(tmp_path / "theirs", 65534, 65534)
        with pytest.raises(UnsafeFileError, match="belongs to user 65534"):
            private_directory(tmp_path / "theirs")


def test_an_unshared_directory_may_be_read_by_all_but_written_by_its_owner_alone(tmp_path: Path) -> None:
    import os

    from pragma_core.paths import UnsafeFileError, unshared_directory

    (tmp_path / "repo").mkdir(mode=0o755)
    os.chmod(tmp_path / "repo", 0o755)
    assert unshared_directory(tmp_path / "repo") == tmp_path / "repo"
    for mode in (0o775, 0o757, 0o1777):
        os.chmod(tmp_path / "repo", mode)
        with pytest.raises(UnsafeFileError) as info:
            unshared_directory(tmp_path / "repo")
        assert str(info.value) == (f"{tmp_path / 'repo'}: can be written by others (mode {mode:o}): they could put a link"
                                   f" in place of what pragma writes there; chmod go-w {tmp_path / 'repo'}")
    os.chmod(tmp_path / "repo", 0o755)
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    with pytest.raises(UnsafeFileError, match="is not a directory"):
        unshared_directory(tmp_path / "link")
    if os.geteuid() == 0:
        os.chown(tmp_path / "repo", 65534, 65534)
        with pytest.raises(UnsafeFileError, match="belongs to user 65534"):
            unshared_directory(tmp_path / "repo")
