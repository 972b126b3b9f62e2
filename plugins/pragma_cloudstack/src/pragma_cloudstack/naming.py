"""How the ``cloudstack`` driver names things and finds them again: tags, cluster and VM names, templates.

A cluster ``<vm_prefix><n>`` takes the smallest ``n`` no VM, network or tag
uses; its computes are ``<cluster>-compute-<i>``. Every VM and network made
carries the tags :data:`TAG_CLUSTER` and :data:`TAG_ROLE`, and is found by
their exact values, never by a substring of a name. Names are chosen under a
file lock per CloudStack account (:func:`cluster_lock`), so concurrent boots
on one host never take the same name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from pragma_core import DriverError

if TYPE_CHECKING:
    from pragma_core.pluginkit import SiteConfig

    from .config import CloudStackSettings

TAG_CLUSTER = "pragma-cluster"
TAG_ROLE = "pragma-role"


def template_name(source: str) -> str:
    """The CloudStack template for a disk: the basename of its ``<source file>`` up to the first ``.``."""
    return PurePath(source).name.split(".", 1)[0]


def compute_name(cluster: str, index: int) -> str:
    """The VM name of compute ``index`` of ``cluster``."""
    return f"{cluster}-compute-{index}"


def tag(obj: Mapping[str, Any], key: str) -> str | None:
    """The value of resource tag ``key`` on a CloudStack VM or network, ``None`` when it has none."""
    for item in obj.get("tags") or ():
        if item.get("key") == key:
            return str(item.get("value"))
    return None


def names_of(resources: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """Each resource's name and its ``pragma-cluster`` tag: every text that may hold a cluster name."""
    for resource in resources:
        yield resource.get("name", "")
        yield tag(resource, TAG_CLUSTER) or ""


def free_name(prefix: str, used: Iterable[str]) -> str:
    """The smallest ``<prefix><n>`` (``n`` from 1) that no text of ``used`` names, as a cluster or a compute of one."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)(?:-compute-\d+)?")
    taken = {match.group(1) for text in used if (match := pattern.fullmatch(text))}
    number = 1
    while str(number) in taken:
        number += 1
    return f"{prefix}{number}"


def ordered(vms: list[dict]) -> list[dict]:
    """Frontend first, then computes by their index."""

    def key(vm: dict) -> tuple[int, int, str]:
        if tag(vm, TAG_ROLE) == "frontend":
            return (0, 0, vm.get("name", ""))
        match = re.search(r"-compute-(\d+)$", vm.get("name", ""))
        return (1, int(match.group(1)) if match else 1 << 30, vm.get("name", ""))

    return sorted(vms, key=key)


@contextmanager
def cluster_lock(config: CloudStackSettings, site: SiteConfig) -> Iterator[None]:
    """Hold the lock under which a name is chosen and its network made: one per CloudStack account, in the site's
    temp directory (without one, in ``pragma-<uid>``, this user's private directory in the system's: a lock in
    ``/tmp`` itself could be held by any other user). A lock file that cannot be used (a symbolic link is never
    followed) is one clear error."""
    from filelock import FileLock

    from pragma_core.pluginkit import private_directory

    try:
        directory = site.temp_directory or private_directory(Path(tempfile.gettempdir()) / f"pragma-{os.geteuid()}")
    except OSError as exc:
        raise DriverError(f"cannot take the allocation lock: {exc}") from None
    digest = hashlib.sha256(f"{config.baseurl}\0{config.apikey}".encode()).hexdigest()[:16]
    lock = FileLock(str(Path(directory) / f"pragma-cloudstack-{digest}.lock"), timeout=300)
    try:
        lock.acquire()
    except OSError as exc:
        raise DriverError(f"{lock.lock_file}: cannot take the allocation lock: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()
