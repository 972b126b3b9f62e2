"""Test helpers: every form a secret may be echoed in, and a check that none leaked.

A server, a library or an error message may show a secret raw, URL-encoded
(once or twice, ``quote`` or ``quote_plus``, upper- or lower-case hex, as
Java's ``URLEncoder`` does), JSON-quoted (with ``\\/``, ``\\uXXXX``, or a JSON
string inside a JSON string), as a Python ``repr`` of the text or of its
bytes, HTML-escaped, or lower-cased (CloudStack lower-cases what it signs)::

    from pragma_core.testing.secrets import assert_no_secret, secret_forms

    body = json.dumps({"errortext": f"bad request {quote(secret)}"})
    ...
    assert_no_secret(captured_stderr + log_text, secret)

Plugin authors use it to check that their own sinks mask what they register.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

__all__ = ["assert_no_secret", "leaked_forms", "restored_root_logging", "secret_forms"]


@contextlib.contextmanager
def restored_root_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were (a command adds its log file)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _lower_hex(encoded: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)


def secret_forms(secret: str) -> dict[str, str]:
    """Each distinct form of ``secret`` by name (``raw``, ``url``, ``json``...); a form equal to an earlier one is left out."""
    url = quote(secret, safe="")
    candidates = {
        "raw": secret,
        "url": url,
        "url-path": quote(secret),
        "url-plus": quote_plus(secret),
        "url-lower-hex": _lower_hex(url),
        "url-java": quote_plus(secret, safe="*").replace("~", "%7E"),
        "url-double": quote(url, safe=""),
        "url-plus-double": quote_plus(quote_plus(secret)),
        "json": json.dumps(secret)[1:-1],
        "json-unicode": json.dumps(secret, ensure_ascii=False)[1:-1],
        "json-slash": json.dumps(secret)[1:-1].replace("/", "\\/"),
        "json-every-char": "".join(f"\\u{unit:04x}" for unit in _utf16_units(secret)),
        "json-in-json": json.dumps(json.dumps(secret))[3:-3],
        "json-of-url": json.dumps(url)[1:-1],
        "url-of-json": quote(json.dumps(secret), safe=""),
        "repr": repr(secret)[1:-1],
        "bytes-repr": repr(secret.encode("utf-8"))[2:-1],
        "html": html.escape(secret),
        "lower": secret.lower(),
        "lower-url": url.lower(),
    }
    forms: dict[str, str] = {}
    for name, form in candidates.items():
        if form not in forms.values():
            forms[name] = form
    return forms


def _utf16_units(text: str) -> list[int]:
    data = text.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def leaked_forms(text: str, secret: str) -> list[str]:
    """The names of the forms of ``secret`` found in ``text``."""
    return [name for name, form in secret_forms(secret).items() if form in text]


def assert_no_secret(text: str, *secrets: str, where: str = "output") -> None:
    """Fail, naming the forms (never the secret), when any form of any of ``secrets`` is in ``text``."""
    __tracebackhide__ = True  # pytest: no frame of this helper, whose arguments hold the secrets
    for number, secret in enumerate(secrets, 1):
        found = leaked_forms(text, secret)
        assert not found, f"secret #{number} leaked into the {where} as: {', '.join(found)}"
