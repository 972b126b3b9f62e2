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
import time

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
        urlsplit(url).port  # parsing the port is the check
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
        return parse_toml(text, path)
    return parse_legacy(text, path)


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
        raise ConfigError(f"configuration file not found: {directory / (SITE_CONF + '.conf')}")
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
        if (problem := url_problem(fields_.get("repository_url") or "")) is not None:
            raise source.error("repository_settings", f"repository_url {problem}")
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
