"""Keeping secrets out of everything pragma prints or logs.

One mechanism, in two halves:

* **A registry of secret values.** Whoever learns a secret registers it
  (:func:`register_secret`): the configuration reader registers the value of
  every secret-bearing setting as soon as a file is parsed, the CloudFront
  repository its private key's PEM body, the CloudStack client each request
  signature it makes. The registry is process-wide and thread-safe.
* **Masking at the sinks.** :func:`redact` replaces every registered value by
  ``***`` in every form a server, a library or a config error may echo it:
  raw, URL-encoded (``quote``/``quote_plus``, upper- or lower-case hex,
  double-encoded as inside a quoted URL), JSON- or repr-escaped (``\\/``,
  ``\\uXXXX``, ``\\xXX``, doubled backslashes), HTML entities, in any letter
  case (CloudStack lower-cases the string it signs). It also masks by
  pattern what no registry can know in advance: the value of
  ``signature=``, ``apikey=``, ``secretkey=``, ``password=``, ``token=``...
  (raw, URL-encoded, JSON or Python dict form) and the password of
  ``scheme://user:password@``. :func:`redact` is applied

  - to every log record of the process, whatever logger made it (pragma's,
    plugins', ``urllib3``'s, ``requests``'): a log-record factory installed
    when this module is imported, so it holds for the ``pragma`` command and
    for library users with their own handlers alike (a logger's filters would
    see only records logged on that very logger, a handler's only the
    handlers pragma installs);
  - to the text of every :class:`~pragma_core.errors.PragmaError`
    (``str(exc)``), so an exception pragma formats never carries a secret;
  - to the ``Error: ...`` line (and the ``loglevel=DEBUG`` traceback) of the
    ``pragma`` command.

How matching works: the text and each secret are brought to one canonical
form (escapes decoded -- ``%XX`` at any depth of encoding, ``\\uXXXX``,
``\\xXX``, backslash escapes, HTML entities --, ``+`` and space made equal,
ASCII lower-cased), the secret is searched for in the canonical text, and
the original characters it came from are replaced. An escape sequence is
masked whole when a secret covers part of it.

Secrets shorter than :data:`MIN_SECRET_LENGTH` characters (after decoding)
are not registered: masking ``"1"`` or ``"yes"`` everywhere would garble
every message without protecting anything real (CloudStack keys are 86
characters, Google API keys 39, RSA signatures hundreds). The configuration
reader still keeps a short secret out of its own error messages.

Not done on purpose: base64 forms of a secret. Nothing pragma talks to
base64-encodes a configured secret and echoes it; the CloudFront private key
is registered as what it is in its file (the base64 lines of the PEM body).
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "RedactingFilter",
    "add_filter",
    "install",
    "redact",
    "redact_record",
    "register_pem",
    "register_secret",
]

#: What a secret is replaced by.
MASK = "***"
#: Shortest value (in characters, after decoding escapes) that is registered as a secret.
MIN_SECRET_LENGTH = 8
#: How many short-lived secrets (request signatures) are remembered; the oldest are forgotten.
TRANSIENT_LIMIT = 64

_lock = threading.Lock()

# --------------------------------------------------------------------------- canonical form

#: ASCII upper case to lower case (length-preserving, unlike str.lower), and '+' to ' '.
_FOLD = str.maketrans({**{chr(c): chr(c + 32) for c in range(65, 91)}, "+": " "})
_NAMED_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_BACKSLASH_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_ESCAPE = re.compile(
    r"(?P<pct>(?:%(?:25)*[0-9a-f]{2})+)"
    r"|(?P<uni>(?:\\+u[0-9a-f]{4})+)"
    r"|(?P<hex>(?:\\+x[0-9a-f]{2})+)"
    r"|&(?P<ent>\#[0-9]{1,7}|\#x[0-9a-f]{1,6}|amp|lt|gt|quot|apos);"
    r"|(?P<bs>\\+)(?P<esc>[nrtbf/\"'])?",
    re.IGNORECASE,
)
_HEX_PAIR = re.compile(r"[0-9a-f]{2}$", re.IGNORECASE)


def _decode_escape(match: re.Match[str]) -> str:
    """What one escape token of :data:`_ESCAPE` stands for."""
    if (pct := match.group("pct")) is not None:
        data = bytes(int(_HEX_PAIR.search(piece).group(), 16) for piece in pct.split("%")[1:])  # type: ignore[union-attr]
        return data.decode("utf-8", errors="replace")
    if (uni := match.group("uni")) is not None:
        units = b"".join(int(piece[1:5], 16).to_bytes(2, "big") for piece in uni.split("\\") if piece)
        return units.decode("utf-16-be", errors="replace")
    if (hexes := match.group("hex")) is not None:
        data = bytes(int(piece[1:3], 16) for piece in hexes.split("\\") if piece)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if (entity := match.group("ent")) is not None:
        if entity in _NAMED_ENTITIES or entity.lower() in _NAMED_ENTITIES:
            return _NAMED_ENTITIES[entity.lower()]
        try:
            return chr(int(entity[2:], 16) if entity[1] in "xX" else int(entity[1:]))
        except (ValueError, OverflowError):
            return match.group()
    escaped = match.group("esc")
    if escaped is None:
        return "\\"
    return _BACKSLASH_ESCAPES.get(escaped, escaped)


#: Decoding rounds: a JSON string inside a URL inside JSON is three.
_ROUNDS = 3


def _has_escape(text: str) -> bool:
    return "%" in text or "\\" in text or "&" in text


def _decode_once(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` with its escapes decoded, and for each character the span of ``text`` it came from."""
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    position = 0
    for match in _ESCAPE.finditer(text):
        if match.start() > position:
            pieces.append(text[position : match.start()])
            starts.extend(range(position, match.start()))
            ends.extend(range(position + 1, match.start() + 1))
        decoded = _decode_escape(match)
        pieces.append(decoded)
        starts.extend([match.start()] * len(decoded))
        ends.extend([match.end()] * len(decoded))
        position = match.end()
    if position < len(text):
        pieces.append(text[position:])
        starts.extend(range(position, len(text)))
        ends.extend(range(position + 1, len(text) + 1))
    return "".join(pieces), starts, ends


def _canonical(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """``text`` in canonical form, and for each canonical character the span of ``text`` it came from.

    The spans are ``None`` when the mapping is the identity (no escape in ``text``).
    """
    starts: list[int] | None = None
    ends: list[int] | None = None
    for _ in range(_ROUNDS):
        if not _has_escape(text):
            break
        decoded, new_starts, new_ends = _decode_once(text)
        if decoded == text:
            break
        if starts is not None and ends is not None:
            new_starts = [starts[i] for i in new_starts]
            new_ends = [ends[i - 1] for i in new_ends]
        text, starts, ends = decoded, new_starts, new_ends
    return text.translate(_FOLD), starts, ends


# --------------------------------------------------------------------------- registry


class _Registry:
    """Secret values in canonical form: configured ones forever, transient ones (signatures) bounded."""

    def __init__(self) -> None:
        self.permanent: dict[str, str] = {}
        self.transient: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.snapshot: tuple[str, ...] = ()

    def add(self, canonical: str, name: str, *, transient: bool) -> None:
        with _lock:
            if canonical in self.permanent:
                return
            if transient:
                self.transient[canonical] = name
                self.transient.move_to_end(canonical)
                while len(self.transient) > TRANSIENT_LIMIT:
                    self.transient.popitem(last=False)
            else:
                self.permanent[canonical] = name
                self.transient.pop(canonical, None)
            # Longest first: a secret that contains another is masked whole.
            self.snapshot = tuple(sorted({*self.permanent, *self.transient}, key=len, reverse=True))


_registry = _Registry()


def register_secret(value: str, *, name: str = "", transient: bool = False) -> None:
    """Mask ``value`` in every form in everything pragma prints or logs from now on.

    ``name`` says what it is (for debugging the registry; never printed with
    the value). A value shorter than :data:`MIN_SECRET_LENGTH` characters
    after decoding escapes is ignored (see the module's documentation).
    ``transient`` is for short-lived values made in great numbers (request
    signatures): only the last :data:`TRANSIENT_LIMIT` are kept.
    """
    if not isinstance(value, str):
        return
    canonical = _canonical(value.strip())[0]
    if len(canonical) < MIN_SECRET_LENGTH:
        return
    _registry.add(canonical, name, transient=transient)


_PEM_BODY = re.compile(r"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END [A-Z0-9 ]+-----", re.DOTALL)


def register_pem(data: bytes | str, *, name: str = "private key") -> None:
    """Register the key material of a PEM file: each base64 line of each block, and each block whole."""
    text = data.decode("ascii", errors="replace") if isinstance(data, bytes) else data
    for block in _PEM_BODY.findall(text):
        lines = [line.strip() for line in block.splitlines() if line.strip() and ":" not in line]
        for line in lines:
            register_secret(line, name=name)
        register_secret("".join(lines), name=name)


# --------------------------------------------------------------------------- masking

_SECRET_NAMES = (
    r"signature|x-amz-signature|x-amz-credential|apikey|api_key|api-key|secretkey|secret_key"
    r"|password|passwd|token|access_token|auth_token|refresh_token|client_secret"
)


@functools.cache
def _param_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The two ``name=value`` patterns, compiled on first use.

    Compiling them takes ~6 ms, which a command that never redacts anything
    (``pragma --help``, a listing) need not pay at start-up.

    * ``name=value`` in a query string or form body, the ``=`` raw or
      URL-encoded; the value ends at ``&`` (raw, URL- or JSON-encoded), a
      quote, a space or a closing bracket;
    * ``"name": "value"`` (JSON, at any depth of quoting) or ``'name': 'value'``
      (a Python dict).
    """
    param = re.compile(
        rf"(?:(?<![A-Za-z0-9_-])|(?<=%3f)|(?<=%26)|(?<=%253f)|(?<=%2526))((?:{_SECRET_NAMES})(?:=|%3d|%253d))"
        r"((?:(?!%26|%2526|\\+u0026|\\*[\"'])[^&\s'\"<>)\]},;])+)",
        re.IGNORECASE,
    )
    quoted = re.compile(
        rf"""((?P<q>\\*["'])(?:{_SECRET_NAMES})(?P=q)\s*[:=]\s*(?P<v>\\*["']))(?P<value>.+?)(?=(?P=v))""",
        re.IGNORECASE,
    )
    return param, quoted


_USERINFO_PASSWORD = re.compile(r"(://[^/\s:@'\"]*:)[^/\s@'\"]+@")


def _value_spans(text: str, secrets: Iterable[str]) -> list[tuple[int, int]]:
    """Spans of ``text`` holding a registered secret in some form, merged and sorted."""
    canonical, starts, ends = _canonical(text)
    found: list[tuple[int, int]] = []
    for secret in secrets:
        index = canonical.find(secret)
        while index >= 0:
            last = index + len(secret) - 1
            found.append((index, last + 1) if starts is None or ends is None else (starts[index], ends[last]))
            index = canonical.find(secret, index + 1)
    found.sort()
    merged: list[tuple[int, int]] = []
    for start, end in found:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _mask_values(text: str) -> str:
    secrets = _registry.snapshot
    if not secrets or not text:
        return text
    spans = _value_spans(text, secrets)
    if not spans:
        return text
    out: list[str] = []
    position = 0
    for start, end in spans:
        out.append(text[position:start])
        out.append(MASK)
        position = end
    out.append(text[position:])
    return "".join(out)


def redact(text: str) -> str:
    """``text`` with every registered secret, in any form, and every ``secret=value`` masked."""
    if not isinstance(text, str):
        text = str(text)
    text = _mask_values(text)
    param, quoted = _param_patterns()
    text = param.sub(lambda m: m.group(1) + MASK, text)
    text = quoted.sub(lambda m: m.group(1) + MASK, text)
    return _USERINFO_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)


# --------------------------------------------------------------------------- log records

_exception_formatter = logging.Formatter()


def redact_record(record: logging.LogRecord) -> None:
    """Mask secrets in ``record``'s message, exception text and stack text (in place)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken record is logging's to report, not ours
        message = None
    if message is not None:
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = redact(_exception_formatter.formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_installed = False


def install() -> None:
    """Make every log record of the process pass through :func:`redact_record` (idempotent).

    Wraps the current log-record factory, so records of every logger are
    masked before any filter or handler sees them.
    """
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with ``redact`` (default: this module's :func:`redact`).

    Kept for callers that put a filter on their own loggers or handlers; the
    log-record factory (:func:`install`) already masks every record.
    """

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.redact = redact or globals()["redact"]

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


install()
