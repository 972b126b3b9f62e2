"""Write settings to real files and build them the way core does, for settings tests.

A plugin checks its ``config_class`` with the same path core takes -- the
file on disk, the safe parser, :func:`~pragma_core.config.build_settings`::

    from pragma_core.testing.configkit import load_driver_settings, load_repository_settings

    cfg = load_driver_settings(MyConfig, tmp_path, {"job_timeout": "120"}, fmt="toml")
    repo = load_repository_settings(MyRepoSettings, tmp_path, {"timeout": 30})

Values are Python values, written as literals of the chosen format: ``conf``
(the legacy Python-literal syntax) or ``toml``. A ``conf`` file starts with
one comment line, so the first setting is on line 2, and a dict is written
one key per line (its errors point at its first line).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..config import build_settings, load_site_config, read_config_file, repository_config

T = TypeVar("T")
FORMATS = ("conf", "toml")


def render(value: Any, fmt: str) -> str:
    """``value`` as a literal of ``fmt`` (``conf`` or ``toml``)."""
    if fmt == "conf":
        if isinstance(value, float) and not math.isfinite(value):
            return "1e999" if value > 0 else "-1e999" if value < 0 else "1e999 - 1e999"
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v, fmt) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {render(v, fmt)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_settings(path: Path, settings: Mapping[str, Any], *, fmt: str = "conf", table: str | None = None) -> Path:
    """Write ``settings`` to ``path`` (suffix from ``fmt``); under ``table`` (a dict setting) when given."""
    path = path.with_suffix(f".{fmt}")
    lines = ["# written by pragma_core.testing.configkit"] if fmt == "conf" else []
    if table is None:
        lines += [f"{key} = {render(value, fmt)}" for key, value in settings.items()]
    elif fmt == "conf":
        lines += [f"{table} = {{"] + [f"    {key!r}: {render(v, fmt)}," for key, v in settings.items()] + ["}"]
    else:
        lines += [f"[{table}]"] + [f"{key} = {render(v, fmt)}" for key, v in settings.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_driver_settings(cls: type[T], directory: Path, settings: Mapping[str, Any], *, fmt: str = "conf",
                         name: str = "driver") -> T:
    """``cls`` built from ``<directory>/<name>.<fmt>`` holding ``settings``."""
    path = write_settings(directory / name, settings, fmt=fmt)
    return build_settings(cls, read_config_file(path))


def load_repository_settings(cls: type[T], directory: Path, options: Mapping[str, Any], *, fmt: str = "conf",
                             repository_class: str = "test") -> T:
    """``cls`` built from the keys ``options`` of ``repository_settings`` in ``<directory>/site_conf.<fmt>``."""
    raw = {"repository_class": repository_class, "repository_dir": str(directory / "repo"), **options}
    write_settings(directory / "site_conf", raw, fmt=fmt, table="repository_settings")
    site = load_site_config(directory)
    return repository_config(cls, site.require_repository(), site.source)


def settings_path(directory: Path, fmt: str, name: str) -> Path:
    """The file :func:`load_driver_settings` or :func:`load_repository_settings` wrote."""
    return directory / f"{name}.{fmt}"
