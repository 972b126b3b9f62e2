"""Text for a terminal or a log file: control characters made visible.

Names and messages that pragma echoes come from users, repositories, guests
and remote servers. A newline, carriage return or terminal escape in one of
them could forge an ``Error:`` line, redraw the screen or split a log record
in two. Every sink -- the command's ``Error:`` line, its tables, every log
handler it installs (through :class:`pragma_core.commandlog.PrintableFormatter`)
-- passes text through :func:`printable`, which writes such characters as
escapes (``\\n``, ``\\x1b``, ``\\u202e``).

This module is imported at start-up by the ``pragma`` command: standard
library only.
"""

from __future__ import annotations

import re

__all__ = ["ERROR_LINE_LIMIT", "printable"]

#: The longest ``Error:`` message printed; the rest is cut (a message echoing a
#: huge hostile value stays one readable line).
ERROR_LINE_LIMIT = 4096

# C0 and C1 controls, DEL, and the invisible Unicode format characters that
# reorder or hide text (bidi overrides, zero-width characters, line and
# paragraph separators, the byte-order mark). None of them is
# ``str.isprintable()``, so a printable text is returned as it is without
# this pattern (compiled on first need: the pragma command starts faster).
_UNSAFE_CHARS = "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
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
    if text.isprintable():
        return text
    unsafe = re.compile(_UNSAFE_CHARS)  # re caches the compiled pattern
    if keep:
        return unsafe.sub(lambda m: m.group(0) if m.group(0) in keep else _escape(m), text)
    return unsafe.sub(_escape, text)
