"""Site configuration is parsed, never executed, and every error names file, line and key."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from pragma_core.config import (
    ConfigFile,
    build_settings,
    load_site_config,
    parse_legacy,
    read_config_file,
    to_int,
    to_str_list,
    warn_if_readable_by_others,
)
from pragma_core.errors import ConfigError

LEGACY = '''\
# site configuration, legacy syntax
site_ve_driver = "kvm_rocks"
temp_directory = "/state/partition1/temp"
log_directory = '/var/log/pragma_boot'
repository_settings = {
    'repository_class' : 'local',
    'repository_dir' : '/state/partition1/vm-images',
    'vcdb_filename' : 'vcdb.txt',
}
vlans = range(2, 6)
public_ips = ["198.202.88.50", "198.202.88.51"]
diskdir = ""
num_processors_reserved = 2
additional_interfaces = {'openflow': 'ovs'}
'''


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_legacy_file_values_are_parsed_with_their_lines(tmp_path: Path) -> None:
    cfg = read_config_file(write(tmp_path, "site_conf.conf", LEGACY))
    assert cfg.get("site_ve_driver") == "kvm_rocks"
    assert cfg.get("vlans") == [2, 3, 4, 5]
    assert cfg.get("repository_settings")["repository_dir"] == "/state/partition1/vm-images"
    assert cfg.get("public_ips") == ["198.202.88.50", "198.202.88.51"]
    assert cfg.get("diskdir") == ""
    assert cfg.lines["vlans"] == 10


def test_simple_arithmetic_and_earlier_names_are_allowed(tmp_path: Path) -> None:
    cfg = read_config_file(write(tmp_path, "x.conf", 'base = "/state"\ndiskdir = base + "/disks"\nn = 2 * 4 - 1\nneg = -3\n'))
    assert cfg.get("diskdir") == "/state/disks"
    assert cfg.get("n") == 7
    assert cfg.get("neg") == -3


def test_code_in_a_config_file_is_rejected_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, "site_conf.conf", f'site_ve_driver = "x"\nx = __import__("os").system("touch {marker}")\n')
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert not marker.exists()
    assert str(info.value).startswith(f"{path} line 2:")
    assert "not allowed" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('x = open("/etc/passwd")\n', "call to open() is not allowed"),
        ("import os\n", "only 'name = value' assignments are allowed"),
        ("x = os.environ\n", "Attribute expressions are not allowed"),
        ("x = y\n", "unknown name 'y'"),
        ("x = [i for i in range(3)]\n", "ListComp expressions are not allowed"),
        ("x = 1 if True else 2\n", "IfExp expressions are not allowed"),
        ("x = lambda: 1\n", "Lambda expressions are not allowed"),
        ("x = range(10**9)\n", "BinOp" if False else "not allowed"),
        ("x = range(0, 100000000)\n", "range() of more than"),
        ("x = 'a' * 100000000\n", "repetition is too large"),
        ("x = = 1\n", "syntax error"),
    ],
)
def test_anything_but_literals_is_an_error_naming_the_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "bad.conf", "ok = 1\n" + text)
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 2:"), message
    assert fragment in message


def test_toml_form_is_read_and_wins_over_the_legacy_file(tmp_path: Path) -> None:
    write(tmp_path, "site_conf.conf", 'site_ve_driver = "legacy"\n')
    write(
        tmp_path,
        "site_conf.toml",
        'site_ve_driver = "fake"\ntemporary_directory = "/tmp"\n[repository_settings]\nrepository_class = "local"\nrepository_dir = "/r"\n',
    )
    site = load_site_config(tmp_path)
    assert site.site_ve_driver == "fake"
    assert site.temp_directory == Path("/tmp")
    assert site.repository is not None and site.repository.repository_dir == Path("/r")


def test_temporary_directory_is_accepted_for_temp_directory(tmp_path: Path) -> None:
    write(tmp_path, "site_conf.conf", 'temporary_directory = "/scratch"\n')
    assert load_site_config(tmp_path).temp_directory == Path("/scratch")


def test_missing_site_conf_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_site_config(tmp_path)
    assert str(tmp_path / "site_conf.conf") in str(info.value)


def test_missing_required_setting_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "site_conf.conf", 'log_directory = "/l"\n')
    site = load_site_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        site.require("site_ve_driver")
    assert str(info.value) == f"{path}: missing setting site_ve_driver"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("repository_settings = {'repository_dir': '/r'}\n", 'missing "repository_class"'),
        ("repository_settings = {'repository_class': 'local'}\n", 'missing "repository_dir"'),
        ("repository_settings = ['local']\n", "must be a dict"),
        ("repository_settings = {'repository_class': 'local', 'repository_dir': '/r', 'vcdb_filename': '../x'}\n", "must be a file name"),
        ("vcout_format = 3\n", "vcout_format: must be 1 or 2"),
        ("site_ve_driver = 'a b'\n", "site_ve_driver: must be a driver name"),
        ("delete_parts_after_staging = 'maybe'\n", "must be a boolean"),
    ],
)
def test_invalid_site_settings_name_file_line_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "site_conf.conf", "# header\n" + text)
    with pytest.raises(ConfigError) as info:
        load_site_config(tmp_path)
    assert str(info.value).startswith(f"{path} line 2:"), str(info.value)
    assert fragment in str(info.value)


def test_repository_settings_keep_class_specific_options(tmp_path: Path) -> None:
    write(tmp_path, "site_conf.conf", "repository_settings = {'repository_class': 'cloudfront', 'repository_dir': '/r', 'keypair_id': 'K1'}\n")
    repo = load_site_config(tmp_path).repository
    assert repo is not None
    assert repo.repository_class == "cloudfront"
    assert repo.options["keypair_id"] == "K1"
    assert repo.vcdb_path == Path("/r/vcdb.txt")


@attrs.frozen(kw_only=True)
class _Settings:
    count: int = attrs.field(converter=to_int)
    names: tuple[str, ...] = attrs.field(default=(), converter=to_str_list, metadata={"aliases": ("legacy_names",)})


def test_build_settings_reports_a_bad_value_with_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "drv.conf", "# x\ncount = 'many'\n")
    with pytest.raises(ConfigError) as info:
        build_settings(_Settings, read_config_file(path))
    assert str(info.value) == f"{path} line 2: count: must be a whole number, not 'many'"


def test_build_settings_reads_aliases_and_reports_missing_keys(tmp_path: Path) -> None:
    cfg = ConfigFile(path=tmp_path / "d.conf", values={"count": 3, "legacy_names": "a b"}, lines={})
    assert build_settings(_Settings, cfg) == _Settings(count=3, names=("a", "b"))
    with pytest.raises(ConfigError, match="missing setting count"):
        build_settings(_Settings, ConfigFile(path=tmp_path / "d.conf", values={}, lines={}))


def test_secret_file_readable_by_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "cloudstack.conf", "secretkey = 's3cr3t'\n")
    path.chmod(0o644)
    assert warn_if_readable_by_others(path, "secretkey")
    assert "chmod 600" in caplog.text and "s3cr3t" not in caplog.text
    path.chmod(0o600)
    assert not warn_if_readable_by_others(path, "secretkey")


def test_parse_legacy_accepts_docstrings_and_annotations(tmp_path: Path) -> None:
    cfg = parse_legacy('"""doc"""\nx: int = 3\n', tmp_path / "a.conf")
    assert cfg.get("x") == 3


def test_the_shipped_example_site_configuration_is_valid() -> None:
    from pragma_core.config import site_config_from

    path = Path(__file__).parent.parent / "examples" / "demo-site" / "site_conf.conf.example"
    site = site_config_from(read_config_file(path), path.parent)
    assert site.site_ve_driver == "kvm_rocks"
    assert site.repository is not None and site.repository.repository_class == "local"
