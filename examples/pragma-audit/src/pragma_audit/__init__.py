"""pragma-audit: append every boot stage event to an audit file, one JSON object per line.

An example of a third-party pragma plugin written only against the public
API (``pragma_core.hookimpl`` and the documented hook arguments). Install it
next to pragma (``pip install pragma-audit``) and it is active: no setting
needed.

* Where: ``$PRAGMA_AUDIT_FILE``, else ``$XDG_STATE_HOME/pragma/audit.jsonl``
  (``~/.local/state/pragma/audit.jsonl``).
* What: one line per stage start/done/failed, with the time, the user, the
  cluster image, the allocated cluster name, the duration and the error.
* Also adds the command ``pragma audit show [N]``: the last N lines (20).
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from pragma_core import hookimpl

__version__ = "1.0.0"


def audit_file() -> Path:
    """Where the audit trail is written."""
    explicit = os.environ.get("PRAGMA_AUDIT_FILE")
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pragma" / "audit.jsonl"


@hookimpl
def pragma_stage_event(event: Any) -> None:
    """Append one JSON line for each stage event (``O_APPEND``: concurrent boots never interleave a line)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": getpass.getuser(), **event.as_dict()}
    path = audit_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def show(args: list[str], params: dict[str, str], ctx: Any) -> int:
    """``pragma audit show [N]``: print the last N audit lines."""
    count = int(args[0]) if args and args[0].isdigit() else 20
    try:
        with open(audit_file(), encoding="utf-8") as fh:
            lines = deque(fh, maxlen=count)
    except FileNotFoundError:
        lines = deque()
    for line in lines:
        ctx.print(line.rstrip("\n"))
    return 0


@hookimpl
def pragma_cli_commands(register: Any) -> None:
    register("audit show", show, usage="[count]", help="Print the last lines of the pragma audit trail.")
