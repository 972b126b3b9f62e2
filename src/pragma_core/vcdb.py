"""The ``vcdb.txt`` catalogue: which cluster images a repository holds.

One image per line, ``<name>,<path to its cluster description XML>``::

    # comments and blank lines are ignored
    rocks-sge-ipop,rocks-sge-ipop/rocks-sge-ipop.xml
    hku_biolinux,/state/partition1/vm-images/hku_biolinux/hku_biolinux.xml

A relative path is relative to the repository directory; an absolute path is
accepted only when it lies inside that directory (the legacy tool accepted any
absolute path). The catalogue itself must be a regular file really inside the
repository directory (:func:`pragma_core.paths.open_inside`: a symbolic link
leading out, a FIFO or a device is refused) and at most
:data:`MAX_CATALOGUE_BYTES` long. Names are letters, digits and ``._-+``, not
starting with a dot, at most :data:`MAX_NAME_LENGTH` characters.

:func:`is_valid_name` is pragma's one rule for names that become part of a
file or domain name: image names here, and the ``vc-name`` a user types
(``pragma boot``, ``stage``, ``shutdown``, ``clean``, ``list cluster``),
cluster and node names a driver reads back from its state. It is checked
before the name touches the filesystem.

Errors are :class:`~pragma_core.errors.FormatError` naming the file and line
(``vcdb.txt line 7: ...``). A missing or unreadable catalogue is a
:class:`~pragma_core.errors.RepositoryError` naming it, unless the caller
passes ``missing_ok=True`` (the clonezilla repository, whose first sync starts
from an empty catalogue). Repositories that fetch the catalogue from a remote
side check for the file before reading it.

This module is read at start-up by ``pragma list repository``: keep its
imports to the standard library and :mod:`pragma_core.errors` / ``paths``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import FormatError, RepositoryError
from .paths import fsync_directory, open_inside, safe_join

__all__ = ["MAX_CATALOGUE_BYTES", "MAX_NAME_LENGTH", "NAME_PATTERN", "invalid_name", "is_valid_name", "read_vcdb", "write_vcdb"]

#: A catalogue larger than this is refused before it is read (real ones are a few KiB; a line is ~60 bytes).
MAX_CATALOGUE_BYTES = 4 * 1024 * 1024
#: What an image name may look like (the vc-name users type on ``pragma boot``).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9._+\-]*")
#: The longest valid name: names become parts of file names (``<name>-<date>.log``,
#: ``<node>.console.log``), which the filesystem limits to 255 bytes.
MAX_NAME_LENGTH = 128
#: How much of a rejected name an error message quotes.
_QUOTED = 60
#: The longest cluster description path, and path component, a catalogue line may give (Linux's limits).
_PATH_MAX = 4095
_COMPONENT_MAX = 255


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a valid name: a string of letters, digits and ``._-+``, no leading dot,
    at most :data:`MAX_NAME_LENGTH` characters."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and NAME_PATTERN.fullmatch(name) is not None


def invalid_name(name: object, what: str = "image name") -> str:
    """The message for a name that :func:`is_valid_name` refuses (a long name is shortened)."""
    if isinstance(name, str) and len(name) > _QUOTED:
        shown = f"{name[:_QUOTED]!r}... ({len(name)} characters)"
    else:
        shown = repr(name)
    return (
        f"invalid {what} {shown}: use letters, digits and '._-+', not starting with a dot,"
        f" at most {MAX_NAME_LENGTH} characters"
    )


def read_vcdb(path: Path, repository_dir: Path, *, missing_ok: bool = False) -> dict[str, Path]:
    """Read the catalogue at ``path``: image name -> absolute path of its cluster XML.

    The result is in file order. Blank lines and lines whose first non-blank
    character is ``#`` are skipped; fields are stripped of surrounding blanks.
    Raises :class:`FormatError` (file and line) for a line that is not exactly
    two non-empty comma-separated fields, an invalid name, a path that leaves
    ``repository_dir``, or a name given twice (both lines named). A missing
    file gives ``{}`` when ``missing_ok``, else :class:`RepositoryError`, as
    does a catalogue that is not a regular file inside ``repository_dir`` or
    is larger than :data:`MAX_CATALOGUE_BYTES`.
    """
    path = Path(path)
    try:
        with open_inside(repository_dir, path) as handle:
            data = handle.read(MAX_CATALOGUE_BYTES + 1)
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise RepositoryError(f"{path}: image catalogue does not exist") from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read image catalogue: {exc.strerror or exc}") from None
    if len(data) > MAX_CATALOGUE_BYTES:
        raise FormatError(f"image catalogue is larger than {MAX_CATALOGUE_BYTES} bytes", path=path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        raise FormatError("not UTF-8 text", path=path, line=bad_line) from None

    entries: dict[str, Path] = {}
    first_line: dict[str, int] = {}
    # split on "\n" only, so line numbers agree with editors (str.splitlines
    # also breaks on form feeds and Unicode separators).
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise FormatError(f"expected '<name>,<path to cluster xml>', got {line!r}", path=path, line=number)
        name, rel = fields[0].strip(), fields[1].strip()
        if not is_valid_name(name):
            raise FormatError(invalid_name(name), path=path, line=number)
        if name in first_line:
            raise FormatError(
                f"image {name!r} is listed twice (lines {first_line[name]} and {number})",
                path=path,
                line=number,
            )
        try:
            _check_length(rel)
            entries[name] = safe_join(repository_dir, rel, what="cluster description path")
        except FormatError as exc:
            raise FormatError(str(exc), path=path, line=number) from None
        first_line[name] = number
    return entries


def _check_length(rel: str) -> None:
    """A path the filesystem could not open is refused here, where its line is known."""
    encoded = rel.encode("utf-8", "surrogateescape")
    if len(encoded) > _PATH_MAX or any(len(part) > _COMPONENT_MAX for part in encoded.split(b"/")):
        raise FormatError(f"cluster description path is too long ({len(encoded)} bytes; at most {_COMPONENT_MAX} per name)")


def _relative_entry(name: str, value: Path | str, root: Path, target: Path) -> str:
    if not is_valid_name(name):
        raise FormatError(invalid_name(name), path=target)
    text = os.fspath(value)
    if any(c in text for c in ",\n\r"):
        raise FormatError(f"image {name!r}: path {text!r} may not contain a comma or line break", path=target)
    absolute = safe_join(root, text, what=f"image {name!r}: cluster description path", source=target)
    return Path(os.path.relpath(absolute, root)).as_posix()


def write_vcdb(
    path: Path,
    entries: Mapping[str, Path | str],
    repository_dir: Path | None = None,
) -> None:
    """Atomically replace the catalogue at ``path`` with ``entries``, sorted by name.

    Paths are written relative to ``repository_dir`` (default: the directory
    of ``path``); an absolute path must lie inside it. The text goes to a
    temporary file in the same directory, is flushed to disk and renamed over
    ``path``, so a reader sees either the old or the new catalogue, never a
    half-written one. No comment header is written: the legacy pragma_boot
    reader fails on comment lines and may read the same file. An existing
    file's permissions are kept; a new file is readable by everyone (``0644``).
    """
    path = Path(path)
    root = Path(repository_dir) if repository_dir is not None else path.parent
    lines = [f"{name},{_relative_entry(name, entries[name], root, path)}\n" for name in sorted(entries)]
    payload = "".join(lines).encode("utf-8")

    directory = path.parent
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    try:
        import tempfile

        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot write image catalogue: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise RepositoryError(f"{path}: cannot write image catalogue: {exc.strerror or exc}") from None
        raise
    fsync_directory(directory)
