"""The ``clonezilla`` repository: Clonezilla restore ISOs in a Google Drive folder, restored locally.

Site configuration (``site_conf.conf``)::

    repository_settings = {
        "repository_class": "clonezilla",
        "repository_dir": "/state/partition1/vm-images",
        "repository_url": "https://drive.google.com/drive/folders/<id>",
        "local_image_url": "file://$repository_dir/$cluster/$imagename.raw",
        "api_key": "...",               # optional: Drive API v3 instead of the public web pages
    }

``pragma sync repository`` (cron) downloads and restores; ``pragma boot``
then reads ``vcdb.txt`` and the ``-local.xml`` files and finds the images in
place. Every setting is documented in the plugin's README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pragma_core import (
    ClusterDescription,
    NotFoundError,
    Repository,
    RepositoryError,
    StagedCluster,
)
from pragma_core.pluginkit import parse_cluster_xml, read_vcdb

from .settings import ClonezillaSettings, folder_id

if TYPE_CHECKING:
    from pragma_core.pluginkit import RepositorySettings, SiteConfig, Stager

    from .drive import DriveClient
    from .sync import SyncReport


class ClonezillaRepository(Repository):
    """Cluster images synced from a Google Drive folder of Clonezilla restore ISOs."""

    name = "clonezilla"
    config_class = ClonezillaSettings

    def __init__(self, settings: RepositorySettings, *, site: SiteConfig | None = None, client: DriveClient | None = None) -> None:
        super().__init__(settings, site=site)  # type: ignore[arg-type]
        self.folder_id = folder_id(settings, getattr(site, "source", None))
        self.root = settings.repository_dir
        self._client = client

    def _catalogue(self) -> dict[str, Any]:
        return read_vcdb(self.settings.vcdb_path, self.root, missing_ok=True)

    def list(self) -> list[str]:
        """The images of the last successful syncs (``vcdb.txt``), sorted; none before the first sync."""
        return sorted(self._catalogue())

    def describe(self, name: str) -> ClusterDescription:
        """The parsed ``<cluster>-local.xml`` of image ``name``."""
        catalogue = self._catalogue()
        if name not in catalogue:
            raise NotFoundError(f"Virtual image {name} does not exist (run 'pragma sync repository' to fetch new images)")
        return parse_cluster_xml(catalogue[name], name, root=self.root)

    def stage(self, description: ClusterDescription, stager: Stager) -> StagedCluster:
        """The images were restored by sync: the stager finds them in place."""
        return stager.stage(description)

    @property
    def client(self) -> DriveClient:
        if self._client is None:
            from .drive import DriveClient

            self._client = DriveClient(self.config)
        return self._client

    def sync_report(self) -> SyncReport:
        """Run one sync and return its report (failed clusters included, nothing raised for them)."""
        from .sync import Syncer

        syncer = Syncer(
            self.config,
            root=self.root,
            vcdb_path=self.settings.vcdb_path,
            folder_id=self.folder_id,
            client=self.client,
        )
        return syncer.run()

    def sync(self) -> bool:
        """Sync everything; whether anything changed.

        Raises :class:`RepositoryError` summarising the failed clusters after
        every other cluster was synced and ``vcdb.txt`` written.
        """
        report = self.sync_report()
        if report.failures:
            raise RepositoryError(report.summary())
        return report.changed
