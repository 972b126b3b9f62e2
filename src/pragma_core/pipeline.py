"""The boot pipeline: resolve -> stage -> allocate -> render -> deploy.

Each stage is announced through the ``pragma_stage_event`` hook (start,
done or failed, with its duration), and to the progress reporter when one
is given, with the driver's node counts during ``deploy``
(:mod:`pragma_core.events`). Anything that fails after the driver
allocated the cluster -- including Ctrl-C, and SIGTERM or SIGHUP inside
:func:`pragma_core.signals.interruptible` -- makes core call
:meth:`Driver.rollback` and then re-raise the *first* cause; a rollback
failure is logged, never hides the cause.

The driver's ``allocate`` and ``rollback`` run in
:class:`~pragma_core.signals.deferred` sections: a signal that arrives while
the driver reserves a cluster is raised once the reservation is in the hands
of the code that undoes it, and a second signal cannot cut a rollback short.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from attrs import frozen

from .errors import PragmaError
from .events import ProgressReporter, StageEvent, guarded, progress_keyword
from .model import Allocation, BootRequest, ResolvedCluster, StagedCluster
from .signals import checkpoint, deferred, note

if TYPE_CHECKING:
    from .config import SiteConfig
    from .hooks import Hooks
    from .interfaces import Driver, Repository
    from .staging import Stager

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class BootResult:
    """What a successful boot made: the allocation, the staged images, the vc-out files.

    ``cluster`` is a :class:`~pragma_core.model.StagedCluster`, or only the
    resolved description when the driver uses no local images.
    """

    allocation: Allocation
    cluster: ResolvedCluster
    vcout: dict[str, bytes]
    vcout_format: int


class Pipeline:
    """Runs commands against one site's driver and repository, announcing stages to hooks."""

    def __init__(
        self,
        *,
        site: SiteConfig,
        driver: Driver[Any, Any] | None,
        repository: Repository[Any] | None,
        hooks: Hooks,
        stager: Stager | None = None,
        progress: ProgressReporter | None = None,
    ) -> None:
        self.site = site
        self.driver = driver
        self.repository = repository
        self.hooks = hooks
        self._stager = stager
        self.progress = guarded(progress) if progress is not None else None

    @property
    def stager(self) -> Stager:
        if self._stager is None:
            from .staging import ProcessorRegistry, Stager

            registry = ProcessorRegistry()
            registry.load_hooks(self.hooks)
            self._stager = Stager(processors=registry, delete_parts=self.site.delete_parts_after_staging,
                                  max_image_size=self.site.max_image_size)
        return self._stager

    def announce(self, event: StageEvent) -> None:
        """Tell the hook plugins, then the progress reporter, about a stage event."""
        self.hooks.stage_event(event)
        if self.progress is not None:
            self.progress(event)

    @contextlib.contextmanager
    def stage(self, name: str, image: str, allocation: str | None = None) -> Iterator[None]:
        """Announce one stage, time it, and announce how it ended.

        A signal still pending (it arrived while the stage waited on worker
        threads) is raised before the stage starts and before it is announced done.
        """
        checkpoint()
        self.announce(StageEvent(stage=name, status="start", cluster=image, allocation=allocation))
        started = time.monotonic()
        try:
            yield
            checkpoint()
        except BaseException as exc:
            seconds = time.monotonic() - started
            text = str(exc) if isinstance(exc, PragmaError) else f"{type(exc).__name__}: {exc}"
            self.announce(
                StageEvent(stage=name, status="failed", cluster=image, allocation=allocation, duration=seconds, error=text)
            )
            log.info("stage %s failed after %.2f s", name, seconds)
            raise
        seconds = time.monotonic() - started
        self.announce(StageEvent(stage=name, status="done", cluster=image, allocation=allocation, duration=seconds))
        log.info("stage %s done in %.2f s", name, seconds)

    def _require_driver(self) -> Driver[Any, Any]:
        if self.driver is None:
            raise PragmaError("no driver configured (site_ve_driver)")
        return self.driver

    def _require_repository(self) -> Repository[Any]:
        if self.repository is None:
            raise PragmaError("no repository configured (repository_settings)")
        return self.repository

    def prepare(self, request: BootRequest) -> BootRequest:
        """Let hook plugins validate and adjust a request."""
        self.hooks.validate_request(request, self.site)
        return self.hooks.adjust_request(request, self.site)

    def resolve(self, image: str) -> ResolvedCluster:
        """Resolve one cluster image's description, staging nothing."""
        repository = self._require_repository()
        with self.stage("resolve", image):
            return ResolvedCluster(description=repository.describe(image))

    def stage_images(self, image: str) -> StagedCluster:
        """Resolve and stage one cluster image without booting it."""
        repository = self._require_repository()
        description = self.resolve(image).description
        with self.stage("stage", image):
            return repository.stage(description, self.stager)

    def boot(self, request: BootRequest) -> BootResult:
        """Boot a cluster: resolve, stage, allocate, render vc-out, deploy; roll back on failure."""
        from .vcout import choose_format, render

        driver = self._require_driver()
        request = self.prepare(request)
        # A driver whose images live in its engine gets the description alone (it declares ResolvedCluster).
        staged = self.stage_images(request.image) if driver.uses_local_images else self.resolve(request.image)
        fmt = choose_format(self.site.vcout_format, staged.description.vcout_format)
        allocation: Allocation | None = None
        booted = False
        try:
            with deferred():  # a signal now is raised below, where the rollback can undo the reservation
                with self.stage("allocate", request.image):
                    allocation = driver.allocate(request, cast(StagedCluster, staged))
            with self.stage("render", request.image, allocation.cluster):
                files = render(allocation, format=fmt, hooks=self.hooks)
            with self.stage("deploy", request.image, allocation.cluster):
                counts = progress_keyword(self.progress, driver.deploy, "deploy", request.image, allocation.cluster)
                driver.deploy(allocation, cast(StagedCluster, staged), files, **counts)
            with deferred():  # from here an interruption leaves the cluster and says so
                note(f"cluster {allocation.cluster} was booted before it and keeps running")
                booted = True
        except BaseException:
            if allocation is not None and not booted:
                self.rollback(allocation, request.image)
            raise
        return BootResult(allocation=allocation, cluster=staged, vcout=files, vcout_format=fmt)

    def rollback(self, allocation: Allocation, image: str) -> None:
        """Undo an allocation; a failure here is logged and does not replace the first cause.

        No signal interrupts it (:class:`~pragma_core.signals.deferred`). When
        the driver cannot finish (its engine is unreachable), what it still
        holds stays reserved: ``list cluster`` shows it and the log says how
        to free it.
        """
        driver = self._require_driver()
        with deferred():
            try:
                with self.stage("rollback", image, allocation.cluster):
                    driver.rollback(allocation)
            except Exception as exc:  # noqa: BLE001 - the first cause is what the user must see
                log.error(
                    "rollback of cluster %s failed: %s; it stays reserved until 'pragma clean %s'",
                    allocation.cluster, exc, allocation.cluster,
                )
                log.debug("rollback traceback", exc_info=exc)
