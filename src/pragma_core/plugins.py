"""Finding and loading plugins: named backends (stevedore) and pipeline hooks (pluggy).

Three entry-point groups:

``pragma.drivers``
    name -> :class:`~pragma_core.interfaces.Driver` subclass; the site picks
    one with ``site_ve_driver``. Only that one is imported.
``pragma.repositories``
    name -> :class:`~pragma_core.interfaces.Repository` subclass; the site
    picks one with ``repository_settings["repository_class"]``.
``pragma.plugins``
    name -> a light module (or object) of :data:`~pragma_core.hookimpl`
    functions; every one is loaded, each in isolation.

Before a plugin is imported, the ``pragma-core`` requirement its
distribution declares is compared with the running core; an incompatible
one is not loaded and the message names both versions.

Environment controls:

``PRAGMA_PLUGINS_BLOCK``
    comma-separated entry-point or distribution names never to load;
``PRAGMA_PLUGINS_ALLOW``
    when set, only these hook plugins (entry-point or distribution names) load;
``PRAGMA_PLUGINS_STRICT``
    ``1``: a hook plugin that fails to load is an error instead of a warning.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from attrs import frozen

from . import __version__
from .errors import PluginError

if TYPE_CHECKING:
    import pluggy

    from .config import SiteConfig
    from .interfaces import Driver, Repository

log = logging.getLogger(__name__)

DRIVERS = "pragma.drivers"
REPOSITORIES = "pragma.repositories"
HOOKS = "pragma.plugins"
GROUPS = (DRIVERS, REPOSITORIES, HOOKS)
CORE_DISTRIBUTION = "pragma-core"


@frozen(kw_only=True)
class PluginInfo:
    """One entry point as ``pragma plugins`` reports it.

    ``status`` is ``ok``, ``failed``, ``incompatible``, ``blocked`` or
    ``disabled`` (not allowed by ``PRAGMA_PLUGINS_ALLOW``); ``reason``
    explains anything but ``ok``.
    """

    group: str
    name: str
    target: str
    distribution: str
    version: str
    status: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "group": self.group,
            "name": self.name,
            "target": self.target,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
        }


# --------------------------------------------------------------------------- helpers


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def strict_mode() -> bool:
    """Whether ``PRAGMA_PLUGINS_STRICT`` asks for load failures to be errors."""
    return os.environ.get("PRAGMA_PLUGINS_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _all_entry_points() -> dict[str, dict[str, metadata.EntryPoint]]:
    """One scan of the installed distributions for the three groups (first one found wins)."""
    found: dict[str, dict[str, metadata.EntryPoint]] = {group: {} for group in GROUPS}
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group in found:
                found[ep.group].setdefault(ep.name, ep)
    return found


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group``, one per name (the first one found wins), sorted by name."""
    eps = _all_entry_points()[group]
    return [eps[name] for name in sorted(eps)]


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("?", "?")
    return (dist.metadata["Name"] or "?", dist.version or "?")


def _is_blocked(ep: metadata.EntryPoint) -> bool:
    blocked = _env_names("PRAGMA_PLUGINS_BLOCK") or set()
    return ep.name.lower() in blocked or _dist(ep)[0].lower() in blocked


def _is_allowed(ep: metadata.EntryPoint) -> bool:
    allowed = _env_names("PRAGMA_PLUGINS_ALLOW")
    return allowed is None or ep.name.lower() in allowed or _dist(ep)[0].lower() in allowed


def incompatibility(ep: metadata.EntryPoint) -> str | None:
    """Why ``ep``'s distribution cannot run on this core, or ``None`` when it can.

    Compares the distribution's declared ``pragma-core`` requirement (if any)
    with :data:`pragma_core.__version__`.
    """
    dist = ep.dist
    if dist is None:
        return None
    name, version = _dist(ep)
    if name.lower().replace("_", "-") == CORE_DISTRIBUTION:
        return None
    from packaging.requirements import InvalidRequirement, Requirement

    for text in dist.requires or ():
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.name.lower().replace("_", "-") != CORE_DISTRIBUTION:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.specifier and not req.specifier.contains(__version__, prereleases=True):
            return f"{name} {version} requires pragma-core{req.specifier}, but pragma-core {__version__} is installed"
    return None


# --------------------------------------------------------------------------- named backends


def _load_named(group: str, kind: str, name: str) -> type:
    """Load the class registered as ``name`` in ``group`` with stevedore, checking it first."""
    candidates = {ep.name: ep for ep in entry_points(group)}
    ep = candidates.get(name)
    if ep is None:
        known = ", ".join(sorted(candidates)) or "none"
        raise PluginError(f"unknown {kind} {name!r} (installed: {known})")
    if _is_blocked(ep):
        raise PluginError(f"{kind} {name!r} is blocked by PRAGMA_PLUGINS_BLOCK")
    reason = incompatibility(ep)
    if reason:
        raise PluginError(f"{kind} {name!r} is incompatible: {reason}")
    from stevedore import driver as stevedore_driver
    from stevedore.exception import NoMatches

    # the failure is reported once, by us, with its cause; stevedore's own warning would repeat it
    logging.getLogger("stevedore").setLevel(logging.ERROR)

    failure: list[BaseException] = []

    def on_failure(_manager: Any, _ep: Any, exc: BaseException) -> None:
        failure.append(exc)

    try:
        manager = stevedore_driver.DriverManager(
            namespace=group,
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=on_failure,
        )
    except NoMatches:
        cause = failure[0] if failure else None
        log.debug("loading %s %r failed", kind, name, exc_info=cause)
        raise PluginError(f"{kind} {name!r} ({ep.value}) failed to load: {_one_line(cause)}") from None
    return manager.driver


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_driver_class(name: str) -> type[Driver]:
    """The :class:`Driver` subclass registered as ``name`` in ``pragma.drivers``."""
    cls = _load_named(DRIVERS, "driver", name)
    from .interfaces import Driver

    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise PluginError(f"driver {name!r} does not name a pragma_core.Driver subclass")
    return cls


def load_repository_class(name: str) -> type[Repository]:
    """The :class:`Repository` subclass registered as ``name`` in ``pragma.repositories``."""
    cls = _load_named(REPOSITORIES, "repository", name)
    from .interfaces import Repository

    if not (isinstance(cls, type) and issubclass(cls, Repository)):
        raise PluginError(f"repository {name!r} does not name a pragma_core.Repository subclass")
    return cls


def make_driver(site: SiteConfig) -> Driver:
    """Construct the site's driver (``site_ve_driver``) with its validated settings."""
    name = site.require("site_ve_driver")
    cls = load_driver_class(name)
    config = None
    if cls.config_class is not None:
        from .config import driver_settings

        config = driver_settings(cls.config_class, site, name)
    return cls(config, site=site)


def make_repository(site: SiteConfig) -> Repository:
    """Construct the site's repository (``repository_settings``).

    The repository's constructor builds its ``config_class`` from the
    dict's other keys (:func:`pragma_core.config.repository_config`).
    """
    settings = site.require_repository()
    cls = load_repository_class(settings.repository_class)
    return cls(settings, site=site)


# --------------------------------------------------------------------------- hook plugins


def _new_manager() -> pluggy.PluginManager:
    import pluggy

    from . import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def get_plugin_manager(
    *, extra: Iterable[tuple[str, object]] = (), strict: bool | None = None, report: list[PluginInfo] | None = None
) -> pluggy.PluginManager:
    """A plugin manager with every allowed ``pragma.plugins`` entry point registered.

    Each plugin is loaded in isolation: one that fails to import, is
    incompatible, or implements an unknown hook (``check_pending``) is logged
    in one line (traceback at DEBUG) and skipped -- or raises
    :class:`PluginError` in strict mode. ``extra`` registers more
    ``(name, plugin)`` pairs (tests, embedding applications). When ``report``
    is a list, a :class:`PluginInfo` is appended for every entry point.
    """
    import pluggy

    strict = strict_mode() if strict is None else strict
    pm = _new_manager()

    def fail(info: PluginInfo, exc: BaseException | None) -> None:
        if report is not None:
            report.append(info)
        message = f"plugin {info.name!r} ({info.distribution} {info.version}): {info.status}: {info.reason}"
        if strict:
            raise PluginError(message)
        log.warning("%s", message)
        if exc is not None:
            log.debug("plugin %r traceback", info.name, exc_info=exc)

    candidates: list[tuple[str, object, PluginInfo | None]] = []
    for ep in entry_points(HOOKS):
        dist, version = _dist(ep)
        base = dict(group=HOOKS, name=ep.name, target=ep.value, distribution=dist, version=version)
        if _is_blocked(ep):
            if report is not None:
                report.append(PluginInfo(**base, status="blocked", reason="PRAGMA_PLUGINS_BLOCK"))
            continue
        if not _is_allowed(ep):
            if report is not None:
                report.append(PluginInfo(**base, status="disabled", reason="not in PRAGMA_PLUGINS_ALLOW"))
            continue
        reason = incompatibility(ep)
        if reason:
            fail(PluginInfo(**base, status="incompatible", reason=reason), None)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the run
            fail(PluginInfo(**base, status="failed", reason=_one_line(exc)), exc)
            continue
        candidates.append((ep.name, plugin, PluginInfo(**base, status="ok")))
    candidates.extend((name, plugin, None) for name, plugin in extra)

    for name, plugin, info in candidates:
        try:
            pm.register(plugin, name=name)
            _check_plugin(pm, plugin)
        except (pluggy.PluginValidationError, ValueError) as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            if info is None:
                raise PluginError(f"plugin {name!r}: {exc}") from None
            fail(PluginInfo(**{**info.as_dict(), "status": "failed", "reason": _one_line(exc)}), exc)
            continue
        if info is not None and report is not None:
            report.append(info)
    return pm


def _check_plugin(pm: pluggy.PluginManager, plugin: object) -> None:
    """``check_pending`` after registering one plugin: only that plugin can fail it."""
    pm.check_pending()


def call_observers(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of an observer hook, isolating each one's failure."""
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        args = {name: kwargs[name] for name in impl.argnames if name in kwargs}
        try:
            impl.function(**args)
        except Exception as exc:  # noqa: BLE001 - an observer must not stop the pipeline
            log.warning("plugin %r: %s failed: %s", impl.plugin_name, hook_name, _one_line(exc))
            log.debug("traceback", exc_info=exc)


# --------------------------------------------------------------------------- listing


def list_plugins() -> list[PluginInfo]:
    """Every entry point of the three groups with its distribution, version and status."""
    report: list[PluginInfo] = []
    for group in (DRIVERS, REPOSITORIES):
        for ep in entry_points(group):
            dist, version = _dist(ep)
            base = dict(group=group, name=ep.name, target=ep.value, distribution=dist, version=version)
            if _is_blocked(ep):
                report.append(PluginInfo(**base, status="blocked", reason="PRAGMA_PLUGINS_BLOCK"))
                continue
            reason = incompatibility(ep)
            if reason:
                report.append(PluginInfo(**base, status="incompatible", reason=reason))
                continue
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                report.append(PluginInfo(**base, status="failed", reason=_one_line(exc)))
                log.debug("loading %s failed", ep.name, exc_info=exc)
                continue
            report.append(PluginInfo(**base, status="ok"))
    get_plugin_manager(strict=False, report=report)
    return report
