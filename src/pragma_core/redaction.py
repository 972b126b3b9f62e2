"""Keeping secrets out of log lines.

A :class:`RedactingFilter` rewrites every record of the loggers it is added
to with a redacting function (signatures, keys, query strings out). HTTP
libraries log request URLs on their own loggers, and a logger's filters see
only the records logged on that very logger, so the filter goes on each one:
:func:`add_filter`. Used by :mod:`pragma_core.download` and by plugins that
sign requests (``pragma_cloudstack``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

_lock = threading.Lock()


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with ``redact`` (a record it cannot format passes unchanged)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def add_filter(redacting: logging.Filter, *loggers: str) -> None:
    """Put ``redacting`` on each named logger once (idempotent, thread-safe)."""
    with _lock:
        for name in loggers:
            logger = logging.getLogger(name)
            if redacting not in logger.filters:
                logger.addFilter(redacting)
