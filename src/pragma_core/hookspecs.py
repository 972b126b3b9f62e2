"""Hook specifications: how a plugin takes part in pragma without being the driver.

A hook plugin is a light module (or object) of functions decorated with
:data:`pragma_core.hookimpl`, registered in the entry-point group
``pragma.plugins``::

    # my_plugin.py
    from pragma_core import hookimpl

    @hookimpl
    def pragma_stage_event(event):
        print(event.stage, event.status)

    # pyproject.toml
    [project.entry-points."pragma.plugins"]
    my-plugin = "my_plugin"

Every hook is named ``pragma_<what>``; a hook implementation may accept any
subset of the arguments listed here, by name. Each plugin is loaded in
isolation: one that fails to import, or implements a hook this version does
not know, is reported in one line (``pragma plugins`` shows it) and skipped,
unless strict mode is on (``PRAGMA_PLUGINS_STRICT=1``).

pluggy calls every hook, so its rules hold: implementations run in LIFO
registration order (hook plugins register in entry-point name order),
``tryfirst``/``trylast`` move one to the front or the back, and
``wrapper=True`` implementations wrap the others and see (and may replace)
their result. Hooks marked :func:`observer` only watch: the failure of one
implementation -- plain or wrapper -- is logged in one line and the others
still run. Core calls the hooks through the typed facade
:class:`pragma_core.hooks.Hooks`.

The boot pipeline announces each of its stages, in order ``resolve``,
``stage``, ``allocate``, ``render``, ``deploy`` (and ``rollback`` after a
failure), through :func:`pragma_stage_event`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

    from .config import SiteConfig
    from .events import StageEvent
    from .model import Allocation, BootRequest, Node

#: The pluggy project name; hook implementations use :data:`hookimpl`.
PROJECT = "pragma"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

_OBSERVER = PROJECT + "_observer"
_F = TypeVar("_F", bound=Callable[..., Any])


def observer(spec: _F) -> _F:
    """Mark a hook specification as an observer: its implementations only watch.

    The plugin manager (:class:`pragma_core.hooks.HookManager`) wraps every
    implementation of an observer hook when it registers it, so that one that
    raises is logged and does not stop the caller nor the other implementations.
    """
    setattr(spec, _OBSERVER, True)
    return spec


def is_observer(spec: Callable[..., Any]) -> bool:
    """Whether the hook specification function ``spec`` is marked :func:`observer`."""
    return getattr(spec, _OBSERVER, False) is True


@hookspec
def pragma_validate_request(request: BootRequest, site: SiteConfig) -> None:
    """Check a boot request before anything is done for it.

    Called once per ``pragma boot``, after the command line was parsed and
    before the cluster is resolved. Raise
    :class:`~pragma_core.errors.PragmaError` (its message becomes the one
    ``Error:`` line) to refuse the request. The return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def pragma_adjust_request(request: BootRequest, site: SiteConfig) -> BootRequest | None:
    """Return a changed copy of the request (``attrs.evolve``), or ``None`` to leave it.

    ``firstresult``: the first plugin that returns a request wins; later ones
    are not called. Called after :func:`pragma_validate_request`.

    .. versionadded:: 0.1
    """


@hookspec
@observer
def pragma_stage_event(event: StageEvent) -> None:
    """Observe the boot pipeline: each stage's ``start``, ``done`` or ``failed``.

    ``event`` is a :class:`~pragma_core.events.StageEvent` (stage, status,
    cluster image name, duration in seconds for ``done``/``failed``, the error
    text for ``failed``). An :func:`observer`: an implementation that raises
    is reported in one log line and does not stop the boot nor the other
    implementations. The return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def pragma_vcout_element(root: ET.Element, allocation: Allocation, node: Node, format: int) -> None:
    """Add elements or attributes to one node's ``vc-out.xml`` before it is written.

    ``root`` is the ``<vc>`` element of the file ``node`` receives (the
    frontend receives the cluster file), in vc-out format ``format`` (1 or 2).
    Modify it in place; the return value is ignored. The result is serialized
    with sorted attributes like the rest of the file.

    .. versionadded:: 0.1
    """


@hookspec
def pragma_image_processors(register: Callable[..., None]) -> None:
    """Register image processors: ``register(name, factory, *, member_per_part=False)``.

    ``name`` is the value of ``<file type="...">`` in a cluster description;
    ``factory`` is called with no arguments and returns a decompressor object
    with ``decompress(data: bytes) -> bytes`` and ``flush() -> bytes`` (like
    :func:`zlib.decompressobj`), or ``None`` for a plain join. See
    :mod:`pragma_core.staging`. ``member_per_part=True``: every part must end
    where a compressed stream ends (core's ``gzip``). Core registers its own
    four through the same ``register``
    (:func:`pragma_core.processors.builtin_processors`). A name core already
    has is an error naming both.

    .. versionadded:: 0.1
    """


@hookspec
def pragma_cli_commands(register: Callable[..., None]) -> None:
    """Register extra ``pragma`` commands: ``register(words, func, usage=, help=)``.

    Each becomes a command like a built-in one: listed by ``pragma help``,
    resolved by longest word prefix and run the same way. ``words`` is the
    command as a space-separated string (``"audit show"``, ``"list foo"``);
    ``func(args: list[str], params: dict[str, str], ctx) -> int`` runs it
    and returns the exit status (``ctx`` is a
    :class:`~pragma_core.cli.Context`). Optional keywords: ``help`` (the
    description) and ``usage`` (the text after the words in listings); or
    the built-in commands' own -- ``args=[(name, required, help)]``,
    ``params=[(name, type, help)]``, ``examples=[(command, text)]``,
    ``json_output=True`` -- and then the arguments are checked like a
    built-in's. Without ``args``/``params`` the command takes any arguments
    and parameters.

    A command that is a built-in one, a word prefix of one (``"list"``) or
    extends one (``"list cluster all"``) is refused with a warning;
    ``"list foo"`` next to ``"list cluster"`` is fine.

    .. versionadded:: 0.1
    """
