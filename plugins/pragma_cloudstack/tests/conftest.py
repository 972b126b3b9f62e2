"""Fixtures: a CloudStack simulator on loopback, a site configured for it, a driver."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cloudstack_simulator import CloudStackSimulator
from cloudstack_testkit import make_driver, standard_simulator, write_conf
from pragma_core.model import StagedCluster
from pragma_core.testing import make_cluster, make_site

from pragma_cloudstack.client import CloudStackClient
from pragma_cloudstack.driver import CloudStackDriver


@pytest.fixture
def sim() -> Iterator[CloudStackSimulator]:
    simulator = standard_simulator()
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def conf_dir(tmp_path: Path, sim: CloudStackSimulator) -> Path:
    etc = make_site(tmp_path / "site", driver="cloudstack")
    write_conf(etc, sim, service_offering="Small Instance")
    return etc


@pytest.fixture
def driver(conf_dir: Path) -> Iterator[CloudStackDriver]:
    drv = make_driver(conf_dir)
    yield drv
    drv.close()


@pytest.fixture
def cluster(tmp_path: Path) -> StagedCluster:
    return make_cluster(tmp_path / "repo" / "demo", name="demo", size=4096)


@pytest.fixture
def client(sim: CloudStackSimulator) -> Iterator[CloudStackClient]:
    c = CloudStackClient(
        sim.url, sim.api_key, sim.secret_key, retries=2, retry_backoff=0.001,
        poll_interval=0.005, poll_max_interval=0.02, job_timeout=5, timeout=5,
    )
    yield c
    c.close()
