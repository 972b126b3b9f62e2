"""Parallel work that must not stop at the first failure.

Work whose every failure must be raised (starts, uploads, checks) uses
core's :func:`pragma_core.pluginkit.run_parallel`. :func:`settle` is for the
work where a failure is an answer, not an error: reading every host (one
that does not answer is skipped and named), removing a cluster host by host
(what stays is kept reserved): it hands back each result or exception, in
order, and :func:`failure_text` puts several failures in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Threads of one parallel run at most (100 hosts are read with 32 threads).
MAX_WORKERS = 32


def settle(work: Callable[[T], R], items: Iterable[T], *, workers: int | None = None) -> list[R | BaseException]:
    """``work(item)`` for every item on a pool of threads; each result or the exception it raised, in order.

    ``workers`` defaults to one thread per item (at most :data:`MAX_WORKERS`);
    a single item runs in the calling thread.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        return [_attempt(work, items[0])]
    count = max(1, min(workers or len(items), len(items), MAX_WORKERS))
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda item: _attempt(work, item), items))


def _attempt(work: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return work(item)
    except Exception as exc:  # noqa: BLE001 - handed back to the caller, who reports every one
        return exc


def failures(group: BaseException) -> list[BaseException]:
    """The leaf exceptions of ``group`` (itself when it is not a group)."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for exc in group.exceptions for leaf in failures(exc)]
    return [group]


def failure_text(group: BaseException, *, limit: int = 8) -> str:
    """Every failure of ``group`` in one line: ``first; second; ... (and N more)``, duplicates once."""
    texts: list[str] = list(dict.fromkeys(str(exc) or type(exc).__name__ for exc in failures(group)))
    shown = "; ".join(texts[:limit])
    return shown + (f" (and {len(texts) - limit} more)" if len(texts) > limit else "")


def split(outcomes: Sequence[R | BaseException]) -> tuple[list[R], list[BaseException]]:
    """The results and the exceptions of :func:`settle`'s outcomes."""
    good = [o for o in outcomes if not isinstance(o, BaseException)]
    bad = [o for o in outcomes if isinstance(o, BaseException)]
    return good, bad  # type: ignore[return-value]
