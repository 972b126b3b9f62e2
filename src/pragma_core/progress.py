"""A boot's progress on a terminal: one line per stage event, on standard error.

``pragma`` gives :class:`TerminalProgress` to :class:`pragma_core.Site` as
its progress reporter when standard error is a terminal and ``--json`` is
not given; otherwise it shows nothing (:func:`for_terminal`). The lines::

    resolve: started
    resolve: done (0.0 s)
    ...
    deploy: nodes started 2/3
    deploy: done (1.4 s)
    wait: nodes ready 3/3
    wait: done (12.0 s), nodes ready 3/3

Node counts appear only for drivers that report them (see
:mod:`pragma_core.events`). The lines go to standard error, so standard
output stays the command's result.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .printable import printable

if TYPE_CHECKING:  # events (attrs) load with the first boot: listing commands need none of them
    from typing import TextIO

    from .events import StageEvent

#: What a node count means in each stage that reports one.
COUNTED = {"deploy": "nodes started", "wait": "nodes ready"}


def describe(event: StageEvent) -> str:
    """The line that shows ``event``."""
    stage = printable(event.stage)
    if event.status == "start":
        return f"{stage}: started"
    counts = f"{COUNTED.get(event.stage, 'nodes done')} {event.done}/{event.total}"
    if event.status == "progress":
        return f"{stage}: {counts}"
    took = f" ({event.duration:.1f} s)" if event.duration is not None else ""
    what = "done" if event.status == "done" else "failed"
    return f"{stage}: {what}{took}" + (f", {counts}" if event.total is not None else "")


class TerminalProgress:
    """A progress reporter that writes :func:`describe` lines to ``stream`` (thread-safe).

    A node count equal to the last one shown for its stage is not repeated.
    A stream that cannot be written any more is left alone: the command
    goes on.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._shown: dict[str, tuple[int | None, int | None]] = {}

    def __call__(self, event: StageEvent) -> None:
        with self._lock:
            if event.status == "progress":
                if self._shown.get(event.stage) == (event.done, event.total):
                    return
                self._shown[event.stage] = (event.done, event.total)
            try:
                self.stream.write(describe(event) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # ValueError: the stream was closed
                pass


def for_terminal(stream: TextIO, *, json_output: bool) -> TerminalProgress | None:
    """A :class:`TerminalProgress` on ``stream`` when it is a terminal and the output is not JSON; else ``None``."""
    if json_output:
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError, OSError):
        return None
    return TerminalProgress(stream)
