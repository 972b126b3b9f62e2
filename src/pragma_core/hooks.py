"""Calling the pipeline hooks: pluggy's plugin manager, and the typed facade core uses.

pluggy calls every hook: its order (LIFO registration, ``tryfirst``,
``trylast``), its wrappers (``wrapper=True`` and the old ``hookwrapper=True``)
and ``firstresult`` all apply. Core never loops over implementations itself.

Observer hooks (:func:`pragma_core.hookspecs.observer`) must not let one
plugin's bug stop a boot. :class:`HookManager` isolates them where a plugin
enters, at registration: each implementation of an observer hook is wrapped
so that an exception is logged in one line (traceback at DEBUG) and the hook
call goes on with the next implementation, in pluggy's order. A wrapper
implementation is guarded the same way around its ``yield``.

:class:`Hooks` is what core calls -- ``hooks.stage_event(event)`` instead of
``manager.hook.pragma_stage_event(event=event)`` -- one typed method per hook
specification.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .plugins import one_line

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

    from .config import SiteConfig
    from .events import StageEvent
    from .model import Allocation, BootRequest, Node

log = logging.getLogger("pragma_core.plugins")


# --------------------------------------------------------------------------- isolation


def _report(plugin_name: str, hook_name: str, exc: BaseException) -> None:
    log.warning("plugin %r: %s failed: %s", plugin_name, hook_name, one_line(exc))
    log.debug("plugin %r: %s traceback", plugin_name, hook_name, exc_info=exc)


def _guard_call(function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
    """``function`` that logs its exception and returns ``None`` instead of raising it."""

    @functools.wraps(function)  # keeps the hookimpl marker and, for pluggy, the signature
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as exc:  # noqa: BLE001 - an observer must not stop the others
            _report(plugin_name, hook_name, exc)
            return None

    return guarded


def _guard_wrapper(function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
    """A wrapper implementation whose failure before or after its ``yield`` is logged, not raised.

    A failed wrapper stands aside: the result (or pluggy's ``Result`` for an
    old-style ``hookwrapper``) goes through unchanged.
    """

    @functools.wraps(function)
    def guarded(*args: Any) -> Generator[None, Any, Any]:
        try:
            teardown = function(*args)
            next(teardown)
        except StopIteration:
            _report(plugin_name, hook_name, RuntimeError("the wrapper did not yield"))
            return (yield)
        except Exception as exc:  # noqa: BLE001 - an observer must not stop the others
            _report(plugin_name, hook_name, exc)
            return (yield)
        try:
            result = yield
        except BaseException:
            teardown.close()
            raise
        try:
            teardown.send(result)
        except StopIteration as stop:
            return stop.value
        except Exception as exc:  # noqa: BLE001
            _report(plugin_name, hook_name, exc)
            return result
        teardown.close()
        _report(plugin_name, hook_name, RuntimeError("the wrapper yielded twice"))
        return result

    return guarded


class _IsolatedPlugin:
    """Stands for one plugin in pluggy: its observer implementations guarded, every other attribute its own.

    It compares equal to the plugin it stands for, so pluggy's
    ``is_registered`` and ``get_name`` (and :meth:`HookManager.unregister`)
    work with the object the caller registered.
    """

    def __init__(self, plugin: object, guarded: dict[str, Callable[..., Any]], impls: dict[str, Callable[..., Any]]) -> None:
        self._pragma_plugin = plugin
        self._pragma_guarded = guarded
        # every hook implementation as a real attribute too: pluggy >= 1.7 finds
        # implementations with inspect.getattr_static, which never calls __getattr__
        self.__dict__.update(impls)
        self.__dict__.update(guarded)

    def __getattr__(self, name: str) -> Any:
        guarded = self._pragma_guarded.get(name)
        return guarded if guarded is not None else getattr(self._pragma_plugin, name)

    def __dir__(self) -> list[str]:
        return dir(self._pragma_plugin)

    def __eq__(self, other: object) -> bool:
        return other is self or other is self._pragma_plugin

    def __hash__(self) -> int:
        return object.__hash__(self._pragma_plugin)

    def __repr__(self) -> str:
        return repr(self._pragma_plugin)


class HookManager(pluggy.PluginManager):
    """pluggy's plugin manager for the pragma hooks, isolating observer implementations as they register."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` like pluggy does, its observer hook implementations guarded first."""
        name = name or self.get_canonical_name(plugin)
        guarded = self._guard_observers(plugin, name)
        if not guarded:
            return super().register(plugin, name)
        impls = {attribute: getattr(plugin, attribute) for attribute in dir(plugin) if self.parse_hookimpl_opts(plugin, attribute)}
        return super().register(_IsolatedPlugin(plugin, guarded, impls), name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        """Unregister like pluggy does, given the object that was registered or its name."""
        if plugin is not None:
            name = name or self.get_name(plugin)  # a stand-in compares equal to its plugin
            plugin = None if name is not None else plugin
        removed = super().unregister(plugin, name)
        return removed._pragma_plugin if isinstance(removed, _IsolatedPlugin) else removed

    def _guard_observers(self, plugin: object, plugin_name: str) -> dict[str, Callable[..., Any]]:
        guarded: dict[str, Callable[..., Any]] = {}
        for attribute in dir(plugin):
            opts = self.parse_hookimpl_opts(plugin, attribute)
            if opts is None:
                continue
            hook_name = opts.get("specname") or attribute
            caller = getattr(self.hook, hook_name, None)
            if caller is None or caller.spec is None or not hookspecs.is_observer(caller.spec.function):
                continue
            function = getattr(plugin, attribute)
            wraps = opts.get("wrapper") or opts.get("hookwrapper")
            # a "wrapper" that is no generator is left as it is, for pluggy to refuse
            guard = _guard_wrapper if wraps and inspect.isgeneratorfunction(function) else _guard_call
            guarded[attribute] = guard(function, plugin_name, hook_name)
        return guarded


# --------------------------------------------------------------------------- the facade


class Hooks:
    """The pragma hooks as typed methods; each is one pluggy call of ``pragma_<method>``.

    ``Hooks(manager)`` wraps a plugin manager that has the
    :mod:`~pragma_core.hookspecs` (normally a :class:`HookManager` from
    :func:`pragma_core.plugins.get_plugin_manager`).
    """

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self._hook = manager.hook

    def validate_request(self, request: BootRequest, site: SiteConfig) -> None:
        """Let plugins refuse a boot request (they raise :class:`~pragma_core.errors.PragmaError`)."""
        self._hook.pragma_validate_request(request=request, site=site)

    def adjust_request(self, request: BootRequest, site: SiteConfig) -> BootRequest:
        """The request as the first plugin that changes it returns it, else ``request`` itself."""
        from .model import BootRequest

        adjusted = self._hook.pragma_adjust_request(request=request, site=site)
        if adjusted is None:
            return request
        if not isinstance(adjusted, BootRequest):
            raise PluginError(f"pragma_adjust_request returned a {type(adjusted).__name__}, not a BootRequest")
        return adjusted

    def stage_event(self, event: StageEvent) -> None:
        """Tell the observers about a stage event; none of them can stop the caller."""
        self._hook.pragma_stage_event(event=event)

    def vcout_element(self, root: ET.Element, allocation: Allocation, node: Node, format: int) -> None:
        """Let plugins change ``node``'s ``<vc>`` element in place before it is written."""
        self._hook.pragma_vcout_element(root=root, allocation=allocation, node=node, format=format)

    def image_processors(self, register: Callable[[str, Any], None]) -> None:
        """Let plugins add image processors with ``register(name, factory)``."""
        self._hook.pragma_image_processors(register=register)

    def cli_commands(self, register: Callable[..., None]) -> None:
        """Let plugins add ``pragma`` commands with ``register(words, func, ...)``."""
        self._hook.pragma_cli_commands(register=register)
