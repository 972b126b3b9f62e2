"""``pragma sync repository`` for the clonezilla repository.

One run, under an exclusive lock (``<repository_dir>/.pragma-sync.lock``):

1. list the Drive folder; each sub-folder that passes ``include_images`` /
   ``exclude_images`` (``re.match``, as legacy) is a virtual cluster;
2. per cluster: classify its files (one ``*.xml``; ``*.iso`` naming
   ``frontend``, optionally one naming ``compute``), download those newer
   than the local copy, restore each ISO whose target is missing or older,
   write ``<name>-local.xml`` when its bytes change;
3. rewrite ``vcdb.txt`` atomically, only when it changes, with the clusters
   that succeeded (a cluster that failed this time keeps its previous entry
   if it had one: its old images are untouched; a cluster never synced
   successfully gets none).

A failing cluster is one log line (ERROR) and does not stop the others,
whatever went wrong (an unexpected exception too); a bad ISO is deleted so
the next sync downloads it again. A cluster folder in the repository must be
a real directory: a symbolic link planted at its name is refused, never
followed. Quiet otherwise: INFO lines only for what changed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from attrs import define, field

from pragma_core import PragmaError, RepositoryError
from pragma_core.pluginkit import (
    Deadline,
    UnsafeFileError,
    is_valid_name,
    open_lane,
    parse_cluster_xml,
    read_vcdb,
    safe_join,
    unshared_directory,
    write_vcdb,
)

from .drive import DriveClient, DriveFile
from .isofile import BadImageError, is_iso9660
from .localxml import Role, local_xml_location, render_local_xml, write_if_changed
from .restore import split_iso_name
from .settings import ClonezillaSettings
from .target import Target, cziso_restore, deliver, resolve_target, target_mtime

log = logging.getLogger("pragma_repo_clonezilla.sync")

LOCK_NAME = ".pragma-sync.lock"
_SAFE_FILE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")


@define
class SyncReport:
    """What one sync did: ``changed`` anything on disk; ``failures`` one line per failed cluster."""

    changed: bool = False
    synced: list[str] = field(factory=list)
    failures: dict[str, str] = field(factory=dict)

    def summary(self) -> str:
        total = len(self.synced) + len(self.failures)
        details = "; ".join(f"{name}: {message}" for name, message in self.failures.items())
        return f"{len(self.failures)} of {total} clusters failed to sync: {details}"


@define
class ClusterFiles:
    """The files of one cluster folder, classified."""

    xml: DriveFile
    isos: dict[Role, DriveFile]


def classify(folder: str, files: list[DriveFile]) -> ClusterFiles:
    """Pick the XML and the frontend/compute ISOs by anchored rules (legacy bug B36 used substrings)."""
    xmls = [f for f in files if not f.is_folder and f.name.lower().endswith(".xml") and not f.name.lower().endswith("-local.xml")]
    isos: dict[Role, list[DriveFile]] = {"frontend": [], "compute": []}
    for item in files:
        lowered = item.name.lower()
        if item.is_folder or not lowered.endswith(".iso"):
            continue
        roles = [role for role in ("frontend", "compute") if role in lowered[: -len(".iso")]]
        if len(roles) == 2:
            raise RepositoryError(f"{item.name}: the name says both frontend and compute")
        if roles:
            isos[roles[0]].append(item)  # type: ignore[index]
    if not xmls:
        raise RepositoryError("no cluster description (*.xml) in the Drive folder")
    if len(xmls) > 1:
        raise RepositoryError(f"several cluster descriptions ({', '.join(f.name for f in xmls)}); keep one *.xml")
    if not isos["frontend"]:
        raise RepositoryError("no frontend restore ISO (*frontend*.iso) in the Drive folder")
    chosen: dict[Role, DriveFile] = {}
    for role, found in isos.items():
        if len(found) > 1:
            raise RepositoryError(f"several {role} ISOs ({', '.join(f.name for f in found)}); keep one")
        if found:
            chosen[role] = found[0]  # type: ignore[index]
    for item in (xmls[0], *chosen.values()):
        if not _SAFE_FILE.fullmatch(item.name):
            raise RepositoryError(f"file name {item.name!r} is not safe (letters, digits, '._+-')")
    return ClusterFiles(xml=xmls[0], isos=chosen)


class Syncer:
    """One ``sync`` of the repository at ``root`` from Drive folder ``folder_id``."""

    def __init__(
        self,
        settings: ClonezillaSettings,
        *,
        root: Path,
        vcdb_path: Path,
        folder_id: str,
        client: DriveClient,
        restore: Callable[[Path, Target], None] | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(os.path.abspath(root))
        self.vcdb_path = vcdb_path
        self.folder_id = folder_id
        self.client = client
        self.work_dir = settings.work_dir or self.root / ".pragma-work"
        self._restore = restore or self._restore_default
        #: image path (or ZFS URL) -> the cluster that restores into it in this run (two may not share one)
        self._claimed: dict[str, str] = {}

    def run(self) -> SyncReport:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        try:
            unshared_directory(self.root)  # see _cluster_directory
        except UnsafeFileError as exc:
            raise RepositoryError(f"repository_dir {exc}") from None
        lock_path = self.root / LOCK_NAME
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RepositoryError(f"another sync of {self.root} is running (lock {lock_path}); try again later") from None
        except OSError as exc:  # a symbolic link there is never followed (ELOOP)
            raise RepositoryError(f"{lock_path}: cannot take the sync lock: {exc.strerror or exc}") from None
        try:
            self._check_work_dir()
            return self._run_locked()
        finally:
            lock.release()

    def _check_work_dir(self) -> None:
        """The work directory, made when missing and checked before anything is fetched.

        Restores write their scratch disks and partclone logs there by name, as
        root: whoever else may write the directory could put a link in place of
        one of those names and have root write elsewhere. The default,
        ``<root>/.pragma-work``, must be a real directory (anyone who may write
        the repository directory could plant a link there). A ``work_dir`` the
        site names may be reached through links (its own choice), and is used
        by the real path they lead to. Either must be writable by its owner
        only (:func:`~pragma_core.paths.unshared_directory`); an
        :class:`UnsafeFileError` says why not.
        """
        if self.settings.work_dir is None:
            os.close(open_lane(self.root, self.work_dir.name, create=True))
            unshared_directory(self.work_dir)
            return
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            resolved = self.work_dir.resolve(strict=True)
        except OSError as exc:
            raise RepositoryError(f"work_dir {self.work_dir}: cannot make it: {exc.strerror or exc}") from None
        try:
            self.work_dir = unshared_directory(resolved)
        except UnsafeFileError as exc:
            raise RepositoryError(f"work_dir {exc}") from None

    def _run_locked(self) -> SyncReport:
        report = SyncReport()
        top = self.client.list_folder(self.folder_id, label="repository_url")
        if not top:
            raise RepositoryError("the remote repository (repository_url) is empty")
        old = read_vcdb(self.vcdb_path, self.root, missing_ok=True)
        entries = {name: path for name, path in old.items() if path.exists()}
        for folder in top:
            if not folder.is_folder or not self._wanted(folder.name):
                log.debug("skipping %s", folder.name)
                continue
            try:
                if not is_valid_name(folder.name):
                    raise RepositoryError("the folder name is not a valid image name (letters, digits, '._-+')")
                entry, changed = self.sync_cluster(folder)
            except Exception as exc:  # noqa: BLE001 - one cluster's failure, whatever it is, never stops the others
                message = _one_line(exc)
                report.failures[folder.name] = message
                log.error("sync %s: %s", folder.name, message)
                if not isinstance(exc, (PragmaError, OSError)):
                    log.debug("sync %s: where the unexpected error arose", folder.name, exc_info=exc)
                continue
            report.synced.append(folder.name)
            report.changed |= changed
            entries[folder.name] = entry
        if entries != old or not self.vcdb_path.exists():
            write_vcdb(self.vcdb_path, entries, self.root)
            log.info("updated %s (%d images)", self.vcdb_path, len(entries))
            report.changed = True
        return report

    def _wanted(self, name: str) -> bool:
        include, exclude = self.settings.include_images, self.settings.exclude_images
        if include is not None and not include.match(name):
            return False
        return not (exclude is not None and exclude.match(name))

    def sync_cluster(self, folder: DriveFile) -> tuple[Path, bool]:
        """Sync one cluster folder; its ``-local.xml`` path and whether anything changed."""
        files = classify(folder.name, self.client.list_folder(folder.id, label=folder.name))
        cluster_dir = self._cluster_directory(folder.name)
        changed = False
        for item in (files.xml, *files.isos.values()):
            changed |= self._fetch(item, cluster_dir / item.name, folder.name)

        targets: dict[Role, Target] = {}
        for role, iso in files.isos.items():
            iso_path = cluster_dir / iso.name
            imagename, _ = split_iso_name(iso.name)
            target = resolve_target(
                self.settings.local_image_url, imagename=imagename, repository_dir=self.root, cluster=folder.name
            )
            owner = self._claimed.setdefault(str(target.path or target.url), folder.name)
            if owner != folder.name:
                raise RepositoryError(f"{target.url} is already the image of {owner}: put $cluster in local_image_url")
            targets[role] = target
            current = target_mtime(target, ssh=self.settings.ssh, deadline=Deadline(self.settings.timeout))
            if current is not None and current >= iso_path.stat().st_mtime:
                continue
            try:
                if not is_iso9660(iso_path):
                    raise BadImageError(f"{iso.name}: not an ISO 9660 image")
                self._restore(iso_path, target)
            except BadImageError:
                iso_path.unlink(missing_ok=True)  # the next sync downloads it again
                raise
            log.info("restored %s to %s", iso.name, target.url)
            changed = True

        xml_path = cluster_dir / files.xml.name
        local = local_xml_location(xml_path, targets, folder.name)
        data = render_local_xml(xml_path, targets, local.parent)
        if write_if_changed(local, data):
            log.info("wrote %s", local)
            changed = True
        if all(t.kind == "file" for t in targets.values()):
            try:
                parse_cluster_xml(local, folder.name)  # what boot will read must parse
            except PragmaError:
                local.unlink(missing_ok=True)
                raise
        return local, changed

    def _cluster_directory(self, name: str) -> Path:
        """``root/name``, made when missing; an :class:`UnsafeFileError` if it is a symbolic link, not a
        directory, or a directory others may write.

        Everything of the cluster is written there by name, as root: a link
        planted at that name would send the downloads and restores elsewhere.
        The repository directory and the folder may be written by their owner
        only (checked for the repository when the sync starts), so nobody else
        can put a link in place of either once it is checked.
        """
        path = safe_join(self.root, name, what="cluster folder")
        os.close(open_lane(self.root, name, create=True))
        unshared_directory(path)
        return path

    def _fetch(self, item: DriveFile, local: Path, cluster: str) -> bool:
        try:
            mtime: float | None = local.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime is not None and (item.modified is None or item.modified <= mtime):
            return False
        self.client.download(item, local)
        log.info("downloaded %s/%s", cluster, item.name)
        return True

    def _restore_default(self, iso: Path, target: Target) -> None:
        deadline = Deadline(self.settings.restore_timeout)
        if self.settings.restore_with == "cziso":
            assert self.settings.cziso is not None
            imagename, _ = split_iso_name(iso.name)
            cziso_restore(
                self.settings.cziso,
                iso,
                target,
                size_setting=self.settings.size,
                log_file=iso.parent / f"{imagename}-restore.log",
                max_disk_size=self.settings.max_disk_size,
                deadline=deadline,
            )
            return
        deliver(
            iso,
            target,
            size_setting=self.settings.size,
            work_dir=self.work_dir,
            ssh=self.settings.ssh,
            max_disk_size=self.settings.max_disk_size,
            deadline=deadline,
        )


def _one_line(exc: BaseException) -> str:
    """One line about a cluster's failure; an unexpected exception is named by its type."""
    if isinstance(exc, OSError) and not isinstance(exc, PragmaError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, PragmaError):
        return first or type(exc).__name__
    return f"unexpected error: {type(exc).__name__}" + (f": {first}" if first else "")
