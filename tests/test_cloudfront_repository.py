"""The ``cloudfront`` repository against a loopback server that checks CloudFront signatures.

The checking server is written from the CloudFront documentation, not from
botocore: it rebuilds the canned policy JSON from the URL and ``Expires``
(or decodes the custom ``Policy``), verifies the RSA signature with the
public key (``rsa.verify``, SHA-1 or SHA-256 as ``Hash-Algorithm`` says) and
refuses (403) expired, tampered or unsigned requests.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from httpfaults import FaultServer, Request, write_remote_repository

from pragma_core.config import ConfigFile, RepositorySettings, SiteConfig
from pragma_core.errors import ConfigError, RepositoryError
from pragma_core.staging import Stager
from pragma_core.testing import RepositoryContract, RepositoryHarness

rsa = pytest.importorskip("rsa")
pytest.importorskip("botocore")

KEY_PAIR_ID = "K2JCJMDEHXQW5F"
SIGNING_PARAMS = {"Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm"}


def _generate_key_pem(fmt: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as crsa

    key = crsa.generate_private_key(public_exponent=65537, key_size=2048)
    encoding = (
        serialization.PrivateFormat.TraditionalOpenSSL if fmt == "pkcs1" else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, encoding, serialization.NoEncryption())


@pytest.fixture(scope="module")
def keypair():
    pytest.importorskip("cryptography")
    pem = _generate_key_pem("pkcs1")
    private = rsa.PrivateKey.load_pkcs1(pem)
    public = rsa.PublicKey(private.n, private.e)
    return pem, public


def cf_b64decode(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


class CloudFrontChecker:
    """The authorization a CloudFront distribution with a trusted key group applies."""

    def __init__(self, public_key, key_pair_id: str = KEY_PAIR_ID) -> None:
        self.public_key = public_key
        self.key_pair_id = key_pair_id
        self.clock_offset = 0.0
        self.verified: list[tuple[str, str, str]] = []  # (path, hash, policy kind)
        self.refused: list[str] = []

    def __call__(self, request: Request) -> int | None:
        reason = self.check(request)
        if reason is not None:
            self.refused.append(f"{request.path}: {reason}")
            return 403
        return None

    def check(self, request: Request) -> str | None:
        raw_path, _, query = request.target.partition("?")
        params: dict[str, str] = {}
        kept = []
        for item in query.split("&") if query else []:
            key, _, value = item.partition("=")
            if key in SIGNING_PARAMS:
                if key in params:
                    return f"{key} given twice"
                params[key] = unquote(value)
            else:
                kept.append(item)
        if "Signature" not in params:
            return "not signed"
        if params.get("Key-Pair-Id") != self.key_pair_id:
            return "unknown key pair"
        expected_hash = {None: "SHA-1", "SHA1": "SHA-1", "SHA256": "SHA-256"}.get(params.get("Hash-Algorithm"))
        if expected_hash is None:
            return "unknown Hash-Algorithm"
        resource = f"http://{request.headers['Host']}{raw_path}" + ("?" + "&".join(kept) if kept else "")
        if "Expires" in params and "Policy" not in params:
            if not params["Expires"].isdigit():
                return "bad Expires"
            expires = int(params["Expires"])
            policy = (
                '{"Statement":[{"Resource":"' + resource + '","Condition":{"DateLessThan":{"AWS:EpochTime":'
                + str(expires) + "}}}]}"
            ).encode()
            kind = "canned"
        elif "Policy" in params and "Expires" not in params:
            try:
                policy = cf_b64decode(params["Policy"])
                statement = json.loads(policy)["Statement"][0]
                pattern = statement["Resource"]
                expires = int(statement["Condition"]["DateLessThan"]["AWS:EpochTime"])
            except (ValueError, KeyError, IndexError, TypeError):
                return "bad policy"
            if not fnmatch.fnmatchcase(resource, pattern):
                return "resource not covered by the policy"
            kind = "custom"
        else:
            return "needs Expires or Policy"
        try:
            signature = cf_b64decode(params["Signature"])
            method = rsa.verify(policy, signature, self.public_key)
        except (ValueError, rsa.VerificationError):
            return "bad signature"
        if method != expected_hash:
            return f"signed with {method}, Hash-Algorithm says {expected_hash}"
        if time.time() + self.clock_offset >= expires:
            return "expired"
        self.verified.append((request.path, method, kind))
        return None


@pytest.fixture
def key_file(tmp_path, keypair):
    path = tmp_path / "cf-private.pem"
    path.write_bytes(keypair[0])
    path.chmod(0o600)
    return path


@pytest.fixture
def signed_remote(tmp_path, keypair):
    root = tmp_path / "www"
    root.mkdir()
    clusters = write_remote_repository(root, size=2 << 20)
    checker = CloudFrontChecker(keypair[1])
    with FaultServer(root, authorize=checker) as server:
        yield server, checker, clusters


def make_repo(tmp_path: Path, url: str, key_file: Path, **options):
    from pragma_core.repositories.cloudfront import CloudFrontRepository

    settings = RepositorySettings(
        repository_class="cloudfront",
        repository_dir=tmp_path / "cache",
        repository_url=url,
        options={
            "keypair_id": KEY_PAIR_ID,
            "private_key_file": str(key_file),
            "timeout": 2,
            "retries": 2,
            "backoff": 0.01,
            **options,
        },
    )
    source = ConfigFile(path=tmp_path / "etc" / "site_conf.conf", values={}, lines={})
    site = SiteConfig(conf_dir=tmp_path / "etc", source=source, repository=settings)
    return CloudFrontRepository(settings, site=site)


def stage(repo, name="demo"):
    return repo.stage(repo.describe(name), Stager(progress=False))


class TestCloudFrontRepositoryContract(RepositoryContract):
    @pytest.fixture
    def repository_harness(self, tmp_path, signed_remote, key_file):
        server, _, clusters = signed_remote
        repo = make_repo(tmp_path, server.base_url + "/", key_file)
        return RepositoryHarness(
            repository=repo,
            names=[c.name for c in clusters],
            stager=Stager(progress=False),
            required_settings=("keypair_id", "private_key_file"),
        )


@pytest.mark.parametrize(("algorithm", "method"), [("sha1", "SHA-1"), ("sha256", "SHA-256")])
def test_every_request_is_signed_with_a_canned_policy(tmp_path, signed_remote, key_file, algorithm, method):
    server, checker, clusters = signed_remote
    repo = make_repo(tmp_path, server.base_url, key_file, hash_algorithm=algorithm)
    staged = stage(repo)
    assert staged.frontend.path.read_bytes() == clusters[0].frontend
    assert staged.compute.path.read_bytes() == clusters[0].compute
    assert not checker.refused
    assert len(checker.verified) == len(server.requests) >= 6
    assert {(m, k) for _, m, k in checker.verified} == {(method, "canned")}


def test_the_custom_policy_covers_the_whole_repository(tmp_path, signed_remote, key_file):
    server, checker, clusters = signed_remote
    repo = make_repo(tmp_path, server.base_url, key_file, policy="custom", hash_algorithm="sha256")
    assert stage(repo).frontend.path.read_bytes() == clusters[0].frontend
    assert not checker.refused
    assert {(m, k) for _, m, k in checker.verified} == {("SHA-256", "custom")}


def test_signed_urls_have_the_documented_form(tmp_path, key_file):
    repo = make_repo(tmp_path, "https://d111111abcdef8.cloudfront.net/pragma", key_file, hash_algorithm="sha256",
                     url_lifetime=600)
    url = repo.sign_url("https://d111111abcdef8.cloudfront.net/pragma/vcdb.txt", now=1_700_000_000)
    base, _, query = url.partition("?")
    assert base == "https://d111111abcdef8.cloudfront.net/pragma/vcdb.txt"
    keys = [item.split("=", 1)[0] for item in query.split("&")]
    assert keys == ["Expires", "Signature", "Key-Pair-Id", "Hash-Algorithm"]
    assert "Expires=1700000600" in query and query.endswith(f"Key-Pair-Id={KEY_PAIR_ID}&Hash-Algorithm=SHA256")
    signature = query.split("Signature=")[1].split("&")[0]
    assert not set(signature) & set("+=/"), "CloudFront-safe base64"


def test_expired_urls_are_refused_with_a_clean_error(tmp_path, signed_remote, key_file):
    server, checker, _ = signed_remote
    checker.clock_offset = 7200  # the distribution's clock is two hours ahead of the signer's lifetime
    repo = make_repo(tmp_path, server.base_url, key_file, url_lifetime=3600)
    with pytest.raises(RepositoryError) as info:
        repo.list()
    message = str(info.value)
    assert message == f"{server.url('vcdb.txt')}: HTTP 403 Forbidden"
    assert checker.refused == ["/vcdb.txt: expired"]
    assert not (tmp_path / "cache" / "vcdb.txt").exists()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url.replace("Expires=", "Expires=9"),  # extend the expiry
        lambda url: url.replace("/vcdb.txt", "/other/other.xml"),  # reuse a signature for another file
        lambda url: url.replace("&Hash-Algorithm=SHA256", ""),  # claim another hash
        lambda url: url.split("&Signature=")[0] + "&Signature=" + url.split("&Signature=")[1][4:],
    ],
    ids=["expires", "path", "hash", "signature"],
)
def test_tampered_urls_are_refused_with_a_clean_error(tmp_path, signed_remote, key_file, tamper):
    server, checker, _ = signed_remote
    repo = make_repo(tmp_path, server.base_url, key_file, hash_algorithm="sha256")
    genuine = repo.sign_url
    repo.sign_url = lambda url: tamper(genuine(url))  # type: ignore[method-assign]
    with pytest.raises(RepositoryError) as info:
        repo.list()
    assert "HTTP 403" in str(info.value)
    assert "Signature" not in str(info.value)
    assert checker.refused and not checker.verified


def test_a_key_the_distribution_does_not_trust_is_refused(tmp_path, signed_remote):
    server, checker, _ = signed_remote
    other = tmp_path / "other.pem"
    other.write_bytes(_generate_key_pem("pkcs8"))  # PKCS#8 keys load too
    other.chmod(0o600)
    with pytest.raises(RepositoryError, match="HTTP 403"):
        make_repo(tmp_path, server.base_url, other).list()
    assert checker.refused == ["/vcdb.txt: bad signature"]


def test_no_signature_reaches_a_log_line_or_an_error(tmp_path, signed_remote, key_file, caplog):
    server, checker, _ = signed_remote
    repo = make_repo(tmp_path, server.base_url, key_file)
    with caplog.at_level(logging.DEBUG):
        stage(repo)
        checker.clock_offset = 7200
        with pytest.raises(RepositoryError) as info:
            make_repo(tmp_path / "second", server.base_url, key_file).list()
    assert "/clusters/demo/demo.xml" in caplog.text, "urllib3 request lines were logged"
    signatures = {r.target.split("Signature=")[1].split("&")[0] for r in server.requests if "Signature=" in r.target}
    assert signatures
    for signature in signatures:
        assert signature not in caplog.text
        assert signature not in str(info.value)
    assert "Signature=" not in caplog.text.replace("Signature=REDACTED", "")


def test_a_private_key_readable_by_others_is_warned_about(tmp_path, key_file, caplog):
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        make_repo(tmp_path, "https://d111111abcdef8.cloudfront.net", key_file)
    assert "readable by group or others" in caplog.text
    assert "BEGIN" not in caplog.text


def test_an_unreadable_key_is_a_config_error_without_its_contents(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END RSA PRIVATE KEY-----\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        make_repo(tmp_path, "https://d111111abcdef8.cloudfront.net", bad)
    assert "private_key_file" in str(info.value) and "not an RSA private key" in str(info.value)
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(ConfigError, match="file not found"):
        make_repo(tmp_path, "https://d111111abcdef8.cloudfront.net", tmp_path / "missing.pem")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keypair_id": ""}, "keypair_id"),
        ({"hash_algorithm": "md5"}, "hash_algorithm"),
        ({"policy": "open"}, "policy"),
        ({"url_lifetime": 0}, "url_lifetime"),
    ],
)
def test_bad_cloudfront_settings_are_config_errors_naming_them(tmp_path, key_file, options, message):
    with pytest.raises(ConfigError, match=message):
        make_repo(tmp_path, "https://d111111abcdef8.cloudfront.net", key_file, **options)


def test_importing_the_module_does_not_import_botocore_or_rsa():
    code = (
        "import sys\n"
        "import pragma_core.repositories.cloudfront\n"
        "print(sorted(m for m in ('botocore', 'rsa', 'requests') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"
