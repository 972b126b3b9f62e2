"""The ``cloudfront`` repository: the ``http`` repository behind CloudFront signed URLs.

Needs the extra ``pragma-core[cloudfront]`` (``botocore`` and ``rsa``).
Settings (``repository_settings``)::

    repository_settings = {
        "repository_class": "cloudfront",
        "repository_dir": "/state/partition1/vm-images",
        "repository_url": "https://d111111abcdef8.cloudfront.net/pragma",
        "keypair_id": "K2JCJMDEHXQW5F",
        "private_key_file": "/opt/pragma_boot/etc/cloudfront-private.pem",
        # optional:
        "url_lifetime": 3600,        # seconds each signed URL is valid
        "hash_algorithm": "sha1",    # or "sha256" (RSA-SHA256, adds Hash-Algorithm=SHA256)
        "policy": "canned",          # or "custom": one wildcard policy for <repository_url>/*
        # and the http repository's timeout, retries, backoff, deadline, image_deadline
    }

Every request -- catalogue, cluster XML, each part, each resume and retry --
is signed when it is sent, with botocore's
``CloudFrontSigner(keypair_id, rsa_signer).generate_presigned_url(url,
date_less_than=...)`` (canned policy: ``Expires``, ``Signature``,
``Key-Pair-Id``) or, with ``policy = "custom"``, a policy whose resource is
``<repository_url>/*``, signed once and reused for half its lifetime
(``Policy``, ``Signature``, ``Key-Pair-Id``). botocore signs what its
``rsa_signer`` returns and knows nothing of the hash: for ``sha256`` the
signer uses RSA-SHA256 and ``Hash-Algorithm=SHA256`` is appended, as the
CloudFront documentation describes (botocore 1.43 has no option for it).

The private key is an RSA key in PEM form, PKCS#1 (``BEGIN RSA PRIVATE
KEY``, what CloudFront hands out) or PKCS#8 (``BEGIN PRIVATE KEY``). A key
file readable by group or others is warned about. Signatures never appear in
a log line or an error message: URLs are shown without their query string
and a logging filter scrubs the request lines of ``urllib3``.

The legacy tool misspelled its signing override (``getRemoteFielPath``) and
so never signed anything (bug S9); it imported ``boto`` when the module
loaded. Here ``botocore`` and ``rsa`` are imported when the repository is
constructed.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import frozen

from ..config import warn_if_readable_by_others
from ..errors import ConfigError
from ..settings import MAX_SECONDS, choice, int_between, setting, to_nonempty_str, to_path
from .http import HttpRepository, HttpSettings, _setting_error
from ..redaction import register_pem, register_secret

if TYPE_CHECKING:
    from ..http import Auth

_HASHES = {"sha1": "SHA-1", "sha-1": "SHA-1", "sha256": "SHA-256", "sha-256": "SHA-256"}
_RSA_ENCRYPTION_OID = "1.2.840.113549.1.1.1"


def load_private_key(path: Path) -> Any:
    """Read an RSA private key (PEM, PKCS#1 or PKCS#8) as an ``rsa.PrivateKey``.

    Raises :class:`ValueError` with a message that never contains key material.
    """
    import rsa

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    register_pem(data, name=f"CloudFront private key {path}")
    try:
        if b"-----BEGIN RSA PRIVATE KEY-----" in data:
            return rsa.PrivateKey.load_pkcs1(data, format="PEM")
        if b"-----BEGIN PRIVATE KEY-----" in data:
            from pyasn1.codec.der import decoder

            der = rsa.pem.load_pem(data, "PRIVATE KEY")
            info, _ = decoder.decode(der)
            if str(info[1][0]) != _RSA_ENCRYPTION_OID:
                raise ValueError("not an RSA key")
            return rsa.PrivateKey.load_pkcs1(bytes(info[2]), format="DER")
    except Exception:  # noqa: BLE001, S110 - any parse failure is the same problem to the user
        pass
    raise ValueError(f"{path}: not an RSA private key in PEM form (PKCS#1 or PKCS#8)")


@frozen(kw_only=True)
class CloudFrontSettings(HttpSettings):
    """The ``cloudfront`` repository's own keys of ``repository_settings`` (and the http ones)."""

    keypair_id: str = setting(to_nonempty_str, help="the CloudFront key pair or public key id")
    private_key_file: Path = setting(to_path, help="path of the PEM private key")
    url_lifetime: int = setting(int_between(1, MAX_SECONDS), default=3600, help="seconds each signed URL is valid")
    hash_algorithm: str = setting(choice(*_HASHES), default="sha1", help="sha1 or sha256")
    policy: str = setting(choice("canned", "custom"), default="canned", help="canned, or custom for <url>/*")


class CloudFrontRepository(HttpRepository):
    """The ``http`` repository with every URL signed for a private CloudFront distribution."""

    name = "cloudfront"
    config_class = CloudFrontSettings

    def __init__(self, settings: Any, *, site: Any) -> None:
        super().__init__(settings, site=site)
        self.keypair_id = self.config.keypair_id
        self.private_key_file = self.config.private_key_file
        self.url_lifetime = self.config.url_lifetime
        self.hash_algorithm = _HASHES[self.config.hash_algorithm]
        self.policy = self.config.policy

        from ..download import install_redaction

        install_redaction()
        try:
            import botocore.signers  # noqa: F401
            import rsa  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"the cloudfront repository needs botocore and rsa ({exc.name} is missing): "
                "pip install 'pragma-core[cloudfront]'"
            ) from None
        warn_if_readable_by_others(self.private_key_file, "a CloudFront private key")
        try:
            key = load_private_key(self.private_key_file)
        except ValueError as exc:
            raise _setting_error(site, "private_key_file", str(exc)) from None
        self._signer = self._make_signer(key)
        self._custom: tuple[float, str] | None = None
        self._custom_lock = threading.Lock()

    def _make_signer(self, key: Any) -> Any:
        import rsa
        from botocore.signers import CloudFrontSigner

        hash_name = self.hash_algorithm

        def rsa_signer(message: bytes) -> bytes:
            return rsa.sign(message, key, hash_name)

        return CloudFrontSigner(self.keypair_id, rsa_signer)

    def auth(self) -> Auth:
        """Every request signed (:meth:`sign_url`) when it is sent, retries and resumes included."""
        from ..http import UrlSigner

        return UrlSigner(lambda url: self.sign_url(url))

    def _suffix(self) -> str:
        return "&Hash-Algorithm=SHA256" if self.hash_algorithm == "SHA-256" else ""

    def sign_url(self, url: str, *, now: float | None = None) -> str:
        """``url`` signed to be valid for ``url_lifetime`` seconds from ``now``."""
        now = time.time() if now is None else now
        if self.policy == "custom":
            return self._sign_custom(url, now)
        expires = _dt.datetime.fromtimestamp(int(now) + self.url_lifetime, tz=_dt.UTC)
        return _registered(self._signer.generate_presigned_url(url, date_less_than=expires) + self._suffix())

    def _sign_custom(self, url: str, now: float) -> str:
        with self._custom_lock:
            if self._custom is None or now >= self._custom[0]:
                expires = _dt.datetime.fromtimestamp(int(now) + self.url_lifetime, tz=_dt.UTC)
                policy = self._signer.build_policy(self.base_url + "/*", expires)
                signed = self._signer.generate_presigned_url(self.base_url + "/", policy=policy)
                query = _registered(signed).split("?", 1)[1] + self._suffix()
                self._custom = (now + self.url_lifetime / 2, query)
            query = self._custom[1]
        return url + ("&" if "?" in url else "?") + query


def _registered(signed_url: str) -> str:
    """``signed_url``, its ``Signature`` registered as a (short-lived) secret for masking."""
    for pair in signed_url.partition("?")[2].split("&"):
        name, _, value = pair.partition("=")
        if name == "Signature":
            register_secret(value, name="CloudFront signature", transient=True)
    return signed_url
