"""Staging across processes: a killed run, concurrent runs, a dead lock holder, a full disk."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pragma_core.model import ClusterDescription, DiskImage, NodeTemplate, Part
from pragma_core.staging import Stager

MIB = 1 << 20

WORKER = r"""
import contextlib, json, os, sys, time
from pathlib import Path
from pragma_core import staging
from pragma_core.errors import StagingError
from pragma_core.model import ClusterDescription, DiskImage, NodeTemplate, Part

directory, processor, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
staging.INPUT_CHUNK = int(os.environ.get("CHUNK", staging.INPUT_CHUNK))
delay = float(os.environ.get("DELAY", "0"))
marker = os.environ.get("MARKER")
if os.environ.get("FSIZE"):
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = int(os.environ["FSIZE"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

class Slow:
    def __init__(self, f):
        self.f = f
    def read(self, n):
        chunk = self.f.read(n)
        if marker:
            Path(marker).touch()
        time.sleep(delay)
        return chunk

@contextlib.contextmanager
def opener(part):
    with open(directory / part.name, "rb") as f:
        yield Slow(f)

disk = DiskImage(source="img.raw", processor=processor, parts=[Part(name=n) for n in names])
description = ClusterDescription(name="demo", path=directory / "demo.xml", directory=directory,
                                 frontend=NodeTemplate(role="frontend", domain_xml="<domain/>", disk=disk))
stager = staging.Stager(progress=False)
try:
    stager.stage_image(description, disk, opener=opener if (delay or marker) else None)
except StagingError as exc:
    print(exc)
    sys.exit(3)
print(json.dumps({"reused": stager.reports[-1].reused}))
"""

LOCK_HOLDER = r"""
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until killed (or the test's end of the pipe closes)
"""


@pytest.fixture
def cluster(tmp_path):
    """A cluster directory with a 4 MiB image as 2 gzip parts, and the worker script."""
    directory = tmp_path / "cluster"
    directory.mkdir()
    rng = random.Random(7)
    data = rng.randbytes(2 * MIB) + bytes(MIB) + rng.randbytes(MIB)
    blob = gzip.compress(data, 1)
    names = ["img.gz.aa", "img.gz.ab"]
    (directory / names[0]).write_bytes(blob[: len(blob) // 2])
    (directory / names[1]).write_bytes(blob[len(blob) // 2 :])
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    disk = DiskImage(
        source="img.raw", processor="splited_gzip", parts=[Part(name=n) for n in names]
    )
    description = ClusterDescription(
        name="demo",
        path=directory / "demo.xml",
        directory=directory,
        frontend=NodeTemplate(role="frontend", domain_xml="<domain/>", disk=disk),
    )
    return directory, worker, names, data, disk, description


def start(
    worker: Path, directory: Path, names: list[str], **env: str
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(worker), str(directory), "splited_gzip", *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def temps(directory: Path) -> list[str]:
    return [
        p.name
        for p in directory.iterdir()
        if ".staging-" in p.name or ".tmp-" in p.name
    ]


def test_a_killed_staging_leaves_nothing_taken_as_ready_and_the_next_run_cleans_up(
    cluster, tmp_path
):
    directory, worker, names, data, disk, description = cluster
    marker = tmp_path / "started"
    proc = start(
        worker, directory, names, DELAY="0.05", CHUNK="16384", MARKER=str(marker)
    )
    try:
        wait_for(marker)
        time.sleep(0.2)
        # mid-way: the temporary file exists and has data
        assert temps(directory), "the worker should be writing its temporary file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (directory / "img.raw").exists()
    assert not (directory / ".img.raw.ready").exists()
    stager = Stager(progress=False)
    assert not stager.is_ready(description, disk)
    stager.stage_image(description, disk)
    assert (directory / "img.raw").read_bytes() == data
    assert temps(directory) == [], "the killed run's temporary file is removed"


def test_concurrent_stagings_stage_once_and_the_second_reuses(cluster, tmp_path):
    directory, worker, names, data, _disk, _description = cluster
    marker = tmp_path / "first-started"
    first = start(
        worker, directory, names, DELAY="0.02", CHUNK="65536", MARKER=str(marker)
    )
    wait_for(marker)
    second = start(worker, directory, names, DELAY="0.02", CHUNK="65536")
    results = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    assert [r["reused"] for r in results] == [False, True]
    assert (directory / "img.raw").read_bytes() == data
    assert temps(directory) == []


def test_a_lock_whose_holder_was_killed_does_not_block(cluster, tmp_path):
    directory, _worker, _names, data, disk, description = cluster
    script = tmp_path / "holder.py"
    script.write_text(LOCK_HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(directory / ".img.raw.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        outcome: list[object] = []
        thread = threading.Thread(
            target=lambda: outcome.append(
                Stager(progress=False).stage_image(description, disk)
            ),
            daemon=True,
        )
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not outcome, (
            "staging must wait while the lock is held"
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
    thread.join(30)
    assert not thread.is_alive(), "the dead holder's lock still blocks"
    assert outcome and (directory / "img.raw").read_bytes() == data


def test_a_full_disk_is_one_line_naming_the_image_and_leaves_no_file(cluster):
    directory, worker, names, _data, _disk, _description = cluster
    proc = start(worker, directory, names, FSIZE=str(MIB))  # the image is 4 MiB
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, (out, err)
    assert (
        out.strip()
        == f"{directory / 'img.raw'}: cannot write image: File too large (disk full?)"
    )
    assert not (directory / "img.raw").exists()
    assert not (directory / ".img.raw.ready").exists()
    assert temps(directory) == []
