"""``pragma boot wait=S``: watch the nodes' serial console logs for the guest's verdict.

The guest prints ``PRAGMA-READY`` once its network is configured from vc-out
(the image-builder's guests do; see ``examples/image-builder``), or
``PRAGMA-FAILED ...`` when it could not. libvirt's virtlogd writes each
node's console to a log on the node's host (:mod:`.storage`): read from
diskdir when it is shared, downloaded through the host's libvirt when each
host has its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from pragma_core import NodeStatus
from pragma_core.pluginkit import NodeProgress, poll

from .parallel import settle

#: The guest writes the line: what follows PRAGMA-FAILED is kept up to this many bytes.
MAX_FAILURE_BYTES = 200
_READY = re.compile(rb"PRAGMA-(READY|FAILED)\b[^\r\n]{0,%d}" % MAX_FAILURE_BYTES)


def verdict(data: bytes | None) -> str | None:
    """``"ready"`` / ``"failed: <line>"`` from a console log's bytes, or ``None`` while it has neither line."""
    if not data:
        return None
    for match in _READY.finditer(data):
        if match.group(1) == b"READY":
            return "ready"
        return "failed: " + match.group(0).decode("utf-8", "replace").strip()
    return None


def wait_for_verdicts(nodes: Sequence[NodeStatus], read: Callable[[NodeStatus], bytes | None], timeout: float,
                      where: Callable[[NodeStatus], str], *, progress: NodeProgress | None = None) -> dict[str, str]:
    """Each node's verdict (frontend first, as given), polling ``read(node)`` until ``timeout`` s have passed.

    A node that does not run is ``stopped`` at once (its log may be an old
    one); a node without a verdict by the deadline is ``timeout``. A log that
    cannot be read (its host does not answer) counts as no verdict yet.
    ``progress(ready, total)`` is called as nodes become ready.
    """
    result = {n.name: f"stopped: domain is {n.state}, not running" for n in nodes if n.state != "running"}
    pending = [n for n in nodes if n.name not in result]
    deadline = time.monotonic() + timeout

    def check() -> bool | None:
        outcomes = settle(lambda node: verdict(read(node)), pending)
        for node, outcome in zip(list(pending), outcomes):
            if isinstance(outcome, str):
                result[node.name] = outcome
        pending[:] = [n for n in pending if n.name not in result]
        if progress is not None:
            progress(sum(v == "ready" for v in result.values()), len(nodes))
        return True if not pending else None

    try:
        poll(check, timeout=max(deadline - time.monotonic(), 0.0), interval=0.1, max_interval=1.0,
             timed_out=lambda: TimeoutError())
    except TimeoutError:
        for node in pending:
            result[node.name] = f"timeout: no PRAGMA-READY in {where(node)} after {timeout:g} s"
    return {n.name: result[n.name] for n in nodes}
