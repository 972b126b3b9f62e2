"""The ``pragma`` command's logging: one line per record on stderr, ``loglevel=``, log files.

:func:`log_to_stderr` installs the stderr handler a command starts with;
:func:`setup_logging` applies the command's ``loglevel=`` and opens its log
file, if any; :func:`close_log_files` and :func:`check_log_files` finish
them. Every handler formats through :class:`PrintableFormatter`, so a record
is one line whatever text it echoes.

This module is imported only by the commands that run (not by ``--help`` or
``--version``): :mod:`logging` alone costs more than half a bare interpreter
start.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import PragmaError
from .printable import printable
from .request import check_loglevel, quote

if TYPE_CHECKING:
    from .cli import Context

__all__ = ["LogFile", "PrintableFormatter", "check_log_files", "close_log_files", "default_logfile",
           "log_to_stderr", "setup_logging"]

_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class PrintableFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose records are one line each: the message is escaped
    with :func:`~pragma_core.printable.printable`; a traceback keeps its line breaks, but nothing else."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info is None:
            return super().format(record)
        cached, record.exc_text = record.exc_text, None  # another handler's unescaped traceback
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: object) -> str:
        return printable(super().formatException(ei), keep="\n")  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep="\n")


class LogFile(logging.FileHandler):
    """The command's log file. A write that fails is remembered, not retried and not dumped
    on stderr (logging's "--- Logging error ---"): the command then fails with one line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failure: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)  # a malformed log call is a bug: logging reports it
        else:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self.failure is None:
            self.failure = f"cannot write log file {self.baseFilename}: {_os_reason(exc)}"

    def check(self) -> None:
        """Flush; raise the error of a write that failed, now or before."""
        if self.failure is None:
            try:
                self.flush()
            except OSError as exc:
                self._failed(exc)
        if self.failure is not None:
            raise PragmaError(self.failure)

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:  # the last flush: what was lost is reported by check() when still possible
            self._failed(exc)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def log_to_stderr() -> None:
    """The handler every command starts with: warnings and errors on stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(levelname)s: %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def setup_logging(ctx: Context, params: dict[str, str], *, logfile: Path | None = None) -> None:
    """Set up the command's logging (once): ``loglevel=`` and the log file, if any.

    With a log file (``logfile=``, or boot's and sync's own), the file is
    written at ``loglevel`` (default INFO) and stderr shows warnings; without
    one, stderr shows ``loglevel`` (default WARNING). DEBUG also shows on
    stderr, with the traceback of an error. The log file is written to at
    once (its first line), so a file that cannot be written fails the
    command before it does anything.
    """
    level_name = check_loglevel(params.get("loglevel")) or ("INFO" if logfile is not None else "WARNING")
    ctx.debug = level_name == "DEBUG"
    level = getattr(logging, level_name)
    stderr_level = logging.DEBUG if ctx.debug else logging.WARNING if logfile is not None else level
    root = logging.getLogger()
    root.setLevel(min(logging.INFO, level, stderr_level))
    for handler in root.handlers:
        handler.setLevel(stderr_level)
    if logfile is not None:
        handler = _open_log_file(logfile)
        ctx.log_files.append(handler)
        handler.setLevel(getattr(logging, level_name))
        handler.setFormatter(PrintableFormatter(_LOG_FORMAT))
        handler.emit(logging.LogRecord("pragma_core.cli", logging.INFO, __file__, 0, "log opened (pragma %s)", (__version__,), None))
        handler.check()
        root.addHandler(handler)


def _open_log_file(path: Path) -> LogFile:
    try:
        return LogFile(path)
    except OSError as exc:
        if not path.parent.is_dir():
            raise PragmaError(f"cannot open log file {path}: directory {path.parent} does not exist") from None
        raise PragmaError(f"cannot open log file {path}: {_os_reason(exc)}") from None
    except ValueError:  # a NUL byte in the name
        raise PragmaError(f"cannot open log file {quote(str(path))}: invalid file name") from None


def close_log_files(ctx: Context) -> None:
    """Detach and close the command's log files."""
    root = logging.getLogger()
    for handler in ctx.log_files:
        root.removeHandler(handler)
        handler.close()
    ctx.log_files.clear()


def check_log_files(ctx: Context) -> None:
    """Raise the error of a log-file write that failed."""
    for handler in ctx.log_files:
        handler.check()


def default_logfile(ctx: Context, params: dict[str, str], stem: str) -> Path:
    """``logfile=`` as given (its directory must exist), else ``<log_directory>/<stem>-<date>.log``.

    ``stem`` is a checked name or a fixed word; ``log_directory`` is created
    when missing, as the legacy tool did.
    """
    if params.get("logfile"):
        return Path(params["logfile"])
    log_dir = Path(ctx.site.require("log_directory"))
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PragmaError(f"cannot create log_directory {log_dir}: {_os_reason(exc)}") from None
    return log_dir / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.log"
