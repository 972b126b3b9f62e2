"""cloudstack.conf: legacy keys, new keys, errors naming file+line+key, the secret file warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from cloudstack_simulator import CloudStackSimulator
from cloudstack_testkit import make_driver, write_conf
from pragma_core.config import build_settings, parse_legacy
from pragma_core.errors import ConfigError
from pragma_core.testing import make_site
from pragma_core.testing.configkit import FORMATS, load_driver_settings

from pragma_cloudstack.config import CloudStackSettings
from pragma_cloudstack.driver import CloudStackDriver

LEGACY = '''\
# cloudstack.conf as the legacy tool shipped it
baseurl = "http://cloud.example.org:8080/client/api?"
apikey = "AKEY"
secretkey = "SKEY"
templatefilter = "community"
networkoffering = "DefaultIsolatedNetworkOfferingWithSourceNatService"
'''


def settings(text: str, name: str = "cloudstack.conf") -> CloudStackSettings:
    return build_settings(CloudStackSettings, parse_legacy(text, Path("/etc/pragma") / name))


def test_legacy_file_is_read_and_the_trailing_question_mark_dropped() -> None:
    cfg = settings(LEGACY)
    assert cfg.baseurl == "http://cloud.example.org:8080/client/api"
    assert cfg.templatefilter == "community"
    assert cfg.networkoffering == "DefaultIsolatedNetworkOfferingWithSourceNatService"
    assert (cfg.max_parallel, cfg.job_timeout, cfg.public_network, cfg.vm_prefix) == (4, 600.0, "public", "vc-")


def test_baseurl_without_question_mark_is_the_same_endpoint() -> None:
    assert settings(LEGACY.replace("api?", "api")).baseurl == settings(LEGACY).baseurl


def test_new_keys_are_read() -> None:
    cfg = settings(LEGACY + 'zone = "zone1"\nservice_offering = "Small Instance"\npublic_network = "internet"\n'
                   'dns = ["1.1.1.1", "9.9.9.9"]\nvm_prefix = "lab-"\nmax_parallel = 8\njob_timeout = 90\n')
    assert (cfg.zone, cfg.service_offering, cfg.public_network) == ("zone1", "Small Instance", "internet")
    assert cfg.dns == ("1.1.1.1", "9.9.9.9")
    assert (cfg.vm_prefix, cfg.max_parallel, cfg.job_timeout) == ("lab-", 8, 90.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_parallel = 0", "/etc/pragma/cloudstack.conf line 7: max_parallel: must be at least 1, not 0"),
        ("job_timeout = 'soon'", "/etc/pragma/cloudstack.conf line 7: job_timeout: must be a number of seconds, not 'soon'"),
        ("dns = ['8.8.8.8', 'dns.google']", "/etc/pragma/cloudstack.conf line 7: dns: must be a list of IPv4 addresses, 'dns.google' is not one"),
        ("vm_prefix = 'VM_'", "/etc/pragma/cloudstack.conf line 7: vm_prefix: must start with a lower-case letter"),
        ("vm_prefix = 'my-compute-'", "/etc/pragma/cloudstack.conf line 7: vm_prefix: must not contain 'compute'"),
        ("templatefilter = 'everything'", "/etc/pragma/cloudstack.conf line 7: templatefilter: must be one of featured"),
        ("baseurl = 'cloud.example.org'", "/etc/pragma/cloudstack.conf line 7: baseurl: must be an http:// or https:// URL"),
    ],
)
def test_bad_value_names_file_line_and_key(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(LEGACY + line + "\n")
    assert str(info.value).startswith(message)


def test_missing_secretkey_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/pragma/cloudstack.conf: missing setting secretkey$"):
        settings(LEGACY.replace('secretkey = "SKEY"\n', ""))


def test_repr_never_shows_the_keys() -> None:
    text = repr(settings(LEGACY))
    assert "SKEY" not in text and "AKEY" not in text


def test_secret_file_readable_by_others_is_warned_about(tmp_path: Path, sim: CloudStackSimulator, caplog: pytest.LogCaptureFixture) -> None:
    etc = make_site(tmp_path, driver="cloudstack")
    path = write_conf(etc, sim)
    caplog.set_level(logging.WARNING)
    make_driver(etc)
    assert caplog.records == []
    os.chmod(path, 0o644)
    make_driver(etc)
    (record,) = caplog.records
    assert str(path) in record.getMessage() and "chmod 600" in record.getMessage()
    assert sim.secret_key not in caplog.text


def test_driver_without_a_settings_file_is_a_config_error(tmp_path: Path) -> None:
    from pragma_core.config import load_site_config

    etc = make_site(tmp_path, driver="cloudstack")
    with pytest.raises(ConfigError, match="cloudstack.conf"):
        CloudStackDriver(None, site=load_site_config(etc))


@pytest.mark.parametrize("legacy_url", [True, False])
def test_both_baseurl_forms_reach_the_cloud(tmp_path: Path, sim: CloudStackSimulator, legacy_url: bool) -> None:
    etc = make_site(tmp_path, driver="cloudstack")
    write_conf(etc, sim, legacy_url=legacy_url)
    driver = make_driver(etc)
    assert "demo-frontend" in driver.list_repository(None)  # type: ignore[arg-type]
    assert sim.rejected == []


def test_unknown_zone_is_a_config_error_listing_the_zones(tmp_path: Path, sim: CloudStackSimulator) -> None:
    etc = make_site(tmp_path, driver="cloudstack")
    write_conf(etc, sim, zone="atlantis")
    with pytest.raises(ConfigError, match=r"cloudstack.conf: zone: no zone 'atlantis' in CloudStack \(zones: zone1\)"):
        make_driver(etc).list_repository(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- one settings path

REQUIRED = {"baseurl": "http://cloud.example.org:8080/client/api?", "apikey": "AKEY", "secretkey": "SKEY"}

#: key -> (spellings written into cloudstack.conf / cloudstack.toml, the one value they all mean)
SPELLINGS = {
    "job_timeout": ([120, 120.0, "120", " 120 ", "1.2e2"], 120.0),
    "poll_interval": ([0.5, "0.5", " .5 ", "5e-1"], 0.5),
    "max_parallel": ([8, 8.0, "8", " 8 "], 8),
    "retries": ([0, 0.0, "0", "+0"], 0),
    "page_size": ([100, "100", 100.0], 100),
    "verify_tls": ([False, 0, "0", "no", "False", "off", ""], False),
    "dns": ([["1.1.1.1", "9.9.9.9"], "1.1.1.1 9.9.9.9", "1.1.1.1, 9.9.9.9"], ("1.1.1.1", "9.9.9.9")),
    "templatefilter": (["community", "Community", " COMMUNITY "], "community"),
    "zone": (["zone1", " zone1 "], "zone1"),
    "networkoffering": (["", None], None),
}


@pytest.mark.parametrize(
    ("key", "spelling", "fmt", "expected"),
    [
        pytest.param(key, spelling, fmt, expected, id=f"{key}-{fmt}-{i}")
        for key, (spellings, expected) in SPELLINGS.items()
        for fmt in FORMATS
        for i, spelling in enumerate(spellings)
        if not (fmt == "toml" and spelling is None)  # TOML has no null
    ],
)
def test_every_spelling_of_a_value_gives_the_same_setting(tmp_path: Path, key: str, spelling, fmt: str, expected) -> None:
    cfg = load_driver_settings(CloudStackSettings, tmp_path, {key: spelling, **REQUIRED}, fmt=fmt, name="cloudstack")
    assert getattr(cfg, key) == expected


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("job_timeout", 0, "more than 0 seconds"),
        ("job_timeout", "10m", "must be a number of seconds"),
        ("request_timeout", float("inf"), "must be a number of seconds"),
        ("signature_lifetime", 10**9, "at most 31536000 seconds"),
        ("max_parallel", True, "whole number"),
        ("page_size", "1.5", "whole number"),
        ("retries", -1, "at least 0"),
        ("verify_tls", "sometimes", "must be a boolean"),
        ("verify_tls", 2, "must be a boolean"),
        ("apikey", "  ", "non-empty string"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_value_is_one_error_naming_file_line_and_key(tmp_path: Path, key: str, value, problem: str, fmt: str) -> None:
    rest = {k: v for k, v in REQUIRED.items() if k != key}
    with pytest.raises(ConfigError) as info:
        load_driver_settings(CloudStackSettings, tmp_path, {key: value, **rest}, fmt=fmt, name="cloudstack")
    message = str(info.value)
    line = 2 if fmt == "conf" else 1
    assert message.startswith(f"{tmp_path / ('cloudstack.' + fmt)} line {line}: {key}: "), message
    assert problem in message and "SKEY" not in message


def test_the_keys_are_marked_secret() -> None:
    import attrs

    secret = {f.name for f in attrs.fields(CloudStackSettings) if f.metadata.get("secret")}
    assert secret == {"apikey", "secretkey"}


@pytest.mark.parametrize("value", [["S3CR3T-VALUE"], 12345678901, {"k": "S3CR3T-VALUE"}])
def test_a_bad_secret_value_is_not_shown_in_the_error(tmp_path: Path, value) -> None:
    with pytest.raises(ConfigError) as info:
        load_driver_settings(CloudStackSettings, tmp_path, {"secretkey": value, "baseurl": "http://c/api", "apikey": "A"},
                             name="cloudstack")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'cloudstack.conf'} line 2: secretkey: ")
    assert "S3CR3T" not in message and "12345678901" not in message
