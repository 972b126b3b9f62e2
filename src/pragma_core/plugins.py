"""Finding and loading plugins: one scan of the entry points, then load by name.

Three entry-point groups:

``pragma.drivers``
    name -> :class:`~pragma_core.interfaces.Driver` subclass; the site picks
    one with ``site_ve_driver``. Only that one is imported.
``pragma.repositories``
    name -> :class:`~pragma_core.interfaces.Repository` subclass; the site
    picks one with ``repository_settings["repository_class"]``.
``pragma.plugins``
    name -> a light module (or object) of :data:`~pragma_core.hookimpl`
    functions; every one is loaded, each in isolation, in name order, into
    a :class:`~pragma_core.hooks.HookManager` (pluggy).

One scan, our own: :func:`claims` reads the installed distributions once
per process (:mod:`pragma_core.entrypoints`) and keeps, for every name, each
distribution that registers it. A named backend is then imported by loading
its one chosen entry point, so other plugins' SDKs are never imported.
stevedore is not used: its entry-point cache keeps only (name, value,
group), so it cannot tell which distribution and version registered a name
-- it could neither name both sides of a conflict nor check the pragma-core
requirement -- its ``DriverManager`` rescans and fails a duplicate name with
an internal ``MultipleMatches``, and it writes a cache file under the
(root) user's home directory.

A name that two distributions register is a conflict: ``pragma plugins``
shows both with status ``conflict``, and using the name is one
:class:`~pragma_core.errors.PluginError` naming both distributions and
versions. Blocking one of the two distributions settles it. (Two copies of
*one* distribution on ``sys.path`` are not a conflict: the first one is what
Python imports, the later one is ignored.)

Before a plugin is imported, the ``pragma-core`` requirement its
distribution declares is compared with the running core; an incompatible
one is not loaded and the message names both versions. A backend the site
asks for that is unknown, blocked, conflicting, incompatible or broken is an
error with the cause; one it does not ask for is never imported by a run,
and ``pragma plugins`` shows its status.

Environment controls:

``PRAGMA_PLUGINS_BLOCK``
    comma-separated entry-point or distribution names never to load;
``PRAGMA_PLUGINS_ALLOW``
    when set, only these hook plugins (entry-point or distribution names) load;
``PRAGMA_PLUGINS_STRICT``
    ``1``: a hook plugin that fails to load (or conflicts) is an error
    instead of a warning.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from attrs import frozen

from . import __version__
from .entrypoints import EntryPoint, entry_points, normalize
from .errors import PluginError

if TYPE_CHECKING:
    from .config import SiteConfig
    from .hooks import HookManager
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

    ``status`` is ``ok``, ``failed``, ``incompatible``, ``conflict`` (another
    distribution registers the same name), ``blocked`` or ``disabled`` (not
    allowed by ``PRAGMA_PLUGINS_ALLOW``); ``reason`` explains anything but
    ``ok``.
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


# --------------------------------------------------------------------------- the one scan


@functools.cache
def _scan() -> dict[str, dict[str, tuple[EntryPoint, ...]]]:
    """Every entry point of the three groups, by group and name (then distribution), each distribution once.

    :func:`pragma_core.entrypoints.entry_points` reads them: a distribution
    found twice on ``sys.path`` counts once (the copy Python imports), and
    one whose files cannot be read is skipped with a warning.
    """
    found: dict[str, dict[str, list[EntryPoint]]] = {group: {} for group in GROUPS}
    for ep in entry_points(GROUPS):
        found[ep.group].setdefault(ep.name, []).append(ep)
    return {group: {name: _by_distribution(eps) for name, eps in names.items()} for group, names in found.items()}


def _by_distribution(eps: list[EntryPoint]) -> tuple[EntryPoint, ...]:
    """Sorted by distribution; a line a distribution repeats word for word counts once."""
    unique: dict[tuple[str, str], EntryPoint] = {}
    for ep in eps:
        unique.setdefault((normalize(_dist(ep)[0]), ep.value), ep)
    return tuple(sorted(unique.values(), key=lambda ep: normalize(_dist(ep)[0])))


def claims(group: str) -> dict[str, tuple[EntryPoint, ...]]:
    """The names of ``group``, sorted, each with every entry point (one per distribution) that claims it."""
    names = _scan()[group]
    return {name: names[name] for name in sorted(names)}


def rescan() -> None:
    """Forget the scan: the next lookup reads the installed distributions again (tests, long-lived embedders)."""
    import importlib

    importlib.invalidate_caches()
    _scan.cache_clear()


def _dist(ep: EntryPoint) -> tuple[str, str]:
    return (ep.dist.name or "?", ep.dist.version or "?")


def _info(group: str, ep: EntryPoint, status: str, reason: str = "") -> PluginInfo:
    dist, version = _dist(ep)
    return PluginInfo(group=group, name=ep.name, target=ep.value, distribution=dist, version=version, status=status, reason=reason)


def conflict(name: str, eps: Iterable[EntryPoint]) -> str:
    """The one line that names every distribution (and version) registering ``name``, and what each points to."""
    targets: dict[tuple[str, str], list[str]] = {}
    for ep in eps:
        targets.setdefault(_dist(ep), []).append(ep.value)
    if len(targets) == 1:  # one distribution's entry points name it twice: nothing to uninstall or block
        ((dist, version), values), = targets.items()
        return (
            f"{name!r} is registered {len(values)} times by {dist} {version}: {' and '.join(values)};"
            f" its entry points are broken: reinstall {dist}, or report it to its authors"
        )
    sides = [f"{dist} {version} ({', '.join(values)})" for (dist, version), values in targets.items()]
    return (
        f"{name!r} is registered by {len(sides)} distributions: {' and '.join(sides)};"
        " uninstall one, or block one with PRAGMA_PLUGINS_BLOCK=<distribution>"
    )


# --------------------------------------------------------------------------- controls


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {normalize(item.strip()) for item in value.split(",") if item.strip()}


def strict_mode() -> bool:
    """Whether ``PRAGMA_PLUGINS_STRICT`` asks for load failures to be errors."""
    return os.environ.get("PRAGMA_PLUGINS_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


def _named_in(ep: EntryPoint, names: set[str]) -> bool:
    return normalize(ep.name) in names or normalize(_dist(ep)[0]) in names


def _is_blocked(ep: EntryPoint) -> bool:
    return _named_in(ep, _env_names("PRAGMA_PLUGINS_BLOCK") or set())


def _is_allowed(ep: EntryPoint) -> bool:
    allowed = _env_names("PRAGMA_PLUGINS_ALLOW")
    return allowed is None or _named_in(ep, allowed)


def incompatibility(ep: EntryPoint) -> str | None:
    """Why ``ep``'s distribution cannot run on this core, or ``None`` when it can.

    Compares the distribution's declared ``pragma-core`` requirement (if any)
    with :data:`pragma_core.__version__`.
    """
    name, version = _dist(ep)
    if normalize(name) == CORE_DISTRIBUTION:
        return None
    for text in ep.dist.requires:
        specifier = _core_specifier(text)
        if specifier is not None and not _allows(specifier, __version__):
            return f"{name} {version} requires pragma-core{specifier}, but pragma-core {__version__} is installed"
    return None


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)", re.DOTALL)
_CLAUSE = re.compile(r"(~=|==|!=|<=|>=|<|>)\s*([0-9]+(?:\.[0-9]+)*)")
_RELEASE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def _core_specifier(requirement: str) -> str | None:
    """The version specifier of a ``pragma-core`` requirement that applies here; ``None`` for anything else.

    A requirement on another distribution is told apart by its name alone,
    without :mod:`packaging` (whose import costs more than a Python start).
    """
    match = _REQUIREMENT.match(requirement)
    if match is None or normalize(match.group(1)) != CORE_DISTRIBUTION:
        return None
    rest = match.group(2).strip()
    if ";" in rest:  # an environment marker: let packaging decide whether it applies
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            req = Requirement(requirement)
        except InvalidRequirement:
            return None
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            return None
        return str(req.specifier)
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1].strip()
    return rest


def _release(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _allows(specifier: str, version: str) -> bool:
    """Whether ``version`` satisfies ``specifier`` (PEP 440).

    Comma-separated clauses of plain release numbers are compared here; any
    other form (wildcards, pre-releases, local versions) goes to
    :mod:`packaging`. An unreadable specifier allows everything, as an
    unparsable requirement always has.
    """
    clauses = [c.strip() for c in specifier.split(",") if c.strip()]
    simple = [_CLAUSE.fullmatch(c) for c in clauses]
    plain = all(m is not None and (m.group(1) != "~=" or "." in m.group(2)) for m in simple)
    if not plain or not _RELEASE.fullmatch(version):
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            return SpecifierSet(specifier).contains(version, prereleases=True)
        except InvalidSpecifier:
            return True
    have = _release(version)
    for match in simple:
        assert match is not None
        op, want_text = match.group(1), match.group(2)
        want = _release(want_text)
        if op == "~=":
            prefix = tuple(int(p) for p in want_text.split("."))[:-1]
            ok = have >= want and tuple(int(p) for p in version.split("."))[: len(prefix)] == prefix
        else:
            ok = {"==": have == want, "!=": have != want, "<=": have <= want, ">=": have >= want,
                  "<": have < want, ">": have > want}[op]
        if not ok:
            return False
    return True


def _usable(group: str, eps: Iterable[EntryPoint], report: list[PluginInfo] | None) -> list[EntryPoint]:
    """The entry points of one name that the controls let through; the others go to ``report``."""
    usable = []
    for ep in eps:
        if _is_blocked(ep):
            status, reason = "blocked", "PRAGMA_PLUGINS_BLOCK"
        elif group == HOOKS and not _is_allowed(ep):
            status, reason = "disabled", "not in PRAGMA_PLUGINS_ALLOW"
        else:
            usable.append(ep)
            continue
        if report is not None:
            report.append(_info(group, ep, status, reason))
    return usable


# --------------------------------------------------------------------------- named backends


def _select(group: str, kind: str, name: str) -> EntryPoint:
    """The one entry point ``name`` means in ``group``: unknown, blocked and conflicting names are errors."""
    found = claims(group)
    eps = found.get(name)
    if not eps:
        raise PluginError(f"unknown {kind} {name!r} (installed: {', '.join(found) or 'none'})")
    usable = _usable(group, eps, None)
    if not usable:
        raise PluginError(f"{kind} {name!r} is blocked by PRAGMA_PLUGINS_BLOCK")
    if len(usable) > 1:
        raise PluginError(f"{kind} {conflict(name, usable)}")
    return usable[0]


def _load_named(group: str, kind: str, name: str) -> object:
    """Load the object registered as ``name`` in ``group``, checking it first; only it is imported."""
    ep = _select(group, kind, name)
    reason = incompatibility(ep)
    if reason:
        raise PluginError(f"{kind} {name!r} is incompatible: {reason}")
    try:
        return ep.load()
    except Exception as exc:
        log.debug("loading %s %r failed", kind, name, exc_info=exc)
        raise PluginError(f"{kind} {name!r} ({ep.value}) failed to load: {one_line(exc)}") from None


def one_line(exc: BaseException | None) -> str:
    """``Type: first line of the message``: how a plugin's failure is reported."""
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
    config: object = None
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


def get_plugin_manager(
    *, extra: Iterable[tuple[str, object]] = (), strict: bool | None = None, report: list[PluginInfo] | None = None
) -> HookManager:
    """A plugin manager with every allowed ``pragma.plugins`` entry point registered, in name order.

    Each plugin is loaded in isolation: one that conflicts, fails to import,
    is incompatible, or implements an unknown hook (``check_pending``) is
    logged in one line (traceback at DEBUG) and skipped -- or raises
    :class:`PluginError` in strict mode. ``extra`` registers more
    ``(name, plugin)`` pairs after them (tests, embedding applications); a
    bad one is always an error. When ``report`` is a list, a
    :class:`PluginInfo` is appended for every entry point. Call the hooks
    through :class:`pragma_core.hooks.Hooks`.
    """
    import pluggy

    from .hooks import HookManager

    strict = strict_mode() if strict is None else strict
    pm = HookManager()

    def fail(infos: list[PluginInfo], message: str, exc: BaseException | None = None) -> None:
        if report is not None:
            report.extend(infos)
        if strict:
            raise PluginError(message)
        log.warning("%s", message)
        if exc is not None:
            log.debug("plugin %r traceback", infos[0].name, exc_info=exc)

    def failed(info: PluginInfo, exc: BaseException | None = None) -> None:
        fail([info], f"plugin {info.name!r} ({info.distribution} {info.version}): {info.status}: {info.reason}", exc)

    candidates: list[tuple[str, object, PluginInfo | None]] = []
    for name, eps in claims(HOOKS).items():
        usable = _usable(HOOKS, eps, report)
        if len(usable) > 1:
            text = conflict(name, usable)
            fail([_info(HOOKS, ep, "conflict", text) for ep in usable], f"plugin {text}")
            continue
        for ep in usable:
            reason = incompatibility(ep)
            if reason:
                failed(_info(HOOKS, ep, "incompatible", reason))
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the run
                failed(_info(HOOKS, ep, "failed", one_line(exc)), exc)
                continue
            candidates.append((ep.name, plugin, _info(HOOKS, ep, "ok")))
    candidates.extend((name, plugin, None) for name, plugin in extra)

    for name, plugin, info in candidates:
        try:
            pm.register(plugin, name=name)
            pm.check_pending()  # after each plugin: only this one can fail it
        except (pluggy.PluginValidationError, ValueError) as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            if info is None:
                raise PluginError(f"plugin {name!r}: {exc}") from None
            failed(PluginInfo(**{**info.as_dict(), "status": "failed", "reason": one_line(exc)}), exc)
            continue
        if info is not None and report is not None:
            report.append(info)
    return pm


# --------------------------------------------------------------------------- listing


def _backend_info(group: str, ep: EntryPoint) -> PluginInfo:
    reason = incompatibility(ep)
    if reason:
        return _info(group, ep, "incompatible", reason)
    try:
        ep.load()
    except Exception as exc:
        log.debug("loading %s failed", ep.name, exc_info=exc)
        return _info(group, ep, "failed", one_line(exc))
    return _info(group, ep, "ok")


def list_plugins() -> list[PluginInfo]:
    """Every entry point of the three groups with its distribution, version and status."""
    report: list[PluginInfo] = []
    for group in (DRIVERS, REPOSITORIES):
        for name, eps in claims(group).items():
            usable = _usable(group, eps, report)
            if len(usable) > 1:
                text = conflict(name, usable)
                report.extend(_info(group, ep, "conflict", text) for ep in usable)
            else:
                report.extend(_backend_info(group, ep) for ep in usable)
    get_plugin_manager(strict=False, report=report)
    return report
