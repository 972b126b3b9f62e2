"""One settings path: every legal spelling of a value means the same, every error names file, line and key.

The converters of :mod:`pragma_core.settings` are run through real files on
disk (legacy ``.conf`` and ``.toml``) and the real settings classes of core:
the site, ``repository_settings``, the ``http`` and ``cloudfront``
repositories and the ``fake`` driver.
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path
from typing import Any

import pytest

from pragma_core.config import RepositorySettings, load_site_config
from pragma_core.errors import ConfigError
from pragma_core.interfaces import Repository
from pragma_core.repositories.cloudfront import CloudFrontSettings
from pragma_core.repositories.http import HttpRepository, HttpSettings
from pragma_core.settings import (
    MAX_INT,
    MAX_SECONDS,
    choice,
    setting,
    to_bool,
    to_int,
    to_ipv4_list,
    to_ipv4_network,
    to_non_negative_int,
    to_positive_int,
    to_positive_seconds,
    to_seconds,
    to_str_list,
)
from pragma_core.testing.configkit import FORMATS, load_driver_settings, load_repository_settings, write_settings
from pragma_core.testing.fake import FakeConfig

#: Spellings of one value, as Python values written into the files. Every
#: spelling of a group must give the same setting.
SECONDS = [120, 120.0, "120", " 120 ", "120.0", "1.2e2"]
FOUR = [4, 4.0, "4", " 4 ", "4.0"]
ZERO = [0, 0.0, "0", "0.0", "+0"]
TRUE = [True, 1, "1", "yes", "Yes", "true", "TRUE", "on", "y", "t"]
FALSE = [False, 0, "0", "no", "No", "false", "off", "n", "f", ""]
IPS = [["192.0.2.1", "192.0.2.2"], "192.0.2.1 192.0.2.2", "192.0.2.1, 192.0.2.2", "192.0.2.1,192.0.2.2", [" 192.0.2.1", "192.0.2.2 "]]
NETWORK = ["10.1.0.0/16", " 10.1.0.0/16 ", "10.1.0.0/255.255.0.0"]
SHA256 = ["sha256", "SHA256", " sha256 "]
CUSTOM = ["custom", "Custom", "CUSTOM "]


def _driver(cls: type) -> Any:
    def load(directory: Path, settings: dict[str, Any], fmt: str) -> Any:
        return load_driver_settings(cls, directory, settings, fmt=fmt)

    return load


def _repository(cls: type, required: dict[str, Any] | None = None) -> Any:
    def load(directory: Path, settings: dict[str, Any], fmt: str) -> Any:
        return load_repository_settings(cls, directory, {**(required or {}), **settings}, fmt=fmt)

    return load


def _site(directory: Path, settings: dict[str, Any], fmt: str) -> Any:
    write_settings(directory / "site_conf", settings, fmt=fmt)
    return load_site_config(directory)


CLOUDFRONT = {"keypair_id": "K2JCJMDEHXQW5F", "private_key_file": "/etc/pragma/cf.pem"}

#: (name, loader, key, spellings, expected value)
CASES = [
    ("site", _site, "delete_parts_after_staging", TRUE, True),
    ("site", _site, "delete_parts_after_staging", FALSE, False),
    ("site", _site, "vcout_format", [1, 1.0, "1", " 1 "], 1),
    ("site", _site, "max_image_size", [1 << 30, float(1 << 30), str(1 << 30)], 1 << 30),
    ("http", _repository(HttpSettings), "timeout", SECONDS, 120.0),
    ("http", _repository(HttpSettings), "backoff", ZERO, 0.0),
    ("http", _repository(HttpSettings), "retries", FOUR, 4),
    ("http", _repository(HttpSettings), "retries", ZERO, 0),
    ("cloudfront", _repository(CloudFrontSettings, CLOUDFRONT), "url_lifetime", [3600, 3600.0, "3600", "3.6e3"], 3600),
    ("cloudfront", _repository(CloudFrontSettings, CLOUDFRONT), "hash_algorithm", SHA256, "sha256"),
    ("cloudfront", _repository(CloudFrontSettings, CLOUDFRONT), "policy", CUSTOM, "custom"),
    ("fake", _driver(FakeConfig), "cpus_per_node", FOUR, 4),
    ("fake", _driver(FakeConfig), "total_cpus", ZERO, 0),
    ("fake", _driver(FakeConfig), "public_ips", IPS, ("192.0.2.1", "192.0.2.2")),
    ("fake", _driver(FakeConfig), "dns", IPS, ("192.0.2.1", "192.0.2.2")),
    ("fake", _driver(FakeConfig), "private_network", NETWORK, ipaddress.IPv4Network("10.1.0.0/16")),
    ("fake", _driver(FakeConfig), "fail_deploy", TRUE, True),
    ("fake", _driver(FakeConfig), "fail_deploy", FALSE, False),
]


def _spellings() -> list[Any]:
    out = []
    for name, load, key, spellings, expected in CASES:
        for fmt, (i, spelling) in itertools.product(FORMATS, enumerate(spellings)):
            out.append(pytest.param(load, key, spelling, fmt, expected, id=f"{name}-{key}-{fmt}-{i}"))
    return out


@pytest.mark.parametrize(("load", "key", "spelling", "fmt", "expected"), _spellings())
def test_every_spelling_of_a_value_gives_the_same_setting(tmp_path: Path, load: Any, key: str, spelling: Any,
                                                          fmt: str, expected: Any) -> None:
    settings = load(tmp_path, {key: spelling}, fmt)
    assert getattr(settings, key) == expected
    assert type(getattr(settings, key)) is type(expected)


#: (name, loader, key, bad value, words of the problem)
BAD = [
    ("site", _site, "vcout_format", 3, "must be 1 or 2"),
    ("site", _site, "delete_parts_after_staging", 2, "must be a boolean"),
    ("site", _site, "delete_parts_after_staging", "maybe", "must be a boolean"),
    ("site", _site, "max_image_size", 0, "must be at least 1048576"),
    ("site", _site, "max_image_size", "10G", "must be a whole number"),
    ("http", _repository(HttpSettings), "timeout", "soon", "must be a number of seconds"),
    ("http", _repository(HttpSettings), "timeout", 0, "more than 0 seconds"),
    ("http", _repository(HttpSettings), "timeout", float("inf"), "must be a number of seconds"),
    ("http", _repository(HttpSettings), "timeout", float("nan"), "must be a number of seconds"),
    ("http", _repository(HttpSettings), "timeout", "inf", "must be a number of seconds"),
    ("http", _repository(HttpSettings), "timeout", 10**9, f"at most {MAX_SECONDS}"),
    ("http", _repository(HttpSettings), "backoff", -1, "at least 0 seconds"),
    ("http", _repository(HttpSettings), "backoff", True, "must be a number of seconds"),
    ("http", _repository(HttpSettings), "retries", 1.5, "whole number"),
    ("http", _repository(HttpSettings), "retries", "1.5", "whole number"),
    ("http", _repository(HttpSettings), "retries", -1, "at least 0"),
    ("http", _repository(HttpSettings), "retries", True, "whole number"),
    ("http", _repository(HttpSettings), "retries", 10**30, "too large"),
    ("http", _repository(HttpSettings), "retries", "9" * 100, "whole number"),
    ("cloudfront", _repository(CloudFrontSettings, CLOUDFRONT), "url_lifetime", 0, "at least 1"),
    ("cloudfront", _repository(CloudFrontSettings, CLOUDFRONT), "hash_algorithm", "md5", "must be one of sha1"),
    ("cloudfront", _repository(CloudFrontSettings, CLOUDFRONT), "keypair_id", "", "non-empty string"),
    ("fake", _driver(FakeConfig), "cpus_per_node", 0, "at least 1"),
    ("fake", _driver(FakeConfig), "total_cpus", MAX_INT + 1, f"at most {MAX_INT}"),
    ("fake", _driver(FakeConfig), "public_ips", ["192.0.2.1", "192.0.2.300"], "'192.0.2.300' is not one"),
    ("fake", _driver(FakeConfig), "public_ips", ["192.0.2.1", "192.0.2.1"], "twice"),
    ("fake", _driver(FakeConfig), "dns", [1, 2], "list of strings"),
    ("fake", _driver(FakeConfig), "private_network", "10.1.0.1/16", "IPv4 network"),
    ("fake", _driver(FakeConfig), "fail_deploy", "perhaps", "must be a boolean"),
]


def _bad() -> list[Any]:
    out = []
    for name, load, key, value, words in BAD:
        for fmt in FORMATS:
            if fmt == "toml" and isinstance(value, int) and abs(value) >= 2**63:
                continue  # not a TOML integer
            out.append(pytest.param(name, load, key, value, fmt, words, id=f"{name}-{key}-{value!r}-{fmt}"[:80]))
    return out


@pytest.mark.parametrize(("name", "load", "key", "value", "fmt", "words"), _bad())
def test_a_bad_value_is_one_error_naming_file_line_and_key(tmp_path: Path, name: str, load: Any, key: str, value: Any,
                                                           fmt: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {key: value}, fmt)
    message = str(info.value)
    file = tmp_path / (f"driver.{fmt}" if name == "fake" else f"site_conf.{fmt}")
    line = 2 if fmt == "conf" else 1
    where = "repository_settings: " if name in ("http", "cloudfront") else ""
    assert message.startswith(f"{file} line {line}: {where}{key}: "), message
    assert words in message
    assert "\n" not in message


def test_a_missing_required_repository_key_names_the_dict_and_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_repository_settings(CloudFrontSettings, tmp_path, {"private_key_file": "/k.pem"})
    assert str(info.value) == f'{tmp_path / "site_conf.conf"} line 2: repository_settings: missing "keypair_id"'


def test_a_repository_built_by_core_reads_its_config_class_with_file_line_and_key(tmp_path: Path) -> None:
    write_settings(tmp_path / "site_conf", {"repository_class": "http", "repository_dir": str(tmp_path / "r"),
                                            "repository_url": "http://127.0.0.1:9/x", "timeout": "45",
                                            "retries": "2"}, table="repository_settings")
    site = load_site_config(tmp_path)
    repo = HttpRepository(site.require_repository(), site=site)
    assert (repo.config, repo.timeout, repo.retries) == (HttpSettings(timeout=45, retries=2), 45.0, 2)
    write_settings(tmp_path / "site_conf", {"repository_class": "http", "repository_dir": str(tmp_path / "r"),
                                            "repository_url": "http://127.0.0.1:9/x", "backoff": "never"},
                   table="repository_settings")
    site = load_site_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        HttpRepository(site.require_repository(), site=site)
    assert str(info.value).startswith(f"{tmp_path / 'site_conf.conf'} line 2: repository_settings: backoff: ")


def test_a_repository_without_a_config_class_has_no_config(tmp_path: Path) -> None:
    from pragma_core.repositories.local import LocalRepository

    settings = RepositorySettings(repository_class="local", repository_dir=tmp_path / "r")
    assert Repository.config_class is None and LocalRepository(settings, site=None).config is None  # type: ignore[arg-type]


def test_unknown_keys_of_a_driver_file_are_ignored(tmp_path: Path) -> None:
    assert load_driver_settings(FakeConfig, tmp_path, {"who_reads_this": 1}) == FakeConfig()


# --------------------------------------------------------------------------- the converters themselves


@pytest.mark.parametrize(
    ("converter", "value"),
    [
        (to_int, True),
        (to_int, None),
        (to_int, [1]),
        (to_int, "0x10"),
        (to_int, "1_000"),
        (to_int, ""),
        (to_positive_int, "nan"),
        (to_non_negative_int, "-1"),
        (to_seconds, "2m"),
        (to_seconds, float("-inf")),
        (to_seconds, "1e999"),
        (to_positive_seconds, "0"),
        (to_bool, 2),
        (to_bool, 1.0),
        (to_bool, None),
        (to_ipv4_list, "192.0.2.1/24"),
        (to_ipv4_list, "010.0.0.1"),
        (to_ipv4_network, 167837696),
        (choice("a", "b"), 1),
        (choice("a", "b"), "c"),
    ],
)
def test_a_converter_refuses_what_no_spelling_allows(converter: Any, value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        converter(value)


@pytest.mark.parametrize(
    ("converter", "value"),
    [
        (to_int, "12"),
        (to_seconds, "1.5"),
        (to_bool, "yes"),
        (to_str_list, "a b"),
        (to_ipv4_list, "192.0.2.1 192.0.2.2"),
        (to_ipv4_network, "10.0.0.0/8"),
        (choice("overlay", "copy"), "Copy"),
    ],
)
def test_converting_a_converted_value_gives_it_back(converter: Any, value: Any) -> None:
    once = converter(value)
    assert converter(once) == once


def test_setting_marks_a_secret_and_keeps_it_out_of_repr() -> None:
    import attrs

    @attrs.frozen(kw_only=True)
    class Conf:
        token: str = setting(secret=True, help="the token")
        name: str = setting(default="n", aliases=("legacy_name",))

    fields = attrs.fields_dict(Conf)
    assert fields["token"].metadata["secret"] is True and "secret" not in fields["name"].metadata
    assert fields["name"].metadata["aliases"] == ("legacy_name",) and fields["token"].metadata["help"] == "the token"
    assert "s3cr3t" not in repr(Conf(token="s3cr3t"))


@pytest.mark.parametrize("value", ["ключ-api", "abc def", "abc\ndef", "tab\there", "é", "\x00x", 42, ""])
def test_a_token_with_characters_no_http_header_carries_is_refused_without_echoing_it(value: Any) -> None:
    from pragma_core.settings import to_token

    with pytest.raises(ValueError) as info:
        to_token(value)
    if isinstance(value, str) and value:
        assert value not in str(info.value) and repr(value) not in str(info.value)


@pytest.mark.parametrize("value", ["AIzaSyD-abc_123", "  k3y+/=~!  ", "x"])
def test_a_token_of_visible_ascii_is_kept_without_its_surrounding_blanks(value: str) -> None:
    from pragma_core.settings import to_token

    assert to_token(value) == value.strip()
