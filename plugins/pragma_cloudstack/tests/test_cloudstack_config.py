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
