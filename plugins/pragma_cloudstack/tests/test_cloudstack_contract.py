"""The core conformance kit, run against the CloudStack driver and the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudstack_testkit import make_driver, standard_simulator, write_conf
from pragma_core.testing import DriverContract, DriverHarness, make_cluster, make_site

MAX_CPUS = 6


class TestCloudStackDriverContract(DriverContract):
    @pytest.fixture
    def driver_harness(self, tmp_path: Path) -> Iterator[DriverHarness]:
        # The account may run the 1-CPU frontend plus MAX_CPUS compute CPUs.
        sim = standard_simulator(cpu_limit=MAX_CPUS + 1)
        sim.start()
        etc = make_site(tmp_path / "site", driver="cloudstack")
        write_conf(etc, sim, service_offering="Small Instance")
        driver = make_driver(etc)
        cluster = make_cluster(tmp_path / "repo" / "demo", name="demo", size=4096)
        yield DriverHarness(
            driver=driver, cluster=cluster, max_cpus=MAX_CPUS, required_settings=("baseurl", "apikey", "secretkey")
        )
        driver.close()
        sim.stop()
