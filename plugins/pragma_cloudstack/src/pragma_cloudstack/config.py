"""The settings of ``cloudstack.conf`` (see the README for every key).

Core reads the file (legacy Python-literal syntax, or ``cloudstack.toml``) and
builds :class:`CloudStackSettings` with
:func:`pragma_core.config.build_settings`, so a bad value is reported as
``cloudstack.conf line 4: max_parallel: must be at least 1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from attrs import frozen

from pragma_core.pluginkit import (
    choice,
    optional,
    register_secret_fields,
    setting,
    to_bool,
    to_ipv4_list,
    to_non_negative_int,
    to_nonempty_str,
    to_positive_int,
    to_positive_seconds,
    to_token,
    warn_if_readable_by_others,
)

#: Values CloudStack accepts for ``templatefilter``.
TEMPLATE_FILTERS = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")
#: The file stems core looks for, in its order of preference.
CONF_NAMES = ("cloudstack.toml", "cloudstack.conf")


def _baseurl(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/?#\s]+", value.strip()):
        raise ValueError(f"must be an http:// or https:// URL such as http://host:8080/client/api, not {value!r}")
    # The legacy value ends with "?" (the query was appended to it); accept both.
    return value.strip().rstrip("?")


def _vm_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", value):
        raise ValueError(
            f"must start with a lower-case letter and hold only a-z, 0-9 and '-' (at most 30), not {value!r}"
        )
    if "compute" in value:
        raise ValueError("must not contain 'compute' (compute VMs are named <cluster>-compute-<i>)")
    return value


_name = optional(to_nonempty_str)


@frozen(kw_only=True)
class CloudStackSettings:
    """The validated contents of ``cloudstack.conf``.

    ``apikey`` and ``secretkey`` are kept out of ``repr``; nothing logs them.
    """

    baseurl: str = setting(_baseurl, help="API endpoint, e.g. http://host:8080/client/api")
    apikey: str = setting(to_token, secret=True, help="API key")
    secretkey: str = setting(to_token, secret=True, help="secret key that signs requests")
    templatefilter: str = setting(choice(*TEMPLATE_FILTERS), default="executable")
    networkoffering: str | None = setting(_name, default=None)
    zone: str | None = setting(_name, default=None)
    service_offering: str | None = setting(_name, default=None)
    public_network: str = setting(to_nonempty_str, default="public")
    dns: tuple[str, ...] = setting(to_ipv4_list, default=(), help="DNS servers of the nodes")
    vm_prefix: str = setting(_vm_prefix, default="vc-")
    max_parallel: int = setting(to_positive_int, default=4)
    job_timeout: float = setting(to_positive_seconds, default=600.0)
    request_timeout: float = setting(to_positive_seconds, default=30.0)
    retries: int = setting(to_non_negative_int, default=3)
    poll_interval: float = setting(to_positive_seconds, default=1.0)
    poll_max_interval: float = setting(to_positive_seconds, default=10.0)
    signature_lifetime: float = setting(to_positive_seconds, default=600.0)
    page_size: int = setting(to_positive_int, default=500)
    verify_tls: bool = setting(to_bool, default=True)

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


