"""The front door for Python tools: one site's configuration, driver, repository and hooks.

::

    from pragma_core import Site

    with Site.open() as site:                 # --conf, else $PRAGMA_CONF_DIR, else /opt/pragma_boot/etc
        print(site.images())
        booted = site.boot("demo", 2, wait=300)
        if not booted.readiness.ready:
            print("not ready:", booted.readiness.not_ready)
        for cluster in site.clusters():
            print(cluster.name, [n.state for n in cluster.nodes])
        site.shutdown(booted.name)
        site.clean(booted.name)              # or at once, running or not: site.clean(name, force=True)

``Site.open(progress=reporter)`` shows a boot's progress: ``reporter`` is
called with every :class:`~pragma_core.events.StageEvent` -- each stage's
start and end, and node counts ("nodes started 2/3", "nodes ready 2/3")
from drivers that report them (:mod:`pragma_core.events`).

Every method returns the typed model of :mod:`pragma_core.model` and raises
:class:`~pragma_core.errors.PragmaError` subclasses whose message is the one
line the ``pragma`` command prints. The driver, repository and hook plugins
are loaded on first use, so a tool that only lists images never imports a
driver's SDK. The ``pragma`` command is a thin layer over this class.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .errors import NotFoundError, NotSupportedError, PragmaError, UsageError

if TYPE_CHECKING:  # the model and events (attrs classes) load with the first command that needs them
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    from .config import SiteConfig
    from .events import ProgressReporter, StageEvent
    from .hooks import Hooks
    from .interfaces import Driver, Repository
    from .model import (
        Booted, BootRequest, ClusterReadiness, ClusterStatus, InterfaceRequest, MemorySpec, StagedCluster,
    )
    from .pipeline import Pipeline
    from .plugins import PluginInfo

__all__ = ["Site"]


def _image_hint(image: str, names: list[str]) -> str:
    """``"; did you mean 'demo'? (images: alpha, demo)"``: what to add to "image not found"."""
    from .wording import closest, listing, shown

    if not names:
        return " (the repository lists no image)"
    near = closest(image, names)
    guess = f"; did you mean '{shown(near)}'?" if near is not None else ""
    return f"{guess} (images: {listing(names)})"


def _checked(name: str, what: str = "vc-name") -> str:
    """``name`` when it is a valid cluster or image name; a :class:`UsageError` before any effect otherwise."""
    from .vcdb import invalid_name, is_valid_name

    if not is_valid_name(name):
        raise UsageError(invalid_name(name, what))
    return name

log = logging.getLogger(__name__)


class Site:
    """One PRAGMA site: open it with :meth:`open`, then boot, list, shut down and clean clusters."""

    def __init__(
        self, config: SiteConfig, *, hooks: Hooks | None = None, progress: ProgressReporter | None = None
    ) -> None:
        self.config = config
        self._hooks = hooks
        self._progress: ProgressReporter | None = None
        if progress is not None:
            from .events import guarded

            self._progress = guarded(progress)
        self._driver: Driver[Any, Any] | None = None
        self._repository: Repository[Any] | None = None

    @classmethod
    def open(cls, conf_dir: str | os.PathLike[str] | None = None, *, progress: ProgressReporter | None = None) -> Site:
        """Read the site's configuration from ``conf_dir``.

        ``None``: ``$PRAGMA_CONF_DIR``, then ``/opt/pragma_boot/etc``. Raises
        :class:`~pragma_core.errors.ConfigError` naming the file, line and key
        of a bad setting. ``progress``: called with every stage event of a
        boot, stage or wait (see :mod:`pragma_core.events`); it never stops
        the work (an exception it raises is logged once, then it is no
        longer called).
        """
        from .config import load_site_config

        return cls(load_site_config(os.fspath(conf_dir) if conf_dir is not None else None), progress=progress)

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Site:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release what the driver and repository hold open (connections, sessions). Idempotent."""
        for part in (self._driver, self._repository):
            closer = getattr(part, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception as exc:  # noqa: BLE001 - closing must not hide the caller's outcome
                    log.debug("closing %s failed: %s", type(part).__name__, exc)
        self._driver = self._repository = None

    # ------------------------------------------------------------------ the parts, loaded on first use

    @property
    def hooks(self) -> Hooks:
        """The hook plugins (entry-point group ``pragma.plugins``) behind their typed facade, loaded once."""
        if self._hooks is None:
            from .hooks import Hooks
            from .plugins import get_plugin_manager

            self._hooks = Hooks(get_plugin_manager())
        return self._hooks

    @property
    def driver(self) -> Driver[Any, Any]:
        """The site's driver (``site_ve_driver``), built with its validated settings."""
        if self._driver is None:
            from .plugins import make_driver

            self._driver = make_driver(self.config)
        return self._driver

    @property
    def repository(self) -> Repository[Any]:
        """The site's repository (``repository_settings``)."""
        if self._repository is None:
            from .plugins import make_repository

            self._repository = make_repository(self.config)
        return self._repository

    def pipeline(self, *, driver: bool = True) -> Pipeline:
        """The boot pipeline over this site's parts (``driver=False``: staging only)."""
        from .pipeline import Pipeline

        return Pipeline(
            site=self.config,
            driver=self.driver if driver else None,
            repository=self.repository,
            hooks=self.hooks,
            progress=self._progress,
        )

    # ------------------------------------------------------------------ commands

    def images(self) -> list[str]:
        """The cluster images this site can boot, sorted (``pragma list repository``)."""
        if self.config.site_ve_driver:
            return self.driver.list_repository(self.repository)
        return self.repository.list()

    def request(
        self,
        image: str,
        cpus: int | str,
        *,
        key: str | os.PathLike[str] | None = None,
        memory: int | str | MemorySpec | None = None,
        add_ifaces: str | Iterable[str | InterfaceRequest] = (),
        enable_ent: bool = False,
    ) -> BootRequest:
        """A validated :class:`~pragma_core.model.BootRequest` (see :meth:`boot` for the arguments)."""
        from .request import build_request

        return build_request(image, cpus, key=key, memory=memory, add_ifaces=add_ifaces, enable_ent=enable_ent)

    def boot(
        self,
        image: str | BootRequest,
        cpus: int | str = 0,
        *,
        key: str | os.PathLike[str] | None = None,
        memory: int | str | MemorySpec | None = None,
        add_ifaces: str | Iterable[str | InterfaceRequest] = (),
        enable_ent: bool = False,
        wait: float | None = None,
    ) -> Booted:
        """Boot cluster image ``image`` with ``cpus`` compute CPUs (``pragma boot``).

        ``key``: SSH public key text or a key file (default: the user's
        ``~/.ssh`` key); ``memory``: MiB for every node, ``"FRONTEND:COMPUTE"``
        or a :class:`~pragma_core.model.MemorySpec`; ``add_ifaces``: extra
        networks (``"net[:cidr],..."`` or items); ``enable_ent``: a NIC on the
        driver's ``ent`` network; ``wait``: then wait up to this many seconds
        for every node (``Booted.readiness``). ``image`` may also be a ready
        :class:`~pragma_core.model.BootRequest`. Anything that fails after the
        driver allocated is rolled back before the error is raised.
        """
        from .model import Booted, BootRequest
        from .request import parse_wait

        if isinstance(image, BootRequest):  # made by the caller: held to the same checks as one built here
            from .request import check_key

            request = image
            _checked(request.image)
            if request.key:
                check_key(request.key)
        else:
            request = self.request(image, cpus, key=key, memory=memory, add_ifaces=add_ifaces, enable_ent=enable_ent)
        seconds = parse_wait(wait)
        if seconds is not None:
            self.require_wait_support()  # refuse before booting anything
        with self._image_exists(request.image, self.images):
            result = self.pipeline().boot(request)
        readiness = self._wait(result.allocation.cluster, seconds, request.image) if seconds is not None else None
        return Booted(
            allocation=result.allocation, staged=result.cluster, vcout_format=result.vcout_format, readiness=readiness
        )

    def clusters(self, name: str | None = None) -> list[ClusterStatus]:
        """The clusters the driver runs, sorted by name; only ``name`` when given (``pragma list cluster``).

        An unknown ``name`` raises :class:`~pragma_core.errors.NotFoundError`.
        """
        clusters = self.driver.list_clusters(_checked(name) if name is not None else None)
        if name is not None and not clusters:
            raise NotFoundError(f"no virtual cluster named {name!r}")
        return clusters

    def shutdown(self, name: str) -> ClusterStatus:
        """Power off every node of cluster ``name`` (forced after the driver's timeout)."""
        return self.driver.shutdown(_checked(name))

    def clean(self, name: str, *, force: bool = False) -> None:
        """Remove shut-down cluster ``name``: its nodes, disks and allocation.

        A cluster with a running node is refused, unless ``force``: then its
        nodes are powered off and it is removed, in one call. A driver whose
        ``clean`` takes no ``force`` keyword is asked to :meth:`shutdown`
        the cluster first (forced off after the driver's timeout).
        """
        from .interfaces import accepts_keyword

        _checked(name)
        driver = self.driver
        if not force:
            driver.clean(name)
        elif accepts_keyword(driver.clean, "force"):
            driver.clean(name, force=True)
        else:
            log.info("driver %s cannot clean by force: shutting %s down first", driver.name, name)
            driver.shutdown(name)
            driver.clean(name)

    def stage(self, image: str) -> StagedCluster:
        """Stage image ``image``'s disks into the cache without booting it (``pragma stage``)."""
        with self._image_exists(_checked(image), lambda: self.repository.list()):
            return self.pipeline(driver=False).stage_images(image)

    def sync(self) -> bool:
        """Bring the local repository up to date with the remote one; whether anything changed."""
        return self.repository.sync()

    def require_wait_support(self) -> None:
        """Raise :class:`~pragma_core.errors.NotSupportedError` when the driver cannot wait for readiness."""
        from .interfaces import Driver as DriverBase

        driver = self.driver
        if not getattr(type(driver), "supports_wait", False) and type(driver).wait_ready is DriverBase.wait_ready:
            raise NotSupportedError(
                f"driver {driver.name!r} cannot wait for nodes to be ready (wait= is not supported)"
            )

    def wait_ready(self, name: str, timeout: float) -> ClusterReadiness:
        """Wait up to ``timeout`` seconds for every node of cluster ``name`` to be ready."""
        from .request import parse_wait

        seconds = parse_wait(timeout)
        assert seconds is not None
        return self._wait(_checked(name), seconds, name)

    def _wait(self, name: str, seconds: float, image: str) -> ClusterReadiness:
        """:meth:`wait_ready`, announced to the progress reporter as stage ``wait`` of ``image``."""
        from .events import WAIT, StageEvent, progress_keyword
        from .model import ClusterReadiness

        self.require_wait_support()
        driver = self.driver
        log.info("waiting up to %g s for the nodes of %s", seconds, name)
        self._report(StageEvent(stage=WAIT, status="start", cluster=image, allocation=name))
        started = time.monotonic()
        try:
            counts = progress_keyword(self._progress, driver.wait_ready, WAIT, image, name)
            verdicts = driver.wait_ready(name, seconds, **counts)
            readiness = (
                verdicts if isinstance(verdicts, ClusterReadiness) else ClusterReadiness.from_mapping(name, verdicts)
            )
        except BaseException as exc:
            self._report(StageEvent(stage=WAIT, status="failed", cluster=image, allocation=name,
                                    duration=time.monotonic() - started, error=str(exc)))
            raise
        ready, total = len(readiness.nodes) - len(readiness.not_ready), len(readiness.nodes)
        elapsed = time.monotonic() - started
        self._report(StageEvent(stage=WAIT, status="done", cluster=image, allocation=name, duration=elapsed,
                                done=ready, total=total))
        log.info("wait for %s done in %.1f s: %s ready", name, elapsed, "all" if readiness.ready else f"{ready}/{total}")
        return readiness

    def _report(self, event: StageEvent) -> None:
        if self._progress is not None:
            self._progress(event)

    @contextlib.contextmanager
    def _image_exists(self, image: str, known: Callable[[], list[str]]) -> Iterator[None]:
        """Turn "image not found" into a message that suggests the closest image and lists those that exist.

        Only a :class:`NotFoundError` raised while ``image`` is indeed not
        among ``known()`` is rewritten; any other, or one raised when the
        list cannot be read, passes unchanged.
        """
        try:
            yield
        except NotFoundError as exc:
            try:
                names = known()
            except PragmaError:
                raise exc from None
            if image in names:
                raise
            raise NotFoundError(f"{exc}{_image_hint(image, names)}") from exc

    @staticmethod
    def plugins() -> list[PluginInfo]:
        """Every installed driver, repository and hook plugin with its status (``pragma plugins``)."""
        from .plugins import list_plugins

        return list_plugins()


def __getattr__(name: str) -> Any:
    if name == "Booted":  # it lives with the other values, in pragma_core.model
        from .model import Booted

        return Booted
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
