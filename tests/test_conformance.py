"""Core proves its conformance kit on its own reference implementations.

The ``fake`` driver is a test double (it starts no VM) and the ``local``
repository is the real one; both must pass the same contracts every plugin
in this repository runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pragma_core.config import load_site_config
from pragma_core.repositories.local import LocalRepository
from pragma_core.staging import Stager
from pragma_core.testing import DriverContract, DriverHarness, RepositoryContract, RepositoryHarness, make_cluster, make_site
from pragma_core.testing.fake import FakeConfig, FakeDriver


class TestFakeDriverContract(DriverContract):
    @pytest.fixture
    def driver_harness(self, tmp_path: Path) -> DriverHarness:
        site = load_site_config(make_site(tmp_path))
        driver = FakeDriver(FakeConfig(total_cpus=16, state_file=str(tmp_path / "state.json")), site=site)
        return DriverHarness(driver=driver, cluster=make_cluster(tmp_path / "cluster"), max_cpus=16)


class TestLocalRepositoryContract(RepositoryContract):
    @pytest.fixture
    def repository_harness(self, tmp_path: Path) -> RepositoryHarness:
        site = load_site_config(make_site(tmp_path))
        repo_dir = tmp_path / "repo"
        for name in ("beta", "alpha"):
            make_cluster(repo_dir / "images" / name, name=name)
        (repo_dir / "vcdb.txt").write_text("# catalogue\nbeta,images/beta/beta.xml\n\nalpha,images/alpha/alpha.xml\n")
        assert site.repository is not None
        return RepositoryHarness(repository=LocalRepository(site.repository, site=site), names=["alpha", "beta"], stager=Stager())
