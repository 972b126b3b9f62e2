"""Events the boot pipeline announces: to the ``pragma_stage_event`` hook and to a progress reporter.

Hook plugins observe every stage's ``start``, ``done`` and ``failed``
through :func:`pragma_core.hookspecs.pragma_stage_event`. A caller that
shows progress -- the ``pragma`` command on a terminal, or any tool --
gives :class:`pragma_core.Site` a :data:`ProgressReporter`: it receives
the same stage events, and in addition ``progress`` events counting nodes
(``deploy``: nodes started N/M; ``wait``: nodes ready N/M) as a driver
reports them through the :data:`NodeProgress` function core hands it.
``progress`` events and the ``wait`` stage go to the reporter only, so hook
plugins see exactly the stages listed in :data:`STAGES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from attrs import frozen

#: The stages of ``pragma boot``, in order; ``rollback`` only after a failure.
STAGES = ("resolve", "stage", "allocate", "render", "deploy", "rollback")
#: The stage of waiting for nodes to be ready (``wait=``): reported to a progress reporter only.
WAIT = "wait"

Status = Literal["start", "done", "failed", "progress"]

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class StageEvent:
    """One stage of one boot starting, finishing, failing, or counting nodes.

    ``cluster`` is the image name being booted (``vc-name``); ``allocation``
    the cluster name once the driver allocated one, else ``None``;
    ``duration`` the seconds the stage took (``done`` and ``failed`` only);
    ``error`` the one-line error (``failed`` only); ``done`` and ``total``
    how many of the stage's nodes are through it (``progress`` only: nodes
    started for ``deploy``, nodes ready for ``wait``).
    """

    stage: str
    status: Status
    cluster: str
    allocation: str | None = None
    duration: float | None = None
    error: str | None = None
    done: int | None = None
    total: int | None = None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the event (``done`` and ``total`` only when set)."""
        data: dict[str, object] = {
            "stage": self.stage,
            "status": self.status,
            "cluster": self.cluster,
            "allocation": self.allocation,
            "duration": self.duration,
            "error": self.error,
        }
        if self.done is not None or self.total is not None:
            data.update(done=self.done, total=self.total)
        return data


#: What shows progress: called with every stage event of a boot (and of ``wait``), in order.
#: It may be called from a driver's worker threads; it must return quickly.
ProgressReporter = Callable[[StageEvent], None]

#: What a driver calls to report node progress: ``progress(done, total)``, e.g. nodes started
#: 2 of 3. Core passes it to :meth:`Driver.deploy` and :meth:`Driver.wait_ready` as the
#: ``progress`` keyword when the driver's method accepts one (see :mod:`pragma_core.interfaces`).
NodeProgress = Callable[[int, int], None]


def guarded(reporter: ProgressReporter) -> ProgressReporter:
    """``reporter`` that never stops the work it reports on: an exception is logged once and ignored."""
    if getattr(reporter, "_pragma_guarded", False):
        return reporter
    failed = False

    def report(event: StageEvent) -> None:
        nonlocal failed
        if failed:
            return
        try:
            reporter(event)
        except Exception as exc:  # noqa: BLE001 - showing progress must not fail a boot
            failed = True
            log.warning("progress reporter failed, no more progress shown: %s: %s", type(exc).__name__, exc)

    report._pragma_guarded = True  # type: ignore[attr-defined]
    return report


def node_progress(reporter: ProgressReporter, stage: str, cluster: str, allocation: str | None) -> NodeProgress:
    """The :data:`NodeProgress` function a driver is given: each call becomes one ``progress`` event.

    Counts are checked (whole numbers, ``0 <= done <= total``); a call with
    anything else is ignored with a debug line, so a driver's miscount never
    fails a boot.
    """

    def progress(done: int, total: int) -> None:
        if not (_count(done) and _count(total) and done <= total):
            log.debug("ignoring node progress %r/%r from the driver", done, total)
            return
        reporter(StageEvent(stage=stage, status="progress", cluster=cluster, allocation=allocation, done=done, total=total))

    return progress


def progress_keyword(
    reporter: ProgressReporter | None, method: Callable[..., object], stage: str, cluster: str, allocation: str | None
) -> dict[str, NodeProgress]:
    """``{"progress": fn}`` to pass to driver ``method`` when a reporter listens and it takes the keyword; else ``{}``."""
    from .interfaces import accepts_keyword

    if reporter is None or not accepts_keyword(method, "progress"):
        return {}
    return {"progress": node_progress(reporter, stage, cluster, allocation)}


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
