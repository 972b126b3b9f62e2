"""SIGTERM and SIGHUP end a command the way Ctrl-C does: an exception, a rollback, one line.

By default SIGTERM and SIGHUP kill a Python process where it stands: a boot
dies between allocating its cluster and starting it, and nothing rolls the
allocation back. Inside :func:`interruptible` (the ``pragma`` command runs
every command in it; library users can too) SIGINT, SIGTERM and SIGHUP
become an :class:`Interrupted` exception in the main thread instead -- a
:class:`KeyboardInterrupt` naming its signal, with exit status ``128 +
signal number`` -- so the boot pipeline rolls back whatever it allocated and
the command reports the signal in one ``Error:`` line::

    from pragma_core.signals import interruptible

    with interruptible():
        pipeline.boot(request)     # SIGTERM -> rollback -> Interrupted

A program's main function is better run through :func:`run_main`
(``pragma`` does): a signal that arrives once the function has returned is
then ignored, instead of being raised in the caller or killing the program.

Where the exception is raised matters, so it is raised only at a *safe
point* of the main thread; until then the signal is kept pending:

* never inside the standard library's thread machinery (``threading``,
  ``queue``, ``concurrent.futures``) nor inside ``logging``, ``tempfile``,
  ``filelock`` or an import. A pool's ``with`` block therefore always ends
  normally, after every task it was given: no worker thread outlives the
  work that started it, and nothing is created after the rollback;
* never while an exception is being handled (an ``except`` or ``finally``
  block cleaning up): a rollback of some other failure finishes, and that
  failure stays the first cause reported;
* never inside a :class:`deferred` section, which :class:`~pragma_core.pipeline.Pipeline`
  uses around the driver's ``allocate`` (so no reservation is made without
  the rollback that undoes it) and around ``rollback`` itself. A signal that
  arrives there is raised when the section ends.

A pending signal is retried every :data:`RETRY_SECONDS` until the main
thread reaches a safe point, and :func:`checkpoint` raises it at once where
code is about to make something irreversible (the pipeline calls it at every
stage boundary). Once one :class:`Interrupted` has been raised, later signals
are logged and ignored: a second Ctrl-C or SIGTERM does not abort the
rollback the first one started (SIGKILL still stops everything at once). A
signal that arrives too late to interrupt anything -- the command has
finished -- is logged and listed in :attr:`Guard.ignored`.

Signals are delivered to the main thread only; worker threads never see
:class:`Interrupted`, so none can swallow it.

Work that is complete and that a later interruption does not undo (a booted
cluster) is recorded with :func:`note`; the message of a later
:class:`Interrupted` names it, so "interrupted" never hides something left
running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType, TracebackType
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The signals :func:`interruptible` turns into :class:`Interrupted` by default.
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Seconds between two attempts to deliver a pending signal.
RETRY_SECONDS = 0.05

#: Modules in which an exception must not be raised asynchronously (prefixes of ``__name__``).
UNSAFE_MODULES = ("threading", "queue", "concurrent.futures", "logging", "tempfile", "filelock", "importlib")


class Interrupted(KeyboardInterrupt):
    """A command was stopped by a signal: ``signum``, its ``name`` and ``exit_code`` (128 + signum).

    A :class:`KeyboardInterrupt`, so ``except Exception`` does not catch it
    and everything that cleans up after Ctrl-C cleans up after it.
    """

    def __init__(self, signum: int, *, done: Iterable[str] = ()) -> None:
        self.signum = int(signum)
        self.name = signal_name(signum)
        self.exit_code = 128 + self.signum
        self.done = tuple(done)
        super().__init__("; ".join((f"interrupted by {self.name}", *self.done)))


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 42`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _unsafe(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers runs code of :data:`UNSAFE_MODULES`."""
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if isinstance(name, str) and any(name == m or name.startswith(m + ".") for m in UNSAFE_MODULES):
            return True
        frame = frame.f_back
    return False


class _Retrier:
    """A daemon thread that re-sends a pending signal to the main thread a little later.

    The signal handler only writes a byte to a pipe (no lock is taken in a
    handler: the main thread may hold any of them when it is interrupted).
    """

    def __init__(self) -> None:
        self._main = threading.main_thread().ident or 0
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.signum = 0
        #: the signal being re-sent right now (the handler must not take it for a new one)
        self.resending = 0
        self._thread = threading.Thread(target=self._run, name="pragma-signal-retry", daemon=True)
        self._thread.start()

    def poke(self, signum: int) -> None:
        """Ask for ``signum`` to be sent again to the main thread in :data:`RETRY_SECONDS`."""
        self.signum = signum
        try:
            os.write(self._write, b"r")
        except OSError:  # a full pipe already holds a request
            pass

    def _run(self) -> None:
        while True:
            data = os.read(self._read, 512)
            if not data or b"q" in data:
                return
            time.sleep(RETRY_SECONDS)
            signum = self.signum
            if not signum:
                continue
            self.resending = signum
            try:
                signal.pthread_kill(self._main, signum)
            except OSError:
                return

    def stop(self) -> None:
        """End the thread (no signal is sent after this returns) and close the pipe."""
        while True:
            try:
                os.write(self._write, b"q")
                break
            except BlockingIOError:
                time.sleep(RETRY_SECONDS)
        self._thread.join()
        os.close(self._read)
        os.close(self._write)


class Guard:
    """What :func:`interruptible` installed: the signals it handles and what it received.

    ``received`` lists every signal number that arrived (in order, once
    each); ``raised`` is the :class:`Interrupted` raised, if any; ``ignored``
    the signals that arrived after it, or too late to interrupt anything.
    """

    def __init__(self, signums: Iterable[int]) -> None:
        self.signums = tuple(int(s) for s in signums)
        self.received: list[int] = []
        self.ignored: list[int] = []
        self.raised: Interrupted | None = None
        self.done: list[str] = []
        self._pending: list[int] = []
        self._depth = 0
        self._old: dict[int, object] = {}
        self._retrier: _Retrier | None = None
        self._closing = False
        #: with :func:`run_main`: its frame and the code of the function it calls
        self._owner: FrameType | None = None
        self._callee: CodeType | None = None

    # -- installation (main thread) -------------------------------------------

    def _install(self) -> None:
        self._retrier = _Retrier()
        for signum in self.signums:
            self._old[signum] = signal.signal(signum, self._handle)

    def _uninstall(self, *, restore: bool = True) -> None:
        self._closing = True  # from here a signal is only recorded
        retrier, self._retrier = self._retrier, None
        if retrier is not None:
            retrier.stop()  # first: no signal may be re-sent once the old handlers are back
        for signum, old in self._old.items():
            if not restore:
                old = signal.SIG_IGN
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # type: ignore[arg-type]
        for signum in self._pending:
            self._ignore(signum, "the command had finished")
        self._pending.clear()

    # -- delivery ---------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        retrier = self._retrier
        if retrier is not None and retrier.resending == signum:
            retrier.resending = 0  # our own retry, not a new signal
            if signum not in self._pending:
                return
        elif signum not in self.received:
            self.received.append(signum)
        if self.raised is not None:
            self._ignore(signum, f"already stopping for {self.raised.name}")
            return
        if signum not in self._pending:
            self._pending.append(signum)
        if not self._closing:
            self._deliver(frame)

    def _deliver(self, frame: FrameType | None) -> None:
        """Raise :class:`Interrupted` for the first pending signal if the main thread is at a safe point."""
        if not self._pending or self._depth:
            return
        if sys.exc_info()[1] is not None or _unsafe(frame) or not self._in_callee(frame):
            if self._retrier is not None:
                self._retrier.poke(self._pending[0])
            return
        signum = self._pending.pop(0)
        for later in self._pending:
            self._ignore(later, f"already stopping for {signal_name(signum)}")
        self._pending.clear()
        if self._retrier is not None:
            self._retrier.signum = 0
        self.raised = Interrupted(signum, done=self.done)
        log.info("%s received: stopping", self.raised.name)
        raise self.raised

    def _in_callee(self, frame: FrameType | None) -> bool:
        """With :func:`run_main`: whether ``frame`` runs inside the function it calls."""
        if self._owner is None or frame is None:
            return True
        inner = None
        while frame is not None and frame is not self._owner:
            inner, frame = frame, frame.f_back
        if frame is None:
            return True
        if inner is None or inner.f_globals.get("__name__") == __name__:
            return False  # in the caller itself, or in this module's own installing and removing
        return self._callee is None or inner.f_code is self._callee

    def _ignore(self, signum: int, why: str) -> None:
        self.ignored.append(signum)
        log.warning("%s received; ignored: %s (SIGKILL stops at once)", signal_name(signum), why)


_active: Guard | None = None


@contextmanager
def interruptible(signums: Iterable[int] = DEFAULT_SIGNALS) -> Iterator[Guard | None]:
    """Turn ``signums`` into :class:`Interrupted` in the main thread while the block runs.

    Restores the previous handlers on exit. Nested use, or use from another
    thread than the main one, does nothing (and yields the active guard, or
    ``None``).
    """
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active
        return
    guard = Guard(signums)
    guard._install()
    _active = guard
    try:
        yield guard
    finally:
        _active = None
        guard._uninstall()


def run_main(func: Callable[..., T], *args: Any, signums: Iterable[int] = DEFAULT_SIGNALS, **kwargs: Any) -> T:
    """Run a program's main function ``func(*args, **kwargs)`` with its signals handled, then exit-ready.

    Like a ``with interruptible():`` block, except at both ends: a signal is
    raised only while ``func`` runs (one that arrives just before it starts
    is raised inside it), and once it has returned the signals stay
    *ignored* instead of restored, so the program exits with the status of
    what ``func`` did, not killed by a signal that came too late.
    """
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        return func(*args, **kwargs)
    guard = Guard(signums)
    guard._owner = sys._getframe()
    guard._callee = getattr(func, "__code__", None)
    guard._install()
    _active = guard
    try:
        return func(*args, **kwargs)
    finally:
        _active = None
        guard._uninstall(restore=False)
        guard._owner = None


class deferred:
    """A section of the main thread that no signal interrupts (a context manager).

    A signal that arrives inside is raised as :class:`Interrupted` when the
    section ends normally; when it ends with an exception, or inside an
    ``except`` block, that exception stays the first cause and the signal
    waits for the next safe point. Does nothing outside :func:`interruptible`
    or in another thread than the main one.
    """

    def __enter__(self) -> None:
        self._guard = _active if threading.current_thread() is threading.main_thread() else None
        if self._guard is not None:
            self._guard._deliver(None)  # a signal that came before the section is raised before it
            self._guard._depth += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        guard = self._guard
        if guard is None:
            return
        guard._depth -= 1
        if exc_type is None:
            guard._deliver(None)
        elif guard._pending and guard._retrier is not None:
            guard._retrier.poke(guard._pending[0])


def checkpoint() -> None:
    """Raise :class:`Interrupted` now for a signal still pending, if this is a safe point.

    A signal that arrived while the main thread waited on worker threads is
    otherwise raised at the next retry; code that is about to make something
    irreversible (or to announce that a step is done) calls this first.
    Does nothing outside :func:`interruptible`, in a :class:`deferred`
    section, or while an exception is being handled.
    """
    guard = _active
    if guard is not None and threading.current_thread() is threading.main_thread():
        guard._deliver(None)


def note(done: str) -> None:
    """Record work that is complete and that an interruption from now on leaves in place.

    The message of a later :class:`Interrupted` ends with ``done`` (e.g.
    ``cluster vc1 was booted before it and keeps running``). Call it inside a
    :class:`deferred` section together with whatever marks the work complete,
    so an interruption comes either before both or after both. Does nothing
    outside :func:`interruptible`.
    """
    if _active is not None and threading.current_thread() is threading.main_thread():
        _active.done.append(done)


def active() -> Guard | None:
    """The guard of the running :func:`interruptible` block, or ``None``."""
    return _active


def process_alive(pid: object) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts; ``0``, non-numbers and a
    zombie -- dead, its parent not told yet -- do not).

    Drivers use it to tell a reservation whose boot is still running from one
    whose process was killed (or stopped before it could roll back).
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: kill(0) is all there is to know
    return state not in (b"Z", b"X")
