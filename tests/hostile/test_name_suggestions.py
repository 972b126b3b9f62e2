"""Names a driver or server lists, echoed in "unknown image" and "unknown parameter" messages.

A wrong image name is answered with the closest image and a list of those
that exist; those names come from a repository or a server (CloudStack
templates), so they are hostile: any number of them, any length, control
characters meant to forge lines or drive the terminal. Whatever they are,
the answer is one short ``Error:`` line, fast, with the names escaped.
"""

from __future__ import annotations

import time

import pytest
from conftest import Site, build_site
from oneline import assert_one_error_line

from pragma_core.printable import ERROR_LINE_LIMIT
from pragma_core.testing.fake import FakeDriver

#: A generous bound that only detects a pathological suggestion search.
SLOW = 20.0

LISTINGS = {
    "many-names": [f"image-{i:06d}" for i in range(200_000)],
    "long-names": ["d" * 50_000 + str(i) for i in range(2_000)],
    "newline-forges-a-line": ["demo\nError: forged", "demp"],
    "ansi-escape": ["\x1b[2J\x1b[Hdemo", "\x1b]0;title\x07"],
    "nul-and-bidi": ["de\x00mo", "\u202edemo"],
    "near-name-with-control": ["demo\r", "omed"],
    "empty-name": [""],
    "huge-near-names": ["demp" + "\n" * 1000] * 10_000,
}


@pytest.fixture
def site(tmp_path):
    return build_site(tmp_path)


@pytest.mark.parametrize("names", list(LISTINGS.values()), ids=list(LISTINGS))
def test_an_unknown_image_among_hostile_names_is_one_short_escaped_line(
    site: Site, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeDriver, "list_repository", lambda self, repository: names)
    started = time.monotonic()
    result = site.run("boot", "nothere", "1", f"key={site.key}")
    assert time.monotonic() - started < SLOW
    line = assert_one_error_line(result, "virtual image 'nothere' does not exist")
    assert len(line) <= ERROR_LINE_LIMIT
    assert "\x1b" not in line and "\x00" not in line and "\r" not in line and "\u202e" not in line


@pytest.mark.parametrize("word", ["x" * 5000, "memory-" * 1000, "m" * 3 + "e" * 5000, "memory\x1b[2J", "mem\n=", "\u202ememory"])
def test_an_unknown_hostile_parameter_is_one_short_escaped_line(site: Site, word: str) -> None:
    line = assert_one_error_line(site.run("boot", "demo", "1", f"key={site.key}", f"{word}=1"))
    assert len(line) <= ERROR_LINE_LIMIT and "\x1b" not in line
