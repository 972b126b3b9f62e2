"""Path safety: names from configuration, catalogues and XML never leave their directory."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .errors import FormatError


@functools.lru_cache(maxsize=64)
def _root(base: str) -> str:
    return os.path.normpath(os.path.abspath(base))


def safe_join(base: Path, name: str, *, what: str = "path", source: Path | None = None) -> Path:
    """``base / name`` made absolute; a :class:`FormatError` if it escapes ``base``.

    ``name`` may be absolute only when it lies inside ``base``. Symbolic
    links are not followed here: the check is lexical, so it also holds for
    files that do not exist yet. ``what`` and ``source`` make the message
    ("<source>: part '../x' escapes the directory <base>").
    """
    if not name or "\x00" in name:
        raise FormatError(f"empty or invalid {what} name {name!r}", path=source)
    root = _root(os.fspath(base))
    candidate = os.path.normpath(os.path.join(root, name))
    if candidate == root:
        raise FormatError(f"{what} {name!r} names the directory itself", path=source)
    prefix = root if root.endswith(os.sep) else root + os.sep
    if not candidate.startswith(prefix):
        raise FormatError(f"{what} {name!r} escapes the directory {root}", path=source)
    return Path(candidate)


def fsync_directory(directory: Path) -> None:
    """Make the renames and removals in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
