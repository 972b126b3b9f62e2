"""Every signal rolls back: SIGTERM, SIGHUP (and SIGKILL + clean) at random points of boot, stage and sync.

The fault-injection trials run the real ``pragma`` command (fake driver; an
``http`` repository on a loopback server whose transfers stall, so signals
land mid-download) and signal it at points seen through a probe plugin
(:mod:`faultkit`). After SIGTERM or SIGHUP nothing may be left: no cluster,
reservation, vc-out file or state file, no half-made file in the cache or
the temporary directory; after SIGKILL, ``pragma clean`` of the listed
clusters (or the command run again) must get there. The in-process tests
below pin how :mod:`pragma_core.signals` delivers a signal.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pragma_core.testing import faults as faultkit
import pytest
from conftest import KEY, build_site
from pragma_core.testing.faults import Outcome, Probe, Trial
from httpfaults import Fault, FaultServer, write_remote_repository

from pragma_core.clusterxml import parse_cluster_xml
from pragma_core.config import load_site_config
from pragma_core.errors import CapacityError, DriverError
from pragma_core.model import BootRequest
from pragma_core.pipeline import Pipeline
from pragma_core.hooks import Hooks
from pragma_core.plugins import get_plugin_manager, make_driver, make_repository
from pragma_core.signals import Interrupted, deferred, interruptible, run_main
from pragma_core.testing.fake import FakeDriver
from pragma_core.vcdb import read_vcdb

PRAGMA = [sys.executable, "-m", "pragma_core.cli"]
BOOT_POINTS = ("resolve:start", "stage:start", "allocate:start", "allocate:done", "render:start",
               "deploy:start", "deploy:done")
#: names of the files staging and fetching write before renaming them into place
TEMPORARY = {"contains": (".staging-", ".tmp-", ".download"), "suffixes": (".tmp", ".part", ".part.json")}


@pytest.fixture(scope="module", autouse=True)
def fault_report(request: pytest.FixtureRequest) -> None:
    faultkit.register_report(request.config)


# --------------------------------------------------------------------------- sites


def fake_driver(etc: Path) -> FakeDriver:
    driver = make_driver(load_site_config(etc))
    assert isinstance(driver, FakeDriver)
    return driver


def fake_leftovers(etc: Path, tmpdir: Path) -> list[str]:
    """Clusters, reservations, vc-out files and state files the fake driver still has; files in TMPDIR."""
    driver = fake_driver(etc)
    problems = [f"cluster {c.name} left ({', '.join(n.state for n in c.nodes)})" for c in driver.list_clusters()]
    vcout = driver.state_file.parent / "pragma-fake-vcout"
    problems += [f"vc-out left: {p}" for p in faultkit.files_matching(vcout, prefixes=("",))]
    problems += [f"state file left: {p}" for p in faultkit.files_matching(driver.state_file.parent, contains=(".tmp",))]
    problems += [faultkit.TEMPORARY_LEFT + p for p in faultkit.files_matching(tmpdir, prefixes=("",))]
    return problems


def clean_listed(etc: Path) -> list[str]:
    """``pragma shutdown`` (when a node runs) and ``pragma clean`` every cluster the driver lists."""
    problems = []
    for cluster in fake_driver(etc).list_clusters():
        if any(n.state == "running" for n in cluster.nodes):
            done = faultkit.pragma(etc, "shutdown", cluster.name)
            if done.returncode:
                problems.append(f"pragma shutdown {cluster.name}: {done.stderr.strip()}")
        done = faultkit.pragma(etc, "clean", cluster.name)
        if done.returncode:
            problems.append(f"pragma clean {cluster.name}: {done.stderr.strip()}")
    return problems


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory):
    """A remote http repository (``demo``: two images; ``solo``: one image for every node) whose transfers stall."""
    www = tmp_path_factory.mktemp("www")
    clusters = write_remote_repository(www, size=2 << 20)
    demo = next(c for c in clusters if c.name == "demo")
    solo = www / "solo"
    solo.mkdir()
    for part in demo.parts:
        shutil.copy(www / part, solo / Path(part).name.replace("demo-", "solo-"))
    xml = (www / demo.xml).read_text()
    front = re.search(r"<disk .*?</disk>", xml.split("<compute>")[0], re.S)
    assert front is not None
    head, tail = xml.split("<compute>")
    xml = head + "<compute>" + re.sub(r"<disk .*?</disk>", lambda _m: front.group(0), tail, flags=re.S)
    (solo / "solo.xml").write_text(xml.replace("demo-", "solo-"))
    with open(www / "vcdb.txt", "a") as handle:
        handle.write("solo,solo/solo.xml\n")
    with FaultServer(www) as server:
        solo_parts = [f"solo/{Path(p).name.replace('demo-', 'solo-')}" for p in demo.parts]
        for path in [*demo.parts, *solo_parts, "clusters/demo/demo-compute.img"]:
            server.add_fault(path, Fault(stall=0.08, stall_after=32 << 10))
        for path in ("vcdb.txt", "clusters/demo/demo.xml", "other/other.xml", "solo/solo.xml"):
            server.add_fault(path, Fault(stall=0.1, stall_after=64))
        yield server, www


def http_site(root: Path, url: str) -> Path:
    etc = root / "etc"
    for sub in ("etc", "tmp", "log", "cache", "state"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (etc / "site_conf.conf").write_text(
        'site_ve_driver = "fake"\n'
        f'temp_directory = "{root / "tmp"}"\n'
        f'log_directory = "{root / "log"}"\n'
        f'repository_settings = {{"repository_class": "http", "repository_dir": "{root / "cache"}",'
        f' "repository_url": "{url}", "timeout": 10, "retries": 1, "backoff": 0.01}}\n'
    )
    (etc / "fake.conf").write_text(f'state_file = "{root / "state" / "fake.json"}"\n')
    return etc


def cache_problems(cache: Path, tmpdir: Path) -> list[str]:
    found = faultkit.files_matching(cache, **TEMPORARY) + faultkit.files_matching(tmpdir, prefixes=("",))
    return [faultkit.TEMPORARY_LEFT + p for p in found]


# --------------------------------------------------------------------------- boot on the fake driver


@pytest.mark.parametrize("trial", faultkit.plan("fake-boot", BOOT_POINTS, per_signal=5, max_delay=0.1),
                         ids=lambda t: t.id)
def test_boot_signalled_at_any_point_leaves_nothing_allocated(trial: Trial, tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf="deploy_delay = 0.03\n")
    probe = Probe(tmp_path / "probe")
    tmpdir = tmp_path / "child-tmp"
    env = probe.env(hold=trial.point if trial.hold else None, tmpdir=tmpdir)
    argv = [*PRAGMA, "--conf", str(site.etc), "boot", "demo", "8", f"key={site.key}"]
    outcome = faultkit.run_trial(trial, argv, env=env, ready=probe.reached(trial.point), probe=probe,
                                 workdir=tmp_path / "trial")
    faultkit.judge(outcome, undo=lambda _o: clean_listed(site.etc), recover=lambda _o: clean_listed(site.etc),
                   leftovers=lambda: fake_leftovers(site.etc, tmpdir))
    assert outcome.clean, outcome.describe()


# --------------------------------------------------------------------------- stage and sync (http repository)


STAGE_TRIALS = [
    *faultkit.plan("fake-stage-two-images", ("resolve:start", "stage:start"), per_signal=2, max_delay=0.5, hold=False),
    *faultkit.plan("fake-stage-one-image", ("stage:start",), per_signal=1, max_delay=0.5, hold=False),
]


@pytest.mark.parametrize("trial", STAGE_TRIALS, ids=lambda t: t.id)
def test_stage_signalled_mid_download_leaves_no_half_made_file(trial: Trial, tmp_path: Path, remote) -> None:
    server, _www = remote
    etc = http_site(tmp_path, server.base_url)
    name = "solo" if "one-image" in trial.label else "demo"
    probe = Probe(tmp_path / "probe")
    tmpdir = tmp_path / "child-tmp"
    env = probe.env(hold=trial.point if trial.hold else None, tmpdir=tmpdir)
    outcome = faultkit.run_trial(trial, [*PRAGMA, "--conf", str(etc), "stage", name], env=env,
                                 ready=probe.reached(trial.point), probe=probe, workdir=tmp_path / "trial")

    def again(_outcome: Outcome) -> list[str]:
        done = faultkit.pragma(etc, "stage", name)
        return [f"pragma stage {name} again: exit {done.returncode}: {done.stderr.strip()}"] if done.returncode else []

    faultkit.judge(outcome, undo=lambda _o: [], recover=again,
                   leftovers=lambda: cache_problems(tmp_path / "cache", tmpdir))
    assert outcome.clean, outcome.describe()


SYNC_POINTS = ("vcdb.txt", "clusters/demo/demo.xml", "other/other.xml")


@pytest.mark.parametrize("trial", faultkit.plan("fake-sync", SYNC_POINTS, per_signal=2, max_delay=0.15, hold=False),
                         ids=lambda t: t.id)
def test_sync_signalled_mid_transfer_leaves_whole_files_and_no_spool(trial: Trial, tmp_path: Path, remote) -> None:
    server, www = remote
    etc = http_site(tmp_path, server.base_url)
    cache = tmp_path / "cache"
    for path in ("vcdb.txt", "clusters/demo/demo.xml", "other/other.xml"):  # cached: sync fetches them again
        (cache / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(www / path, cache / path)
    server.reset_log()
    tmpdir = tmp_path / "child-tmp"
    env = Probe(tmp_path / "probe").env(tmpdir=tmpdir)
    outcome = faultkit.run_trial(trial, [*PRAGMA, "--conf", str(etc), "sync", "repository"], env=env,
                                 ready=lambda: bool(server.requests_for(trial.point)), workdir=tmp_path / "trial")

    def again(_outcome: Outcome) -> list[str]:
        done = faultkit.pragma(etc, "sync", "repository")
        return [f"pragma sync again: exit {done.returncode}: {done.stderr.strip()}"] if done.returncode else []

    def leftovers() -> list[str]:
        problems = cache_problems(cache, tmpdir)
        try:  # every file is the old or the new copy, never a torn one
            read_vcdb(cache / "vcdb.txt", cache)
            for name, xml in (("demo", "clusters/demo/demo.xml"), ("other", "other/other.xml")):
                parse_cluster_xml(cache / xml, name)
        except Exception as exc:  # noqa: BLE001 - reported as the trial's problem
            problems.append(f"torn file in the cache: {exc}")
        return problems

    faultkit.judge(outcome, undo=lambda _o: [], recover=again, leftovers=leftovers)
    assert outcome.clean, outcome.describe()


# --------------------------------------------------------------------------- the driver cannot roll back


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_reservation_a_failed_rollback_leaves_is_listed_and_named_by_the_capacity_error(
        signum: int, tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf='fail_rollback = True\npublic_ips = ["192.0.2.10"]\n')
    probe = Probe(tmp_path / "probe")
    trial = Trial(label="fake-rollback-fails", signum=signum, point="deploy:start", hold=True)
    argv = [*PRAGMA, "--conf", str(site.etc), "boot", "demo", "4", f"key={site.key}"]
    outcome = faultkit.run_trial(trial, argv, env=probe.env(hold="deploy:start"), ready=probe.reached("deploy:start"),
                                 probe=probe, workdir=tmp_path / "trial")
    name = signal.Signals(signum).name
    assert outcome.code == 128 + signum, outcome.describe()
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: interrupted by {name}"]
    assert ("rollback of cluster vc1 failed: fake driver: rollback of vc1 failed (fail_rollback is set);"
            " it stays reserved until 'pragma clean vc1'") in outcome.stderr

    listing = site.subprocess("list", "cluster")
    assert listing.code == 0, listing.err
    assert [line.split()[2] for line in listing.out.splitlines()[1:]] == ["reserved", "reserved"]
    again = site.subprocess("boot", "demo", "1", f"key={site.key}")
    assert again.code == 1
    assert again.err == ("Error: no free public IP (1 configured, all in use);"
                         " reserved, not running: vc1; pragma clean vc1\n")
    assert site.subprocess("clean", "vc1").code == 0
    assert fake_driver(site.etc).list_clusters() == []


def test_a_boot_still_running_is_not_named_as_reserved_not_running(tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf='public_ips = ["192.0.2.10"]\n')
    pipe = pipeline(site.etc)
    pipe.driver.deploy = lambda *a: None  # type: ignore[method-assign, union-attr]  # stays reserved, like mid-boot
    pipe.boot(BootRequest(image="demo", cpus=1, key=KEY))
    again = site.subprocess("boot", "demo", "1", f"key={site.key}")
    assert again.err == "Error: no free public IP (1 configured, all in use)\n", "this process is still booting it"


def test_a_capacity_error_names_each_reservation_and_the_command_that_frees_it() -> None:
    error = CapacityError("no free VLAN: all 2 in vlans are in use", reserved=["vc-a", "vc-b"])
    assert str(error) == ("no free VLAN: all 2 in vlans are in use; reserved, not running: vc-a, vc-b;"
                          " pragma clean vc-a; pragma clean vc-b")
    assert error.reserved == ("vc-a", "vc-b") and str(CapacityError("full")) == "full"


# --------------------------------------------------------------------------- how a signal is delivered (in process)


def pipeline(etc: Path) -> Pipeline:
    site = load_site_config(etc)
    return Pipeline(site=site, driver=make_driver(site), repository=make_repository(site),
                    hooks=Hooks(get_plugin_manager(extra=[], strict=True)))


def send_later(signum: int, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


def test_the_handlers_are_restored_and_sigterm_is_an_interrupted_with_status_143() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises(Interrupted) as caught, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert (caught.value.exit_code, caught.value.name, str(caught.value)) == (143, "SIGTERM", "interrupted by SIGTERM")
    assert isinstance(caught.value, KeyboardInterrupt)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_while_a_thread_pool_works_is_raised_once_every_task_has_finished() -> None:
    finished: list[int] = []

    def task(i: int) -> None:
        time.sleep(0.2)
        finished.append(i)

    with pytest.raises(Interrupted), interruptible():
        with ThreadPoolExecutor(2) as pool:
            send_later(signal.SIGHUP, 0.05)
            for i in range(4):
                pool.submit(task, i)
        seen = sorted(finished)
        time.sleep(5)
    assert seen == [0, 1, 2, 3], "the pool's with block ended normally, after all its tasks"
    assert not [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]


def test_a_signal_inside_a_deferred_section_is_raised_when_it_ends() -> None:
    steps = []
    with pytest.raises(Interrupted, match="SIGHUP"), interruptible():
        with deferred():
            send_later(signal.SIGHUP, 0.01)
            time.sleep(0.2)
            steps.append("section finished")
        steps.append("after the section")
    assert steps == ["section finished"]


def test_a_second_signal_during_the_rollback_is_ignored_and_the_rollback_finishes(tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf="deploy_delay = 0.2\n")
    pipe = pipeline(site.etc)
    driver = pipe.driver
    assert isinstance(driver, FakeDriver)
    original = driver.rollback
    rolled_back = []

    def slow_rollback(allocation) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.2)
        original(allocation)
        rolled_back.append(allocation.cluster)

    driver.rollback = slow_rollback  # type: ignore[method-assign]
    deploy = driver.deploy

    def deploy_then_signalled(*args, **kwargs) -> None:  # the first signal lands during deploy, whatever the load
        os.kill(os.getpid(), signal.SIGTERM)
        deploy(*args, **kwargs)

    driver.deploy = deploy_then_signalled  # type: ignore[method-assign]
    with pytest.raises(Interrupted, match="by SIGTERM") as caught, interruptible() as guard:
        pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
    assert rolled_back == ["vc1"] and driver.list_clusters() == []
    assert caught.value.exit_code == 143
    assert guard is not None and guard.ignored == [signal.SIGHUP]


def test_a_signal_during_the_rollback_of_another_failure_keeps_that_failure_as_the_cause(tmp_path: Path) -> None:
    site = build_site(tmp_path, fake_conf="fail_deploy = True\n")
    pipe = pipeline(site.etc)
    driver = pipe.driver
    assert isinstance(driver, FakeDriver)
    original = driver.rollback

    def rollback(allocation) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        original(allocation)

    driver.rollback = rollback  # type: ignore[method-assign]
    order = []
    with pytest.raises(Interrupted), interruptible():
        with pytest.raises(DriverError, match="fail_deploy is set"):
            pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
        order.append("the deploy failure came first")
        assert driver.list_clusters() == []
        time.sleep(5)  # the signal is raised at the next safe point
    assert order == ["the deploy failure came first"]


def test_a_signal_still_pending_when_the_main_function_returns_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    def main() -> int:
        try:
            raise ValueError("being handled")
        except ValueError:
            os.kill(os.getpid(), signal.SIGHUP)  # inside an except block: kept pending, retried later
        return 7

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        assert run_main(main) == 7
        assert {signal.getsignal(s) for s in handlers} == {signal.SIG_IGN}, "ignored until the program exits"
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert "SIGHUP received; ignored: the command had finished" in caplog.text


def test_rollback_waits_for_the_deploy_threads_so_nothing_is_made_after_it(tmp_path: Path) -> None:
    """A deploy that makes its nodes on worker threads, like kvm_rocks: the signal lands while they work."""
    site = build_site(tmp_path)
    pipe = pipeline(site.etc)
    driver = pipe.driver
    assert isinstance(driver, FakeDriver)
    made = tmp_path / "made"
    made.mkdir()
    original_rollback = driver.rollback

    def make(node) -> None:
        time.sleep(0.15)
        (made / node.name).write_text("a node\n")

    def deploy(allocation, cluster, vcout) -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(make, allocation.nodes))

    def rollback(allocation) -> None:
        original_rollback(allocation)
        for path in made.iterdir():
            path.unlink()

    driver.deploy = deploy  # type: ignore[method-assign]
    driver.rollback = rollback  # type: ignore[method-assign]
    with pytest.raises(Interrupted), interruptible():
        send_later(signal.SIGTERM, 0.05)
        pipe.boot(BootRequest(image="demo", cpus=16, key=KEY))
    time.sleep(0.3)  # a worker still running would make its node now
    assert list(made.iterdir()) == [] and driver.list_clusters() == []


def test_a_signal_after_the_boot_leaves_the_cluster_and_says_so(tmp_path: Path) -> None:
    site = build_site(tmp_path)
    pipe = pipeline(site.etc)
    with pytest.raises(Interrupted) as caught, interruptible():
        pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert str(caught.value) == "interrupted by SIGTERM; cluster vc1 was booted before it and keeps running"
    assert [c.name for c in pipe.driver.list_clusters()] == ["vc1"]  # type: ignore[union-attr]
