"""Site configuration: ``site_conf.conf`` and ``<driver>.conf``, read safely.

The legacy files are Python assignments. They are **parsed, never executed**:
only assignments of literals (strings, numbers, booleans, ``None``), lists,
tuples, dicts, sets, ``range(...)``, names assigned earlier in the same file,
and ``+ - *`` between them are accepted. Anything else (an import, a call
other than ``range``, an attribute, a conditional) is a
:class:`~pragma_core.errors.ConfigError` naming the file and line, and nothing
in the file takes effect.

A TOML file with the same keys (``site_conf.toml``, ``kvm_rocks.toml``) may
stand beside or instead of the legacy one; when both exist the TOML file wins.

Lookup of the directory: ``--conf DIR``, else ``$PRAGMA_CONF_DIR``, else the
legacy install's ``/opt/pragma_boot/etc``.

Settings of ``site_conf.conf`` (legacy keys first):

``site_ve_driver``
    driver name (an entry point in ``pragma.drivers``), e.g. ``kvm_rocks``.
``temp_directory`` (also spelled ``temporary_directory``)
    existing directory for temporary files.
``log_directory``
    where ``boot`` and ``sync`` write their log files (created if missing).
``repository_settings``
    dict: ``repository_class``, ``repository_dir``, ``vcdb_filename``
    (``vcdb.txt``), ``repository_url`` and the class's own keys.
``vcout_format``
    ``1`` or ``2`` (default): the vc-out.xml format the site's images read;
    a cluster description may override it.
``delete_parts_after_staging``
    ``True`` to delete an image's parts once it is staged (default ``False``).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import stat

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
from attrs import field, frozen

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Where the legacy tool kept its configuration.
LEGACY_CONF_DIR = Path("/opt/pragma_boot/etc")
SITE_CONF = "site_conf"
_MAX_SEQUENCE = 1_000_000

T = TypeVar("T")


# --------------------------------------------------------------------------- parsing


@frozen(kw_only=True)
class ConfigFile:
    """The settings of one file: values by key, and the line each was set on."""

    path: Path
    values: Mapping[str, Any] = field(converter=lambda v: MappingProxyType(dict(v)))
    lines: Mapping[str, int] = field(converter=lambda v: MappingProxyType(dict(v)))

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def error(self, key: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` about ``key`` in this file, with its line when known."""
        line = self.lines.get(key) if key else None
        return ConfigError(message, path=self.path, line=line, key=key)

    def require(self, key: str, *aliases: str) -> Any:
        """The value of ``key`` (or the first alias present); an error naming the file when missing."""
        for name in (key, *aliases):
            if name in self.values:
                return self.values[name]
        raise ConfigError(f"missing setting {key}", path=self.path)


class _LiteralEvaluator:
    """Evaluates the right-hand sides of a config file without executing anything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: dict[str, Any] = {}

    def fail(self, node: ast.AST, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, line=getattr(node, "lineno", None))

    def evaluate(self, node: ast.AST) -> Any:
        match node:
            case ast.Constant(value=value) if isinstance(value, (str, int, float, bool, type(None))):
                return value
            case ast.List(elts=elts):
                return [self.evaluate(e) for e in elts]
            case ast.Tuple(elts=elts):
                return tuple(self.evaluate(e) for e in elts)
            case ast.Set(elts=elts):
                return {self._hashable(e) for e in elts}
            case ast.Dict(keys=keys, values=values):
                if any(k is None for k in keys):
                    raise self.fail(node, "'**' unpacking is not allowed in a configuration file")
                return {self._hashable(k): self.evaluate(v) for k, v in zip(keys, values)}  # type: ignore[arg-type]
            case ast.Name(id=name):
                if name in self.names:
                    return self.names[name]
                raise self.fail(node, f"unknown name {name!r} (only settings assigned above may be used)")
            case ast.UnaryOp(op=ast.USub() | ast.UAdd() as op, operand=operand):
                value = self.evaluate(operand)
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise self.fail(node, "unary minus needs a number")
                return -value if isinstance(op, ast.USub) else value
            case ast.BinOp(left=left, op=ast.Add() | ast.Sub() | ast.Mult() as op, right=right):
                return self._binop(node, self.evaluate(left), op, self.evaluate(right))
            case ast.Call(func=ast.Name(id="range"), args=args, keywords=[]) if 1 <= len(args) <= 3:
                bounds = [self.evaluate(a) for a in args]
                if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                    raise self.fail(node, "range() takes whole numbers")
                values = range(*bounds)
                if len(values) > _MAX_SEQUENCE:
                    raise self.fail(node, f"range() of more than {_MAX_SEQUENCE} values")
                return list(values)
            case ast.Call(func=ast.Name(id=fname)):
                raise self.fail(node, f"call to {fname}() is not allowed (only range() is)")
            case ast.Call():
                raise self.fail(node, "function calls are not allowed (only range() is)")
            case _:
                kind = type(node).__name__
                raise self.fail(node, f"{kind} expressions are not allowed in a configuration file")

    def _hashable(self, node: ast.AST) -> Any:
        value = self.evaluate(node)
        if isinstance(value, (list, dict, set)):
            raise self.fail(node, "a dict key or set member must be a string or number")
        return value

    def _binop(self, node: ast.AST, left: Any, op: ast.operator, right: Any) -> Any:
        try:
            if isinstance(op, ast.Mult):
                count = right if isinstance(right, int) else left if isinstance(left, int) else 0
                if count > _MAX_SEQUENCE and not (isinstance(left, (int, float)) and isinstance(right, (int, float))):
                    raise self.fail(node, "repetition is too large")
                return left * right
            if isinstance(op, ast.Add):
                if isinstance(left, dict) or isinstance(right, dict):
                    raise TypeError
                return left + right
            return left - right
        except TypeError:
            raise self.fail(node, f"cannot combine {type(left).__name__} and {type(right).__name__}") from None


def parse_legacy(text: str, path: Path) -> ConfigFile:
    """Parse a legacy ``key = value`` config file (Python syntax) without running it."""
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"syntax error: {exc.msg}", path=path, line=exc.lineno) from None
    evaluator = _LiteralEvaluator(path)
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            value = evaluator.evaluate(stmt.value)
            for target in stmt.targets:
                name = target.id  # type: ignore[attr-defined]
                values[name] = value
                lines[name] = stmt.lineno
                evaluator.names[name] = value
            continue
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            value = evaluator.evaluate(stmt.value)
            values[stmt.target.id] = value
            lines[stmt.target.id] = stmt.lineno
            evaluator.names[stmt.target.id] = value
            continue
        kind = type(stmt).__name__
        raise ConfigError(
            f"only 'name = value' assignments are allowed, found {kind.lower()} statement",
            path=path,
            line=stmt.lineno,
        )
    return ConfigFile(path=path, values=values, lines=lines)


_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=", re.MULTILINE)


def parse_toml(text: str, path: Path) -> ConfigFile:
    """Parse the TOML form of a config file."""
    import tomllib

    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # noqa: F821 - imported above
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"invalid TOML: {exc.msg if hasattr(exc, 'msg') else exc}", path=path, line=line) from None
    lines: dict[str, int] = {}
    for match in _TOML_KEY.finditer(text):
        lines.setdefault(match.group(1), text.count("\n", 0, match.start()) + 1)
    for match in re.finditer(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]", text, re.MULTILINE):
        lines.setdefault(match.group(1), text.count("\n", 0, match.start()) + 1)
    return ConfigFile(path=path, values=values, lines=lines)


def read_config_file(path: str | Path) -> ConfigFile:
    """Read one config file, legacy (``.conf``) or TOML (``.toml``) by its suffix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=path) from None
    if path.suffix == ".toml":
        return parse_toml(text, path)
    return parse_legacy(text, path)


def find_config(conf_dir: Path, stem: str) -> ConfigFile | None:
    """Read ``<stem>.toml`` or ``<stem>.conf`` from ``conf_dir``; ``None`` when neither exists."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem) or stem.startswith("."):
        raise ConfigError(f"invalid configuration name {stem!r}")
    for suffix in (".toml", ".conf"):
        candidate = conf_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return read_config_file(candidate)
    return None


def warn_if_readable_by_others(path: Path, what: str) -> bool:
    """Log a warning when ``path`` (holding a secret) is readable by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s holds %s and is readable by group or others; run: chmod 600 %s", path, what, path)
        return True
    return False


# --------------------------------------------------------------------------- typed settings


def build_settings(cls: type[T], source: ConfigFile, *, values: Mapping[str, Any] | None = None) -> T:
    """Build the attrs class ``cls`` from the keys of ``source``.

    Each attrs field is read from the key of its name, or from one of the
    names in its ``metadata["aliases"]``. A field's converter or validator
    that raises :class:`ValueError` or :class:`TypeError` becomes a
    :class:`ConfigError` naming the file, line and key. A missing field
    without a default is an error naming the file. Unknown keys are logged at
    debug level and ignored (legacy files carry keys nobody reads).

    ``values`` replaces ``source.values`` (for a nested dict such as
    ``repository_settings``) while errors still point at ``source``.
    """
    data = dict(source.values if values is None else values)
    kwargs: dict[str, Any] = {}
    known: set[str] = set()
    for fld in attrs.fields(cls):  # type: ignore[arg-type]
        if not fld.init:
            continue
        names = (fld.name, *fld.metadata.get("aliases", ()))
        known.update(names)
        for name in names:
            if name in data:
                kwargs[fld.alias or fld.name] = data[name]
                break
        else:
            if fld.default is attrs.NOTHING:
                raise ConfigError(f"missing setting {fld.name}", path=source.path)
    for key in data:
        if key not in known:
            log.debug("%s: setting %s is not used", source.path, key)
    for fld in attrs.fields(cls):  # type: ignore[arg-type]
        name = fld.alias or fld.name
        converter = getattr(fld.converter, "converter", fld.converter)
        if name in kwargs and callable(converter):
            try:
                converter(kwargs[name])
            except (ValueError, TypeError) as exc:
                used = next((n for n in (fld.name, *fld.metadata.get("aliases", ())) if n in data), fld.name)
                message = str(exc)
                if message.startswith(f"{fld.name}:"):
                    message = message[len(fld.name) + 1 :].strip()
                raise source.error(used, message) from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        key = _blame(exc, kwargs)
        message = str(exc)
        if key and message.startswith(f"{key}:"):
            message = message[len(key) + 1 :].strip()
        raise source.error(key, message) from None


def _blame(exc: BaseException, kwargs: Mapping[str, Any]) -> str | None:
    """Which setting an attrs converter/validator error is about."""
    attr = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(attr, attrs.Attribute):
        return attr.name
    text = str(exc)
    for key in kwargs:
        if text.startswith(f"{key}:") or f"'{key}'" in text:
            return key
    return None


def invalid(key: str, message: str) -> ValueError:
    """A :class:`ValueError` that :func:`build_settings` reports against ``key``."""
    return ValueError(f"{key}: {message}")


def to_path(value: Any) -> Path:
    """Converter: a non-empty string to a :class:`Path`."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise TypeError("must be a non-empty path string")
    return Path(value)


def to_optional_path(value: Any) -> Path | None:
    """Converter: ``None`` or ``""`` to ``None``, else a :class:`Path`."""
    if value is None or value == "":
        return None
    return to_path(value)


def to_bool(value: Any) -> bool:
    """Converter: booleans, and ``yes/no/true/false/1/0/t/f/y/n`` strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "yes", "y", "true", "t", "on"):
            return True
        if lowered in ("0", "no", "n", "false", "f", "off", ""):
            return False
    raise ValueError(f"must be a boolean (true/false), not {value!r}")


def to_int(value: Any) -> int:
    """Converter: an integer (or a string of digits)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError(f"must be a whole number, not {value!r}")


def to_str_list(value: Any) -> tuple[str, ...]:
    """Converter: a list of strings, or one space/comma separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in re.split(r"[\s,]+", value) if v)
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"must be a list of strings, not {value!r}")


# --------------------------------------------------------------------------- site settings


def _vcout_format(value: Any) -> int:
    number = to_int(value) if not isinstance(value, int) else value
    if number not in (1, 2):
        raise ValueError(f"must be 1 or 2, not {value!r}")
    return number


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a dict, not {type(value).__name__}")
    return MappingProxyType(dict(value))


@frozen(kw_only=True)
class RepositorySettings:
    """The site's ``repository_settings`` dict.

    ``options`` keeps every other key of the dict (``keypair_id``,
    ``private_key_file``, ``local_image_url``, ``include_images``...) for the
    repository class to read.
    """

    repository_class: str
    repository_dir: Path = field(converter=to_path)
    vcdb_filename: str = "vcdb.txt"
    repository_url: str | None = None
    options: Mapping[str, Any] = field(factory=dict, converter=_mapping)

    @property
    def vcdb_path(self) -> Path:
        return self.repository_dir / self.vcdb_filename


@frozen(kw_only=True)
class SiteConfig:
    """The site's configuration (``site_conf.conf``) and where it came from.

    Use :meth:`require` for a setting a command cannot do without: it raises
    a :class:`ConfigError` naming the file and the setting.
    """

    conf_dir: Path
    source: ConfigFile
    site_ve_driver: str | None = None
    temp_directory: Path | None = None
    log_directory: Path | None = None
    repository: RepositorySettings | None = None
    vcout_format: int = 2
    delete_parts_after_staging: bool = False

    def require(self, key: str) -> Any:
        value = getattr(self, key)
        if value is None or value == "":
            raise ConfigError(f"missing setting {key}", path=self.source.path)
        return value

    def require_repository(self) -> RepositorySettings:
        if self.repository is None:
            raise ConfigError("missing setting repository_settings", path=self.source.path)
        return self.repository

    def driver_config(self, name: str) -> ConfigFile | None:
        """``<name>.toml`` or ``<name>.conf`` beside the site config, or ``None``."""
        return find_config(self.conf_dir, name)


def resolve_conf_dir(conf_dir: str | Path | None = None) -> Path:
    """``conf_dir``, else ``$PRAGMA_CONF_DIR``, else the legacy install's ``etc/``."""
    if conf_dir:
        return Path(conf_dir)
    env = os.environ.get("PRAGMA_CONF_DIR")
    if env:
        return Path(env)
    return LEGACY_CONF_DIR


def load_site_config(conf_dir: str | Path | None = None) -> SiteConfig:
    """Read ``site_conf.conf`` (or ``site_conf.toml``) from the configuration directory."""
    directory = resolve_conf_dir(conf_dir)
    source = find_config(directory, SITE_CONF)
    if source is None:
        raise ConfigError(
            f"configuration file not found: {directory / (SITE_CONF + '.conf')}"
            " (give the site's configuration directory with --conf DIR or PRAGMA_CONF_DIR)"
        )
    return site_config_from(source, directory)


def site_config_from(source: ConfigFile, conf_dir: Path) -> SiteConfig:
    """Validate the keys of a parsed site configuration."""
    repo: RepositorySettings | None = None
    raw_repo = source.get("repository_settings")
    if raw_repo is not None:
        if not isinstance(raw_repo, Mapping):
            raise source.error("repository_settings", "must be a dict")
        if "repository_class" not in raw_repo:
            raise source.error("repository_settings", 'missing "repository_class"')
        if "repository_dir" not in raw_repo:
            raise source.error("repository_settings", 'missing "repository_dir"')
        known = {f.name for f in attrs.fields(RepositorySettings)} - {"options"}
        fields_ = {k: v for k, v in raw_repo.items() if k in known}
        options = {k: v for k, v in raw_repo.items() if k not in known}
        for key in ("repository_class", "vcdb_filename"):
            if key in fields_ and not (isinstance(fields_[key], str) and fields_[key]):
                raise source.error("repository_settings", f"{key} must be a non-empty string")
        if fields_.get("repository_url") is not None and not isinstance(fields_["repository_url"], str):
            raise source.error("repository_settings", "repository_url must be a string")
        vcdb = fields_.get("vcdb_filename", "vcdb.txt")
        if "/" in vcdb or vcdb in (".", ".."):
            raise source.error("repository_settings", "vcdb_filename must be a file name, not a path")
        try:
            repo = RepositorySettings(**fields_, options=options)
        except (TypeError, ValueError) as exc:
            raise source.error("repository_settings", f"repository_dir {exc}") from None

    def typed(key: str, convert: Any, *aliases: str) -> Any:
        for name in (key, *aliases):
            if name in source:
                try:
                    return convert(source.get(name))
                except (TypeError, ValueError) as exc:
                    raise source.error(name, str(exc)) from None
        return None

    driver = source.get("site_ve_driver")
    if driver is not None and not (isinstance(driver, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", driver)):
        raise source.error("site_ve_driver", "must be a driver name such as kvm_rocks")
    fmt = typed("vcout_format", _vcout_format)
    delete = typed("delete_parts_after_staging", to_bool)
    return SiteConfig(
        conf_dir=conf_dir,
        source=source,
        site_ve_driver=driver or None,
        temp_directory=typed("temp_directory", to_optional_path, "temporary_directory"),
        log_directory=typed("log_directory", to_optional_path),
        repository=repo,
        vcout_format=fmt if fmt is not None else 2,
        delete_parts_after_staging=bool(delete),
    )
