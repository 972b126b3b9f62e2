"""Converters and a field helper for declarative settings classes (part of the plugin-helper surface).

A driver's ``<name>.conf``, a repository's keys of ``repository_settings`` and
the site's ``site_conf.conf`` are each described by one attrs class whose
fields are made with :func:`setting`; core builds it with
:func:`pragma_core.config.build_settings`, which reports a bad value as
``<file> line <n>: <key>: <problem>``::

    from attrs import frozen
    from pragma_core.pluginkit import setting, to_positive_int, to_seconds, to_ipv4_list, choice

    @frozen(kw_only=True)
    class MyConfig:
        public_ips: tuple[str, ...] = setting(to_ipv4_list, help="addresses for frontends")
        max_parallel: int = setting(to_positive_int, default=4)
        job_timeout: float = setting(to_seconds, default=600)
        mode: str = setting(choice("fast", "safe"), default="safe")
        token: str = setting(to_nonempty_str, secret=True)

Every converter accepts a value in any of its legal spellings and gives the
same result for all of them: ``120``, ``120.0``, ``"120"`` and ``" 120 "``
are the same number; ``True``, ``1``, ``"1"``, ``"yes"`` and ``"on"`` the
same boolean; ``["a", "b"]``, ``"a b"`` and ``"a, b"`` the same list. A value
that no spelling allows raises :class:`ValueError` (or :class:`TypeError`)
with a message that ``build_settings`` places after the file, line and key.
Numbers are bounded: no ``inf``, no ``nan``, no booleans, nothing above
:data:`MAX_INT` (whole numbers) or :data:`MAX_SECONDS` (durations).

Converters are idempotent (converting a converted value gives it back),
because attrs runs them again when the class is built.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import attrs

T = TypeVar("T")
Converter = Callable[[Any], Any]

#: The largest whole number a setting may hold (counts, sizes in units, ports...).
MAX_INT = 2**31 - 1
#: The longest duration a setting may hold: one year, in seconds.
MAX_SECONDS = 365 * 24 * 3600
#: The largest magnitude of any number read from a setting.
MAX_NUMBER = float(2**53)

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")
_MAX_NUMBER_TEXT = 64
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off", ""})


def invalid(key: str, message: str) -> ValueError:
    """A :class:`ValueError` that :func:`~pragma_core.config.build_settings` reports against ``key``."""
    return ValueError(f"{key}: {message}")


def setting(
    converter: Converter | None = None,
    *,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
    help: str = "",  # noqa: A002 - the natural name for a setting's description
    secret: bool = False,
    aliases: Iterable[str] = (),
    validator: Any = None,
) -> Any:
    """An attrs field read from the setting of its name (or one of ``aliases``).

    ``converter`` turns any legal spelling into the value (see this module's
    converters); ``default``/``factory`` make the setting optional;
    ``help`` describes it; ``secret=True`` marks it ``metadata["secret"]`` and
    keeps it out of ``repr``.
    """
    metadata: dict[str, Any] = {"help": help, "aliases": tuple(aliases)}
    if secret:
        metadata["secret"] = True
    kwargs: dict[str, Any] = {}
    if factory is not None:
        kwargs["factory"] = factory
    else:
        kwargs["default"] = default
    return attrs.field(converter=converter, validator=validator, metadata=metadata, repr=not secret, **kwargs)


# --------------------------------------------------------------------------- numbers


def _number(value: Any, what: str) -> int | float:
    """``value`` as an int or a finite float; ``what`` names the expected kind in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {what}, not {value!r}")
    number: int | float
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_NUMBER_TEXT or not _NUMBER.fullmatch(text):
            raise ValueError(f"must be {what}, not {value!r}")
        number = float(text) if any(c in text for c in ".eE") else int(text)
    else:
        number = value
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"must be {what}, not {value!r}")
    if abs(number) > MAX_NUMBER:
        raise ValueError(f"is too large: {value!r}")
    return number


def _shown(number: float) -> str:
    """``number`` as a person writes it: ``30``, ``0.5``, ``31536000``."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def to_number(value: Any) -> float:
    """Converter: a finite number, written as an int, a float or a numeric string."""
    return float(_number(value, "a number"))


def number_between(minimum: float, maximum: float, *, above: bool = False) -> Converter:
    """Converter factory: a number from ``minimum`` (excluded when ``above``) to ``maximum``."""

    def convert(value: Any) -> float:
        number = to_number(value)
        low_ok = number > minimum if above else number >= minimum
        if not low_ok or number > maximum:
            low = f"above {_shown(minimum)}" if above else f"at least {_shown(minimum)}"
            raise ValueError(f"must be {low} and at most {_shown(maximum)}, not {value!r}")
        return number

    return convert


def _whole(value: Any) -> int:
    number = _number(value, "a whole number")
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError(f"must be a whole number, not {value!r}")
        number = int(number)
    return number


def int_between(minimum: int, maximum: int = MAX_INT) -> Converter:
    """Converter factory: a whole number from ``minimum`` to ``maximum`` (``4``, ``4.0`` or ``"4"``)."""

    def convert(value: Any) -> int:
        number = _whole(value)
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, not {value!r}")
        if number > maximum:
            raise ValueError(f"must be at most {maximum}, not {value!r}")
        return number

    return convert


#: Converter: any whole number within ``±MAX_INT``.
to_int = int_between(-MAX_INT, MAX_INT)
#: Converter: a whole number, at least 1.
to_positive_int = int_between(1)
#: Converter: a whole number, at least 0.
to_non_negative_int = int_between(0)


def seconds(*, above: bool = False, maximum: float = MAX_SECONDS) -> Converter:
    """Converter factory: a duration in seconds, ``>= 0`` (``> 0`` when ``above``), at most ``maximum``."""

    def convert(value: Any) -> float:
        number = float(_number(value, "a number of seconds"))
        if number < 0 or (above and number == 0):
            raise ValueError(f"must be {'more than 0 seconds' if above else 'at least 0 seconds'}, not {value!r}")
        if number > maximum:
            raise ValueError(f"must be at most {_shown(maximum)} seconds, not {value!r}")
        return number

    return convert


#: Converter: a duration in seconds, 0 or more (``120``, ``120.0``, ``"120"``).
to_seconds = seconds()
#: Converter: a duration in seconds, more than 0.
to_positive_seconds = seconds(above=True)


# --------------------------------------------------------------------------- words


def to_bool(value: Any) -> bool:
    """Converter: ``True``/``False``, ``1``/``0``, and ``yes/no/true/false/on/off/y/n/t/f`` in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError(f"must be a boolean (true/false), not {value!r}")


def choice(*allowed: str) -> Converter:
    """Converter factory: one of ``allowed``, matched ignoring case and surrounding blanks."""
    canonical = {word.casefold(): word for word in allowed}

    def convert(value: Any) -> str:
        found = canonical.get(value.strip().casefold()) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"must be one of {', '.join(allowed)}, not {value!r}")
        return found

    return convert


def to_nonempty_str(value: Any) -> str:
    """Converter: a string with something in it, surrounding blanks removed."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value.strip()


def to_token(value: Any) -> str:
    """Converter: a credential sent in an HTTP header or a signed query -- visible ASCII, no blanks.

    The error never shows the value (tokens are secrets): a key pasted with
    an accented letter or a line break is named by its setting alone.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    text = value.strip()
    if not all("!" <= c <= "~" for c in text):
        raise ValueError("must be visible ASCII characters only (no blanks, line breaks or accented letters)")
    return text


def optional(converter: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """Converter factory: ``None`` for ``None`` or ``""``, else ``converter(value)``."""

    def convert(value: Any) -> T | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return converter(value)

    return convert


def to_str_list(value: Any) -> tuple[str, ...]:
    """Converter: a list of strings, or one string of items separated by blanks or commas."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in re.split(r"[\s,]+", value) if v)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return tuple(v.strip() for v in items if v.strip())
    raise ValueError(f"must be a list of strings, not {value!r}")


def to_tuple(value: Iterable[T]) -> tuple[T, ...]:
    """Converter for the fields of records and values (not of settings): ``tuple(value)``.

    Use it instead of the builtin ``tuple``: attrs reads a converter's
    signature when it makes the class, and a builtin's means parsing its
    text signature, ~10 ms in every process the first time.
    """
    return tuple(value)


# --------------------------------------------------------------------------- paths


def to_path(value: Any) -> Path:
    """Converter: a non-empty path string to a :class:`Path`."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise TypeError("must be a non-empty path string")
    return Path(value.strip())


#: Converter: ``None`` or ``""`` to ``None``, else a :class:`Path`.
to_optional_path = optional(to_path)


# --------------------------------------------------------------------------- IPv4


def to_ipv4_address(value: Any) -> ipaddress.IPv4Address:
    """Converter: one IPv4 address in dotted form."""
    if isinstance(value, ipaddress.IPv4Address):
        return value
    try:
        return ipaddress.IPv4Address(value.strip() if isinstance(value, str) else "")
    except ValueError:
        raise ValueError(f"must be an IPv4 address, not {value!r}") from None


def to_ipv4_list(value: Any) -> tuple[str, ...]:
    """Converter: IPv4 addresses (a list, or a string separated by blanks or commas), each once.

    The addresses are given back in their canonical dotted form, in order.
    """
    if isinstance(value, ipaddress.IPv4Address):
        value = [str(value)]
    elif isinstance(value, (list, tuple)):
        value = [str(v) if isinstance(v, ipaddress.IPv4Address) else v for v in value]
    out = []
    for item in to_str_list(value):
        try:
            out.append(str(ipaddress.IPv4Address(item)))
        except ValueError:
            raise ValueError(f"must be a list of IPv4 addresses, {item!r} is not one") from None
    if len(set(out)) != len(out):
        raise ValueError("lists an address twice")
    return tuple(out)


def to_ipv4_network(value: Any) -> ipaddress.IPv4Network:
    """Converter: an IPv4 network in CIDR form (``10.1.0.0/16``), host bits clear."""
    if isinstance(value, ipaddress.IPv4Network):
        return value
    try:
        return ipaddress.IPv4Network(value.strip() if isinstance(value, str) else "")
    except ValueError:
        raise ValueError(f"must be an IPv4 network such as 10.1.0.0/16, not {value!r}") from None


__all__ = [
    "MAX_INT",
    "MAX_NUMBER",
    "MAX_SECONDS",
    "choice",
    "int_between",
    "invalid",
    "number_between",
    "optional",
    "seconds",
    "setting",
    "to_bool",
    "to_int",
    "to_ipv4_address",
    "to_ipv4_list",
    "to_ipv4_network",
    "to_non_negative_int",
    "to_nonempty_str",
    "to_number",
    "to_optional_path",
    "to_path",
    "to_positive_int",
    "to_positive_seconds",
    "to_seconds",
    "to_str_list",
    "to_token",
    "to_tuple",
]
