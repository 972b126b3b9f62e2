"""Text for a terminal or a log file: control characters made visible.

Names and messages that pragma echoes come from users, repositories, guests
and remote servers. A newline, carriage return or terminal escape in one of
them could forge an ``Error:`` line, redraw the screen or split a log record
in two. Every sink -- the command's ``Error:`` line, its tables, every log
handler it installs -- passes text through :func:`printable`, which writes
such characters as escapes (``\\n``, ``\\x1b``, ``\\u202e``).

This module is imported at start-up by the ``pragma`` command: standard
library only.
"""

from __future__ import annotations

import logging
import re

__all__ = ["ERROR_LINE_LIMIT", "PrintableFormatter", "printable"]

#: The longest ``Error:`` message printed; the rest is cut (a message echoing a
#: huge hostile value stays one readable line).
ERROR_LINE_LIMIT = 4096

# C0 and C1 controls, DEL, and the invisible Unicode format characters that
# reorder or hide text (bidi overrides, zero-width characters, line and
# paragraph separators, the byte-order mark).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, keep: str = "", limit: int | None = None) -> str:
    """``text`` with every control or invisible format character escaped.

    Characters in ``keep`` (say ``"\\n"`` for a traceback) pass unchanged.
    With ``limit``, text longer than that is cut and says how much was left
    out. The result of a text without such characters is the text itself.
    """
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more characters]"
    if keep:
        return _UNSAFE.sub(lambda m: m.group(0) if m.group(0) in keep else _escape(m), text)
    return _UNSAFE.sub(_escape, text)


class PrintableFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose records are one line each: the message is escaped
    with :func:`printable`; a traceback keeps its line breaks, but nothing else."""

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
