"""kvm_rocks's commands: ``pragma list orphans`` and ``pragma remove orphans``.

Registered through the ``pragma_cli_commands`` hook (entry point group
``pragma.plugins``, name ``kvm_rocks``). This module stays light: the driver
(and libvirt) is loaded only when a command runs.

* ``pragma list orphans [--json]`` -- what crashed runs left on any host that
  belongs to no live cluster: domains, stale claims, records, node disks and
  console logs, unused base images (see :mod:`pragma_kvm_rocks.orphans`).
* ``pragma remove orphans`` -- find them again and remove them.
"""

from __future__ import annotations

from typing import Any

from pragma_core import DriverError, hookimpl
from pragma_core.pluginkit import printable

_COLUMNS = ("KIND", "HOST", "NAME", "CLUSTER", "REASON")


def _driver(ctx: Any, words: str) -> Any:
    """The site's driver, which must be kvm_rocks."""
    driver = ctx.driver
    if not hasattr(driver, "orphans"):
        raise DriverError(f"{words}: the site's driver is {getattr(driver, 'name', '?')!r}; only kvm_rocks keeps"
                          " track of orphans")
    return driver


def format_orphans(orphans: list[Any]) -> list[str]:
    """The ``list orphans`` table, columns aligned; host ``-`` for this head's own files."""
    rows = [list(_COLUMNS)] + [
        [printable(cell or "-") for cell in (o.kind, o.host, o.name, o.cluster, o.reason)] for o in orphans
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def list_orphans(args: list[str], params: dict[str, str], ctx: Any) -> int:
    """``pragma list orphans``: print what belongs to no live cluster."""
    found = _driver(ctx, "list orphans").orphans()
    if ctx.json:
        ctx.print_json([o.as_dict() for o in found])
        return 0
    if not found:
        ctx.print("No orphans: everything pragma made belongs to a live cluster")
        return 0
    for line in format_orphans(found):
        ctx.print(line)
    ctx.print(f"{len(found)} orphan(s); 'pragma remove orphans' removes them")
    return 0


def remove_orphans(args: list[str], params: dict[str, str], ctx: Any) -> int:
    """``pragma remove orphans``: remove what belongs to no live cluster; exit 1 when something stays."""
    found, failures = _driver(ctx, "remove orphans").remove_orphans()
    for orphan in found:
        where = f" on {orphan.host}" if orphan.host else ""
        ctx.print(printable(f"removed {orphan.kind} {orphan.name}{where}"))
    if failures:
        raise DriverError(f"{len(failures)} of {len(found)} orphan(s) stay: " + "; ".join(failures))
    ctx.print(f"{len(found)} orphan(s) removed")
    return 0


@hookimpl
def pragma_cli_commands(register: Any) -> None:
    register("list orphans", list_orphans, args=[], params=[], json_output=True,
             help="List what crashed runs left on the hosts (domains, claims, records, disks, uploaded images)"
                  " that belongs to no live cluster (kvm_rocks).",
             examples=[("list orphans", "one line per orphan"), ("list orphans --json", "as JSON")])
    register("remove orphans", remove_orphans, args=[], params=[],
             help="Remove what 'pragma list orphans' lists (kvm_rocks).",
             examples=[("remove orphans", "remove every orphan, printing each")])
