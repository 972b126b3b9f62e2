"""The clonezilla repository's settings: keys of the site's ``repository_settings`` dict.

Every key is documented in the plugin's README. Values are checked here, so a
bad one is reported as ``site_conf.conf line N: repository_settings: <key>: ...``
before any work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from pragma_core.config import (
    ConfigFile,
    RepositorySettings,
    build_settings,
    register_secret_fields,
    to_int,
    to_optional_path,
)
from pragma_core.errors import ConfigError

#: ``local_image_url`` when the site gives none: the image beside its ``-local.xml``.
DEFAULT_LOCAL_IMAGE_URL = "file://$repository_dir/$cluster/$imagename.raw"
DEFAULT_DRIVE_API_URL = "https://www.googleapis.com/drive/v3"
DEFAULT_DRIVE_WEB_URL = "https://drive.google.com"
DEFAULT_DRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download"

_FOLDER_URL = re.compile(r"/folders/([A-Za-z0-9_-]+)")
_FOLDER_ID = re.compile(r"[A-Za-z0-9_-]{10,}")
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)
_UNITS = {"": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def folder_id_from(url: str) -> str:
    """The Drive folder id in ``repository_url``: a folder URL or a bare id."""
    url = url.strip()
    match = _FOLDER_URL.search(url)
    if match:
        return match.group(1)
    if url.startswith(("http://", "https://")):
        query = dict(p.split("=", 1) for p in urlsplit(url).query.split("&") if "=" in p)
        if _FOLDER_ID.fullmatch(query.get("id", "")):
            return query["id"]
        raise ValueError(f"repository_url: no Google Drive folder id in {url!r} (expected .../folders/<id>)")
    if _FOLDER_ID.fullmatch(url):
        return url
    raise ValueError(f"repository_url: {url!r} is neither a Google Drive folder URL nor a folder id")


def _regex(value: Any) -> re.Pattern[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise TypeError(f"must be a regular expression string, not {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    return value.rstrip("/")


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {type(value).__name__}")
    return value


def to_size(value: Any) -> int | None:
    """Converter: a disk size, ``50`` (GiB, like ``cziso size=``) or ``"50G"``, ``"512M"``; bytes."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        number, unit = int(match.group(1)), match.group(2).upper()
    else:
        raise ValueError(f"must be a size such as 50 (GiB), '50G' or '512M', not {value!r}")
    if number <= 0:
        raise ValueError(f"must be positive, not {value!r}")
    return number * _UNITS[unit]


def _restore_with(value: Any) -> str:
    if value not in ("native", "cziso"):
        raise ValueError(f"must be 'native' or 'cziso', not {value!r}")
    return str(value)


def _positive(value: Any) -> int:
    number = to_int(value)
    if number < 0:
        raise ValueError(f"must not be negative, not {value!r}")
    return number


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number of seconds, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {value!r}") from None
    if number < 0:
        raise ValueError(f"must not be negative, not {value!r}")
    return number


@frozen(kw_only=True)
class ClonezillaSettings:
    """The clonezilla keys of ``repository_settings`` (besides ``repository_dir`` and ``vcdb_filename``)."""

    local_image_url: str = field(default=DEFAULT_LOCAL_IMAGE_URL)
    api_key: str | None = field(default=None, converter=_optional_str, repr=False, metadata={"secret": True})
    drive_api_url: str = field(default=DEFAULT_DRIVE_API_URL, converter=_http_url)
    drive_web_url: str = field(default=DEFAULT_DRIVE_WEB_URL, converter=_http_url)
    drive_download_url: str = field(default=DEFAULT_DRIVE_DOWNLOAD_URL, converter=_http_url)
    include_images: re.Pattern[str] | None = field(default=None, converter=_regex)
    exclude_images: re.Pattern[str] | None = field(default=None, converter=_regex)
    size: int | None = field(default=None, converter=to_size)
    restore_with: str = field(default="native", converter=_restore_with)
    cziso: Path | None = field(default=None, converter=to_optional_path)
    ssh: str = field(default="ssh", converter=str)
    retries: int = field(default=5, converter=_positive)
    retry_delay: float = field(default=2.0, converter=_seconds)
    timeout: float = field(default=60.0, converter=_seconds)
    work_dir: Path | None = field(default=None, converter=to_optional_path)

    def __attrs_post_init__(self) -> None:
        register_secret_fields(self)
        if not isinstance(self.local_image_url, str) or "://" not in self.local_image_url:
            raise ValueError(
                f"local_image_url: must be a file://... or zfs://nas/pool/volume template, not {self.local_image_url!r}"
            )
        if self.restore_with == "cziso" and self.cziso is None:
            raise ValueError("restore_with: 'cziso' needs the cziso setting (path of the cziso executable)")


def load_settings(settings: RepositorySettings, source: ConfigFile | None) -> tuple[ClonezillaSettings, str]:
    """The typed settings and the Drive folder id, errors naming the site file and key."""
    where = source if source is not None else ConfigFile(path=Path("repository_settings"), values={}, lines={})
    if not settings.repository_url:
        raise ConfigError(
            "missing repository_url (the Google Drive folder URL or id)", path=where.path, key="repository_settings"
        )
    try:
        folder = folder_id_from(settings.repository_url)
    except ValueError as exc:
        raise where.error("repository_settings", str(exc)) from None
    try:
        typed = build_settings(ClonezillaSettings, where, values=settings.options)
    except ConfigError as exc:
        # build_settings blames the nested key; say where it sits.
        raise ConfigError(
            f"{exc.key}: {exc.problem}" if exc.key else exc.problem,
            path=where.path,
            line=where.lines.get("repository_settings"),
            key="repository_settings",
        ) from None
    return typed, folder
