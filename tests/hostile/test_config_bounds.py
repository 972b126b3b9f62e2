"""The config parser is bounded: repetition, doubling, squaring and nesting end in one line.

``site_conf.conf`` and the driver files are parsed, never executed; every
intermediate value (string, list, whole number, ``range()``) is checked
*before* it is computed, and the file's size, nesting and total work are
limited. Each payload below is one ``Error: <file> line <n>: ...`` line,
well within a second -- never MemoryError, RecursionError, a hang or an
"internal error". Valid files near the limits still load.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Site
from oneline import assert_one_error_line

from pragma_core.config import MAX_CONFIG_BYTES, parse_legacy, read_config_file

#: A payload that ran this long has hung (the parser's own backstop is 1 s).
HANG = 20.0
#: "The line where the file passes MAX_CONFIG_BYTES" (for payloads that are too large).
CUT = -1

# (payload, line of the payload the error names, fragment of the message)
LEGACY = {
    "power": ("a = 'x' * 10**6", 1, "operator ** is not allowed"),
    "repeat-string": ("a = 'x' * 1000000000", 1, "repetition is too large"),
    "repeat-chain": ("a = 'x' * 1000\nb = a * 1000\nc = b * 1000", 2, "repetition is too large"),
    "repeat-huge-count": ("a = [0] * " + "9" * 300, 1, "repetition is too large"),
    "list-times-list": ("a = [0] * 1000\nb = a * a", 2, "cannot combine list and list"),
    "nested-repeat": ("a = [0] * 1000\nb = [a] * 999\nc = [b] * 1000", 3, "value is too large"),
    "squaring": ("a = 99999999\n" + "a = a * a\n" * 20, 7, "number is too large"),
    "doubling-string": ("a = 'xy'\n" + "a = a + a\n" * 60, 20, "value is too large"),
    "doubling-list": ("a = [1]\n" + "a = [a, a]\n" * 60, 20, "value is too large"),
    "tripling-tuple": ("a = (1,)\n" + "a = a + a + a\n" * 40, 14, "value is too large"),
    "brackets-1e5": ("a = " + "[" * 100_000 + "]" * 100_000, 1, f"larger than {MAX_CONFIG_BYTES} bytes"),
    "brackets-5e4": ("a = " + "[" * 50_000 + "]" * 50_000, 1, "too many nested parentheses"),
    "parentheses": ("a = " + "(" * 50_000 + "1" + ")" * 50_000, 1, "too many nested parentheses"),
    "unary-chain": ("ok = 1\na = " + "-" * 100_000 + "1", 2, "nested too deeply"),
    "plus-chain": ("ok = 1\nb = 2\na = " + "+".join(["1"] * 50_000), 3, "nested too deeply"),
    "plus-chain-deeper-than-100": ("a = 1" + " + 1" * 500, 1, "nested more than 100 levels"),
    "digits-5000": ("a = " + "9" * 5000, 1, "number is too large"),
    "digits-4000": ("a = " + "9" * 4000, 1, "number is too large"),
    "range-power": ("a = range(10**12)", 1, "not allowed"),
    "range-huge": ("a = range(1000000000000)", 1, "range() of more than"),
    "range-beyond-ssize": ("a = range(-" + "9" * 300 + ", " + "9" * 300 + ")", 1, "range() of more than"),
    "range-zero-step": ("a = range(0, 10, 0)", 1, "step must not be zero"),
    "float-overflow": ("a = 1.5 * " + "9" * 309, 1, "number is too large"),
    "unhashable-set-member": ("a = {(1, [2])}", 1, "must be a string or number"),
    "unhashable-dict-key": ("a = {(1, [2]): 3}", 1, "must be a string or number"),
    "total-work": ("a = 'x' * 900000\n" + "b = [a]\n" * 20, 7, "computes too much"),
    "nul-byte": ("ok = 1\na = 1\x00", 2, "NUL character"),
    "big-file": ("a = 1\n" * 30_000, CUT, f"larger than {MAX_CONFIG_BYTES} bytes"),
}

TOML = {
    "arrays-deep": ("a = " + "[" * 5000 + "]" * 5000, 1, "nested too deeply"),
    "inline-tables-deep": ("a = " + "{b = " * 2000 + "1" + "}" * 2000, 1, "nested too deeply"),
    "dotted-table-deep": ("[" + ".".join(["t"] * 5000) + "]", 1, "nested more than 100 levels"),
    "digits-5000": ("ok = 1\na = " + "9" * 5000, 2, "number is too large"),
    "digits-400": ("ok = 1\na = " + "9" * 400, 2, "number is too large"),
    "big-file": ("a = 1\n" * 30_000, CUT, f"larger than {MAX_CONFIG_BYTES} bytes"),
}


def legacy_site(site: Site, payload: str) -> tuple[Path, int]:
    """``site_conf.conf`` = the site's settings, then ``payload``; the payload's first line number."""
    conf = site.etc / "site_conf.conf"
    base = conf.read_text()
    conf.write_text(base + payload + "\n")
    return conf, base.count("\n")


def toml_site(site: Site, payload: str) -> tuple[Path, int]:
    """``site_conf.toml`` (which wins over the legacy file) with ``payload`` first."""
    conf = site.etc / "site_conf.toml"
    conf.write_text(payload + "\n" + 'site_ve_driver = "fake"\n'
                    f'[repository_settings]\nrepository_class = "local"\nrepository_dir = "{site.repo}"\n')
    return conf, 0


def refused(site: Site, write: object, payload: str, line: int, fragment: str, *, subprocess: bool = False) -> None:
    conf, offset = write(site, payload)  # type: ignore[operator]
    if line == CUT:
        offset, line = 0, conf.read_bytes().count(b"\n", 0, MAX_CONFIG_BYTES) + 1
    started = time.monotonic()
    result = site.subprocess("list", "repository") if subprocess else site.run("list", "repository")
    assert time.monotonic() - started < HANG
    assert_one_error_line(result, f"Error: {conf} line {offset + line}: ", fragment)


@pytest.mark.parametrize(("payload", "line", "fragment"), list(LEGACY.values()), ids=list(LEGACY))
def test_legacy_payload_is_one_error_naming_file_and_line(site: Site, payload: str, line: int, fragment: str) -> None:
    refused(site, legacy_site, payload, line, fragment)


@pytest.mark.parametrize(("payload", "line", "fragment"), list(TOML.values()), ids=list(TOML))
def test_toml_payload_is_one_error_naming_file_and_line(site: Site, payload: str, line: int, fragment: str) -> None:
    refused(site, toml_site, payload, line, fragment)


@pytest.mark.parametrize("name", ["unary-chain", "plus-chain", "doubling-list", "squaring", "digits-5000"])
def test_the_real_program_ends_a_legacy_payload_with_one_line(site: Site, name: str) -> None:
    refused(site, legacy_site, *LEGACY[name], subprocess=True)


def test_a_driver_file_is_bounded_like_the_site_file(site: Site) -> None:
    (site.etc / "fake.conf").write_text(f'state_file = "{site.root}/state.json"\ntotal_cpus = 9 * 9\n' + "total_cpus = total_cpus * total_cpus\n" * 12)
    assert_one_error_line(site.run("list", "cluster"), f"{site.etc / 'fake.conf'} line 10: ", "number is too large")


def test_a_file_cut_inside_a_multibyte_character_is_too_large_not_misread(tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"a = '" + "\u00e9".encode() * MAX_CONFIG_BYTES + b"'\n")
    with pytest.raises(Exception, match=f"line 1: configuration file is larger than {MAX_CONFIG_BYTES} bytes"):
        read_config_file(conf)


LEGACY_SITE = '''\
site_ve_driver = "kvm_rocks"
temp_directory = "/state/partition1/temp"
log_directory = '/var/log/pragma_boot'
repository_settings = {
    'repository_class' : 'local',
    'repository_dir' : '/state/partition1/vm-images',
    'vcdb_filename' : 'vcdb.txt',
}
vlans = range(2, 4095)
public_ips = ["198.202.88.50", "198.202.88.51"]
diskdir = ""
num_processors_reserved = 2
additional_interfaces = {'openflow': 'ovs'}
ent = {'subnet_name': 'ent', 'interface_name': 'ovs'}
'''


@pytest.mark.parametrize(
    ("text", "key", "check"),
    [
        (LEGACY_SITE, "vlans", lambda v: v == list(range(2, 4095))),
        ("big = 'x' * 900000\n", "big", lambda v: len(v) == 900_000),
        ("row = [0] * 1000\ngrid = [row] * 990\n", "grid", lambda v: len(v) == 990),
        ("tib = 10 * 1024 * 1024 * 1024 * 1024\n", "tib", lambda v: v == 10 << 40),
        ("n = " + "9" * 300 + "\n", "n", lambda v: v == int("9" * 300)),
        ("ips = [" + ", ".join(f'"10.0.{i // 250}.{i % 250 + 1}"' for i in range(2000)) + "]\n", "ips", lambda v: len(v) == 2000),
        ("d = " + "{'k': " * 30 + "1" + "}" * 30 + "\n", "d", lambda v: isinstance(v, dict)),
        ("s = 'a'" + " + 'b'" * 90 + "\n", "s", lambda v: len(v) == 91),
        ("base = '/state'\ndisks = base + '/disks'\nboth = [base, disks] * 3\n", "both", lambda v: len(v) == 6),
    ],
)
def test_valid_files_near_the_limits_still_load(tmp_path: Path, text: str, key: str, check: object) -> None:
    started = time.monotonic()
    config = parse_legacy(text, tmp_path / "x.conf")
    assert time.monotonic() - started < HANG
    assert check(config.get(key))  # type: ignore[operator]
