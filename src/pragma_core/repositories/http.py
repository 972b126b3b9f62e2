"""The ``http`` repository: a ``vcdb.txt`` catalogue and images on a web server.

Settings (``repository_settings`` in ``site_conf.conf``)::

    repository_settings = {
        "repository_class": "http",
        "repository_dir": "/state/partition1/vm-images",   # the local cache
        "repository_url": "https://images.example.org/pragma",
        # optional:
        "timeout": 30,      # seconds to connect, and between two reads
        "retries": 5,       # extra attempts after a connection error, timeout or HTTP 5xx
        "backoff": 0.5,     # seconds before the first retry, doubled each time (at most 30)
        "deadline": 600,    # seconds a catalogue or cluster XML fetch may take in all
        "image_deadline": 21600,  # seconds staging a cluster's images may take in all (every part, resumes included)
    }

The remote side mirrors the local layout: the catalogue is
``<repository_url>/<vcdb_filename>`` and a catalogue path ``a/b.xml`` is
``<repository_url>/a/b.xml`` remotely and ``<repository_dir>/a/b.xml``
locally; a cluster's parts and images are named relative to its XML, on both
sides (the legacy tool fetched the XML by its base name and joined the
absolute *local* path onto the URL -- bugs B1 and B3).

What is fetched, and when:

* the catalogue, when it is missing and then on the first use in each run,
  with a conditional request (``If-None-Match`` / ``If-Modified-Since``; the
  validators are kept in ``.<vcdb_filename>.http.json``), so an unchanged
  catalogue costs one ``304``. When the server cannot be reached and a copy
  exists, the copy is used (with a warning);
* a cluster's XML, the same way, when the cluster is described;
* only the images of the cluster being staged. Parts are **streamed** from
  the server into the staging engine (download, join, decompress and sparse
  write in one pass); they are not stored -- the staged image is the cache,
  and a second boot finds it ready and fetches nothing. A dropped connection
  is resumed with ``Range`` + ``If-Range``; a part whose server cannot resume
  safely (no ``Accept-Ranges: bytes`` or no validator) is first downloaded
  to a hidden ``.part`` file, checked, streamed from there and removed. Parts
  already present in the cluster directory are read from disk.

Every transfer is bounded (:mod:`pragma_core.http`): in time by its
deadline, however slowly the server sends; the catalogue and a cluster's XML
in size by the same limits as local ones
(:data:`~pragma_core.vcdb.MAX_CATALOGUE_BYTES`,
:data:`~pragma_core.clusterxml.MAX_DESCRIPTION_BYTES`: a larger
``Content-Length`` is refused before the body is read); a part in size by
its declared ``size``. A spool left by a crashed run is removed.

Every fetched file is written under a temporary name and renamed into place
once complete and checked (catalogue and XML are parsed before they replace
the old copy), so concurrent runs never read half a file; the staging
engine's per-image lock makes concurrent boots download an image once.

Errors are one line naming the URL (without query string).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

from attrs import frozen

from ..errors import ConfigError, FormatError, NotFoundError, RepositoryError
from ..model import ClusterDescription, Part, StagedCluster
from ..paths import open_inside, safe_join
from ..settings import setting, to_non_negative_int, to_positive_seconds, to_seconds
from .local import LocalRepository

if TYPE_CHECKING:
    from ..http import Auth, Deadline, HttpClient
    from ..staging import Stager

log = logging.getLogger(__name__)


def _setting_error(site: Any, key: str, message: str) -> ConfigError:
    source = getattr(site, "source", None)
    if source is not None and hasattr(source, "error"):
        return source.error("repository_settings", f"{key}: {message}")
    return ConfigError(message, key=f"repository_settings {key}")


@frozen(kw_only=True)
class HttpSettings:
    """The ``http`` repository's own keys of ``repository_settings``."""

    timeout: float = setting(to_positive_seconds, default=30.0, help="seconds to connect, and between two reads")
    retries: int = setting(to_non_negative_int, default=5, help="extra attempts after an error or HTTP 5xx")
    backoff: float = setting(to_seconds, default=0.5, help="seconds before the first retry, doubled each time")
    deadline: float = setting(to_positive_seconds, default=600.0, help="seconds a catalogue or description transfer may take in all")
    image_deadline: float = setting(to_positive_seconds, default=21600.0, help="seconds staging a cluster's images may take in all")


class HttpRepository(LocalRepository):
    """Cluster images listed in ``<repository_url>/<vcdb_filename>``, cached in ``repository_dir``."""

    name = "http"
    config_class = HttpSettings

    def __init__(self, settings: Any, *, site: Any) -> None:
        super().__init__(settings, site=site)
        url = settings.repository_url
        if not url:
            raise _setting_error(site, "repository_url", "missing (the http repository needs http:// or https://)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _setting_error(site, "repository_url", f"must be an http:// or https:// URL, not {url!r}")
        if parts.query or parts.fragment:
            raise _setting_error(site, "repository_url", "must not have a query string or fragment")
        self.base_url = url.rstrip("/")
        self.timeout = self.config.timeout
        self.retries = self.config.retries
        self.backoff = self.config.backoff
        self.deadline = self.config.deadline
        self.image_deadline = self.config.image_deadline
        self._client: HttpClient | None = None
        self._fetched_catalogue = False

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> HttpClient:
        """The HTTP client (made on first use: ``requests`` is imported then)."""
        if self._client is None:
            from ..http import HttpClient

            self._client = HttpClient(
                auth=self.auth(), timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                deadline=self.deadline, image_deadline=self.image_deadline,
            )
        return self._client

    def auth(self) -> Auth | None:
        """How every request is authenticated (applied afresh to each attempt); the plain ``http`` repository does not."""
        return None

    def url_for(self, local: Path) -> str:
        """The remote URL of a file of the local cache: the same path under ``repository_url``.

        Raises :class:`RepositoryError` for a path outside ``repository_dir``
        (callers resolve names with :func:`~pragma_core.paths.safe_join`
        first; this is the last line of defence).
        """
        relative = os.path.relpath(os.path.abspath(local), self.root)
        segments = relative.split(os.sep)
        if os.path.isabs(relative) or not relative or any(s in ("", ".", "..") for s in segments):
            raise RepositoryError(f"{local}: not inside repository_dir {self.root}; refusing to fetch it")
        return self.base_url + "/" + "/".join(quote(s, safe="") for s in segments)

    # ------------------------------------------------------------------ catalogue

    def catalogue(self) -> dict[str, Path]:
        if not self._fetched_catalogue:
            self.refresh_catalogue()
            self._fetched_catalogue = True
        return super().catalogue()

    def refresh_catalogue(self) -> bool:
        """Fetch the catalogue when missing or changed on the server; whether it changed."""
        from ..vcdb import MAX_CATALOGUE_BYTES, read_vcdb

        dest = self.vcdb_path

        def validate(tmp: Path) -> None:
            try:
                read_vcdb(tmp, self.root)
            except FormatError as exc:
                raise FormatError(_retarget(exc, tmp, f"{dest} (from {self._plain(self.url_for(dest))})")) from None

        changed = self._fetch(self.url_for(dest), dest, validate, MAX_CATALOGUE_BYTES, "an image catalogue")
        if changed and hasattr(self, "_catalogue"):
            self._catalogue = None  # LocalRepository's cache
        return changed

    def _fetch(self, url: str, dest: Path, validate: Any, max_bytes: int, what: str) -> bool:
        """Conditional fetch of at most ``max_bytes`` (``what`` the file is); with a local copy, an unreachable server only warns."""
        from ..download import redact_url

        exists = dest.is_file()
        try:
            return self.client.fetch_if_newer(
                url, dest, validate=validate, retries=min(self.retries, 1) if exists else None,
                max_bytes=max_bytes, cap_name=f"the {max_bytes}-byte limit of {what}",
            )
        except RepositoryError as exc:
            if exists and _unreachable(exc):
                log.warning("%s; using the local copy %s", exc, dest)
                return False
            raise
        finally:
            log.debug("checked %s", redact_url(url))

    @staticmethod
    def _plain(url: str) -> str:
        from ..download import redact_url

        return redact_url(url)

    # ------------------------------------------------------------------ descriptions

    def describe(self, name: str) -> ClusterDescription:
        path = self.catalogue().get(name)
        if path is None:
            raise NotFoundError(f"virtual image {name!r} does not exist in {self.vcdb_path}")
        self._fetch_description(name, path)
        return super().describe(name)

    def _fetch_description(self, name: str, path: Path) -> bool:
        from ..clusterxml import MAX_DESCRIPTION_BYTES, parse_cluster_xml

        url = self.url_for(path)

        def validate(tmp: Path) -> None:
            try:
                parse_cluster_xml(tmp, name)
            except FormatError as exc:
                raise FormatError(_retarget(exc, tmp, f"{path} (from {self._plain(url)})")) from None

        return self._fetch(url, path, validate, MAX_DESCRIPTION_BYTES, "a cluster description")

    def sync(self) -> bool:
        """Refresh the catalogue and every cluster description already cached; whether any changed."""
        self._fetched_catalogue = False
        changed = self.refresh_catalogue()
        self._fetched_catalogue = True
        for name, path in self.catalogue().items():
            if path.is_file():
                changed = self._fetch_description(name, path) or changed
        return changed

    # ------------------------------------------------------------------ images

    def stage(self, description: ClusterDescription, stager: Stager) -> StagedCluster:
        """Stream the images the cluster needs from the server into ``stager`` (once)."""
        from ..download import RemoteChangedError

        from ..http import Deadline

        reserved = self.reserved_paths(description)
        if self._all_local(description):
            return stager.stage(description, reserved=reserved)
        # one deadline over every part of every image, retry included: a server finishing each part just
        # in time must not hold the command (and the image lock) for parts x image_deadline
        deadline = Deadline(self.image_deadline)
        for attempt in (1, 2):
            try:
                return stager.stage(description, opener=self.part_opener(description, deadline=deadline),
                                    reserved=reserved)
            except RemoteChangedError as exc:
                if attempt == 2:
                    raise
                log.warning("%s; staging again", exc)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _all_local(description: ClusterDescription) -> bool:
        for template in (description.frontend, description.compute_template):
            disk = template.disk
            names = [p.name for p in disk.parts] or [disk.source]
            for name in names:
                try:
                    if not safe_join(description.directory, name, what="part").is_file():
                        return False
                except FormatError:
                    return False  # the stager reports it
        return True

    def part_opener(self, description: ClusterDescription, *, deadline: Deadline | None = None) -> Any:
        """A :data:`~pragma_core.staging.PartOpener` reading the cluster's parts from the server
        (all of them within ``deadline``; default: each within ``image_deadline``)."""

        from ..download import discard_spool

        @contextlib.contextmanager
        def open_part(part: Part) -> Iterator[BinaryIO]:
            local = safe_join(description.directory, part.name, what="part", source=description.path)
            if local.is_file():
                with open_inside(description.directory, local) as handle:
                    yield handle
                return
            url = self.url_for(local)
            spool = local.with_name(f".{local.name}.download")
            stream = self.client.open_stream(url, size=part.size, checked_elsewhere=part.checksum is not None,
                                             deadline=deadline)
            if stream.resumable:
                # the stager holds the image lock: a spool of this part is a crashed run's leftover
                if discard_spool(spool):
                    log.info("removed the stale spool of %s", local)
                try:
                    yield stream  # type: ignore[misc]
                finally:
                    stream.close()
                return
            stream.close()
            log.info("%s: the server cannot resume this file; downloading it first", self._plain(url))
            self.client.download(url, spool, size=part.size, checksum=part.checksum, label=local.name,
                                 deadline=deadline)
            try:
                with open(spool, "rb") as handle:
                    yield handle
            finally:
                # the stager holds the image lock: no one else uses this spool or its lock
                with contextlib.suppress(FileNotFoundError):
                    spool.unlink()
                discard_spool(spool)

        return open_part


def _unreachable(exc: RepositoryError) -> bool:
    from ..download import RetriesExhaustedError

    return isinstance(exc, RetriesExhaustedError)


def _retarget(exc: FormatError, tmp: Path, where: str) -> str:
    """The message of ``exc`` about the temporary file ``tmp``, naming ``where`` instead."""
    text = str(exc)
    return text.replace(str(tmp), where)
