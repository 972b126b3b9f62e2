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

from attrs import frozen

from pragma_core import ConfigError
from pragma_core.pluginkit import (
    MAX_INT,
    ConfigFile,
    RepositorySettings,
    choice,
    int_between,
    optional,
    register_secret_fields,
    setting,
    to_non_negative_int,
    to_optional_path,
    to_positive_int,
    to_seconds,
    to_token,
)

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


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {type(value).__name__}")
    return value


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    return value.rstrip("/")


#: The largest disk a restore may make when the site sets none: 1 TiB.
DEFAULT_MAX_DISK_SIZE = 1 << 40
#: The longest one image's restore may take (tools, restore VM, transfer to a NAS), seconds: 6 h.
DEFAULT_RESTORE_TIMEOUT = 6 * 3600.0
_disk_bytes = int_between(1 << 20, 1 << 53)


def to_max_disk_size(value: Any) -> int:
    """Converter: ``max_disk_size``, bytes (``1099511627776``) or a size with its unit (``"1T"``, ``"500G"``), 1 MiB to 8 PiB."""
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match and match.group(2):
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    return _disk_bytes(value)


def to_size(value: Any) -> int | None:
    """Converter: a disk size, ``50`` (GiB, like ``cziso size=``) or ``"50G"``, ``"512M"``; bytes."""
    if value is None or value == "":
        return None
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    try:
        number, unit = (int(match.group(1)), match.group(2).upper()) if match else (to_positive_int(value), "")
    except ValueError:
        raise ValueError(f"must be a size such as 50 (GiB), '50G' or '512M', not {value!r}") from None
    if not 0 < number <= MAX_INT:
        raise ValueError(f"must be positive, not {value!r}")
    return number * _UNITS[unit]


@frozen(kw_only=True)
class ClonezillaSettings:
    """The clonezilla keys of ``repository_settings`` (besides ``repository_dir`` and ``vcdb_filename``)."""

    local_image_url: str = setting(default=DEFAULT_LOCAL_IMAGE_URL, help="where a restored image is written")
    api_key: str | None = setting(optional(to_token), default=None, secret=True, help="Drive API v3 key")
    drive_api_url: str = setting(_http_url, default=DEFAULT_DRIVE_API_URL)
    drive_web_url: str = setting(_http_url, default=DEFAULT_DRIVE_WEB_URL)
    drive_download_url: str = setting(_http_url, default=DEFAULT_DRIVE_DOWNLOAD_URL)
    include_images: re.Pattern[str] | None = setting(_regex, default=None, help="regex: folders synced")
    exclude_images: re.Pattern[str] | None = setting(_regex, default=None, help="regex: folders skipped")
    size: int | None = setting(to_size, default=None, help="disk size, 50 (GiB), '50G' or '512M'")
    max_disk_size: int = setting(
        to_max_disk_size, default=DEFAULT_MAX_DISK_SIZE, help="largest disk a restore may make, bytes (or '1T', '500G')"
    )
    restore_with: str = setting(choice("native", "cziso"), default="native")
    cziso: Path | None = setting(to_optional_path, default=None, help="path of the cziso executable")
    ssh: str = setting(_text, default="ssh", help="ssh command for zfs:// targets")
    retries: int = setting(to_non_negative_int, default=5)
    retry_delay: float = setting(to_seconds, default=2.0)
    timeout: float = setting(to_seconds, default=60.0)
    restore_timeout: float = setting(
        to_seconds, default=DEFAULT_RESTORE_TIMEOUT, help="longest one image's restore may take, seconds"
    )
    work_dir: Path | None = setting(to_optional_path, default=None)

    def __attrs_post_init__(self) -> None:
        register_secret_fields(self)
        if not isinstance(self.local_image_url, str) or "://" not in self.local_image_url:
            raise ValueError(
                f"local_image_url: must be a file://... or zfs://nas/pool/volume template, not {self.local_image_url!r}"
            )
        if self.size is not None and self.size > self.max_disk_size:
            raise ValueError(f"size: {self.size} bytes is more than max_disk_size ({self.max_disk_size} bytes)")
        if self.restore_with == "cziso" and self.cziso is None:
            raise ValueError("restore_with: 'cziso' needs the cziso setting (path of the cziso executable)")


def folder_id(settings: RepositorySettings, source: ConfigFile | None) -> str:
    """The Drive folder id of ``repository_url``; a :class:`ConfigError` naming it when there is none."""
    path = source.path if source is not None else None
    line = source.lines.get("repository_settings") if source is not None else None
    if not settings.repository_url:
        problem = "missing repository_url (the Google Drive folder URL or id)"
        raise ConfigError(problem, path=path, line=line, key="repository_settings")
    try:
        return folder_id_from(settings.repository_url)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=line, key="repository_settings") from None
