"""The pragma command: legacy contract, exit codes, one-line errors, JSON listings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Site, build_site


def test_bare_pragma_lists_every_command(site: Site) -> None:
    result = site.run()
    assert result.code == 0
    assert "boot {vc-name} {num-cpus} [add-iface=string]" in result.out
    for words in ("clean {vc-name}", "list cluster [vc-name]", "list repository", "shutdown {vc-name}", "sync repository", "plugins", "stage {vc-name}"):
        assert words in result.out


def test_help_filters_commands_by_words(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRAGMA_PLUGINS_ALLOW", "none-of-the-installed")  # built-in commands only
    result = site.run("help", "list")
    assert result.code == 0
    assert result.out.splitlines() == ["list cluster [vc-name]", "list help [subdir=string]", "list repository"]


def test_list_help_subdir_and_wrapping(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRAGMA_PLUGINS_ALLOW", "none-of-the-installed")  # built-in commands only
    result = site.run("list", "help", "subdir=list")
    assert [line.split()[1] for line in result.out.splitlines()] == ["cluster", "help", "repository"]
    boot = site.run("list", "help")
    assert any(line.startswith("\t") for line in boot.out.splitlines()), "long usage lines wrap at 80 columns"
    assert all(len(line.expandtabs(1)) <= 80 for line in boot.out.splitlines())


def test_command_help_describes_arguments_and_parameters(site: Site) -> None:
    result = site.run("boot", "help")
    assert result.code == 0
    assert result.out.startswith("pragma boot {vc-name} {num-cpus}")
    assert "Arguments:" in result.out and "Parameters:" in result.out and "[mem=string]" in result.out


def test_incomplete_command_prints_its_subcommands_and_exits_2(site: Site) -> None:
    result = site.run("list")
    assert result.code == 2
    assert "list cluster [vc-name]" in result.err


def test_unknown_command_is_a_usage_error(site: Site) -> None:
    result = site.run("frobnicate")
    assert result.code == 2
    assert result.err == 'Error: invalid pragma command "frobnicate"\n'


def test_positional_arguments_fill_from_the_front(site: Site) -> None:
    result = site.run("boot", "demo")
    assert result.code == 2
    assert "missing argument {num-cpus}" in result.err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("boot", "demo", "x"), 2, "number of CPUs must be a whole number >= 0, not 'x'"),
        (("boot", "demo", "-1"), 2, "number of CPUs must be >= 0, not '-1'"),
        (("boot", "demo", "-2.5"), 2, "number of CPUs must be a whole number >= 0, not '-2.5'"),
        (("boot", "demo", "2", "enable-ipop-client=yes"), 1, "IPOP is not supported"),
        (("boot", "demo", "2", "enable-ipop-server=1"), 1, "IPOP is not supported"),
        (("boot", "demo", "2", "mem=lots"), 2, "mem must be N or FRONTEND:COMPUTE"),
        (("boot", "demo", "2", "mem=4096:"), 2, "mem must be N or FRONTEND:COMPUTE"),
        (("boot", "demo", "2", "add-iface=openflow:10.0.0.0/33"), 2, "add-iface: '10.0.0.0/33' is not an IPv4 CIDR"),
        (("boot", "demo", "2", "add-iface=a,a"), 2, "add-iface: network 'a' given twice"),
        (("boot", "demo", "2", "enable-ent=perhaps"), 2, "enable-ent must be true or false"),
        (("boot", "demo", "2", "colour=blue"), 2, "unknown parameter colour= for 'boot' (usage: pragma boot "),
        (("boot", "demo", "2", "memroy=512"), 2, "unknown parameter memroy= for 'boot'; did you mean memory=?"),
        (("boot", "demo", "2", "wiat=30"), 2, "unknown parameter wiat= for 'boot'; did you mean wait=?"),
        (("list", "cluster", "loglvel=DEBUG"), 2, "unknown parameter loglvel= for 'list cluster'; did you mean loglevel=?"),
        (("clean", "vc1", "froce=true"), 2, "unknown parameter froce= for 'clean'; did you mean force=?"),
        (("list", "cluster", "loglevel=LOUD"), 2, "loglevel must be one of"),
        (("list", "cluster", "--conf="), 2, "--conf needs a directory"),
        (("list", "cluster", "--conf", ""), 2, "--conf needs a directory"),
        (("boot", "demo", "2", "--force"), 2, "--force is not available for 'boot'"),
        (("clean", "vc1", "--force", "force=false"), 2, "give --force or force=, not both"),
        (("clean", "vc1", "force=maybe"), 2, "force must be true or false, not 'maybe'"),
        (("boot", "demo", "2", "loglevel=LOUD"), 2, "loglevel must be one of"),
        (("boot", "demo", "2", "key=/nonexistent/key.pub"), 1, "key: file not found: /nonexistent/key.pub"),
        (("clean",), 2, "missing argument {vc-name}"),
        (("clean", "a", "b"), 2, "unexpected argument 'b'"),
        (("list", "cluster", "--json", "--bogus"), 2, "unknown option --bogus"),
        (("shutdown", "x", "--json"), 2, "--json is not available for 'shutdown'"),
    ],
)
def test_bad_command_lines_give_one_error_line(site: Site, args: tuple[str, ...], code: int, message: str) -> None:
    result = site.run(*args)
    assert result.code == code, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.err


def test_version_option(site: Site) -> None:
    from pragma_core import __version__

    assert site.run("--version").out == f"pragma {__version__}\n"


def test_list_repository_prints_header_then_sorted_names(site: Site) -> None:
    result = site.run("list", "repository")
    assert result.code == 0
    assert result.out == "VIRTUAL IMAGE\nalpha\ndemo\nzeta\n"
    assert json.loads(site.run("list", "repository", "--json").out) == ["alpha", "demo", "zeta"]
    assert site.run('list repository').out == result.out, "legacy quoted form"


def test_missing_site_conf_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pragma_core.cli", "--conf", str(tmp_path), "list", "repository"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"Error: configuration file not found: {tmp_path / 'site_conf.conf'}"
        " (give the site's configuration directory with --conf DIR or PRAGMA_CONF_DIR)\n"
    )


def test_bad_config_names_file_and_line(site: Site) -> None:
    (site.etc / "site_conf.conf").write_text('site_ve_driver = "fake"\nrepository_settings = exec("x")\n')
    result = site.run("list", "repository")
    assert result.code == 1
    assert result.err == f"Error: {site.etc / 'site_conf.conf'} line 2: call to exec() is not allowed (only range() is)\n"


def test_unknown_driver_lists_installed_ones(site: Site) -> None:
    (site.etc / "site_conf.conf").write_text(
        (site.etc / "site_conf.conf").read_text().replace('site_ve_driver = "fake"', 'site_ve_driver = "vmware"')
    )
    result = site.run("list", "cluster")
    assert result.code == 1
    assert result.err.startswith("Error: unknown driver 'vmware' (installed: ")
    assert "fake" in result.err


def test_boot_list_shutdown_clean_round_trip(site: Site) -> None:
    boot = site.run("boot", "demo", "6", f"key={site.key}", "mem=512:1024")
    assert boot.code == 0, boot.err
    assert boot.out.startswith("Cluster vc1 booted: frontend vc1, 2 compute nodes (6 CPUs)")
    listing = site.run("list", "cluster")
    lines = listing.out.splitlines()
    assert lines[0].split() == ["FRONTEND", "COMPUTE", "NODES", "STATUS", "PUBLIC", "IP", "PRIVATE", "IP", "HOST", "VCPUS", "MEMORY"]
    assert lines[1].split()[:4] == ["vc1:", "-" * 16, "running", "192.0.2.10"]
    assert lines[2].split()[:5] == [":", "vc1-compute-0", "running", "-" * 15, "10.1.255.254"]
    data = json.loads(site.run("list", "cluster", "vc1", "--json").out)
    assert [n["name"] for n in data[0]["nodes"]] == ["vc1", "vc1-compute-0", "vc1-compute-1"]
    assert [n["memory_mib"] for n in data[0]["nodes"]] == [512, 1024, 1024]
    refused = site.run("clean", "vc1")
    assert refused.code == 1 and "still running" in refused.err
    assert site.run("shutdown", "vc1").out == "Shutting down virtual cluster vc1\nCluster vc1 shut down\n"
    assert site.run("clean", "vc1").out == "Removing virtual cluster vc1\nCluster vc1 is successfully removed\n"
    assert site.run("list", "cluster", "vc1").err == "Error: no virtual cluster named 'vc1'\n"


def test_boot_writes_a_log_file_with_stage_timings(site: Site) -> None:
    result = site.run("boot", "demo", "1", f"key={site.key}", f"logfile={site.root / 'boot.log'}")
    assert result.code == 0, result.err
    text = (site.root / "boot.log").read_text()
    for stage in ("resolve", "stage", "allocate", "render", "deploy"):
        assert f"stage {stage} done in" in text


def test_failed_deploy_rolls_back_and_reports_the_cause(tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf="fail_deploy = True\n")
    result = site.run("boot", "demo", "2", f"key={site.key}")
    assert result.code == 1
    assert result.err == "Error: fake driver: deploy of vc1 failed (fail_deploy is set)\n"
    assert site.run("list", "cluster").out.splitlines()[1:] == []


def test_debug_loglevel_shows_the_traceback(tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf="fail_deploy = True\n")
    result = site.run("boot", "demo", "2", f"key={site.key}", "loglevel=DEBUG")
    assert result.code == 1
    assert "Traceback (most recent call last)" in result.err


def test_boot_of_unknown_image_names_the_catalogue_and_lists_its_images(site: Site) -> None:
    result = site.run("boot", "nope", "2", f"key={site.key}")
    assert result.code == 1
    assert result.err == f"Error: virtual image 'nope' does not exist in {site.repo / 'vcdb.txt'} (images: alpha, demo, zeta)\n"


@pytest.mark.parametrize("command", [("boot", "dmeo", "2"), ("stage", "dmeo"), ("boot", "Demo", "0")])
def test_a_mistyped_image_name_suggests_the_closest_image(site: Site, command: tuple[str, ...]) -> None:
    result = site.run(*command, f"key={site.key}") if command[0] == "boot" else site.run(*command)
    assert result.code == 1
    assert result.err.endswith("; did you mean 'demo'? (images: alpha, demo, zeta)\n"), result.err
    assert site.run("list", "cluster").out.splitlines()[1:] == []


def test_the_image_list_of_an_unknown_image_stops_after_20_names(tmp_path: Path) -> None:
    names = tuple(f"img{i:02d}" for i in range(25))
    site = build_site(tmp_path, names=names)
    result = site.run("boot", "zzz", "1", f"key={site.key}")
    assert result.code == 1
    assert result.err.endswith(f"(images: {', '.join(names[:20])} and 5 more)\n"), result.err
    assert len(result.err.splitlines()) == 1


def test_an_empty_repository_says_it_lists_no_image(tmp_path: Path) -> None:
    site = build_site(tmp_path, names=())
    result = site.run("stage", "demo")
    assert result.code == 1
    assert result.err.endswith("does not exist in " + str(site.repo / "vcdb.txt") + " (the repository lists no image)\n")


@pytest.mark.parametrize(("cpus", "summary"), [("1", "1 compute node (1 CPU)"), ("0", "0 compute nodes (0 CPUs)"), ("5", "2 compute nodes (5 CPUs)")])
def test_boot_counts_nodes_and_cpus_in_good_english(site: Site, cpus: str, summary: str) -> None:
    result = site.run("boot", "demo", cpus, f"key={site.key}")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == f"Cluster vc1 booted: frontend vc1, {summary}"


@pytest.mark.parametrize(
    "command",
    [("list", "repository"), ("list", "cluster"), ("stage", "demo"), ("plugins",), ("help",), ("list", "help"), ("shutdown", "vc1"), ("clean", "vc1", "force=true")],
)
def test_logfile_and_loglevel_work_on_every_command(site: Site, command: tuple[str, ...]) -> None:
    site.run("boot", "demo", "1", f"key={site.key}")
    log = site.root / "command.log"
    result = site.run(*command, f"logfile={log}", "loglevel=DEBUG")
    assert result.code == 0, result.err
    assert "log opened (pragma" in log.read_text()


def test_a_logfile_in_a_missing_directory_fails_before_the_command_runs(site: Site) -> None:
    site.run("boot", "demo", "1", f"key={site.key}")
    result = site.run("shutdown", "vc1", f"logfile={site.root / 'no' / 'such.log'}")
    assert result.code == 1
    assert result.err == f"Error: cannot open log file {site.root / 'no' / 'such.log'}: directory {site.root / 'no'} does not exist\n"
    assert site.run("list", "cluster").out.splitlines()[1].split()[2] == "running"


def test_loglevel_debug_shows_the_traceback_on_any_command(site: Site) -> None:
    result = site.run("list", "cluster", "nope", "loglevel=DEBUG")
    assert result.code == 1
    assert "Traceback (most recent call last)" in result.err
    assert result.err.splitlines()[-1] == "Error: no virtual cluster named 'nope'"


def test_every_command_help_names_the_common_parameters(site: Site) -> None:
    text = site.run("list", "cluster", "help").out
    assert "Common parameters (every command):" in text and "[loglevel=string]" in text and "[logfile=string]" in text
    boot = site.run("boot", "help").out
    assert "Common parameters" not in boot, "boot lists them with its own defaults"
    assert "loglevel=LEVEL and logfile=FILE" in site.run("--help").out


@pytest.mark.parametrize("force", [["force=true"], ["--force"], ["force=yes"]])
def test_clean_force_powers_off_and_removes_a_running_cluster(site: Site, force: list[str]) -> None:
    assert site.run("boot", "demo", "2", f"key={site.key}").code == 0
    result = site.run("clean", "vc1", *force)
    assert result.code == 0, result.err
    assert result.out == "Removing virtual cluster vc1\nCluster vc1 is successfully removed\n"
    assert site.run("list", "cluster").out.splitlines()[1:] == []


def test_clean_force_false_still_refuses_a_running_cluster(site: Site) -> None:
    assert site.run("boot", "demo", "2", f"key={site.key}").code == 0
    result = site.run("clean", "vc1", "force=false")
    assert result.code == 1 and "still running" in result.err
    assert site.run("list", "cluster", "vc1").code == 0


def test_clean_help_documents_force(site: Site) -> None:
    assert "clean {vc-name} [force=boolean]" in site.run("--help").out
    assert "also spelled --force" in site.run("clean", "help").out


def test_stage_prints_ready_image_paths(site: Site) -> None:
    result = site.run("stage", "demo")
    assert result.code == 0, result.err
    assert result.out == f"frontend: {site.repo / 'demo' / 'demo-frontend.img'}\ncompute: {site.repo / 'demo' / 'demo-compute.img'}\n"
    data = json.loads(site.run("stage", "demo", "--json").out)
    assert data["frontend"]["path"] == str(site.repo / "demo" / "demo-frontend.img")


def test_plugins_lists_core_backends_with_status(site: Site) -> None:
    data = json.loads(site.run("plugins", "--json").out)
    found = {(p["group"], p["name"]): p for p in data}
    for key in (("pragma.repositories", "local"), ("pragma.repositories", "http"), ("pragma.repositories", "cloudfront"), ("pragma.drivers", "fake")):
        assert key in found
        assert found[key]["distribution"] == "pragma-core"
    assert found[("pragma.repositories", "local")]["status"] == "ok"
    table = site.run("plugins").out.splitlines()
    assert table[0].split() == ["GROUP", "NAME", "DISTRIBUTION", "VERSION", "STATUS"]


def test_help_imports_no_driver_sdk(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pragma_core.cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    for heavy in ("libvirt", "requests", "botocore", "boto3", "rsa", "stevedore", "pluggy", "pycdlib"):
        assert heavy not in imported, f"pragma --help imported {heavy}"


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_and_version_import_no_logging_typing_pathlib_or_attrs(option: str) -> None:
    code = (
        "import sys\n"
        "from pragma_core.cli import main\n"
        f"code = main([{option!r}])\n"
        "heavy = ('logging', 'typing', 'pathlib', 'attrs', 'json', 'signal', 'pragma_core.signals')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip() == "0 []", "these print built-in text only: each import here is start-up time"
    assert proc.stdout.startswith("usage: pragma" if option == "--help" else "pragma ")


def test_boot_wait_prints_one_ready_line_per_node(site: Site) -> None:
    result = site.run("boot", "demo", "6", f"key={site.key}", "wait=30")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert [line.split() for line in lines[-3:]] == [["vc1", "ready"], ["vc1-compute-0", "ready"], ["vc1-compute-1", "ready"]]
    log = (site.root / "log").glob("demo-*.log")
    assert any("wait for vc1 done in" in path.read_text() for path in log)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_boot_wait_needs_positive_seconds_and_boots_nothing(site: Site, value: str) -> None:
    result = site.run("boot", "demo", "2", f"key={site.key}", f"wait={value}")
    assert result.code == 2
    assert result.err == f"Error: wait must be a positive number of seconds, not {value!r}\n"
    assert site.run("list", "cluster").out.splitlines()[1:] == []


def test_readiness_lines_name_the_status_and_reason_of_nodes_not_ready() -> None:
    from pragma_core.cli import format_readiness

    lines = format_readiness({"vc1": "ready", "vc1-compute-0": "timeout: no PRAGMA-READY after 5 s", "c1": "failed: errors=2"})
    assert lines == ["vc1            ready", "vc1-compute-0  timeout  no PRAGMA-READY after 5 s", "c1             failed  errors=2"]


def test_driver_without_wait_support_refuses_wait_before_booting(tmp_path: Path) -> None:
    from pragma_core.errors import NotSupportedError
    from pragma_core.interfaces import Driver

    class Minimal(Driver):
        name = "minimal"
        allocate = deploy = rollback = list_clusters = shutdown = clean = lambda *a, **k: None  # type: ignore[assignment]

    with pytest.raises(NotSupportedError, match="driver 'minimal' cannot wait for nodes to be ready"):
        Minimal(None, site=None).wait_ready("vc1", 1.0)


def test_fake_driver_gives_every_node_a_nic_on_each_add_iface_network(site) -> None:
    import json

    result = site.run("boot", "demo", "8", f"key={site.key}", "add-iface=openflow:10.9.0.5/24,ib", "--json")
    assert result.code == 0, result.err
    name = json.loads(result.out)["cluster"]
    vcout = site.root / "state" / "pragma-fake-vcout" / name
    frontend = (vcout / f"{name}.xml").read_text()
    assert 'ip="10.9.0.5"' in frontend
    assert "openflow" in frontend and "ib" in frontend
    computes = [p.read_text() for p in sorted(vcout.glob(f"{name}-compute-*.xml"))]
    assert len(computes) == 2 and all("openflow" in text and "ib" in text for text in computes)


def test_fake_driver_puts_the_extra_networks_into_the_allocation(tmp_path) -> None:
    import ipaddress

    from pragma_core.model import BootRequest, InterfaceRequest
    from pragma_core.testing.contract import make_cluster
    from pragma_core.testing.fake import FakeConfig, FakeDriver

    driver = FakeDriver(FakeConfig(state_file=tmp_path / "s.json"), site=None)
    staged = make_cluster(tmp_path / "c")
    request = BootRequest(image="demo", cpus=8, key="k", enable_ent=True,
                          add_ifaces=(InterfaceRequest(network="openflow", cidr=ipaddress.IPv4Interface("10.9.0.5/24")),))
    allocation = driver.allocate(request, staged)
    assert [n.name for n in allocation.networks] == ["private", "public", "openflow", "ent"]
    assert [str(n.interface("openflow").ip) for n in allocation.nodes] == ["10.9.0.5", "10.9.0.6", "10.9.0.7"]
    assert all(n.interface("ent") is not None for n in allocation.nodes)
    assert len({nic.mac for n in allocation.nodes for nic in n.interfaces}) == sum(len(n.interfaces) for n in allocation.nodes)
    driver.rollback(allocation)


def test_a_readiness_detail_from_a_guest_is_printed_escaped_and_cut() -> None:
    from pragma_core.cli import format_readiness

    lines = format_readiness({"vc1": "ready", "vc1-compute-0": "failed: PRAGMA-FAILED " + "\x1b[2J" * 100_000})
    assert len(lines[-1]) < 2000 and "\x1b" not in "".join(lines) and "more characters]" in lines[-1]
