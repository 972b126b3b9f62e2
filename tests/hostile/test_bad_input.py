"""Bad input is always one clear line: no "internal error", whatever the input.

Deep or oddly encoded XML, broken catalogue lines, numbers of thousands of
digits, ``nan`` and ``inf``, very long names and paths, NUL bytes, malformed
URLs, damaged driver state: each is refused by the parser that meets it with
the project's own error, which the command prints as one ``Error:`` line.
Control characters in echoed names and server texts are escaped, so nothing
can forge an ``Error:`` line. A reader that closes the output early (``|
head``) ends the command quietly with status 141, and a log file that cannot
be written is one error line and a non-zero status, not logging's dump.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Site, build_site
from oneline import assert_one_error_line

from pragma_core.clusterxml import MAX_DESCRIPTION_BYTES
from pragma_core.errors import DriverError

LONG = "x" * 5000
DIGITS = "9" * 5000

# --------------------------------------------------------------------------- command-line numbers and paths

NUMBERS = {
    "cpus-5000-digits": (("boot", "demo", DIGITS), "number of CPUs must be at most"),
    "cpus-1e400": (("boot", "demo", "1e400"), "number of CPUs must be a whole number"),
    "cpus-nan": (("boot", "demo", "nan"), "number of CPUs must be a whole number"),
    "cpus-inf": (("boot", "demo", "inf"), "number of CPUs must be a whole number"),
    "cpus-fullwidth-digits": (("boot", "demo", "\uff11\uff12"), "number of CPUs must be a whole number"),
    "cpus-leading-zeros": (("boot", "demo", "0" * 5000 + "1" * 7), "number of CPUs must be at most"),
    "mem-5000-digits": (("boot", "demo", "1", f"mem={DIGITS}"), "mem must be at most"),
    "mem-second-5000-digits": (("boot", "demo", "1", f"mem=4096:{DIGITS}"), "mem must be at most"),
    "mem-1e400": (("boot", "demo", "1", "mem=1e400"), "mem must be N or FRONTEND:COMPUTE"),
    "mem-nan": (("boot", "demo", "1", "mem=nan"), "mem must be N or FRONTEND:COMPUTE"),
    "wait-5000-digits": (("boot", "demo", "1", f"wait={DIGITS}"), "wait must be a positive number"),
    "wait-1e400": (("boot", "demo", "1", "wait=1e400"), "wait must be a positive number"),
    "wait-nan": (("boot", "demo", "1", "wait=nan"), "wait must be a positive number"),
    "wait-inf": (("boot", "demo", "1", "wait=-inf"), "wait must be a positive number"),
    "wait-huge": (("boot", "demo", "1", "wait=1e300"), "wait must be at most"),
    "loglevel-long": (("boot", "demo", "1", f"loglevel={LONG}"), "loglevel must be one of"),
    "parameter-long": (("boot", "demo", "1", f"{LONG}=1"), "unknown parameter"),
    "command-long": ((LONG,), "invalid pragma command"),
    "add-iface-long": (("boot", "demo", "1", f"add-iface={LONG}"), "add-iface: invalid network name"),
    "add-iface-cidr-long": (("boot", "demo", "1", f"add-iface=net:{DIGITS}"), "is not an IPv4 CIDR"),
}


@pytest.mark.parametrize(("args", "fragment"), list(NUMBERS.values()), ids=list(NUMBERS))
def test_a_bad_number_or_word_on_the_command_line_is_one_short_line(site: Site, args: tuple[str, ...], fragment: str) -> None:
    line = assert_one_error_line(site.run(*args, f"key={site.key}"), fragment)
    assert len(line) < 500, "a long value is shortened in the message"
    assert site.run("list", "cluster").out.splitlines()[1:] == [], "nothing booted"


PATHS = {
    "conf-long": (("--conf", f"/tmp/{LONG}", "list", "repository"), "more characters]"),
    "conf-nul": (("--conf", "/tmp/a\x00b", "list", "repository"), "configuration file not found: /tmp/a\\x00b"),
    "key-long": (("boot", "demo", "1", f"key=/tmp/{LONG}"), "key: cannot read"),
    "key-nul": (("boot", "demo", "1", "key=/tmp/a\x00b"), "key: invalid file name '/tmp/a\\x00b'"),
    "key-device": (("boot", "demo", "1", "key=/dev/zero"), "is not a regular file"),
    "key-directory": (("boot", "demo", "1", "key=/"), "is not a regular file"),
    "key-unknown-user": (("boot", "demo", "1", "key=~no-such-user-here/id.pub"), "cannot find the home directory"),
    "key-not-a-key": (("boot", "demo", "1", "key=/etc/hostname"), "is not an SSH public key file"),
    "logfile-long": (("boot", "demo", "1", "key={key}", f"logfile=/tmp/{LONG}"), "cannot open log file"),
    "logfile-directory": (("boot", "demo", "1", "key={key}", "logfile=/tmp"), "Is a directory"),
}


@pytest.mark.parametrize(("args", "fragment"), list(PATHS.values()), ids=list(PATHS))
def test_a_bad_path_on_the_command_line_is_one_line(site: Site, args: tuple[str, ...], fragment: str) -> None:
    import io

    from pragma_core import cli

    args = tuple(a.replace("{key}", str(site.key)) for a in args)
    if args[0] != "--conf":
        args = ("--conf", str(site.etc), *args)
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(args), out=out, err=err)
    assert_one_error_line(Result(code, err.getvalue()), fragment)


class Result:
    def __init__(self, code: int, err: str) -> None:
        self.code, self.err = code, err


# --------------------------------------------------------------------------- cluster description XML

XML = {
    "deep": b"<vc>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</vc>",
    "many-elements": b"<vc>" + b"<a/>" * 200_000 + b"</vc>",
    "utf-7": b'<?xml version="1.0" encoding="utf-7"?><vc/>',
    "unknown-encoding": b'<?xml version="1.0" encoding="x-no-such-encoding"?><vc/>',
    "ebcdic": b'<?xml version="1.0" encoding="cp500"?><vc/>',
    "utf-16-declared-utf-8-bytes": b'<?xml version="1.0" encoding="utf-16"?><vc/>',
    "utf-32-bom": "<vc/>".encode("utf-32"),
    "nul-byte": b"<vc>\x00</vc>",
    "billion-laughs": b'<!DOCTYPE vc [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><vc>&b;</vc>',
    "external-entity": b'<!DOCTYPE vc [<!ENTITY e SYSTEM "file:///etc/passwd">]><vc>&e;</vc>',
    "empty": b"",
    "binary": bytes(range(256)) * 16,
    "larger-than-the-limit": b"<vc>" + b" " * MAX_DESCRIPTION_BYTES + b"</vc>",
    "huge-attribute": b'<vc a="' + b"x" * 3_000_000 + b'"/>',
    "control-characters-in-text": b"<vc>\x1b[2J\x07</vc>",
}


def replace_in_description(site: Site, old: str, new: str) -> None:
    xml = site.repo / "demo" / "demo.xml"
    xml.write_text(xml.read_text().replace(old, new, 1))


@pytest.mark.parametrize("data", list(XML.values()), ids=list(XML))
def test_a_hostile_cluster_description_is_one_line_naming_it(site: Site, data: bytes) -> None:
    xml = site.repo / "demo" / "demo.xml"
    xml.write_bytes(data)
    for args in (("stage", "demo"), ("boot", "demo", "1", f"key={site.key}")):
        assert_one_error_line(site.run(*args), str(xml))
    assert site.run("list", "cluster").out.splitlines()[1:] == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('<memory unit="MiB">256</memory>', f'<memory unit="MiB">{DIGITS}</memory>'),
        ("<vcpu>1</vcpu>", f"<vcpu>{DIGITS}</vcpu>"),
        ("<vcpu>1</vcpu>", "<vcpu>1e400</vcpu>"),
        ('<memory unit="MiB">256</memory>', '<memory unit="\x1b[31m">256</memory>'.replace("\x1b", "&#x1b;")),
    ],
    ids=["memory-5000-digits", "vcpu-5000-digits", "vcpu-1e400", "memory-unit-escape"],
)
def test_a_hostile_number_in_a_cluster_description_is_one_line(site: Site, old: str, new: str) -> None:
    replace_in_description(site, old, new)
    assert_one_error_line(site.run("stage", "demo"), str(site.repo / "demo" / "demo.xml"))


# --------------------------------------------------------------------------- catalogue lines

VCDB = {
    "nul-in-path": b"demo,demo/demo\x00.xml\n",
    "nul-in-name": b"de\x00mo,demo/demo.xml\n",
    "long-name": LONG.encode() + b",demo/demo.xml\n",
    "escape-in-name": b"\x1b[2Jdemo,demo/demo.xml\n",
    "newline-forged-error": b"demo\rError: forged,demo/demo.xml\n",
    "three-fields": b"demo,demo/demo.xml,extra\n",
    "escaping-path": b"demo,../../etc/passwd\n",
    "absolute-outside": b"demo,/etc/passwd\n",
    "not-utf-8": b"d\xffmo,demo/demo.xml\n",
    "duplicate": b"demo,demo/demo.xml\ndemo,demo/demo.xml\n",
    "very-long-line": b"demo," + b"a/" * 200_000 + b"x.xml\n",
}


@pytest.mark.parametrize("data", list(VCDB.values()), ids=list(VCDB))
def test_a_bad_catalogue_line_is_one_line_naming_file_and_line(site: Site, data: bytes) -> None:
    vcdb = site.repo / "vcdb.txt"
    vcdb.write_bytes(b"# catalogue\n" + data)
    line = assert_one_error_line(site.run("stage", "demo"), str(vcdb.parent))
    assert len(line) < 5000


def test_a_control_character_in_a_server_path_is_escaped_in_the_error_line(site: Site) -> None:
    (site.repo / "vcdb.txt").write_text("demo,demo/\x1b[31mError: forged\x07.xml\n")
    line = assert_one_error_line(site.run("stage", "demo"), "\\x1b[31mError: forged\\x07.xml")
    assert "\x1b" not in line and "\x07" not in line


# --------------------------------------------------------------------------- repository URLs

URLS = {
    "unclosed-ipv6": "http://[::1/pragma",
    "port-out-of-range": "http://images.example.org:99999/pragma",
    "port-not-a-number": "http://images.example.org:http/pragma",
    "space": "http://images example.org/pragma",
    "control-character": "http://images.example.org/\x1b[2J",
    "nul": "http://images.example.org/\x00",
    "too-long": "http://images.example.org/" + "a" * 5000,
}


@pytest.mark.parametrize("url", list(URLS.values()), ids=list(URLS))
def test_a_malformed_repository_url_is_one_line_naming_the_setting(tmp_path: Path, url: str) -> None:
    site = build_site(tmp_path)
    conf = site.etc / "site_conf.conf"
    text = conf.read_text().replace('"repository_class": "local"', f'"repository_class": "http", "repository_url": {url!r}')
    conf.write_text(text)
    line = assert_one_error_line(site.run("list", "repository"), f"{conf} line 4: repository_settings: repository_url")
    assert "\x1b" not in line


# --------------------------------------------------------------------------- driver state

STATES = {
    "not-json": b"{clusters",
    "empty": b"",
    "a-list": b"[]",
    "clusters-a-list": b'{"clusters": [], "serial": 0}',
    "no-serial": b'{"clusters": {}}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "digits": b'{"clusters": {}, "serial": ' + DIGITS.encode() + b"}",
    "inf": b'{"clusters": {"vc1": {"public_ip": "192.0.2.10", "nodes": [{"name": "vc1", "role": "frontend", "cpus": 1e400,'
           b' "memory_mib": 1, "state": "running", "private_ip": "10.1.0.1"}]}}, "serial": 1}',
    "node-not-object": b'{"clusters": {"vc1": {"public_ip": "192.0.2.10", "nodes": [1]}}, "serial": 1}',
    "not-utf-8": b'{"clusters": {"\xff": {}}, "serial": 1}',
    "nul": b'{"clusters": {"vc\\u0000": {}}, "serial": 1}',
}


@pytest.mark.parametrize("data", list(STATES.values()), ids=list(STATES))
def test_damaged_fake_driver_state_is_one_line_naming_the_file(site: Site, data: bytes) -> None:
    state = site.root / "state" / "fake.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(data)
    for args in (("list", "cluster"), ("boot", "demo", "1", f"key={site.key}"), ("clean", "vc1")):
        assert_one_error_line(site.run(*args), f"{state}: corrupt fake driver state")
    assert state.read_bytes() == data, "a damaged state file is left for the admin to look at"


RECORDS = {
    "not-json": b"{",
    "a-list": b"[]",
    "a-string": b'"vc-a"',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "vlan-inf": b'{"cluster": "vc-a", "vlan": 1e400, "public_ip": "192.0.2.1"}',
    "vlan-digits": b'{"cluster": "vc-a", "vlan": ' + DIGITS.encode() + b', "public_ip": "192.0.2.1"}',
    "bad-ip": b'{"cluster": "vc-a", "vlan": 2, "public_ip": "999.1.1.1"}',
    "nodes-not-objects": b'{"cluster": "vc-a", "vlan": 2, "public_ip": "192.0.2.1", "nodes": [1]}',
    "nodes-a-dict": b'{"cluster": "vc-a", "vlan": 2, "public_ip": "192.0.2.1", "nodes": {"a": 1}}',
    "node-unknown-key": b'{"cluster": "vc-a", "vlan": 2, "public_ip": "192.0.2.1", "nodes": [{"bogus": 1}]}',
    "missing-cluster": b'{"vlan": 2}',
    "not-utf-8": b'{"cluster": "\xff"}',
}


@pytest.mark.parametrize("data", list(RECORDS.values()), ids=list(RECORDS))
def test_damaged_kvm_rocks_record_is_one_driver_error_naming_the_file(tmp_path: Path, data: bytes) -> None:
    records = pytest.importorskip("pragma_kvm_rocks.records")
    store = records.RecordStore(tmp_path)
    store.directory.mkdir()
    path = store.directory / "vc-a.json"
    path.write_bytes(data)
    for read in (lambda: store.get("vc-a"), lambda: list(store.all())):
        with pytest.raises(DriverError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{path}: unreadable allocation record (") and "\n" not in message


# --------------------------------------------------------------------------- output sinks


def test_control_characters_in_driver_texts_are_escaped_in_listings(site: Site) -> None:
    forged = "running\nError: forged\x1b]0;title\x07"
    state = site.root / "state" / "fake.json"
    state.parent.mkdir(parents=True)
    node = {"name": "vc1", "role": "frontend", "cpus": 1, "memory_mib": 256, "state": forged, "private_ip": "10.1.0.1\r"}
    state.write_text(json.dumps({"serial": 1, "clusters": {"vc1": {"public_ip": "192.0.2.10\u202e", "nodes": [node]}}}))
    result = site.subprocess("list", "cluster")
    assert result.code == 0, result.err
    assert result.err == ""
    lines = result.out.splitlines()
    assert len(lines) == 2 and not any(line.startswith("Error") for line in lines)
    assert "running\\nError: forged\\x1b]0;title\\x07" in lines[1]
    assert "10.1.0.1\\r" in lines[1] and "192.0.2.10\\u202e" in lines[1]
    data = json.loads(site.subprocess("list", "cluster", "--json").out)
    assert data[0]["nodes"][0]["state"] == forged, "JSON carries the text exactly, escaped by JSON itself"


def test_log_records_are_one_line_each_whatever_the_message(tmp_path: Path) -> None:
    import io

    from pragma_core import cli, commandlog

    logfile = tmp_path / "x.log"
    ctx = cli.Context(conf_dir=None, json_output=False, out=io.StringIO(), err=io.StringIO())
    try:
        commandlog.setup_logging(ctx, {}, logfile=logfile)
        logging.getLogger("pragma_core.test").warning("image %s", "demo\nError: forged\x1b[2J")
        try:
            raise ValueError("bad\x1b[2J")
        except ValueError:
            logging.getLogger("pragma_core.test").exception("failed")
    finally:
        commandlog.close_log_files(ctx)
    lines = logfile.read_text().splitlines()
    assert lines[1].endswith("WARNING - image demo\\nError: forged\\x1b[2J")
    assert not any(line.startswith("Error") for line in lines)
    assert "ValueError: bad\\x1b[2J" in lines[-1], "a traceback keeps its lines but escapes the rest"


def read_first_line_then_close(site: Site, *args: str, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pragma_core.cli", "--conf", str(site.etc), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=120), first, err


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "plain"])
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_a_reader_that_closes_the_output_early_ends_the_command_quietly(
    tmp_path: Path, json_output: bool, unbuffered: str
) -> None:
    site = build_site(tmp_path)
    # far more than a pipe holds (64 KiB): the program is still writing when the reader leaves
    (site.repo / "vcdb.txt").write_text("".join(f"image-number-{i:06d},demo/demo.xml\n" for i in range(20_000)))
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    code, first, err = read_first_line_then_close(site, "list", "repository", *(["--json"] if json_output else []), env=env)
    assert first == (b"[\n" if json_output else b"VIRTUAL IMAGE\n")
    assert err == b"", err[:2000]
    assert code == 141


@pytest.mark.parametrize("command", [("boot", "demo", "1"), ("sync", "repository")], ids=["boot", "sync"])
def test_a_log_file_that_cannot_be_written_is_one_error_line(site: Site, command: tuple[str, ...]) -> None:
    result = site.subprocess(*command, f"key={site.key}" if command[0] == "boot" else "loglevel=INFO", "logfile=/dev/full")
    assert_one_error_line(result, "cannot write log file /dev/full: No space left on device")
    assert result.code == 1
    assert site.run("list", "cluster").out.splitlines()[1:] == [], "nothing booted"
