"""The settings of ``cloudstack.conf`` (see the README for every key).

Core reads the file (legacy Python-literal syntax, or ``cloudstack.toml``) and
builds :class:`CloudStackSettings` with
:func:`pragma_core.config.build_settings`, so a bad value is reported as
``cloudstack.conf line 4: max_parallel: must be at least 1``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from attrs import field, frozen
from pragma_core.config import (
    invalid,
    register_secret_fields,
    to_bool,
    to_int,
    to_str_list,
    warn_if_readable_by_others,
)

#: Values CloudStack accepts for ``templatefilter``.
TEMPLATE_FILTERS = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")
#: The file stems core looks for, in its order of preference.
CONF_NAMES = ("cloudstack.toml", "cloudstack.conf")

T = TypeVar("T")


def _checked(key: str, convert: Callable[[Any], T], value: Any) -> T:
    """``convert(value)``, its errors naming ``key`` so core reports file, line and key."""
    try:
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise invalid(key, str(exc)) from None


def _baseurl(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/?#\s]+", value):
        raise ValueError(f"must be an http:// or https:// URL such as http://host:8080/client/api, not {value!r}")
    # The legacy value ends with "?" (the query was appended to it); accept both.
    return value.strip().rstrip("?")


def _nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _optional_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _nonempty(value)


def _templatefilter(value: Any) -> str:
    if value not in TEMPLATE_FILTERS:
        raise ValueError(f"must be one of {', '.join(TEMPLATE_FILTERS)}, not {value!r}")
    return value


def _dns(value: Any) -> tuple[str, ...]:
    servers = to_str_list(value)
    for server in servers:
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            raise ValueError(f"must be a list of IPv4 addresses, {server!r} is not one") from None
    return servers


def _vm_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", value):
        raise ValueError(
            f"must start with a lower-case letter and hold only a-z, 0-9 and '-' (at most 30), not {value!r}"
        )
    if "compute" in value:
        raise ValueError("must not contain 'compute' (compute VMs are named <cluster>-compute-<i>)")
    return value


def _positive_int(value: Any) -> int:
    number = to_int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, not {number}")
    return number


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"must be a number of seconds, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {value!r}") from None
    if not number > 0:
        raise ValueError(f"must be more than 0 seconds, not {value!r}")
    return number


def _nonnegative_int(value: Any) -> int:
    number = to_int(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, not {number}")
    return number


@frozen(kw_only=True)
class CloudStackSettings:
    """The validated contents of ``cloudstack.conf``.

    ``apikey`` and ``secretkey`` are secrets (``metadata={"secret": True}``):
    kept out of ``repr``, registered for masking when the file is read, and
    never shown in a config error or a log line.
    """

    baseurl: str = field(converter=lambda v: _checked("baseurl", _baseurl, v))
    apikey: str = field(converter=lambda v: _checked("apikey", _nonempty, v), repr=False, metadata={"secret": True})
    secretkey: str = field(converter=lambda v: _checked("secretkey", _nonempty, v), repr=False, metadata={"secret": True})
    templatefilter: str = field(default="executable", converter=lambda v: _checked("templatefilter", _templatefilter, v))
    networkoffering: str | None = field(default=None, converter=lambda v: _checked("networkoffering", _optional_name, v))
    zone: str | None = field(default=None, converter=lambda v: _checked("zone", _optional_name, v))
    service_offering: str | None = field(default=None, converter=lambda v: _checked("service_offering", _optional_name, v))
    public_network: str = field(default="public", converter=lambda v: _checked("public_network", _nonempty, v))
    dns: tuple[str, ...] = field(default=(), converter=lambda v: _checked("dns", _dns, v))
    vm_prefix: str = field(default="vc-", converter=lambda v: _checked("vm_prefix", _vm_prefix, v))
    max_parallel: int = field(default=4, converter=lambda v: _checked("max_parallel", _positive_int, v))
    job_timeout: float = field(default=600.0, converter=lambda v: _checked("job_timeout", _seconds, v))
    request_timeout: float = field(default=30.0, converter=lambda v: _checked("request_timeout", _seconds, v))
    retries: int = field(default=3, converter=lambda v: _checked("retries", _nonnegative_int, v))
    poll_interval: float = field(default=1.0, converter=lambda v: _checked("poll_interval", _seconds, v))
    poll_max_interval: float = field(default=10.0, converter=lambda v: _checked("poll_max_interval", _seconds, v))
    signature_lifetime: float = field(default=600.0, converter=lambda v: _checked("signature_lifetime", _seconds, v))
    page_size: int = field(default=500, converter=lambda v: _checked("page_size", _positive_int, v))
    verify_tls: bool = field(default=True, converter=lambda v: _checked("verify_tls", to_bool, v))

    def __attrs_post_init__(self) -> None:
        register_secret_fields(self)


def settings_file(conf_dir: Path) -> Path | None:
    """The file core reads the settings from (``cloudstack.toml`` before ``.conf``), if any."""
    for name in CONF_NAMES:
        candidate = conf_dir / name
        if candidate.is_file():
            return candidate
    return None


def warn_about_secret_file(conf_dir: Path) -> bool:
    """Warn when the file holding ``secretkey`` is readable by group or others."""
    path = settings_file(conf_dir)
    return path is not None and warn_if_readable_by_others(path, "the CloudStack secretkey")


