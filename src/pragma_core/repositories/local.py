"""The ``local`` repository: a ``vcdb.txt`` catalogue and images already on disk.

Settings (``repository_settings`` in ``site_conf.conf``):
``repository_class = "local"``, ``repository_dir`` (created if missing),
``vcdb_filename`` (default ``vcdb.txt``). Every path in the catalogue is
relative to ``repository_dir`` (or absolute inside it), and every file a
cluster description names is resolved against the description's own
directory -- never the repository root (legacy bug B2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError, RepositoryError
from ..interfaces import Repository
from ..model import ClusterDescription, StagedCluster

if TYPE_CHECKING:
    from ..staging import Stager


class LocalRepository(Repository):
    """Cluster images listed in ``<repository_dir>/<vcdb_filename>``."""

    name = "local"

    def __init__(self, settings: Any, *, site: Any) -> None:
        super().__init__(settings, site=site)
        self.root = Path(settings.repository_dir).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create repository_dir {self.root}: {exc.strerror}") from None
        self._catalogue: dict[str, Path] | None = None

    @property
    def vcdb_path(self) -> Path:
        return self.root / self.settings.vcdb_filename

    def catalogue(self) -> dict[str, Path]:
        """Image name -> absolute path of its cluster XML (read once)."""
        if self._catalogue is None:
            if not self.vcdb_path.is_file():
                raise RepositoryError(f"catalogue not found: {self.vcdb_path}")
            from ..vcdb import read_vcdb

            self._catalogue = read_vcdb(self.vcdb_path, self.root)
        return self._catalogue

    def list(self) -> list[str]:
        return sorted(self.catalogue())

    def describe(self, name: str) -> ClusterDescription:
        path = self.catalogue().get(name)
        if path is None:
            raise NotFoundError(f"virtual image {name!r} does not exist in {self.vcdb_path}")
        if not path.is_file():
            raise RepositoryError(f"cluster description of {name!r} not found: {path}")
        from ..clusterxml import parse_cluster_xml

        return parse_cluster_xml(path, name)

    def stage(self, description: ClusterDescription, stager: Stager) -> StagedCluster:
        return stager.stage(description)
