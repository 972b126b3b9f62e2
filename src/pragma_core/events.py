"""Events the boot pipeline announces through the ``pragma_stage_event`` hook."""

from __future__ import annotations

from typing import Literal

from attrs import frozen

#: The stages of ``pragma boot``, in order; ``rollback`` only after a failure.
STAGES = ("resolve", "stage", "allocate", "render", "deploy", "rollback")

Status = Literal["start", "done", "failed"]


@frozen(kw_only=True)
class StageEvent:
    """One stage of one boot starting, finishing or failing.

    ``cluster`` is the image name being booted (``vc-name``); ``allocation``
    the cluster name once the driver allocated one, else ``None``;
    ``duration`` the seconds the stage took (``done`` and ``failed`` only);
    ``error`` the one-line error (``failed`` only).
    """

    stage: str
    status: Status
    cluster: str
    allocation: str | None = None
    duration: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the event."""
        return {
            "stage": self.stage,
            "status": self.status,
            "cluster": self.cluster,
            "allocation": self.allocation,
            "duration": self.duration,
            "error": self.error,
        }
