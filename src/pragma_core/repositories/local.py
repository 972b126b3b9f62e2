"""The ``local`` repository: a ``vcdb.txt`` catalogue and images already on disk.

Settings (``repository_settings`` in ``site_conf.conf``):
``repository_class = "local"``, ``repository_dir`` (created if missing),
``vcdb_filename`` (default ``vcdb.txt``). Every path in the catalogue is
relative to ``repository_dir`` (or absolute inside it), and every file a
cluster description names is resolved against the description's own
directory -- never the repository root (legacy bug B2).

The catalogue and the descriptions are read only when they are regular files
really inside ``repository_dir`` (:func:`pragma_core.paths.open_inside`).
Staging is told which files of the repository it may never write or delete
(:meth:`LocalRepository.reserved_paths`): the catalogue, every cluster
description, and the images and parts of clusters sharing a directory with
the one being staged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError, PragmaError, RepositoryError
from ..interfaces import Repository
from ..model import ClusterDescription, StagedCluster
from ..paths import is_inside

if TYPE_CHECKING:
    from ..staging import Stager


log = logging.getLogger("pragma_core.repositories.local")


class LocalRepository(Repository[Any]):
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
            from ..vcdb import read_vcdb

            try:
                self._catalogue = read_vcdb(self.vcdb_path, self.root)
            except RepositoryError:
                if not os.path.lexists(self.vcdb_path):
                    raise RepositoryError(f"catalogue not found: {self.vcdb_path}") from None
                raise
        return self._catalogue

    def list(self) -> list[str]:
        return sorted(self.catalogue())

    def describe(self, name: str) -> ClusterDescription:
        path = self.catalogue().get(name)
        if path is None:
            raise NotFoundError(f"virtual image {name!r} does not exist in {self.vcdb_path}")
        if not os.path.lexists(path):
            raise RepositoryError(f"cluster description of {name!r} not found: {path}")
        from ..clusterxml import parse_cluster_xml

        return parse_cluster_xml(path, name, root=self.root)

    def stage(self, description: ClusterDescription, stager: Stager) -> StagedCluster:
        return stager.stage(description, reserved=self.reserved_paths(description))

    def reserved_paths(self, description: ClusterDescription) -> dict[Path, str]:
        """Files of the repository that staging ``description`` may never write or delete, and what each is.

        The catalogue and every cluster description it lists; and, for every
        other cluster whose directory contains, or lies in, the directory of
        ``description`` (clusters sharing a directory), its images, their
        stamps and locks, and its parts. A description that cannot be read
        reserves only itself (staging it later reports the problem).
        """
        reserved: dict[Path, str] = {self.vcdb_path: "the image catalogue"}
        mine = os.path.realpath(description.directory)
        for name, xml in self.catalogue().items():
            reserved.setdefault(xml, f"the cluster description of {name}")
            if name == description.name or xml == description.path:
                continue
            theirs = os.path.realpath(xml.parent)
            if not (theirs == mine or is_inside(theirs, mine) or is_inside(mine, theirs)):
                continue
            for path, what in self._files_of(name, xml).items():
                reserved.setdefault(path, what)
        return reserved

    def _files_of(self, name: str, xml: Path) -> dict[Path, str]:
        """The images (with stamp and lock) and parts cluster ``name`` names, best effort."""
        from ..clusterxml import parse_cluster_xml
        from ..staging import bookkeeping_paths, sidecar_paths

        try:
            other = parse_cluster_xml(xml, name, root=self.root)
        except PragmaError as exc:
            log.debug("%s: not reserving its files: %s", xml, exc)
            return {}
        files: dict[Path, str] = {}
        for template in (other.frontend, other.compute_template):
            disk = template.disk
            image = other.directory / disk.source
            what = f"image {disk.source} of cluster {name}"
            stamp, lock = bookkeeping_paths(image)
            files.update({image: what, stamp: f"the stamp of {what}", lock: f"the lock of {what}"})
            for path in sidecar_paths(image):
                files[path] = f"the checksum file of {what}"
            for part in disk.parts:
                files[other.directory / part.name] = f"part {part.name} of cluster {name}"
                for path in sidecar_paths(other.directory / part.name):
                    files[path] = f"the checksum file of part {part.name} of cluster {name}"
        return files
