"""CloudStack API request signing, exactly as the management server verifies it.

The server (``ApiServer.verifyRequest``) takes the request's parameters as
they arrived (names as sent, values decoded), drops ``signature``, sorts the
names with Java's ``String.compareTo`` (case-sensitive, by code unit), joins
``name=URLEncoder.encode(value, "UTF-8")`` pairs with ``&`` after turning
every ``+`` into ``%20``, lower-cases the whole string, and compares the
base64 HMAC-SHA1 of it under the secret key with the ``signature`` sent.

With ``signatureVersion=3`` the request must also carry ``expires``
(``yyyy-MM-dd'T'HH:mm:ssZ``, e.g. ``2026-11-26T10:00:00+0000``) in the
future, so a captured URL stops working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote_plus

from pragma_core.pluginkit import register_secret

#: ``SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ssZ")`` as a ``strftime`` pattern (always UTC).
EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%S+0000"


def java_urlencode(value: str) -> str:
    """``java.net.URLEncoder.encode(value, "UTF-8")``.

    Java keeps ASCII letters, digits and ``.-*_``, turns a space into ``+``
    and percent-encodes every other UTF-8 byte with upper-case hex. Python's
    ``quote_plus`` agrees except that it also keeps ``~``.
    """
    return quote_plus(value, safe="*").replace("~", "%7E")


def string_to_sign(params: Mapping[str, str]) -> str:
    """The lower-cased, sorted, encoded parameter string the signature covers.

    ``params`` are the parameters exactly as they will be sent (without
    ``signature``); names are sorted as sent, upper case before lower case.
    """
    pairs = [
        f"{name}={java_urlencode(params[name]).replace('+', '%20')}"
        for name in sorted(params)
        if name.lower() != "signature"
    ]
    return "&".join(pairs).lower()


def sign(params: Mapping[str, str], secret_key: str) -> str:
    """The base64 HMAC-SHA1 signature of ``params`` under ``secret_key``."""
    digest = hmac.new(secret_key.encode("utf-8"), string_to_sign(params).encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def expires_at(seconds_from_now: float, *, now: float | None = None) -> str:
    """The ``expires`` value ``seconds_from_now`` in the future, in the server's format."""
    moment = (time.time() if now is None else now) + seconds_from_now
    return time.strftime(EXPIRES_FORMAT, time.gmtime(moment))


def signed_params(
    command: str,
    params: Mapping[str, str],
    *,
    api_key: str,
    secret_key: str,
    expires_after: float | None = 600.0,
    now: float | None = None,
) -> dict[str, str]:
    """The full parameter set of one request, ``signature`` included.

    Adds ``command``, ``response=json`` and ``apiKey``; with ``expires_after``
    (seconds, the default) also ``signatureVersion=3`` and ``expires``.
    ``None`` signs the old way, without expiry. The keys and the signature
    are registered for masking (:mod:`pragma_core.redaction`).
    """
    full = {name: str(value) for name, value in params.items()}
    full["command"] = command
    full["response"] = "json"
    full["apiKey"] = api_key
    if expires_after is not None:
        full["signatureVersion"] = "3"
        full["expires"] = expires_at(expires_after, now=now)
    full["signature"] = sign(full, secret_key)
    register_secret(api_key, name="CloudStack apikey")
    register_secret(secret_key, name="CloudStack secretkey")
    register_secret(full["signature"], name="CloudStack request signature", transient=True)
    return full
