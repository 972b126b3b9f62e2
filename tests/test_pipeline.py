"""The boot pipeline: stage order, hooks, and rollback that reports the first cause."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from pragma_core import hookimpl
from pragma_core.config import load_site_config
from pragma_core.errors import DriverError, PragmaError
from pragma_core.model import BootRequest
from pragma_core.pipeline import Pipeline
from pragma_core.hooks import Hooks
from pragma_core.plugins import get_plugin_manager, make_driver, make_repository

from conftest import KEY, build_site


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.vcout_nodes: list[str] = []

    @hookimpl
    def pragma_stage_event(self, event):
        self.events.append((event.stage, event.status))

    @hookimpl
    def pragma_vcout_element(self, root, node, format):
        extra = root.makeelement("site", {"name": "test-site", "format": str(format)})
        root.append(extra)
        self.vcout_nodes.append(node.name)


def pipeline(tmp_path: Path, *plugins: object, fake_conf: str = "") -> Pipeline:
    site_files = build_site(tmp_path, fake_conf=fake_conf)
    site = load_site_config(site_files.etc)
    hooks = Hooks(get_plugin_manager(extra=[(f"p{i}", p) for i, p in enumerate(plugins)], strict=True))
    return Pipeline(site=site, driver=make_driver(site), repository=make_repository(site), hooks=hooks)


def test_boot_runs_the_stages_in_order_and_hooks_extend_vcout(tmp_path: Path) -> None:
    recorder = Recorder()
    result = pipeline(tmp_path, recorder).boot(BootRequest(image="demo", cpus=5, key=KEY))
    assert recorder.events == [(s, st) for s in ("resolve", "stage", "allocate", "render", "deploy") for st in ("start", "done")]
    assert sorted(recorder.vcout_nodes) == sorted(n.name for n in result.allocation.nodes)
    assert b'<site format="2" name="test-site"/>' in result.vcout[result.allocation.frontend.name]


def test_failure_after_allocation_rolls_back_and_raises_the_first_cause(tmp_path: Path) -> None:
    recorder = Recorder()
    pipe = pipeline(tmp_path, recorder, fake_conf="fail_deploy = True\n")
    with pytest.raises(DriverError, match="fail_deploy is set"):
        pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
    assert recorder.events[-4:] == [("deploy", "start"), ("deploy", "failed"), ("rollback", "start"), ("rollback", "done")]
    assert pipe.driver is not None and pipe.driver.list_clusters() == []


def test_rollback_failure_is_logged_and_does_not_hide_the_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe = pipeline(tmp_path, fake_conf="fail_deploy = True\n")
    assert pipe.driver is not None

    def broken_rollback(allocation):
        raise RuntimeError("rollback exploded")

    pipe.driver.rollback = broken_rollback  # type: ignore[method-assign]
    with pytest.raises(DriverError, match="fail_deploy is set"):
        pipe.boot(BootRequest(image="demo", cpus=2, key=KEY))
    assert "rollback of cluster vc1 failed: rollback exploded" in caplog.text


def test_validate_hook_can_refuse_and_adjust_hook_can_change_a_request(tmp_path: Path) -> None:
    class Policy:
        @hookimpl
        def pragma_validate_request(self, request):
            if request.cpus > 8:
                raise PragmaError("site policy: at most 8 CPUs per cluster")

        @hookimpl
        def pragma_adjust_request(self, request):
            return attrs.evolve(request, cpus=request.cpus + 1)

    pipe = pipeline(tmp_path, Policy())
    with pytest.raises(PragmaError, match="at most 8 CPUs"):
        pipe.boot(BootRequest(image="demo", cpus=9, key=KEY))
    result = pipe.boot(BootRequest(image="demo", cpus=3, key=KEY))
    assert sum(n.cpus for n in result.allocation.computes) == 4


def test_per_cluster_vcout_format_overrides_the_site(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path)
    xml = tmp_path / "repo" / "demo" / "demo.xml"
    xml.write_text(xml.read_text().replace('<vc version="0.1">', '<vc version="0.1" vcout-format="1">'))
    result = pipe.boot(BootRequest(image="demo", cpus=1, key=KEY))
    assert result.vcout_format == 1
    assert b"<public " in result.vcout[result.allocation.frontend.name]
