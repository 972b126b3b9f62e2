"""The two plugin interfaces: :class:`Driver` and :class:`Repository`.

A *driver* turns a staged cluster into running VMs on some virtualization
engine; a *repository* lists cluster images and makes their disks ready on
local disk. Both are found by name through entry points (groups
``pragma.drivers`` and ``pragma.repositories``) and constructed by core with
their configuration already read and validated.

Keep entry-point targets light: import SDKs (libvirt, boto3...) inside the
methods that need them, so ``pragma --help`` and unrelated commands stay fast.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import NotSupportedError
from .model import Allocation, BootRequest, ClusterDescription, ClusterReadiness, ClusterStatus, StagedCluster

if TYPE_CHECKING:
    from .config import SiteConfig
    from .staging import Stager


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
    def deploy(self, allocation: Allocation, cluster: StagedCluster, vcout: Mapping[str, bytes]) -> None:
        """Prepare disks, hand each node its ``vc-out.xml`` and start the nodes.

        ``vcout`` maps each node's :attr:`~pragma_core.model.Node.name` to the
        bytes of its file (the frontend's is the cluster file).
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
    def clean(self, name: str) -> None:
        """Remove cluster ``name``: its nodes, disks and allocation.

        Refuses (:class:`~pragma_core.errors.DriverError`) while a node runs;
        raises :class:`~pragma_core.errors.NotFoundError` for an unknown cluster.
        """

    def wait_ready(self, name: str, timeout: float) -> ClusterReadiness | Mapping[str, str]:
        """Wait up to ``timeout`` seconds until every node of cluster ``name`` is reachable.

        Returns a :class:`~pragma_core.model.ClusterReadiness`: every node,
        frontend first, ready or not and why. (Drivers written for pragma 0.1
        return the mapping node -> ``"ready"`` or ``"<state>: <detail>"``;
        core still reads it.) ``pragma boot wait=S`` calls it after a
        successful boot. Optional: set :attr:`supports_wait` when implementing
        it; the default raises :class:`~pragma_core.errors.NotSupportedError`.
        Raises :class:`~pragma_core.errors.NotFoundError` for an unknown cluster.
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
