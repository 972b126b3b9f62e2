"""The contract of a refused input, shared by the hostile-input tests (``tests/hostile``).

Whatever the input, a failed ``pragma`` command exits non-zero and writes
exactly one line to stderr, ``Error: ...``: no traceback, no "internal
error" (a bug's last resort), no logging dump.
"""

from __future__ import annotations

from typing import Any


def assert_one_error_line(result: Any, *fragments: str) -> str:
    """Check ``result`` (``code``, ``err``) is a clean refusal; return its ``Error:`` line.

    Each of ``fragments`` must appear in that line.
    """
    assert result.code != 0, f"accepted (exit 0): {result!r}"[:2000]
    lines = result.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {result.err[:2000]!r}"
    line = lines[0]
    assert line.startswith("Error: "), line[:2000]
    for noise in ("Traceback", "internal error", "--- Logging error ---", "Exception ignored"):
        assert noise not in result.err, line[:2000]
    for fragment in fragments:
        assert fragment in line, (fragment, line[:2000])
    return line
