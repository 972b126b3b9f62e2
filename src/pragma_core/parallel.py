"""Run one piece of work over many items on a pool of threads, and report every failure.

Drivers start, stop and destroy nodes, and make disks, many at a time;
:func:`run_parallel` is the one way they do it. Every item runs to its end
(none is abandoned half-way because another failed), the results come back
in the order of the items, and a failure is never lost behind another:

* one failure is raised as it is;
* several are raised together as a :class:`ParallelError`: an
  :class:`ExceptionGroup` of them all (``except*`` splits it, a traceback
  at ``loglevel=DEBUG`` shows each one) that is also a
  :class:`~pragma_core.errors.PragmaError` whose one-line message names
  every failure. It is an instance of the most specific
  :class:`~pragma_core.errors.PragmaError` class all the failures share, so
  ``except DriverError`` (or ``except CapacityError`` when every failure was
  one) still catches it. (A class whose constructor sets attributes --
  ``ConfigError.path``, ``CapacityError.reserved`` -- counts only when every
  failure has the same values; the group then has them too);
* several of which one is not a :class:`~pragma_core.errors.PragmaError`
  (a bug, an OS error nobody turned into a message) are a plain
  :class:`ExceptionGroup`: pragma reports it as an internal error.

An exception that is not an :class:`Exception` (``KeyboardInterrupt``,
``SystemExit``) is raised as it is, never grouped. Raised in the calling
thread (Ctrl-C while it waits, or an item run there), it stops the run at
once: items not yet started are not started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .errors import PragmaError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["MAX_NAMED_FAILURES", "ParallelError", "run_parallel"]

#: A :class:`ParallelError` message names at most this many failures (then "and N more").
MAX_NAMED_FAILURES = 8


class ParallelError(ExceptionGroup, PragmaError):
    """Several items of one :func:`run_parallel` failed: every failure, in an :class:`ExceptionGroup`.

    ``str()`` is one line naming each failure (identical messages once, with
    their count); ``exceptions`` holds them all, in the order of the items.
    """

    def __str__(self) -> str:
        from .redaction import redact

        return redact(self.message)

    def derive(self, excs: Sequence[Exception]) -> ExceptionGroup[Exception]:  # type: ignore[override]
        """The group ``except*`` makes from some of the failures: of the class they still share."""
        return _group(self.message, list(excs))


def _built_from_a_message(cls: type[PragmaError]) -> bool:
    """Whether ``cls`` and its bases up to :class:`PragmaError` take the plain ``(message)`` constructor."""
    return all("__init__" not in vars(c) for c in cls.__mro__ if issubclass(c, PragmaError) and c is not PragmaError)


_ABSENT = object()


def _same_attributes(errors: Sequence[PragmaError]) -> dict[str, object] | None:
    """The attributes the errors' constructors set, when every error has the same ones; else ``None``."""
    names = {name for e in errors for name in vars(e) if not name.startswith("_")}
    shared: dict[str, object] = {}
    for name in names:
        values = [vars(e).get(name, _ABSENT) for e in errors]
        if any(v is _ABSENT or v != values[0] for v in values):
            return None
        shared[name] = values[0]
    return shared


def _shared_class(errors: Sequence[PragmaError]) -> tuple[type[PragmaError], dict[str, object]]:
    """The most specific :class:`PragmaError` class every error is an instance of, and attributes the group needs.

    A class with its own constructor (``ConfigError(message, path=...)``,
    ``CapacityError(message, reserved=...)``) sets attributes a group would
    lack: it is shared only when every error carries the same ones (the
    group then carries them too); otherwise its nearest base that takes a
    plain message is.
    """
    attributes = _same_attributes(errors)
    for cls in type(errors[0]).__mro__:
        if not issubclass(cls, PragmaError) or issubclass(cls, BaseExceptionGroup):
            continue  # a group of groups shares their members' class, not the groups'
        if not all(isinstance(e, cls) for e in errors):
            continue
        if _built_from_a_message(cls):
            return cls, {}
        if attributes is not None:
            return cls, attributes
    return PragmaError, {}


_CLASSES: dict[type[PragmaError], type[ParallelError]] = {PragmaError: ParallelError}


def _parallel_class(base: type[PragmaError]) -> type[ParallelError]:
    """:class:`ParallelError` made an instance of ``base`` too (one class per base)."""
    found = _CLASSES.get(base)
    if found is None:
        made = type(f"Parallel{base.__name__}", (ParallelError, base), {"__module__": __name__})
        found = _CLASSES.setdefault(base, made)  # two threads making one: both get the first
    return found


def _group(message: str, errors: list[Exception]) -> ExceptionGroup[Exception]:
    failures = [e for e in errors if isinstance(e, PragmaError)]
    if len(failures) == len(errors):
        base, attributes = _shared_class(failures)
        group = _parallel_class(base)(message, errors)
        for name, value in attributes.items():
            setattr(group, name, value)
        return group
    return ExceptionGroup(message, errors)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, PragmaError):
        return text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _summary(failures: Sequence[tuple[str, Exception]], total: int, what: str) -> str:
    """``"3 of 5 <what> failed: a: ...; b: ... (2 times)"``, at most :data:`MAX_NAMED_FAILURES` named."""
    counts: dict[str, int] = {}
    for label, exc in failures:
        line = f"{label}: {_one_line(exc)}" if label else _one_line(exc)
        counts[line] = counts.get(line, 0) + 1
    lines = [line if n == 1 else f"{line} ({n} times)" for line, n in counts.items()]
    named = "; ".join(lines[:MAX_NAMED_FAILURES])
    if len(lines) > MAX_NAMED_FAILURES:
        named += f"; and {len(lines) - MAX_NAMED_FAILURES} more"
    return f"{len(failures)} of {total} {what} failed: {named}"


def _raise_failures(
    items: Sequence[T], outcomes: Sequence[BaseException | None], label: Callable[[T], str] | None, what: str
) -> None:
    """Raise what :func:`run_parallel` promises for ``outcomes`` (``None``: the item succeeded)."""
    failed = [(item, exc) for item, exc in zip(items, outcomes) if exc is not None]
    if not failed:
        return
    for _, exc in failed:
        if not isinstance(exc, Exception):
            raise exc
    if len(failed) == 1:
        raise failed[0][1]
    errors: list[Exception] = [exc for _, exc in failed]  # type: ignore[misc]
    message = _summary([(label(item) if label else "", exc) for item, exc in failed], len(items), what)  # type: ignore[misc]
    raise _group(message, errors)


def run_parallel(
    work: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    label: Callable[[T], str] | None = None,
    what: str = "tasks",
) -> list[R]:
    """``work(item)`` for every item on at most ``workers`` threads; the results in the order of ``items``.

    Waits for every item, then raises every failure (see the module):
    one as it is, several as a :class:`ParallelError` (or a plain
    :class:`ExceptionGroup` when one of them is not a
    :class:`~pragma_core.errors.PragmaError`). ``label(item)`` names an
    item in that error's message (``node-3: ...``); ``what`` names the
    items (``"3 of 5 nodes failed: ..."``). With one item, or
    ``workers <= 1``, the work runs in the calling thread, one item after
    the other.
    """
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        return _run_here(work, items, label, what)
    pool = ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="pragma-parallel")
    futures: list[Future[R]] = []
    try:
        futures = [pool.submit(work, item) for item in items]
        outcomes = [f.exception() for f in futures]  # waits for each, in order
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: start nothing more, let the running ones end
        raise
    pool.shutdown(wait=True)
    _raise_failures(items, outcomes, label, what)
    return [f.result() for f in futures]


def _run_here(work: Callable[[T], R], items: list[T], label: Callable[[T], str] | None, what: str) -> list[R]:
    results: list[R] = []
    outcomes: list[BaseException | None] = []
    for item in items:
        try:
            results.append(work(item))
            outcomes.append(None)
        except Exception as exc:  # noqa: BLE001 - every item runs; all failures are raised together below
            outcomes.append(exc)
    _raise_failures(items, outcomes, label, what)
    return results
