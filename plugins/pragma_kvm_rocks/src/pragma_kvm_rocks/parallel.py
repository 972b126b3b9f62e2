"""Run work on many items at once and report every failure, not only the first.

:func:`run_all` is the one parallel loop of the driver: across hosts (a host
that fails does not stop the others) and across nodes. Every failure is kept:
it raises an :class:`ExceptionGroup` of all of them, and :func:`failure_text`
turns one into the single line a :class:`~pragma_core.errors.DriverError`
carries. (Core is getting a helper for plugins with the same contract; this
module is then a re-export of it.)
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


def run_all(work: Callable[[T], R], items: Iterable[T], *, workers: int | None = None,
            what: str = "parallel work") -> list[R]:
    """``work`` over ``items`` in parallel; the results in order, or an ExceptionGroup of every failure."""
    outcomes = settle(work, items, workers=workers)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise ExceptionGroup(what, errors)  # type: ignore[type-var]
    return outcomes  # type: ignore[return-value]


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
