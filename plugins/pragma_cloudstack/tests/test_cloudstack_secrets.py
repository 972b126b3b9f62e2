"""The CloudStack keys and request signatures never reach stdout, stderr or the log file, in any form.

A careless management server (the simulator's ``echo`` fault) repeats the
request -- ``apiKey``, ``signature``, the whole query -- raw, URL-encoded
and JSON-quoted in its error text or HTTP reason phrase; ``pragma boot
loglevel=DEBUG`` must still print and log none of them
(:func:`pragma_core.testing.secrets.assert_no_secret` checks every form).
Mistakes in ``cloudstack.conf`` never print a key either.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudstack_simulator import CloudStackSimulator, echo_of
from cloudstack_testkit import FAST, standard_simulator, write_conf

from pragma_core import cli
from pragma_core.testing import make_cluster, make_site
from pragma_core.testing.secrets import assert_no_secret, leaked_forms, restored_root_logging

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBYYWdtYXRlc3RrZXlwcmFnbWF0ZXN0a2V5 secrets@pragma\n"


def _keys() -> tuple[str, str]:
    """A fresh key pair in CloudStack's shape (base64url-ish API key, base64 secret with ``/+=``)."""
    token = secrets.token_hex(8)
    return f"api-{token}-Zx_9", f"sk/{token}+Q=="


@pytest.fixture
def keyed_sim() -> Iterator[CloudStackSimulator]:
    api_key, secret_key = _keys()
    simulator = standard_simulator(api_key=api_key, secret_key=secret_key)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were (the command adds its log file)."""
    with restored_root_logging():
        yield


def _pragma(etc: Path, *args: str, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    """``pragma --conf ETC ARGS`` in-process: exit code, and stdout + stderr + every log record."""
    cli._plugin_cache = None
    out, err = io.StringIO(), io.StringIO()
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        code = cli.run(["--conf", str(etc), *args], out=out, err=err)
    return code, "\n".join((out.getvalue(), err.getvalue(), caplog.text))


def _site(tmp_path: Path, sim: CloudStackSimulator) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    make_cluster(repo / "demo", name="demo", size=4096)
    (repo / "vcdb.txt").write_text("demo,demo/demo.xml\n")
    etc = make_site(tmp_path / "site", driver="cloudstack", repository=repo)
    write_conf(etc, sim, service_offering="Small Instance", retries=1)
    key = tmp_path / "id.pub"
    key.write_text(KEY)
    return etc, key


ECHOES = {
    "errortext-431": {"status": 431},
    "errortext-530": {"status": 530},
    "reason-403": {"status": 403, "reason": True},
    "reason-503-retried": {"status": 503, "reason": True},
}


def test_the_simulator_echo_holds_every_form_of_the_key_and_signature() -> None:
    """The careless server is careless: unmasked, its text holds the forms a real one may echo."""
    params = {"command": "listZones", "apiKey": "api-k/ey+x=1", "signature": "sig/na+ture="}
    text = echo_of(params)
    for value in params.values():
        if value != "listZones":
            assert {"raw", "url", "url-lower-hex", "url-double"} <= set(leaked_forms(text, value))


@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_a_server_error_echoing_the_keys_and_signature_reaches_no_output(
    echo: str, tmp_path: Path, keyed_sim: CloudStackSimulator, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    sim = keyed_sim
    for command in [name[4:] for name in dir(sim) if name.startswith("cmd_")]:
        sim.inject(command, "echo", count=100, **ECHOES[echo])
    etc, key = _site(tmp_path, sim)
    logfile = tmp_path / "boot.log"
    code, printed = _pragma(etc, "boot", "demo", "1", f"key={key}", "loglevel=DEBUG", f"logfile={logfile}", caplog=caplog)
    written = logfile.read_text(encoding="utf-8")
    assert code == 1 and "Error: " in printed and "unable to verify the request" in printed + written, printed
    assert "GET /client/api" in written, "urllib3's request lines reached the log file"
    signatures = sorted({params["signature"] for _, _, params in sim.requests})
    assert signatures, "the simulator answered signed requests"
    assert_no_secret(printed + written, sim.api_key, sim.secret_key, *signatures, where=f"boot output ({echo})")


#: Mistakes in cloudstack.conf; {api}/{secret} are the keys, {bare} a key written without quotes.
MISTAKES = {
    "secretkey-a-number": ("cloudstack.conf", "secretkey = 12345678901234\n", "secretkey: must be a non-empty string"),
    "secretkey-a-list": ("cloudstack.conf", "secretkey = [{secret!r}]\n", "secretkey: must be a non-empty string"),
    "secretkey-unquoted": ("cloudstack.conf", "secretkey = {bare}\n", "unknown name"),
    "secretkey-plus-number": ("cloudstack.conf", "secretkey = {secret!r} + 1\n", "cannot combine"),
    "templatefilter-is-the-secretkey": ("cloudstack.conf", "templatefilter = {secret!r}\n", "templatefilter: must be one of"),
    "max_parallel-is-the-apikey": ("cloudstack.conf", "max_parallel = {api!r}\n", "max_parallel: must be a whole number"),
    "baseurl-holds-the-secretkey": ("cloudstack.conf", "baseurl = 'ftp://' + {secret!r}\n", "baseurl: must be an http://"),
    "zone-is-the-unquoted-apikey": ("cloudstack.conf", "apikey = {bare!r}\nzone = {bare}\n", "unknown name"),
    "dns-holds-the-secretkey": ("cloudstack.conf", "dns = [{secret!r}]\n", "dns: must be a list of IPv4"),
    "toml-secretkey-a-number": ("cloudstack.toml", "secretkey = 5\n", "secretkey: must be a non-empty string"),
    "toml-templatefilter-is-the-secretkey": ("cloudstack.toml", "templatefilter = {secret_json}\n", "templatefilter: must be one of"),
    "toml-secretkey-unquoted": ("cloudstack.toml", "secretkey = {secret}\n", "invalid TOML"),
}


def _conf_text(name: str, sim: CloudStackSimulator, extra: str, **values: str) -> str:
    settings = {"baseurl": sim.url, "apikey": values["api"], "secretkey": values["secret"], "templatefilter": "community", **FAST}
    if name.endswith(".toml"):
        import json

        base = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items() if f"{k} =" not in extra)
    else:
        base = "".join(f"{k} = {v!r}\n" for k, v in settings.items())
    return base + extra


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_cloudstack_config_error_never_prints_a_key(mistake: str, tmp_path: Path, sim: CloudStackSimulator, caplog: pytest.LogCaptureFixture) -> None:
    import json

    name, extra, says = MISTAKES[mistake]
    api, secret = _keys()
    bare = f"Bare{secrets.token_hex(8)}Key"
    values = {"api": api, "secret": bare if "{bare}" in extra and "apikey" not in extra else secret, "bare": bare}
    text = extra.format(secret_json=json.dumps(values["secret"]), **values)
    etc = make_site(tmp_path / "site", driver="cloudstack")
    conf = etc / name
    conf.write_text(_conf_text(name, sim, text, api=values["api"], secret=values["secret"]))
    conf.chmod(0o600)
    code, printed = _pragma(etc, "list", "cluster", caplog=caplog)
    assert code == 1 and name in printed and says in printed, printed
    assert_no_secret(printed, api, secret, bare, "12345678901234", where=f"error for {mistake}")


def test_a_short_secretkey_stays_out_of_errors_about_other_keys(tmp_path: Path, sim: CloudStackSimulator, caplog: pytest.LogCaptureFixture) -> None:
    etc = make_site(tmp_path / "site", driver="cloudstack")
    write_conf(etc, sim, secretkey="Sk7", templatefilter="Sk7")
    code, printed = _pragma(etc, "list", "cluster", caplog=caplog)
    assert code == 1 and "templatefilter: must be one of" in printed, printed
    assert "Sk7" not in printed
