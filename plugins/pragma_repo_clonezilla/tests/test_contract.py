"""The clonezilla repository passes core's repository conformance kit after a sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from pragma_core.staging import Stager
from pragma_core.testing import RepositoryContract, RepositoryHarness
from test_sync import make_repo, publish


class TestClonezillaRepositoryContract(RepositoryContract):
    @pytest.fixture
    def repository_harness(self, tmp_path: Path, drive_sim, isos) -> RepositoryHarness:
        publish(drive_sim, isos, "demo")
        publish(drive_sim, isos, "solo", compute=False)
        repo = make_repo(drive_sim, tmp_path / "repo")
        repo.sync()
        return RepositoryHarness(repository=repo, names=["demo", "solo"], stager=Stager(progress=False))
