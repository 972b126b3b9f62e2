"""The two plugin interfaces: :class:`Driver` and :class:`Repository`.

A *driver* turns a staged cluster into running VMs on some virtualization
engine; a *repository* lists cluster images and makes their disks ready on
local disk. Both are found by name through entry points (groups
``pragma.drivers`` and ``pragma.repositories``) and constructed by core with
their configuration already read and validated.

Both are generic over their configuration class, and a driver also over the
class of the state it keeps in :attr:`Allocation.state
<pragma_core.model.Allocation.state>`, so a type checker sees ``self.config``
and :meth:`Driver.state_of` with the plugin's own types::

    @frozen(kw_only=True)
    class MyState:
        vm_ids: tuple[str, ...] = ()

    class MyDriver(Driver[MyConfig, MyState]):   # config_class, state_class: from here
        name = "mycloud"

        def rollback(self, allocation: Allocation) -> None:
            for vm_id in self.state_of(allocation).vm_ids: ...

A class subscripted this way gets :attr:`~Driver.config_class` and
:attr:`~Driver.state_class` from its type arguments unless it sets them
itself (``Driver[MyConfig, None]``: no state; a driver written as a bare
``Driver`` subclass keeps setting ``config_class`` by hand).

Keep entry-point targets light: import SDKs (libvirt, boto3...) inside the
methods that need them, so ``pragma --help`` and unrelated commands stay fast.

Optional keywords: a few driver methods take a keyword later versions added
(:meth:`Driver.deploy` and :meth:`Driver.wait_ready` ``progress``,
:meth:`Driver.clean` ``force``). Core passes one only to a method whose
signature accepts it (:func:`accepts_keyword`), so a driver written before it
existed keeps working unchanged.
"""

from __future__ import annotations

import abc
import typing
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from .errors import DriverError, NotSupportedError

if TYPE_CHECKING:  # the model (attrs classes) is imported by the modules that build its values
    from collections.abc import Callable, Mapping

    from .config import RepositorySettings, SiteConfig
    from .model import Allocation, BootRequest, ClusterDescription, ClusterReadiness, ClusterStatus, StagedCluster
    from .events import NodeProgress
    from .staging import Stager

__all__ = ["ConfigT", "Driver", "Repository", "StateT"]

def accepts_keyword(method: Callable[..., Any], name: str) -> bool:
    """Whether ``method`` can be called with the keyword argument ``name`` (or takes ``**kwargs``)."""
    import inspect

    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): call it the old way
        return False
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == name and p.kind in keyword) for p in parameters)


#: The configuration class of a driver or repository (``self.config``).
ConfigT = TypeVar("ConfigT")
#: The class of the state a driver keeps in :attr:`Allocation.state <pragma_core.model.Allocation.state>`.
StateT = TypeVar("StateT")
_DefaultT = TypeVar("_DefaultT")
_NO_DEFAULT: Any = object()


def _classes_from_type_arguments(cls: type, generic: type, names: tuple[str, ...]) -> None:
    """Set ``cls``'s class attributes ``names`` that are still ``None`` from the type arguments of ``generic[...]``.

    ``class D(Driver[Conf, State])`` gives ``config_class = Conf`` and
    ``state_class = State``; an argument that is not a plain class (``None``,
    ``Any``, a union, a type variable, a string) sets nothing.
    """
    for base in cls.__dict__.get("__orig_bases__", ()):
        if typing.get_origin(base) is not generic:
            continue
        for name, argument in zip(names, typing.get_args(base)):
            plain = isinstance(argument, type) and argument not in (type(None), Any) and typing.get_origin(argument) is None
            if plain and name not in cls.__dict__ and getattr(cls, name) is None:
                setattr(cls, name, argument)


class Driver(abc.ABC, Generic[ConfigT, StateT]):
    """A virtualization engine that boots virtual clusters.

    Core calls, for ``pragma boot``: :meth:`allocate`, then renders vc-out for
    every node, then :meth:`deploy`; if anything fails after :meth:`allocate`
    returned, it calls :meth:`rollback` with the same allocation and reports
    the first cause. :meth:`allocate` itself must leave nothing behind when it
    raises.

    ``config_class`` is an attrs class for ``<name>.conf``; core builds it with
    :func:`pragma_core.config.build_settings` so a bad value is reported with
    its file and line. ``None`` means the driver needs no file.

    What the driver must remember from :meth:`allocate` to :meth:`deploy` and
    :meth:`rollback` (engine ids, reserved resources) it puts in the
    allocation's ``state`` as an instance of ``state_class`` and reads back
    with :meth:`state_of`.

    Optional features are class attributes: :attr:`supports_wait` (it
    implements :meth:`wait_ready`) and :attr:`uses_local_images` (``False``:
    its images live in the engine, core stages nothing).
    """

    #: The entry-point name, e.g. ``kvm_rocks``.
    name: ClassVar[str] = ""
    #: attrs class of the driver's settings, or ``None``.
    config_class: ClassVar[type[ConfigT] | None] = None
    #: Class of the driver's :attr:`Allocation.state <pragma_core.model.Allocation.state>`, or ``None``.
    state_class: ClassVar[type[StateT] | None] = None
    #: Whether :meth:`wait_ready` is implemented (``pragma boot wait=``).
    supports_wait: ClassVar[bool] = False
    #: Whether the driver boots from the staged local image files. ``False``
    #: (images live in the engine, e.g. CloudStack templates): core resolves
    #: the description but stages nothing, and :meth:`allocate` and
    #: :meth:`deploy` receive a :class:`~pragma_core.model.ResolvedCluster`
    #: (annotate them so), not a :class:`~pragma_core.model.StagedCluster`.
    uses_local_images: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _classes_from_type_arguments(cls, Driver, ("config_class", "state_class"))

    def __init__(self, config: ConfigT, *, site: SiteConfig) -> None:
        self.config: ConfigT = config
        self.site = site

    @abc.abstractmethod
    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        """Reserve a frontend and enough computes for ``request.cpus``.

        Returns names, CPUs, memory, NICs, networks, gateway, DNS and the key,
        and the driver's own ``state``; nothing runs yet. ``cluster`` is a
        :class:`~pragma_core.model.ResolvedCluster` (no local files) when
        :attr:`uses_local_images` is ``False``. Raises :class:`~pragma_core.errors.CapacityError`
        when there is not enough of something.
        """

    @abc.abstractmethod
    def deploy(
        self,
        allocation: Allocation,
        cluster: StagedCluster,
        vcout: Mapping[str, bytes],
        *,
        progress: NodeProgress | None = None,
    ) -> None:
        """Prepare disks, hand each node its ``vc-out.xml`` and start the nodes.

        ``vcout`` maps each node's :attr:`~pragma_core.model.Node.name` to the
        bytes of its file (the frontend's is the cluster file). ``cluster`` is
        what :meth:`allocate` received.

        ``progress`` (optional keyword, may be ``None``): call
        ``progress(started, total)`` as nodes start (from any thread), so a
        terminal shows "nodes started 2/3". A driver may leave the keyword
        out of its signature; then it is not passed and no count is shown.
        """

    @abc.abstractmethod
    def rollback(self, allocation: Allocation) -> None:
        """Undo everything made for ``allocation``: stop and remove nodes, disks, reservations.

        Must succeed on a partly deployed (or not deployed) allocation and be
        safe to call twice.
        """

    @abc.abstractmethod
    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        """The clusters this driver runs (only ``name`` when given), sorted by name.

        An unknown ``name`` gives an empty list.
        """

    @abc.abstractmethod
    def shutdown(self, name: str) -> ClusterStatus:
        """Ask every node of cluster ``name`` to power off; force it after a timeout.

        Raises :class:`~pragma_core.errors.NotFoundError` for an unknown cluster.
        """

    @abc.abstractmethod
    def clean(self, name: str, *, force: bool = False) -> None:
        """Remove cluster ``name``: its nodes, disks and allocation.

        Refuses (:class:`~pragma_core.errors.DriverError`) while a node runs,
        unless ``force``: then running nodes are powered off at once (no
        graceful shutdown) and removed. Raises
        :class:`~pragma_core.errors.NotFoundError` for an unknown cluster.

        ``force`` is an optional keyword: for a driver whose ``clean`` does
        not accept it, core's ``clean force=true`` calls :meth:`shutdown`
        (forced after the driver's own timeout), then ``clean(name)``.
        """

    def wait_ready(
        self, name: str, timeout: float, *, progress: NodeProgress | None = None
    ) -> ClusterReadiness | Mapping[str, str]:
        """Wait up to ``timeout`` seconds until every node of cluster ``name`` is reachable.

        Returns a :class:`~pragma_core.model.ClusterReadiness`: every node,
        frontend first, ready or not and why. (Drivers written for pragma 0.1
        return the mapping node -> ``"ready"`` or ``"<state>: <detail>"``;
        core still reads it.) ``pragma boot wait=S`` calls it after a
        successful boot. Optional: set :attr:`supports_wait` when implementing
        it; the default raises :class:`~pragma_core.errors.NotSupportedError`.
        Raises :class:`~pragma_core.errors.NotFoundError` for an unknown cluster.

        ``progress`` (optional keyword, may be ``None``): call
        ``progress(ready, total)`` as nodes become ready, so a terminal
        shows "nodes ready 2/3"; as for :meth:`deploy`, a driver may leave
        it out of its signature.
        """
        raise NotSupportedError(f"driver {self.name!r} cannot wait for nodes to be ready (wait= is not supported)")

    def list_repository(self, repository: Repository[Any]) -> list[str]:
        """The images this driver can boot; by default the repository's list."""
        return repository.list()

    @overload
    def state_of(self, allocation: Allocation) -> StateT: ...

    @overload
    def state_of(self, allocation: Allocation, default: _DefaultT) -> StateT | _DefaultT: ...

    def state_of(self, allocation: Allocation, default: Any = _NO_DEFAULT) -> Any:
        """This driver's state in ``allocation``: its ``state``, checked to be a :attr:`state_class`.

        ``default`` is what an allocation carrying no state (``None``) gives;
        without it, that is an error too. Raises
        :class:`~pragma_core.errors.DriverError` naming the cluster when the
        allocation carries another class's state (another driver made it), or
        when the driver declares no :attr:`state_class`.
        """
        expected = type(self).state_class
        if expected is None:
            raise DriverError(f"driver {self.name!r} declares no state_class, so it keeps no allocation state")
        state = allocation.state
        if isinstance(state, expected):
            return state
        if state is None:
            if default is not _NO_DEFAULT:
                return default
            raise DriverError(
                f"the allocation of cluster {allocation.cluster} carries no state; driver {self.name!r} needs its "
                f"{expected.__qualname__}"
            )
        raise DriverError(
            f"the allocation of cluster {allocation.cluster} carries a {type(state).__qualname__}, not the "
            f"{expected.__qualname__} of driver {self.name!r}: another driver made it"
        )


class Repository(abc.ABC, Generic[ConfigT]):
    """A catalogue of virtual cluster images (``vcdb.txt``) and their disks.

    ``settings`` is the site's ``repository_settings`` as a
    :class:`~pragma_core.config.RepositorySettings`.

    ``config_class`` is an attrs class for the repository's own keys of that
    dict (fields made with :func:`pragma_core.settings.setting`); the
    constructor builds it into ``self.config`` with
    :func:`pragma_core.config.repository_config`, so a bad value is reported
    as ``site_conf.conf line 4: repository_settings: timeout: ...``. ``None``
    (the default) means the class reads no key of its own (``self.config``
    is ``None``: subclass ``Repository[None]``). ``class
    MyRepository(Repository[MyConfig])`` sets ``config_class`` to ``MyConfig``
    unless the class sets it itself.
    """

    #: The entry-point name, e.g. ``local``.
    name: ClassVar[str] = ""
    #: attrs class of the repository's own settings, or ``None``.
    config_class: ClassVar[type[ConfigT] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _classes_from_type_arguments(cls, Repository, ("config_class",))

    def __init__(self, settings: RepositorySettings, *, site: SiteConfig) -> None:
        self.settings = settings
        self.site = site
        self.config: ConfigT = self._build_config()

    def _build_config(self) -> ConfigT:
        """``config_class`` built from this repository's keys of ``repository_settings`` (``None`` without one)."""
        cls = type(self).config_class
        if cls is None:
            return typing.cast(ConfigT, None)
        from .config import repository_config

        return repository_config(cls, self.settings, getattr(self.site, "source", None))

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Every cluster image name, sorted."""

    @abc.abstractmethod
    def describe(self, name: str) -> ClusterDescription:
        """The parsed cluster description of image ``name`` (fetched if needed).

        Raises :class:`~pragma_core.errors.NotFoundError` for an unknown name.
        """

    @abc.abstractmethod
    def stage(self, description: ClusterDescription, stager: Stager) -> StagedCluster:
        """Make the description's disk images ready on local disk, once.

        Remote repositories fetch the parts they need and feed them to
        ``stager``; a second call finds the images ready and does no work.
        """

    def sync(self) -> bool:
        """Bring the local copy up to date with the remote one.

        Returns whether anything changed. Repositories without a remote side
        raise :class:`~pragma_core.errors.NotSupportedError`.
        """
        raise NotSupportedError(f"repository {self.name!r} does not support sync")
