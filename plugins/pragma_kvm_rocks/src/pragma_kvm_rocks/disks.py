"""Node disks: qcow2 overlays (or full sparse copies) with each node's vc-out inside.

For each base image the injection method is chosen once, before any file is
written, so an image pragma cannot edit fails cleanly:

* ``e2fs`` -- a raw base whose root filesystem is ext2/3/4 (first ext
  partition, or the whole disk): :mod:`pragma_kvm_rocks.e2fs`, no appliance;
* ``guestfish`` -- anything else, when libguestfs is installed: one appliance
  for all such disks of the cluster (:mod:`pragma_kvm_rocks.guestfish`);
* ``none`` -- ``vcout_injection = "none"``: disks are made, nothing is written
  into them.

Overlays are written by :mod:`pragma_kvm_rocks.qcow2` in this process (no
``qemu-img`` per node); copies use ``copy_file_range`` over data extents only.
Work runs on ``max_parallel`` threads. A caller may pass ``ready``: called
for each disk, in the thread that made it, as soon as it is complete (the
deploy defines and launches that node there while other disks are still
being written); with guestfish injection, once every disk is injected.

A base image comes from a repository: before anything opens it (e2fsprogs,
libguestfs, libvirt through the overlay), :func:`pragma_core.imagecheck.check_image`
checks it and its whole qcow2 backing chain under the cluster directory
(:attr:`DiskJob.root`): regular files inside it, plain relative backing names,
raw or qcow2 only. A refused base fails the build before any disk is written.
A full copy of a qcow2 base that has a backing file is refused too: the copy
would resolve the relative backing name in the disk directory instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from attrs import frozen

from pragma_core import DriverError, StagingError
from pragma_core.pluginkit import CheckedImage, check_image, process_alive, run_parallel

from . import e2fs, guestfish, qcow2
from .sparse import sparse_copy

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class DiskJob:
    """One node disk to make: from ``base`` (of ``base_format``) into ``target``.

    ``root`` is the directory the base image and its backing chain must stay
    in: the cluster directory (default: the base image's own directory).
    """

    node: str
    base: Path
    base_format: str
    target: Path
    vcout: bytes | None = None
    root: Path | None = None
    #: The backing file name an overlay records: where the base is on the node's host (default ``base``).
    backing_name: str | None = None


#: The largest virtual size of a base image: a qcow2 header can claim far more (each node's overlay
#: table grows with it, in memory and on disk), a real cluster image is far less.
MAX_VIRTUAL_SIZE = 64 << 40


def check_base(base: Path, fmt: str, *, root: Path | None = None, mode: str = "overlay") -> CheckedImage:
    """Check a base image (and its backing chain) before anything opens it; a one-line :class:`DriverError`."""
    try:
        checked = check_image(base, fmt, root=root if root is not None else base.parent)
    except StagingError as exc:
        raise DriverError(f"refusing base image: {exc}") from None
    if mode == "copy" and checked.backing_file is not None:
        raise DriverError(
            f"refusing base image: {base} has a backing file ({checked.chain[0].backing_name}); "
            "disk_mode = copy needs a base image without one (use disk_mode = overlay)"
        )
    if checked.virtual_size > MAX_VIRTUAL_SIZE:
        raise DriverError(f"refusing base image: {base} claims a virtual size of {checked.virtual_size} bytes"
                          f" (at most {MAX_VIRTUAL_SIZE >> 40} TiB): each node's overlay would need a table"
                          " that large")
    return checked


def target_format(mode: str, base_format: str) -> str:
    """The format of a node disk: qcow2 for overlays, the base's own for copies."""
    return "qcow2" if mode == "overlay" else base_format


_SCRATCH = re.compile(r"pragma-disks-([0-9]{1,10})-[A-Za-z0-9_]+")


class _BasePlan:
    """How the disks of one base image get their vc-out."""

    def __init__(self, checked: CheckedImage, injection: str, any_vcout: bool) -> None:
        base, fmt = checked.path, checked.format
        self.base = base
        self.format = fmt
        self.virtual_size = checked.virtual_size
        self.method = "none"
        self.location: e2fs.ExtLocation | None = None
        self.plan: e2fs.GuestPlan | None = None
        self.delta: e2fs.OverlayDelta | None = None
        if injection == "none" or not any_vcout:
            return
        reason = None
        if injection in ("auto", "e2fs"):
            if fmt != "raw":
                reason = f"{base} is {fmt}, the e2fs fast path needs a raw base image"
            else:
                try:
                    self.location = e2fs.find_root_filesystem(base)
                    self.plan = e2fs.plan_edits(base, self.location)
                    self.method = "e2fs"
                    return
                except e2fs.InjectionUnsupported as exc:
                    reason = str(exc)
        if injection == "e2fs":
            raise DriverError(f"cannot inject vc-out with e2fsprogs: {reason}")
        if not guestfish.available():
            why = f" ({reason})" if reason else ""
            raise DriverError(
                f"cannot inject vc-out into disks of {base}{why}: install libguestfs-tools,"
                " or use a raw image with an ext2/3/4 root partition"
            )
        self.method = "guestfish"


class DiskBuilder:
    """Makes node disks: ``mode`` is ``overlay`` or ``copy``; ``injection`` auto/e2fs/guestfish/none."""

    def __init__(self, *, mode: str, injection: str = "auto", max_parallel: int = 4, guestfish: bool = True,
                 templates: Path | None = None, scratch: Path | None = None) -> None:
        self.mode = mode
        self.injection = injection
        self.max_parallel = max_parallel
        #: Whether guestfish may edit the disks here (not when overlays name a base only their host has).
        self.guestfish = guestfish
        #: Where the e2fs templates of base images are kept between boots (:class:`~.e2fs.TemplateCache`).
        self.templates = templates
        #: Where a build's scratch directory goes (``None``: the system's temporary directory).
        self.scratch = scratch

    def build(self, jobs: Sequence[DiskJob], ready: Callable[[DiskJob], object] | None = None) -> None:
        """Make every disk, calling ``ready(job)`` for each once it is complete (see the module); on any
        failure, of a disk or of ``ready``, remove the disks made and re-raise."""
        checked = {
            job.base: check_base(job.base, job.base_format, root=job.root, mode=self.mode) for job in jobs
        }
        plans: dict[Path, _BasePlan] = {}
        for job in jobs:
            if job.base not in plans:
                any_vcout = any(j.vcout is not None for j in jobs if j.base == job.base)
                plans[job.base] = _BasePlan(checked[job.base], self.injection, any_vcout)
                if plans[job.base].method == "guestfish" and not self.guestfish:
                    raise DriverError(
                        f"cannot inject vc-out into disks of {job.base}: with disk_storage = pool only the e2fs"
                        " path works (a raw base image with an ext2/3/4 root); or set vcout_injection = none"
                    )
        made: list[Path] = []
        try:
            with self._scratch_directory() as tmp:
                if self.mode == "overlay":
                    for plan in plans.values():
                        if plan.method == "e2fs":
                            assert plan.location is not None and plan.plan is not None
                            plan.delta = e2fs.OverlayDelta(plan.base, plan.location, plan.plan, Path(tmp),
                                                          cache=self.templates)
                late = [
                    guestfish.GuestDisk(
                        path=job.target, format=target_format(self.mode, job.base_format), vcout=job.vcout
                    )
                    for job in jobs
                    if job.vcout is not None and plans[job.base].method == "guestfish"
                ]
                streamed = ready if not late else None  # guestfish edits every disk after they are all made
                what = "node disks" if ready is None else "nodes"
                run_parallel(
                    lambda job: self._one(job, plans[job.base], made, streamed),
                    jobs,
                    workers=self.max_parallel,
                    label=lambda job: job.node,
                    what=what,
                )
                guestfish.inject(late)
                if ready is not None and late:
                    run_parallel(ready, jobs, workers=self.max_parallel, label=lambda job: job.node, what=what)
        except BaseException:
            for path in made:
                path.unlink(missing_ok=True)
            raise

    def _scratch_directory(self) -> tempfile.TemporaryDirectory[str]:
        """This build's scratch directory, ``pragma-disks-<pid>-*``; those of builds whose process is gone
        (killed before it could remove its own) are removed first."""
        if self.scratch is None:
            return tempfile.TemporaryDirectory(prefix="pragma-disks-")
        self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in os.scandir(self.scratch):
            match = _SCRATCH.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and not process_alive(int(match.group(1))):
                log.info("removing %s, left by a killed run", entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)
        return tempfile.TemporaryDirectory(prefix=f"pragma-disks-{os.getpid()}-", dir=self.scratch)

    def _one(self, job: DiskJob, plan: _BasePlan, made: list[Path], ready: Callable[[DiskJob], object] | None) -> None:
        job.target.parent.mkdir(parents=True, exist_ok=True)
        if job.target.exists():
            raise DriverError(f"node disk {job.target} already exists")
        if self.mode == "overlay":
            data = None
            if plan.method == "e2fs" and job.vcout is not None:
                assert plan.delta is not None
                data = plan.delta.clusters(job.node, job.vcout)
            made.append(job.target)
            qcow2.write_overlay(
                job.target,
                backing_file=Path(job.backing_name) if job.backing_name else job.base,
                backing_format=job.base_format,
                virtual_size=plan.virtual_size,
                data=data,
            )
        else:
            made.append(job.target)
            sparse_copy(job.base, job.target)
            if plan.method == "e2fs" and job.vcout is not None:
                assert plan.location is not None and plan.plan is not None
                e2fs.inject_raw(job.target, plan.location, plan.plan, job.vcout)
        log.debug("disk of %s ready: %s", job.node, job.target)
        if ready is not None:
            ready(job)
