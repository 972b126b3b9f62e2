"""repository_settings of the clonezilla repository: legacy dicts load, every spelling means the same,
errors name the site file, the dict's line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pragma_core.config import load_site_config, parse_legacy, site_config_from
from pragma_core.errors import ConfigError
from pragma_core.testing.configkit import FORMATS, load_repository_settings
from pragma_repo_clonezilla.repository import ClonezillaRepository
from pragma_repo_clonezilla.settings import ClonezillaSettings

#: The legacy site configuration of a clonezilla site (reference §2.4 keys).
LEGACY = """\
site_ve_driver = "kvm_rocks"
temp_directory = "/state/partition1/temp"
log_directory = "/var/log/pragma_boot"
repository_settings = {
    'repository_class' : 'clonezilla',
    'repository_dir' : '/state/partition1/vm-images',
    'repository_url' : 'https://drive.google.com/drive/folders/0B3cw7uKWQ3fXcmdfRHBCTV9KaUU',
    'cziso' : '/opt/cziso/bin/cziso',
    'local_image_url' : 'zfs://nas-0-0/pragma/$imagename-vol',
    'include_images' : 'centos',
    'exclude_images' : 'centos6',
}
"""


def test_the_legacy_site_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "site_conf.conf"
    path.write_text(LEGACY)
    site = site_config_from(parse_legacy(LEGACY, path), tmp_path)
    repo = ClonezillaRepository(site.require_repository(), site=site)
    assert repo.folder_id == "0B3cw7uKWQ3fXcmdfRHBCTV9KaUU"
    assert repo.config.cziso == Path("/opt/cziso/bin/cziso")
    assert repo.config.include_images.pattern == "centos" and repo.config.exclude_images.pattern == "centos6"
    assert repo.config.local_image_url == "zfs://nas-0-0/pragma/$imagename-vol"


#: key -> (spellings written into site_conf.conf / site_conf.toml, the one value they all mean)
SPELLINGS = {
    "retries": ([3, 3.0, "3", " 3 "], 3),
    "timeout": ([120, 120.0, "120", " 120 ", "1.2e2"], 120.0),
    "restore_timeout": ([7200, "7200", " 7200 ", "7.2e3"], 7200.0),
    "retry_delay": ([0, 0.0, "0", "+0"], 0.0),
    "size": ([50, 50.0, "50", "50G", "50 GiB"], 50 << 30),
    "max_disk_size": ([1 << 41, "2199023255552", "2T", "2048G", " 2 TiB "], 1 << 41),
    "restore_with": (["native", "Native", " NATIVE "], "native"),
    "work_dir": (["/scratch", " /scratch "], Path("/scratch")),
    "api_key": (["", None], None),
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
    cfg = load_repository_settings(ClonezillaSettings, tmp_path, {key: spelling}, fmt=fmt, repository_class="clonezilla")
    assert getattr(cfg, key) == expected


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("retries", -1, "at least 0"),
        ("retries", "many", "whole number"),
        ("retries", True, "whole number"),
        ("timeout", "1m", "must be a number of seconds"),
        ("timeout", float("inf"), "must be a number of seconds"),
        ("retry_delay", 10**9, "at most 31536000 seconds"),
        ("size", "50X", "must be a size"),
        ("size", 0, "must be a size"),
        ("max_disk_size", 1000, "at least 1048576"),
        ("max_disk_size", "9000T", "too large"),
        ("max_disk_size", "a lot", "whole number"),
        ("restore_with", "magic", "must be one of native, cziso"),
        ("include_images", "(", "invalid regular expression"),
        ("drive_api_url", "ftp://x", "http:// or https://"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_value_is_one_error_naming_file_line_and_key(tmp_path: Path, key: str, value, problem: str, fmt: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_repository_settings(ClonezillaSettings, tmp_path, {key: value}, fmt=fmt, repository_class="clonezilla")
    message = str(info.value)
    line = 2 if fmt == "conf" else 1
    assert message.startswith(f"{tmp_path / ('site_conf.' + fmt)} line {line}: repository_settings: {key}: "), message
    assert problem in message


def test_the_repository_reports_a_bad_option_against_the_site_file(tmp_path: Path) -> None:
    text = LEGACY.replace("'cziso' :", "'retries' : 'often',\n    'cziso' :")
    (tmp_path / "site_conf.conf").write_text(text)
    site = load_site_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        ClonezillaRepository(site.require_repository(), site=site)
    assert str(info.value).startswith(f"{tmp_path / 'site_conf.conf'} line 4: repository_settings: retries: ")


def test_a_bad_api_key_value_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_repository_settings(ClonezillaSettings, tmp_path, {"api_key": ["AIzaS3CR3T"]}, repository_class="clonezilla")
    assert "api_key" in str(info.value) and "S3CR3T" not in str(info.value)


@pytest.mark.parametrize("key", ["AIzaЅ3CR3T", "AIza S3CR3T", "AIza\tS3CR3T"])
def test_an_api_key_no_http_header_can_carry_is_a_config_error_that_does_not_show_it(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_repository_settings(ClonezillaSettings, tmp_path, {"api_key": key}, repository_class="clonezilla")
    message = str(info.value)
    assert "api_key" in message and "visible ASCII" in message and "3CR3T" not in message


def test_max_disk_size_defaults_to_one_tib(tmp_path: Path) -> None:
    cfg = load_repository_settings(ClonezillaSettings, tmp_path, {}, repository_class="clonezilla")
    assert cfg.max_disk_size == 1 << 40


def test_a_size_setting_past_max_disk_size_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_repository_settings(ClonezillaSettings, tmp_path, {"size": "2T"}, repository_class="clonezilla")
    assert "max_disk_size" in str(info.value) and "\n" not in str(info.value)
