"""The plugin kit: every helper a driver, repository or hook plugin may import from core.

What a plugin may import from ``pragma_core`` is declared, and is exactly
two things:

* the top-level names of :mod:`pragma_core` (``from pragma_core import
  Driver, Allocation, DriverError, hookimpl``): the interfaces, the model,
  the errors, the hook markers;
* the names of this module (``from pragma_core.pluginkit import setting,
  HttpClient, run_parallel``): the shared mechanics core owns so that no
  plugin re-implements them.

Any other ``pragma_core.*`` module is core's inside and may change in any
release; ``tests/test_plugin_imports.py`` fails when a plugin of this
repository imports one (or a private name). A plugin's *tests* may also use
:mod:`pragma_core.testing`, the conformance kit.

The helpers, by subject:

Settings (``<driver>.conf``, a repository's keys of ``repository_settings``)
    :func:`setting` and the converters (``to_*``, :func:`choice`,
    :func:`int_between`, :func:`number_between`, :func:`seconds`,
    :func:`optional`, :func:`invalid`); :func:`build_settings`, the one way a
    settings class is built from a :class:`ConfigFile`;
    :func:`register_secret_fields`, :func:`warn_if_readable_by_others`;
    the types :class:`SiteConfig` and :class:`RepositorySettings`.
HTTP (:mod:`pragma_core.http`)
    :class:`HttpClient` (retries, resume, deadlines, bounded answers),
    pluggable authentication (:class:`Auth`, :class:`HeaderAuth`,
    :class:`UrlSigner`, :class:`Outgoing`), :class:`Reply`,
    :class:`Deadline`, the transfer errors, and :func:`poll` (poll with
    backoff up to a timeout).
Secrets (:mod:`pragma_core.redaction`)
    :func:`register_secret`, :func:`register_pem`, :func:`redact`,
    :func:`redact_logs`, :func:`install_log_redaction`.
Files (:mod:`pragma_core.paths`)
    :func:`safe_join`, :func:`open_inside`, :func:`stat_inside`,
    :func:`is_inside`, :func:`fsync_directory`, :func:`no_follow`,
    :func:`open_lane`, :func:`private_directory`, :func:`unshared_directory`, :class:`UnsafeFileError`;
    :func:`free_bytes` and :data:`FREE_SPACE_RESERVE` (what writing an image leaves free),
    :data:`DEFAULT_MAX_IMAGE_SIZE`.
Images and catalogues
    :func:`check_image` (a disk image and its backing chain, before anything
    opens it), :func:`read_qcow2_header`; :func:`parse_cluster_xml`,
    :func:`replace_disk_source`; :func:`read_vcdb`, :func:`write_vcdb`,
    :func:`is_valid_name`, :func:`invalid_name`; :class:`Stager` (the type a
    repository's ``stage`` is handed).
Addresses
    :func:`plan_addresses`, :func:`frontend_address`, :func:`parse_cidr`.
Work in parallel, processes
    :func:`run_parallel` (every item runs, every failure is reported:
    :class:`ParallelError` is an :class:`ExceptionGroup`);
    :func:`process_alive` (is the process that made a reservation still
    running).
External tools (:mod:`pragma_core.tools`)
    :func:`run_tool` (a deadline, a cap on what it prints, killed with its
    process group), :func:`start_tool`, :func:`watch_tool` and
    :func:`stop_tool` for a tool fed through a pipe, :func:`overdue_error`,
    :data:`MAX_TOOL_OUTPUT`.

Names load on first use, like :mod:`pragma_core`'s, so importing this
module costs nothing until a name is used.
"""

# ruff: noqa: PLC0414 - "x as x" marks a re-export for type checkers
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: name -> (module, attribute): what this module exports and where it lives.
_EXPORTS: dict[str, tuple[str, str]] = {
    **{
        name: ("pragma_core.settings", name)
        for name in (
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
        )
    },
    **{
        name: ("pragma_core.config", name)
        for name in (
            "ConfigFile",
            "RepositorySettings",
            "SiteConfig",
            "build_settings",
            "register_secret_fields",
            "warn_if_readable_by_others",
        )
    },
    **{
        name: ("pragma_core.http", name)
        for name in (
            "DEFAULT_DEADLINE",
            "DEFAULT_IMAGE_DEADLINE",
            "Auth",
            "Deadline",
            "DeadlineExceededError",
            "HeaderAuth",
            "HttpClient",
            "Outgoing",
            "Reply",
            "RetriesExhaustedError",
            "TooLargeError",
            "TransferError",
            "TransientError",
            "UrlSigner",
            "poll",
            "redact_logs",
        )
    },
    **{name: ("pragma_core.redaction", name) for name in ("redact", "register_pem", "register_secret")},
    "install_log_redaction": ("pragma_core.redaction", "install"),
    **{
        name: ("pragma_core.paths", name)
        for name in ("DEFAULT_MAX_IMAGE_SIZE", "FREE_SPACE_CHECK_EVERY", "FREE_SPACE_RESERVE", "UnsafeFileError", "free_bytes",
                     "fsync_directory", "is_inside", "no_follow", "open_inside", "open_lane", "private_directory",
                     "safe_join", "stat_inside", "unshared_directory")
    },
    **{name: ("pragma_core.imagecheck", name) for name in ("CheckedImage", "Qcow2Header", "check_image", "read_qcow2_header")},
    **{name: ("pragma_core.clusterxml", name) for name in ("MAX_DESCRIPTION_BYTES", "parse_cluster_xml", "replace_disk_source")},
    **{name: ("pragma_core.vcdb", name) for name in ("invalid_name", "is_valid_name", "read_vcdb", "write_vcdb")},
    "Stager": ("pragma_core.staging", "Stager"),
    "gzip_library": ("pragma_core.processors", "gzip_library"),
    "printable": ("pragma_core.printable", "printable"),
    "NodeProgress": ("pragma_core.events", "NodeProgress"),
    **{name: ("pragma_core.addressing", name) for name in ("AddressPlan", "frontend_address", "parse_cidr", "plan_addresses")},
    **{name: ("pragma_core.parallel", name) for name in ("ParallelError", "run_parallel")},
    "process_alive": ("pragma_core.signals", "process_alive"),
    **{name: ("pragma_core.tools", name)
       for name in ("MAX_TOOL_OUTPUT", "overdue_error", "run_tool", "start_tool", "stop_tool", "watch_tool")},
}

if TYPE_CHECKING:  # what type checkers see; at run time names load on first use
    from .addressing import AddressPlan as AddressPlan
    from .addressing import frontend_address as frontend_address
    from .addressing import parse_cidr as parse_cidr
    from .addressing import plan_addresses as plan_addresses
    from .clusterxml import MAX_DESCRIPTION_BYTES as MAX_DESCRIPTION_BYTES
    from .clusterxml import parse_cluster_xml as parse_cluster_xml
    from .clusterxml import replace_disk_source as replace_disk_source
    from .config import ConfigFile as ConfigFile
    from .config import RepositorySettings as RepositorySettings
    from .config import SiteConfig as SiteConfig
    from .config import build_settings as build_settings
    from .config import register_secret_fields as register_secret_fields
    from .config import warn_if_readable_by_others as warn_if_readable_by_others
    from .http import DEFAULT_DEADLINE as DEFAULT_DEADLINE
    from .http import DEFAULT_IMAGE_DEADLINE as DEFAULT_IMAGE_DEADLINE
    from .http import Auth as Auth
    from .http import Deadline as Deadline
    from .http import DeadlineExceededError as DeadlineExceededError
    from .http import HeaderAuth as HeaderAuth
    from .http import HttpClient as HttpClient
    from .http import Outgoing as Outgoing
    from .http import Reply as Reply
    from .http import RetriesExhaustedError as RetriesExhaustedError
    from .http import TooLargeError as TooLargeError
    from .http import TransferError as TransferError
    from .http import TransientError as TransientError
    from .http import UrlSigner as UrlSigner
    from .http import poll as poll
    from .http import redact_logs as redact_logs
    from .imagecheck import CheckedImage as CheckedImage
    from .imagecheck import Qcow2Header as Qcow2Header
    from .imagecheck import check_image as check_image
    from .imagecheck import read_qcow2_header as read_qcow2_header
    from .parallel import ParallelError as ParallelError
    from .parallel import run_parallel as run_parallel
    from .paths import DEFAULT_MAX_IMAGE_SIZE as DEFAULT_MAX_IMAGE_SIZE
    from .paths import FREE_SPACE_CHECK_EVERY as FREE_SPACE_CHECK_EVERY
    from .paths import FREE_SPACE_RESERVE as FREE_SPACE_RESERVE
    from .paths import UnsafeFileError as UnsafeFileError
    from .paths import free_bytes as free_bytes
    from .paths import fsync_directory as fsync_directory
    from .paths import is_inside as is_inside
    from .paths import no_follow as no_follow
    from .paths import open_inside as open_inside
    from .paths import open_lane as open_lane
    from .paths import private_directory as private_directory
    from .paths import safe_join as safe_join
    from .paths import stat_inside as stat_inside
    from .paths import unshared_directory as unshared_directory
    from .redaction import install as install_log_redaction  # noqa: F401 - exported under this name
    from .redaction import redact as redact
    from .redaction import register_pem as register_pem
    from .redaction import register_secret as register_secret
    from .settings import MAX_INT as MAX_INT
    from .settings import MAX_NUMBER as MAX_NUMBER
    from .settings import MAX_SECONDS as MAX_SECONDS
    from .settings import choice as choice
    from .settings import int_between as int_between
    from .settings import invalid as invalid
    from .settings import number_between as number_between
    from .settings import optional as optional
    from .settings import seconds as seconds
    from .settings import setting as setting
    from .settings import to_bool as to_bool
    from .settings import to_int as to_int
    from .settings import to_ipv4_address as to_ipv4_address
    from .settings import to_ipv4_list as to_ipv4_list
    from .settings import to_ipv4_network as to_ipv4_network
    from .settings import to_non_negative_int as to_non_negative_int
    from .settings import to_nonempty_str as to_nonempty_str
    from .settings import to_number as to_number
    from .settings import to_optional_path as to_optional_path
    from .settings import to_path as to_path
    from .settings import to_positive_int as to_positive_int
    from .settings import to_positive_seconds as to_positive_seconds
    from .settings import to_seconds as to_seconds
    from .settings import to_str_list as to_str_list
    from .settings import to_token as to_token
    from .settings import to_tuple as to_tuple
    from .events import NodeProgress as NodeProgress
    from .printable import printable as printable
    from .processors import gzip_library as gzip_library
    from .signals import process_alive as process_alive
    from .tools import MAX_TOOL_OUTPUT as MAX_TOOL_OUTPUT
    from .tools import overdue_error as overdue_error
    from .tools import run_tool as run_tool
    from .tools import start_tool as start_tool
    from .tools import stop_tool as stop_tool
    from .tools import watch_tool as watch_tool
    from .staging import Stager as Stager
    from .vcdb import invalid_name as invalid_name
    from .vcdb import is_valid_name as is_valid_name
    from .vcdb import read_vcdb as read_vcdb
    from .vcdb import write_vcdb as write_vcdb

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - one list of names: _EXPORTS


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'pragma_core.pluginkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
