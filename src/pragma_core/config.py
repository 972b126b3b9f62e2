"""Site configuration: ``site_conf.conf`` and ``<driver>.conf``, read safely.

The legacy files are Python assignments. They are **parsed, never executed**:
only assignments of literals (strings, numbers, booleans, ``None``), lists,
tuples, dicts, sets, ``range(...)``, names assigned earlier in the same file,
and ``+ - *`` between them are accepted. Anything else (an import, a call
other than ``range``, an attribute, a conditional) is a
:class:`~pragma_core.errors.ConfigError` naming the file and line, and nothing
in the file takes effect. Parsing is bounded in size, depth and time (a file
of at most :data:`MAX_CONFIG_BYTES`; every value, intermediate ones included,
checked against :data:`MAX_VALUE_SIZE` and :data:`MAX_INT_BITS` *before* it is
computed): a file that repeats, doubles or squares its way past a limit is one
error naming the file and line, never a hang or an exhausted memory.

A TOML file with the same keys (``site_conf.toml``, ``kvm_rocks.toml``) may
stand beside or instead of the legacy one; when both exist the TOML file wins.

Every settings class -- :class:`SiteConfig`, :class:`RepositorySettings`,
each driver's ``config_class`` (:func:`driver_settings`) and each
repository's ``config_class`` (:func:`repository_config`) -- is an attrs
class built by :func:`build_settings` from fields made with
:func:`pragma_core.settings.setting` and the converters of
:mod:`pragma_core.settings`; a bad value is reported as
``<file> line <n>: <key>: <problem>``.

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
``max_image_size``
    the largest image staging may write, in bytes (default 1 TiB): a part
    that decompresses past it is refused, as is one that would leave less
    than 1 GiB free on the staging filesystem.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import stat
import time

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
from attrs import field, frozen

from .errors import ConfigError
from .settings import (  # noqa: F401 - to_* and invalid are re-exported for plugins that import them from here
    int_between,
    invalid,
    optional,
    setting,
    to_bool,
    to_int,
    to_nonempty_str,
    to_optional_path,
    to_path,
    to_str_list,
)
from .paths import DEFAULT_MAX_IMAGE_SIZE
from .redaction import MASK, redact, register_secret

log = logging.getLogger(__name__)

#: Where the legacy tool kept its configuration.
LEGACY_CONF_DIR = Path("/opt/pragma_boot/etc")
SITE_CONF = "site_conf"

#: A configuration file larger than this is refused before it is parsed (real ones are a few KiB).
MAX_CONFIG_BYTES = 128 * 1024
#: The largest value of a setting or an intermediate result: string characters plus list,
#: tuple, set and dict entries (nested ones counted every time they appear).
MAX_VALUE_SIZE = 1_000_000
_MAX_SEQUENCE = MAX_VALUE_SIZE
#: The largest whole number, in bits (beyond any count, size or address a setting holds).
MAX_INT_BITS = 1024
#: How deeply an expression may nest (lists in dicts, chains of ``+`` and ``*``).
MAX_DEPTH = 100
#: The total size of every value one file computes (names repeated, doubled, squared end here).
MAX_WORK = 10 * MAX_VALUE_SIZE
#: A backstop: no file takes longer than this to evaluate.
MAX_EVALUATION_SECONDS = 1.0

T = TypeVar("T")


# --------------------------------------------------------------------------- parsing


@frozen(kw_only=True)
class ConfigFile:
    """The settings of one file: values by key, and the line each was set on."""

    path: Path
    values: Mapping[str, Any] = field(converter=lambda v: MappingProxyType(dict(v)))
    lines: Mapping[str, int] = field(converter=lambda v: MappingProxyType(dict(v)))
    #: The values of its secret settings (:func:`is_secret_key`), registered for masking when the file is parsed.
    secrets: tuple[str, ...] = field(
        init=False, repr=False, eq=False, default=attrs.Factory(lambda self: secret_values(self.values), takes_self=True)
    )

    def __attrs_post_init__(self) -> None:
        for value in self.secrets:
            register_secret(value, name=f"{self.path} setting")

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def error(self, key: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` about ``key`` in this file, with its line when known."""
        line = self.lines.get(key) if key else None
        return ConfigError(hide_secret_values(message, self.secrets), path=self.path, line=line, key=key)

    def require(self, key: str, *aliases: str) -> Any:
        """The value of ``key`` (or the first alias present); an error naming the file when missing."""
        for name in (key, *aliases):
            if name in self.values:
                return self.values[name]
        raise ConfigError(f"missing setting {key}", path=self.path)


_OPERATORS = {"Pow": "**", "Div": "/", "FloorDiv": "//", "Mod": "%", "MatMult": "@",
              "LShift": "<<", "RShift": ">>", "BitOr": "|", "BitAnd": "&", "BitXor": "^"}


class _LiteralEvaluator:
    """Evaluates the right-hand sides of a config file without executing anything.

    Every value carries its *size* (string characters plus list, tuple, set
    and dict entries, nested ones counted each time they appear), and every
    operation checks the size of its result **before** computing it: a
    repetition (``"x" * n``, ``[a] * n``), a concatenation, a product of
    whole numbers (by bit length) or a ``range()``. Depth, total work and
    time are bounded too, so no file can make the parser hang or run out of
    memory: each limit is a :class:`ConfigError` naming the file and line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._work = 0
        self._deadline = time.monotonic() + MAX_EVALUATION_SECONDS

    def fail(self, node: ast.AST, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, line=getattr(node, "lineno", None))

    def assign(self, names: list[str], node: ast.AST) -> Any:
        """Evaluate ``node`` and make its value known to later lines under each of ``names``."""
        value, size = self._evaluate(node, 0)
        for name in names:
            self.names[name] = value
            self._sizes[name] = size
        return value

    def evaluate(self, node: ast.AST) -> Any:
        """The value of the expression ``node``."""
        return self._evaluate(node, 0)[0]

    def _evaluate(self, node: ast.AST, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"expression nested more than {MAX_DEPTH} levels deep")
        if time.monotonic() > self._deadline:
            raise self.fail(node, f"file takes more than {MAX_EVALUATION_SECONDS:g} s to evaluate")
        value, size = self._value(node, depth + 1)
        if size > MAX_VALUE_SIZE:
            raise self.fail(node, f"value is too large (more than {MAX_VALUE_SIZE} characters and items)")
        self._work += size
        if self._work > MAX_WORK:
            raise self.fail(node, f"file computes too much (more than {MAX_WORK} characters and items in all)")
        return value, size

    def _value(self, node: ast.AST, depth: int) -> tuple[Any, int]:
        match node:
            case ast.Constant(value=value) if isinstance(value, (str, int, float, bool, type(None))):
                return value, self._scalar_size(node, value)
            case ast.List(elts=elts):
                items, size = self._items(elts, depth)
                return items, size
            case ast.Tuple(elts=elts):
                items, size = self._items(elts, depth)
                return tuple(items), size
            case ast.Set(elts=elts):
                items, size = self._items(elts, depth, hashable=True)
                return self._build(node, set, items), size
            case ast.Dict(keys=keys, values=values):
                if any(k is None for k in keys):
                    raise self.fail(node, "'**' unpacking is not allowed in a configuration file")
                key_items, key_size = self._items(keys, depth, hashable=True)  # type: ignore[arg-type]
                value_items, value_size = self._items(values, depth)
                return self._build(node, dict, zip(key_items, value_items)), key_size + value_size - 1
            case ast.Name(id=name):
                if name in self.names:
                    return self.names[name], self._sizes[name]
                raise self.fail(node, f"unknown name {name!r} (only settings assigned above may be used)")
            case ast.UnaryOp(op=ast.USub() | ast.UAdd() as op, operand=operand):
                value, size = self._evaluate(operand, depth)
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise self.fail(node, "unary minus needs a number")
                return (-value if isinstance(op, ast.USub) else value), size
            case ast.BinOp(left=left, op=ast.Add() | ast.Sub() | ast.Mult() as op, right=right):
                return self._binop(node, self._evaluate(left, depth), op, self._evaluate(right, depth))
            case ast.BinOp(op=op):
                symbol = _OPERATORS.get(type(op).__name__, type(op).__name__)
                raise self.fail(node, f"operator {symbol} is not allowed in a configuration file (only + - *)")
            case ast.Call(func=ast.Name(id="range"), args=args, keywords=[]) if 1 <= len(args) <= 3:
                return self._range(node, [self._evaluate(a, depth)[0] for a in args])
            case ast.Call(func=ast.Name(id=fname)):
                raise self.fail(node, f"call to {fname}() is not allowed (only range() is)")
            case ast.Call():
                raise self.fail(node, "function calls are not allowed (only range() is)")
            case _:
                kind = type(node).__name__
                raise self.fail(node, f"{kind} expressions are not allowed in a configuration file")

    def _scalar_size(self, node: ast.AST, value: Any) -> int:
        if isinstance(value, str):
            return len(value) + 1
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise self.fail(node, f"number is too large (more than {MAX_INT_BITS} bits)")
            return value.bit_length() // 64 + 1
        return 1

    def _items(self, nodes: list[ast.expr], depth: int, *, hashable: bool = False) -> tuple[list[Any], int]:
        items: list[Any] = []
        size = 1
        for element in nodes:
            value, element_size = self._evaluate(element, depth)
            if hashable and isinstance(value, (list, dict, set)):
                raise self.fail(element, "a dict key or set member must be a string or number")
            items.append(value)
            size += element_size
            if size > MAX_VALUE_SIZE:
                raise self.fail(element, f"value is too large (more than {MAX_VALUE_SIZE} characters and items)")
        return items, size

    def _build(self, node: ast.AST, kind: type, items: Any) -> Any:
        try:
            return kind(items)
        except TypeError:  # a tuple holding a list as a key
            raise self.fail(node, "a dict key or set member must be a string or number") from None

    def _range(self, node: ast.AST, bounds: list[Any]) -> tuple[list[int], int]:
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            raise self.fail(node, "range() takes whole numbers")
        try:
            values = range(*bounds)
            count = len(values)
        except OverflowError:
            count = MAX_VALUE_SIZE + 1
        except ValueError:
            raise self.fail(node, "range() step must not be zero") from None
        if count > _MAX_SEQUENCE:
            raise self.fail(node, f"range() of more than {_MAX_SEQUENCE} values")
        width = max(b.bit_length() for b in bounds) // 64 + 1
        return list(values), 1 + count * width

    def _binop(self, node: ast.AST, left: tuple[Any, int], op: ast.operator, right: tuple[Any, int]) -> tuple[Any, int]:
        """``left op right``, refused before computing when its result would be too large."""
        (a, a_size), (b, b_size) = left, right
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        try:
            if numbers:
                return self._arithmetic(node, a, op, b)
            if isinstance(op, ast.Mult):
                return self._repeat(node, a, a_size, b, b_size)
            if isinstance(op, ast.Add):
                if type(a) is not type(b) or not isinstance(a, (str, list, tuple)):
                    raise TypeError
                self._check_size(node, a_size + b_size - 1)
                return a + b, a_size + b_size - 1
            if isinstance(a, (set, frozenset)) and isinstance(b, (set, frozenset)):
                return a - b, a_size
            raise TypeError
        except TypeError:
            raise self.fail(node, f"cannot combine {type(a).__name__} and {type(b).__name__}") from None

    def _arithmetic(self, node: ast.AST, a: float, op: ast.operator, b: float) -> tuple[Any, int]:
        if isinstance(a, int) and isinstance(b, int):
            bits = a.bit_length() + b.bit_length() if isinstance(op, ast.Mult) else max(a.bit_length(), b.bit_length()) + 1
            if bits > MAX_INT_BITS + 1:
                raise self.fail(node, f"number is too large (more than {MAX_INT_BITS} bits)")
        try:
            result = a * b if isinstance(op, ast.Mult) else a + b if isinstance(op, ast.Add) else a - b
        except OverflowError:
            raise self.fail(node, "number is too large") from None
        return result, self._scalar_size(node, result)

    def _repeat(self, node: ast.AST, a: Any, a_size: int, b: Any, b_size: int) -> tuple[Any, int]:
        if isinstance(b, int) and isinstance(a, (str, list, tuple)):
            sequence, size, count = a, a_size, b
        elif isinstance(a, int) and isinstance(b, (str, list, tuple)):
            sequence, size, count = b, b_size, a
        else:
            raise TypeError
        if count <= 0:
            return sequence[:0], 1
        result = 1 + (size - 1) * count  # the items (or characters) count times, one container
        if count > MAX_VALUE_SIZE or result > MAX_VALUE_SIZE:
            raise self.fail(node, f"repetition is too large (more than {MAX_VALUE_SIZE} characters and items)")
        return sequence * count, result

    def _check_size(self, node: ast.AST, size: int) -> None:
        if size > MAX_VALUE_SIZE:
            raise self.fail(node, f"value is too large (more than {MAX_VALUE_SIZE} characters and items)")


def _check_length(text: str, path: Path) -> None:
    if len(text) > MAX_CONFIG_BYTES:
        line = _line_at(text, MAX_CONFIG_BYTES)
        raise ConfigError(f"configuration file is larger than {MAX_CONFIG_BYTES} bytes", path=path, line=line)


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _parse_python(text: str, path: Path) -> ast.Module:
    """``ast.parse`` of a legacy file; every failure a :class:`ConfigError` with its line."""
    _check_length(text, path)
    try:
        return ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        if "\x00" in text:
            raise ConfigError("NUL character in the file", path=path, line=_line_at(text, text.index("\x00"))) from None
        if exc.msg.startswith("Exceeds the limit"):  # a literal of thousands of digits
            raise ConfigError(f"number is too large (more than {MAX_INT_BITS} bits)", path=path, line=exc.lineno) from None
        raise ConfigError(f"syntax error: {exc.msg}", path=path, line=exc.lineno) from None
    except (RecursionError, MemoryError):  # the parser's own limits on nesting
        pass
    except ValueError as exc:
        raise ConfigError(f"syntax error: {exc}", path=path) from None
    raise _too_deep(text, path)


# a line that starts a new top-level assignment (used only to locate a statement)
_STATEMENT_START = re.compile(r"^[A-Za-z_]\w*\s*[:=]", re.MULTILINE)


def _too_deep(text: str, path: Path) -> ConfigError:
    """The error for a file that ``ast.parse`` cannot nest deeply enough for, at its statement.

    The statement is found by parsing each top-level assignment on its own
    (in all, about the cost of parsing the file once).
    """
    starts = [0, *(m.start() for m in _STATEMENT_START.finditer(text) if m.start() > 0)]
    line: int | None = None
    for begin, end in zip(starts, [*starts[1:], len(text)]):
        try:
            ast.parse(text[begin:end])
        except (RecursionError, MemoryError):
            line = _line_at(text, begin)
            break
        except (SyntaxError, ValueError):
            continue
    return ConfigError("expression nested too deeply to parse", path=path, line=line)


def parse_legacy(text: str, path: Path) -> ConfigFile:
    """Parse a legacy ``key = value`` config file (Python syntax) without running it.

    Bounded: see :data:`MAX_CONFIG_BYTES`, :data:`MAX_VALUE_SIZE`,
    :data:`MAX_INT_BITS`, :data:`MAX_DEPTH`, :data:`MAX_WORK` and
    :data:`MAX_EVALUATION_SECONDS`.
    """
    tree = _parse_python(text, path)
    evaluator = _LiteralEvaluator(path)
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            names = [target.id for target in stmt.targets]  # type: ignore[attr-defined]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names = [stmt.target.id]
        else:
            kind = type(stmt).__name__
            raise ConfigError(
                f"only 'name = value' assignments are allowed, found {kind.lower()} statement",
                path=path,
                line=stmt.lineno,
            )
        value = evaluator.assign(names, stmt.value)  # type: ignore[arg-type]
        for name in names:
            values[name] = value
            lines[name] = stmt.lineno
    return ConfigFile(path=path, values=values, lines=lines)


_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=", re.MULTILINE)
_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_-]+)\s*[].]", re.MULTILINE)
_LONG_NUMBER = re.compile(r"[0-9_]{300,}")


def parse_toml(text: str, path: Path) -> ConfigFile:
    """Parse the TOML form of a config file (bounded like :func:`parse_legacy`)."""
    import tomllib

    _check_length(text, path)
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"invalid TOML: {exc.msg if hasattr(exc, 'msg') else exc}", path=path, line=line) from None
    except (RecursionError, MemoryError):
        raise ConfigError("invalid TOML: nested too deeply", path=path, line=_deep_bracket_line(text)) from None
    except ValueError:  # a whole number of thousands of digits
        found = _LONG_NUMBER.search(text)
        line = _line_at(text, found.start()) if found else None
        raise ConfigError(f"number is too large (more than {MAX_INT_BITS} bits)", path=path, line=line) from None
    lines: dict[str, int] = {}
    for pattern in (_TOML_KEY, _TOML_TABLE):
        line, offset = 1, 0
        for match in pattern.finditer(text):
            line += text.count("\n", offset, match.start())
            offset = match.start()
            lines.setdefault(match.group(1), line)
    for key, value in values.items():
        problem = _toml_problem(value, 1)
        if problem:
            raise ConfigError(problem, path=path, line=lines.get(key), key=key)
    return ConfigFile(path=path, values=values, lines=lines)


def _toml_problem(value: Any, depth: int) -> str | None:
    """What is out of bounds in a parsed TOML value (TOML has no repetition: only depth and numbers)."""
    if depth > MAX_DEPTH:
        return f"value nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return f"number is too large (more than {MAX_INT_BITS} bits)"
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((p for p in (_toml_problem(v, depth + 1) for v in children) if p), None)


def _deep_bracket_line(text: str) -> int | None:
    """The line where brackets first nest deeper than :data:`MAX_DEPTH` (quotes ignored: a hint)."""
    depth = 0
    for match in re.finditer(r"[\[\]{}]", text):
        depth += 1 if match.group(0) in "[{" else -1
        if depth > MAX_DEPTH:
            return _line_at(text, match.start())
    return None


#: The longest URL a setting may hold.
MAX_URL_LENGTH = 2048


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a well-formed URL (or bare identifier), or ``None`` when it is.

    The message never quotes the URL (it may carry a password).
    """
    from urllib.parse import urlsplit

    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "must not contain spaces or control characters"
    try:
        _ = urlsplit(url).port  # parsing the port is the check
    except ValueError as exc:
        return "has an invalid port" if "Port" in str(exc) else f"is not a valid URL ({exc})"
    return None


def read_config_file(path: str | Path) -> ConfigFile:
    """Read one config file, legacy (``.conf``) or TOML (``.toml``) by its suffix."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:  # checked on bytes: the text was cut here
            line = data.count(b"\n", 0, MAX_CONFIG_BYTES) + 1
            raise ConfigError(f"configuration file is larger than {MAX_CONFIG_BYTES} bytes", path=path, line=line)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("not UTF-8 text", path=path, line=data.count(b"\n", 0, exc.start) + 1) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if path.suffix == ".toml":
        parsed = parse_toml(text, path)
    else:
        try:
            parsed = parse_legacy(text, path)
        except ConfigError as exc:
            raise _without_literal_secrets(exc, text, path) from None
    if parsed.secrets:
        names = ", ".join(sorted(_secret_keys(parsed.values)))
        warn_if_readable_by_others(path, f"secrets ({names})")
    return parsed


def find_config(conf_dir: Path, stem: str) -> ConfigFile | None:
    """Read ``<stem>.toml`` or ``<stem>.conf`` from ``conf_dir``; ``None`` when neither exists."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem) or stem.startswith("."):
        raise ConfigError(f"invalid configuration name {stem!r}")
    for suffix in (".toml", ".conf"):
        candidate = conf_dir / f"{stem}{suffix}"
        try:
            found = candidate.is_file()
        except OSError as exc:  # a name too long for the filesystem
            raise ConfigError(f"cannot read configuration: {exc.strerror or exc}", path=candidate) from None
        if found:
            return read_config_file(candidate)
    return None


_warned_readable: set[tuple[str, int, int, int]] = set()


def warn_if_readable_by_others(path: Path, what: str) -> bool:
    """Log a warning when ``path`` (holding a secret) is readable by group or others.

    Returns whether it is; the warning is logged once per file (and mode) per process.
    """
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        seen = (str(path.absolute()), st.st_ino, st.st_mtime_ns, st.st_mode)
        if seen not in _warned_readable:
            _warned_readable.add(seen)
            log.warning("%s holds %s and is readable by group or others; run: chmod 600 %s", path, what, path)
        return True
    return False


# --------------------------------------------------------------------------- secrets
#
# A setting is secret when its attrs field says so (``metadata={"secret": True}``)
# or, in files that declare nothing (the legacy ones, nested dicts such as
# ``repository_settings``), by its name (:func:`is_secret_key`). Every value of
# a secret setting is registered with :mod:`pragma_core.redaction` as soon as a
# file is parsed -- before any error about any key is formatted -- and every
# config error leaves out the values of the file's secret settings, even those
# too short for the registry.

#: Words that make a setting secret by its name.
SECRET_KEY_WORDS = ("secret", "apikey", "api_key", "api-key", "password", "passwd", "private_key", "token")
#: Endings of settings that say where a secret is, not what it is (``private_key_file``).
_SECRET_LOCATION_SUFFIXES = ("_file", "_path", "_dir", "_url")


def is_secret_key(name: object) -> bool:
    """Whether a setting called ``name`` holds a secret (by its name: ``secretkey``, ``api_key``...)."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS) and not lowered.endswith(_SECRET_LOCATION_SUFFIXES)


def _leaves(value: Any) -> Iterator[str]:
    """Every scalar in ``value`` as text (booleans and ``None`` are no secrets)."""
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)


def _secret_keys(values: Mapping[str, Any]) -> Iterator[str]:
    """The names of the secret settings in ``values``, nested dicts included."""
    for key, value in values.items():
        if is_secret_key(key):
            yield str(key)
        elif isinstance(value, Mapping):
            yield from _secret_keys(value)


def secret_values(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The values of the secret settings (by name) in ``values``, nested dicts included."""
    found: list[str] = []
    for key, value in values.items():
        if is_secret_key(key):
            found.extend(_leaves(value))
        elif isinstance(value, Mapping):
            found.extend(secret_values(value))
    return tuple(dict.fromkeys(found))


def register_literal_secrets(text: str, path: Path) -> tuple[str, ...]:
    """Register the literals assigned to secret settings in a legacy file that could not be evaluated.

    Evaluation may fail on a later line (``zone = s3cr3tvalue``, an unknown
    name echoed in the error) before the file's values exist; this pass
    registers what the file's secret settings are set to from its syntax
    tree alone: constants, and bare names (a secret written without quotes).
    Returns them all (the short ones too, for :func:`hide_secret_values`).
    A file that is not even valid syntax fails with a message that echoes no value.
    """
    try:
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # such errors echo no value
        return ()
    found: list[str] = []
    for node in ast.walk(tree):
        pairs: list[tuple[object, ast.AST]] = []
        if isinstance(node, ast.Assign):
            pairs = [(getattr(t, "id", None), node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(getattr(node.target, "id", None), node.value)]
        elif isinstance(node, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)]
        for name, value in pairs:
            if is_secret_key(name):
                for leaf in ast.walk(value):
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, (str, int, float)):
                        if not isinstance(leaf.value, bool) and str(leaf.value).strip():
                            found.append(str(leaf.value).strip())
                    elif isinstance(leaf, ast.Name):
                        found.append(leaf.id)
    for literal in found:
        register_secret(literal, name=f"{path} secret setting")
    return tuple(dict.fromkeys(found))


def register_secret_fields(settings: Any) -> None:
    """Register the values of the fields of an attrs ``settings`` object declared ``metadata={"secret": True}``.

    For a settings class's ``__attrs_post_init__``: its secrets are then
    masked however it was built (from a file, or by a program).
    """
    for fld in attrs.fields(type(settings)):
        if fld.metadata.get("secret"):
            for value in _leaves(getattr(settings, fld.name)):
                register_secret(value, name=f"{type(settings).__name__}.{fld.name}")


def _without_literal_secrets(exc: ConfigError, text: str, path: Path) -> ConfigError:
    """``exc`` (a failed parse of ``text``) once the file's secret literals are registered and out of its message."""
    literals = register_literal_secrets(text, path)
    if not literals:
        return exc
    return ConfigError(hide_secret_values(exc.problem, literals), path=exc.path, line=exc.line, key=exc.key)


def _declared_secret_values(cls: type, data: Mapping[str, Any]) -> Iterator[str]:
    """The values in ``data`` of the fields of ``cls`` declared ``metadata={"secret": True}``."""
    for fld in attrs.fields(cls):  # type: ignore[arg-type]
        if fld.metadata.get("secret"):
            for name in (fld.name, *fld.metadata.get("aliases", ())):
                if name in data:
                    yield from _leaves(data[name])


def hide_secret_values(message: str, values: Iterable[str]) -> str:
    """``message`` without any of ``values`` (raw, quoted or escaped), however short, nor any registered secret."""
    for value in sorted(set(values), key=len, reverse=True):
        for form in dict.fromkeys((repr(value)[1:-1], json.dumps(value)[1:-1], value)):
            if form:
                message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", MASK, message)
    return redact(message)


# --------------------------------------------------------------------------- typed settings


@frozen
class _Where:
    """Where the settings being built come from, for error messages.

    ``within`` names the dict setting (``repository_settings``) the keys sit
    in: errors then read ``<file> line <n>: repository_settings: <key>: ...``.
    """

    source: ConfigFile | None
    within: str | None = None

    def _at(self, key: str | None, message: str) -> ConfigError:
        if self.source is None:
            return ConfigError(message, key=key)
        return self.source.error(key, message)

    def error(self, key: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` about setting ``key``."""
        if self.within:
            return self._at(self.within, f"{key}: {message}" if key else message)
        return self._at(key, message)

    def missing(self, *keys: str) -> ConfigError:
        """One :class:`ConfigError` naming every required setting that is not there."""
        if self.within:
            return self._at(self.within, "missing " + ", ".join(f'"{key}"' for key in keys))
        noun = "setting" if len(keys) == 1 else "settings"
        return ConfigError(f"missing {noun} {', '.join(keys)}", path=self.source.path if self.source else None)


def build_settings(
    cls: type[T],
    source: ConfigFile | None,
    *,
    values: Mapping[str, Any] | None = None,
    within: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> T:
    """Build the attrs class ``cls`` from the keys of ``source``: the one way settings are read.

    Each field (made with :func:`pragma_core.settings.setting`) is read from
    the key of its name, or from one of the names in its
    ``metadata["aliases"]``. A field's converter or validator that raises
    :class:`ValueError` or :class:`TypeError` becomes a :class:`ConfigError`
    reading ``<file> line <n>: <key>: <problem>``. A missing field without a
    default is an error naming the file. Unknown keys are logged at debug
    level and ignored (legacy files carry keys nobody reads).

    ``values`` replaces ``source.values`` for the keys of a dict setting;
    ``within`` names that setting, so errors point at its line and read
    ``<file> line <n>: <within>: <key>: <problem>`` (``source`` may then be
    ``None``: the message names no file). ``context`` gives fields that do
    not come from the file (the configuration directory, for example).
    """
    where = _Where(source, within)
    data = dict(values if values is not None else (source.values if source is not None else {}))
    given = dict(context or {})
    declared = tuple(_declared_secret_values(cls, data))
    for secret in declared:
        register_secret(secret, name=f"{source.path if source else within} {cls.__name__}")
    absent = _missing_fields(cls, data, given)
    if absent:
        raise where.missing(*absent)
    kwargs: dict[str, Any] = {}
    keys: dict[str, str] = {}
    known: set[str] = set()
    for fld in attrs.fields(cls):  # type: ignore[arg-type]
        if not fld.init:
            continue
        names = (fld.name, *fld.metadata.get("aliases", ()))
        known.update(names)
        arg = fld.alias or fld.name
        if fld.name in given:
            kwargs[arg] = given[fld.name]
            continue
        key = next((n for n in names if n in data), None)
        if key is None:
            continue
        _convert_or_blame(fld, data[key], where, key, declared)
        kwargs[arg] = data[key]
        keys[arg] = key
    for key in data:
        if key not in known:
            log.debug("%s: setting %s is not used", source.path if source else within, key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        name = _blame(exc, kwargs)
        problem = _problem(exc, name)
        for fld in attrs.fields(cls):  # type: ignore[arg-type]
            if fld.metadata.get("secret") and (fld.alias or fld.name) in kwargs:
                problem = _hide(problem, kwargs[fld.alias or fld.name])
        raise where.error(keys.get(name, name) if name else None, hide_secret_values(problem, declared)) from None


def _missing_fields(cls: type, data: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The fields of ``cls`` without a default that neither ``data`` (by name or alias) nor ``given`` holds."""
    return [
        fld.name
        for fld in attrs.fields(cls)  # type: ignore[arg-type]
        if fld.init
        and fld.default is attrs.NOTHING
        and fld.name not in given
        and not any(n in data for n in (fld.name, *fld.metadata.get("aliases", ())))
    ]


def _convert_or_blame(fld: attrs.Attribute, value: Any, where: _Where, key: str, declared: tuple[str, ...] = ()) -> None:
    """Run the field's converter on ``value`` alone, so an error names the key it came from."""
    converter = getattr(fld.converter, "converter", fld.converter)
    if not callable(converter):
        return
    try:
        converter(value)
    except (ValueError, TypeError) as exc:
        problem = _problem(exc, fld.name)
        if fld.metadata.get("secret"):
            problem = _hide(problem, value)
        raise where.error(key, hide_secret_values(problem, declared)) from None


def _hide(message: str, value: Any) -> str:
    """``message`` with a secret ``value`` (in any printed form) masked as every secret is (``***``)."""
    if len(str(value)) > 2 and str(value) in message:
        return message.replace(str(value), MASK)
    return message.replace(repr(value), repr(MASK)) if len(repr(value)) > 2 else message


def _problem(exc: BaseException, name: str | None) -> str:
    """The message of ``exc`` without a leading ``<name>:``."""
    message = str(exc)
    if name and message.startswith(f"{name}:"):
        message = message[len(name) + 1 :].strip()
    return message


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


def setting_names(cls: type) -> frozenset[str]:
    """Every key ``cls`` reads: field names and their aliases."""
    return frozenset(
        name
        for fld in attrs.fields(cls)  # type: ignore[arg-type]
        if fld.init
        for name in (fld.name, *fld.metadata.get("aliases", ()))
    )


# --------------------------------------------------------------------------- site settings


def _vcout_format(value: Any) -> int:
    number = to_int(value)
    if number not in (1, 2):
        raise ValueError(f"must be 1 or 2, not {value!r}")
    return number


def _driver_name(value: Any) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", value.strip())):
        raise ValueError("must be a driver name such as kvm_rocks")
    return value.strip()


def _file_name(value: Any) -> str:
    name = to_nonempty_str(value)
    if "/" in name or name in (".", ".."):
        raise ValueError("must be a file name, not a path")
    return name


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a dict, not {type(value).__name__}")
    return MappingProxyType(dict(value))



def _url(value: Any) -> str:
    """A non-empty, well-formed URL (:func:`url_problem`)."""
    text = to_nonempty_str(value)
    problem = url_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


@frozen(kw_only=True)
class RepositorySettings:
    """The site's ``repository_settings`` dict.

    ``options`` keeps every other key of the dict (``keypair_id``,
    ``private_key_file``, ``local_image_url``, ``include_images``...); the
    repository class reads them through its ``config_class``
    (:func:`repository_config`).
    """

    repository_class: str = setting(to_nonempty_str, help="entry point in pragma.repositories")
    repository_dir: Path = setting(to_path, help="local root or cache of the images")
    vcdb_filename: str = setting(_file_name, default="vcdb.txt", help="catalogue file in repository_dir")
    repository_url: str | None = setting(optional(_url), default=None, help="remote side, when any")
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
    site_ve_driver: str | None = setting(optional(_driver_name), default=None, help="driver entry point")
    temp_directory: Path | None = setting(
        to_optional_path, default=None, aliases=("temporary_directory",), help="staging directory"
    )
    log_directory: Path | None = setting(to_optional_path, default=None, help="log files of boot and sync")
    repository: RepositorySettings | None = setting(default=None, aliases=("repository_settings",))
    vcout_format: int = setting(_vcout_format, default=2, help="vc-out.xml format, 1 or 2")
    delete_parts_after_staging: bool = setting(to_bool, default=False, help="delete parts once staged")
    max_image_size: int = setting(int_between(1 << 20, 1 << 53), default=DEFAULT_MAX_IMAGE_SIZE,
                                  help="largest staged image, in bytes")

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
    context = {"conf_dir": conf_dir, "source": source, "repository": _repository_settings(source)}
    return build_settings(SiteConfig, source, context=context)


def _repository_settings(source: ConfigFile) -> RepositorySettings | None:
    """The ``repository_settings`` dict of ``source``, or ``None`` when it has none."""
    raw = source.get("repository_settings")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise source.error("repository_settings", "must be a dict")
    known = setting_names(RepositorySettings) - {"options"}
    options = {k: v for k, v in raw.items() if k not in known}
    values = {k: v for k, v in raw.items() if k in known}
    return build_settings(
        RepositorySettings, source, values=values, within="repository_settings", context={"options": options}
    )


def repository_config(cls: type[T], settings: RepositorySettings, source: ConfigFile | None) -> T:
    """A repository's ``config_class`` built from its keys of ``repository_settings``.

    Errors read ``<site file> line <n>: repository_settings: <key>: <problem>``
    (``source`` is the site file; ``None`` leaves the file out).
    """
    return build_settings(cls, source, values=settings.options, within="repository_settings")


def driver_settings(cls: type[T], site: SiteConfig, name: str) -> T:
    """A driver's ``config_class`` built from ``<name>.toml`` or ``<name>.conf`` beside the site file.

    A missing file is an error when ``cls`` has a setting without a default.
    """
    source = site.driver_config(name)
    if source is None:
        required = [f.name for f in attrs.fields(cls) if f.init and f.default is attrs.NOTHING]  # type: ignore[arg-type]
        if required:
            raise ConfigError(f"configuration file not found: {site.conf_dir / (name + '.conf')}")
        source = ConfigFile(path=site.conf_dir / f"{name}.conf", values={}, lines={})
    return build_settings(cls, source)
