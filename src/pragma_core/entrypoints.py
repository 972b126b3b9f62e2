"""The installed distributions' entry points of some groups, read straight from their metadata files.

What :func:`importlib.metadata.entry_points` gives, for the few groups a
command needs, at a fraction of the cost: importing :mod:`importlib.metadata`
alone (it brings :mod:`email`, :mod:`zipfile`, :mod:`csv`) costs more than
starting the interpreter, and reading each distribution's ``Name`` through it
parses the whole ``METADATA`` as an e-mail message. Every ``pragma`` command
pays the scan, so it is done here with plain file reads:

* every directory on :data:`sys.path` is listed once; its ``*.dist-info``
  and ``*.egg-info`` directories are the installed distributions, in
  ``sys.path`` order (the first copy of a distribution is the one Python
  imports; later copies are ignored, as :mod:`importlib.metadata` would);
* a distribution's ``entry_points.txt`` is read only if it exists, and its
  metadata headers (name, version, requirements) only if that file mentions
  one of the wanted groups.

Zipped eggs on ``sys.path`` are not searched; nothing installs pragma
plugins that way.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

MAX_METADATA_BYTES = 1 << 20
"""Bytes read from one ``entry_points.txt``, ``METADATA`` or ``requires.txt``: a bound on a broken install."""

_SUFFIXES = (".dist-info", ".egg-info")


class Distribution:
    """One installed distribution that registers entry points of a wanted group."""

    __slots__ = ("_requires", "name", "path", "version")

    def __init__(self, path: str, name: str, version: str) -> None:
        self.path = path
        self.name = name
        self.version = version
        self._requires: tuple[str, ...] | None = None

    @property
    def requires(self) -> tuple[str, ...]:
        """Its declared requirements (``Requires-Dist``, or an egg's ``requires.txt``), read on first use."""
        if self._requires is None:
            self._requires = _requirements(self.path)
        return self._requires

    def __repr__(self) -> str:
        return f"<Distribution {self.name} {self.version} at {self.path}>"


class EntryPoint:
    """One ``name = module:attr`` line of a distribution's ``entry_points.txt``."""

    __slots__ = ("dist", "group", "name", "value")

    def __init__(self, name: str, value: str, group: str, dist: Distribution) -> None:
        self.name = name
        self.value = value
        self.group = group
        self.dist = dist

    @property
    def module(self) -> str:
        """The module part of the value."""
        return self.value.split(":", 1)[0].strip()

    @property
    def attr(self) -> str | None:
        """The attribute path after ``:`` (extras in ``[...]`` left out), or ``None`` for a module."""
        if ":" not in self.value:
            return None
        return self.value.split(":", 1)[1].split("[", 1)[0].strip() or None

    def load(self) -> object:
        """Import the module and return the object the value names."""
        target: object = importlib.import_module(self.module)
        for part in (self.attr or "").split(".") if self.attr else ():
            target = getattr(target, part)
        return target

    def __repr__(self) -> str:
        return f"<EntryPoint {self.group}:{self.name} = {self.value} ({self.dist.name} {self.dist.version})>"


def normalize(name: str) -> str:
    """A distribution or entry-point name compared as packaging does: case, ``-``, ``_`` and ``.`` alike."""
    return name.lower().replace("_", "-").replace(".", "-")


def entry_points(groups: Iterable[str], path: Iterable[str] | None = None) -> list[EntryPoint]:
    """Every entry point of ``groups`` that the distributions on ``path`` (default :data:`sys.path`) register.

    In ``sys.path`` order, each distribution once (its first copy). A
    distribution whose files cannot be read is skipped with a warning: one
    broken install must not break every command.
    """
    wanted = set(groups)
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for info in _metadata_directories(sys.path if path is None else path):
        # the first copy of a distribution wins even when it registers nothing (a newer version that
        # dropped a plugin must not let an older copy further down the path bring it back)
        key = normalize(os.path.basename(info).rsplit(".", 1)[0].split("-", 1)[0])
        if key in seen:
            continue
        seen.add(key)
        try:
            text = _read(os.path.join(info, "entry_points.txt"))
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("distribution %s: cannot read its entry points: %s", os.path.basename(info), exc)
            continue
        if not any(f"[{group}]" in text for group in wanted):
            continue
        try:
            dist = _distribution(info)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("distribution %s: cannot read its metadata: %s", os.path.basename(info), exc)
            continue
        try:
            found.extend(ep for ep in list(_parse(text, dist)) if ep.group in wanted)
        except ValueError as exc:
            log.warning("distribution %s: cannot read its entry points: %s", dist.name, exc)
    return found


def _metadata_directories(path: Iterable[str]) -> Iterator[str]:
    listed: set[str] = set()
    for entry in path:
        directory = os.path.abspath(entry or ".")
        if directory in listed:
            continue
        listed.add(directory)
        try:
            names = sorted(os.listdir(directory))
        except OSError:  # not a directory (a zip, a missing entry): nothing installed there for us
            continue
        for name in names:
            if name.lower().endswith(_SUFFIXES):
                yield os.path.join(directory, name)


def _read(path: str) -> str:
    with open(path, "rb") as handle:
        data = handle.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise OSError(f"{path} is larger than {MAX_METADATA_BYTES} bytes")
    return data.decode("utf-8")


def _parse(text: str, dist: Distribution) -> Iterator[EntryPoint]:
    """The entry points of an ``entry_points.txt`` (INI: ``[group]`` then ``name = value`` lines)."""
    group = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif "=" in line and group:
            name, value = line.split("=", 1)
            yield EntryPoint(name.strip(), value.strip(), group, dist)
        else:
            raise ValueError(f"entry_points.txt: not '[group]' or 'name = value': {line[:80]!r}")


def _headers(path: str) -> Iterator[tuple[str, str]]:
    """The ``Key: value`` headers of a ``METADATA``/``PKG-INFO`` file (up to the first blank line)."""
    for line in _read(path).splitlines():
        if not line.strip():
            return
        if line[0] in " \t" or ":" not in line:
            continue  # a folded continuation line: no header we read is folded
        key, value = line.split(":", 1)
        yield key.strip().lower(), value.strip()


def _metadata_file(info: str) -> str:
    return os.path.join(info, "METADATA" if info.lower().endswith(".dist-info") else "PKG-INFO")


def _distribution(info: str) -> Distribution:
    """Name and version from the metadata headers; the directory name when they are missing."""
    stem = os.path.basename(info).rsplit(".", 1)[0]
    fallback_name, _, fallback_version = stem.partition("-")
    name = version = ""
    try:
        for key, value in _headers(_metadata_file(info)):
            if key == "name" and not name:
                name = value
            elif key == "version" and not version:
                version = value
    except FileNotFoundError:
        pass
    return Distribution(info, name or fallback_name, version or fallback_version.split("-", 1)[0] or "?")


def _requirements(info: str) -> tuple[str, ...]:
    """``Requires-Dist`` headers, or the unconditional part of an egg's ``requires.txt``."""
    try:
        if info.lower().endswith(".dist-info"):
            return tuple(value for key, value in _headers(_metadata_file(info)) if key == "requires-dist")
        lines = []
        for raw in _read(os.path.join(info, "requires.txt")).splitlines():
            line = raw.strip()
            if line.startswith("["):
                break  # the extras' and markers' sections
            if line and not line.startswith("#"):
                lines.append(line)
        return tuple(lines)
    except (OSError, UnicodeDecodeError):
        return ()
