"""The two plugin interfaces: :class:`Driver` and :class:`Repository`.

A *driver* turns a staged cluster into running VMs on some virtualization
engine; a *repository* lists cluster images and makes their disks ready on
local disk. Both are found by name through entry points (groups
``pragma.drivers`` and ``pragma.repositories``) and constructed by core with
their configuration already read and validated.

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
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import NotSupportedError
from .model import Allocation, BootRequest, ClusterDescription, ClusterReadiness, ClusterStatus, StagedCluster

if TYPE_CHECKING:
    from .config import SiteConfig
    from .events import NodeProgress
    from .staging import Stager


def accepts_keyword(method: Callable[..., Any], name: str) -> bool:
    """Whether ``method`` can be called with the keyword argument ``name`` (or takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): call it the old way
        return False
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == name and p.kind in keyword) for p in parameters)


class Driver(abc.ABC):
    """A virtualization engine that boots virtual clusters.

    Core calls, for ``pragma boot``: :meth:`allocate`, then renders vc-out for
    every node, then :meth:`deploy`; if anything fails after :meth:`allocate`
    returned, it calls :meth:`rollback` with the same allocation and reports
    the first cause. :meth:`allocate` itself must leave nothing behind when it
    raises.

    ``config_class`` is an attrs class for ``<name>.conf``; core builds it with
    :func:`pragma_core.config.build_settings` so a bad value is reported with
    its file and line. ``None`` means the driver needs no file.
    """

    #: The entry-point name, e.g. ``kvm_rocks``.
    name: ClassVar[str] = ""
    #: attrs class of the driver's settings, or ``None``.
    config_class: ClassVar[type | None] = None
    #: Whether :meth:`wait_ready` is implemented (``pragma boot wait=``).
    supports_wait: ClassVar[bool] = False

    def __init__(self, config: Any, *, site: SiteConfig) -> None:
        self.config = config
        self.site = site

    @abc.abstractmethod
    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        """Reserve a frontend and enough computes for ``request.cpus``.

        Returns names, CPUs, memory, NICs, networks, gateway, DNS and the key;
        nothing runs yet. Raises :class:`~pragma_core.errors.CapacityError`
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
        bytes of its file (the frontend's is the cluster file).

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

    def list_repository(self, repository: Repository) -> list[str]:
        """The images this driver can boot; by default the repository's list."""
        return repository.list()


class Repository(abc.ABC):
    """A catalogue of virtual cluster images (``vcdb.txt``) and their disks.

    ``settings`` is the site's ``repository_settings`` as a
    :class:`~pragma_core.config.RepositorySettings`.

    ``config_class`` is an attrs class for the repository's own keys of that
    dict (fields made with :func:`pragma_core.settings.setting`); the
    constructor builds it into ``self.config`` with
    :func:`pragma_core.config.repository_config`, so a bad value is reported
    as ``site_conf.conf line 4: repository_settings: timeout: ...``. ``None``
    (the default) means the class reads no key of its own (``self.config``
    is ``None``).
    """

    #: The entry-point name, e.g. ``local``.
    name: ClassVar[str] = ""
    #: attrs class of the repository's own settings, or ``None``.
    config_class: ClassVar[type | None] = None

    def __init__(self, settings: Any, *, site: SiteConfig) -> None:
        self.settings = settings
        self.site = site
        self.config: Any = None
        if self.config_class is not None:
            from .config import repository_config

            self.config = repository_config(self.config_class, settings, getattr(site, "source", None))

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
