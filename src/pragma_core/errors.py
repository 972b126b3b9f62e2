"""The one exception hierarchy of pragma.

Every error a user can cause or meet derives from :class:`PragmaError`. The
``pragma`` command turns any of them into a single ``Error: ...`` line on
stderr and exit status 1 (:class:`UsageError`: status 2); a traceback is shown
only with ``loglevel=DEBUG``. Library code never calls ``sys.exit``.

Messages name the file, line or setting that is wrong, and never contain a
secret (keys, signatures, passwords).
"""

from __future__ import annotations

TYPE_CHECKING = False  # neither typing nor pathlib is imported until an error names a file
if TYPE_CHECKING:
    from pathlib import Path


def _as_path(path: str | Path) -> Path:
    from pathlib import Path

    return Path(path)


class PragmaError(Exception):
    """Base class of every error pragma reports to a user.

    Its text (``str(exc)``) has every registered secret masked
    (:func:`pragma_core.redaction.redact`), whoever formats it.
    """

    exit_code: int = 1

    def __str__(self) -> str:
        from .redaction import redact

        return redact(super().__str__())


class UsageError(PragmaError):
    """The command line itself is wrong (unknown command, missing argument)."""

    exit_code = 2


class ConfigError(PragmaError):
    """A configuration file or setting is missing or invalid.

    The message reads ``<file> line <n>: <key>: <problem>``; parts that are not
    known are left out.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.path = _as_path(path) if path is not None else None
        self.line = line
        self.key = key
        self.problem = message
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if line is not None:
            where.append(f"line {line}")
        prefix = " ".join(where)
        text = message if key is None else f"{key}: {message}"
        super().__init__(f"{prefix}: {text}" if prefix else text)


class FormatError(PragmaError):
    """A file in one of pragma's formats (vcdb, cluster XML, vc-out) is invalid."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = _as_path(path) if path is not None else None
        self.line = line
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if line is not None:
            where.append(f"line {line}")
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class PluginError(PragmaError):
    """A plugin the site asked for is missing, broken or incompatible."""


class NotFoundError(PragmaError):
    """A named thing (cluster, image, node) does not exist."""


class RepositoryError(PragmaError):
    """A repository could not list, resolve, download or sync."""


class StagingError(PragmaError):
    """An image could not be staged (missing part, corrupt data, disk full...)."""


class ChecksumError(StagingError):
    """Data did not match its expected digest."""

    def __init__(self, path: str | Path, algorithm: str, expected: str, actual: str) -> None:
        self.path = _as_path(path)
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(f"{path}: {algorithm} mismatch: expected {expected}, got {actual}")


class DriverError(PragmaError):
    """A driver failed to allocate, deploy, list, shut down or clean."""


class CapacityError(DriverError):
    """Not enough resources (CPUs, IPs, VLANs, addresses) for a request.

    ``reserved`` names clusters that hold resources without running (a
    rollback that could not finish, a cluster shut down but not cleaned);
    the message then ends ``; reserved, not running: X; pragma clean X``.
    """

    def __init__(self, message: str, *, reserved: tuple[str, ...] | list[str] = ()) -> None:
        self.reserved = tuple(reserved)
        if self.reserved:
            cleans = "; ".join(f"pragma clean {name}" for name in self.reserved)
            message = f"{message}; reserved, not running: {', '.join(self.reserved)}; {cleans}"
        super().__init__(message)


class NotSupportedError(PragmaError):
    """The operation is not supported by this driver or repository."""
