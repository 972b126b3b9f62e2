"""Hostile qcow2 backing chains: refused, in one line, before any qemu tool opens a file of the chain.

Every payload is a cluster whose frontend image ``demo.qcow2`` names (at some
level of its chain) a file pragma must never let qemu open: a protocol that
would connect to a tripwire listener on loopback, an absolute path, a ``..``
path, a link leading out, a FIFO, a device, a directory, a probed or foreign
format, an external data file, a loop, a chain too deep. Each is driven
through the staging engine and through ``pragma stage`` / ``pragma boot`` on
the fake driver, and must leave the tripwire untouched, qemu-img unrun and
the repository as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hostilekit import (
    Listener,
    cluster_xml,
    listening,
    make_fifo,
    one_line,
    qcow2_by_hand,
    qemu_img,
    snapshot,
)
from stagingkit import describe

from pragma_core.errors import StagingError
from pragma_core.imagecheck import MAX_CHAIN_DEPTH, check_image
from pragma_core.model import DiskImage
from pragma_core.staging import Stager

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

MIB = 1 << 20


@attrs.define
class Scene:
    """A repository with one cluster directory, a directory outside it, and a tripwire listener."""

    repo: Path
    cluster: Path
    outside: Path
    listener: Listener

    @property
    def top(self) -> Path:
        return self.cluster / "demo.qcow2"

    def on(self, backing: str, fmt: str = "raw", image: Path | None = None) -> None:
        """Make ``image`` (default: the top image) a real qcow2 whose backing file is ``backing``."""
        qemu_img("create", "-f", "qcow2", "-u", "-F", fmt, "-b", backing, str(image or self.top), "16M")


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    repo = tmp_path / "repo"
    cluster = repo / "demo"
    outside = tmp_path / "outside"
    cluster.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.raw").write_bytes(b"root's secret\n" + bytes(MIB))
    with listening(tmp_path) as listener:
        yield Scene(repo=repo, cluster=cluster, outside=outside, listener=listener)


def _json_nbd(s: Scene) -> str:
    spec = {"driver": "raw", "file": {"driver": "nbd", "server": {"type": "inet", "host": "127.0.0.1", "port": str(s.listener.port)}}}
    return "json:" + json.dumps(spec)


def _deep(s: Scene) -> None:
    (s.cluster / "level0.raw").write_bytes(bytes(MIB))
    below, fmt = "level0.raw", "raw"
    for level in range(1, MAX_CHAIN_DEPTH):
        name = f"level{level}.qcow2"
        s.on(below, fmt, s.cluster / name)
        below, fmt = name, "qcow2"
    s.on(below, "qcow2")


def _loop(s: Scene) -> None:
    s.on("other.qcow2", "qcow2")
    s.on("demo.qcow2", "qcow2", s.cluster / "other.qcow2")


def _second_level(s: Scene) -> None:
    s.on(f"nbd:127.0.0.1:{s.listener.port}", "raw", s.cluster / "middle.qcow2")
    s.on("middle.qcow2", "qcow2")


def _vmdk(s: Scene) -> None:
    (s.cluster / "base.vmdk").write_text(
        f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        f'RW 2048 FLAT "{s.outside / "secret.raw"}" 0\n'
    )
    s.on("base.vmdk", "vmdk")


def _symlink_out(s: Scene) -> None:
    (s.cluster / "base.raw").symlink_to(s.outside / "secret.raw")
    s.on("base.raw")


def _device(s: Scene) -> None:
    (s.cluster / "base.raw").symlink_to("/dev/zero")
    s.on("base.raw")


def _fifo(s: Scene) -> None:
    make_fifo(s.cluster / "base.raw")
    s.on("base.raw")


def _directory(s: Scene) -> None:
    (s.cluster / "base.raw").mkdir()
    s.on("base.raw")


def _empty(s: Scene) -> None:
    (s.cluster / "base.raw").write_bytes(b"")
    s.on("base.raw")


def _by_hand(**fields: Any) -> Callable[[Scene], None]:
    """A hand-written header (``PORT`` in a name becomes the tripwire's port)."""

    def build(s: Scene) -> None:
        port = str(s.listener.port).encode()
        qcow2_by_hand(s.top, **{k: v.replace(b"PORT", port) if isinstance(v, bytes) else v for k, v in fields.items()})

    return build


#: payload id -> (how to build it, what the one error line says)
PAYLOADS: dict[str, tuple[Callable[[Scene], None], str]] = {
    "nbd-tcp": (lambda s: s.on(f"nbd:127.0.0.1:{s.listener.port}"), "backing file nbd:127.0.0.1:"),
    "nbd-uri": (lambda s: s.on(f"nbd://127.0.0.1:{s.listener.port}/x"), "names a protocol (nbd:)"),
    "nbd-unix": (lambda s: s.on(f"nbd:unix:{s.listener.unix_path}"), "names a protocol (nbd:)"),
    "json-nbd": (lambda s: s.on(_json_nbd(s)), "names a protocol (json:)"),
    "http": (lambda s: s.on(f"http://127.0.0.1:{s.listener.port}/base.raw"), "names a protocol (http:)"),
    "https": (lambda s: s.on(f"https://127.0.0.1:{s.listener.port}/base.raw"), "names a protocol (https:)"),
    "file-prefix": (lambda s: s.on("file:base.raw"), "names a protocol (file:)"),
    "absolute-outside": (lambda s: s.on(str(s.outside / "secret.raw")), "is outside the cluster directory"),
    "absolute-inside": (lambda s: s.on(str(s.cluster / "base.raw")), "is an absolute path"),
    "dotdot": (lambda s: s.on("../../outside/secret.raw"), "has a '..' component"),
    "dotdot-inside": (lambda s: s.on("sub/../base.raw"), "has a '..' component"),
    "control-characters": (_by_hand(backing=b"base\n.raw", backing_format=b"raw"), "contains control characters"),
    "symlink-out": (_symlink_out, "is outside the cluster directory"),
    "device": (_device, "is outside the cluster directory"),
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "missing": (lambda s: s.on("nowhere.raw"), "backing file nowhere.raw not found"),
    "empty": (_empty, "base.raw: image is empty (0 bytes)"),
    "vmdk-format": (_vmdk, "backing format vmdk of base.vmdk is not allowed"),
    "nbd-format": (_by_hand(backing=b"base.raw", backing_format=b"nbd"), "backing format nbd of base.raw is not allowed"),
    "no-format": (_by_hand(backing=b"base.raw"), "has no backing format"),
    "data-file-nbd": (_by_hand(data_file=b"nbd:127.0.0.1:PORT", incompatible=4), "has an external data file"),
    "data-file-plain": (_by_hand(data_file=b"data.raw"), "has an external data file"),
    "data-file-bit-only": (_by_hand(incompatible=4), "has an external data file"),
    "second-level-nbd": (_second_level, "middle.qcow2: backing file nbd:127.0.0.1:"),
    "loop": (_loop, "backing chain loops back to"),
    "too-deep": (_deep, f"backing chain is longer than {MAX_CHAIN_DEPTH} images"),
    "version-9": (_by_hand(version=9), "not a usable qcow2 image (version 9)"),
}


def _build(scene: Scene, payload: str) -> str:
    build, expected = PAYLOADS[payload]
    build(scene)
    return expected


def programs_started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """From now on, record every program started (staging must start none for a hostile chain)."""
    started: list[list[str]] = []
    real = subprocess.Popen

    def popen(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        started.append(list(argv))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    return started


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_the_staging_engine_refuses_the_chain_before_qemu_img_runs(scene: Scene, payload: str, monkeypatch) -> None:
    expected = _build(scene, payload)
    before = snapshot(scene.repo, scene.outside)
    no_qemu_img = programs_started(monkeypatch)
    disk = DiskImage(source="demo.qcow2", format="qcow2")
    with pytest.raises(StagingError) as info:
        Stager(progress=False).stage_image(describe(scene.cluster, disk), disk)
    assert expected in one_line(str(info.value))
    assert no_qemu_img == []
    assert scene.listener.connections == 0
    assert snapshot(scene.repo, scene.outside) == before


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_pragma_stage_refuses_the_chain_in_one_line(site, payload: str) -> None:
    cluster = site.repo / "demo"
    shutil.rmtree(cluster)
    with listening(site.root) as listener:
        scene = Scene(repo=site.repo, cluster=cluster, outside=site.root / "outside", listener=listener)
        scene.cluster.mkdir()
        scene.outside.mkdir()
        (scene.outside / "secret.raw").write_bytes(bytes(MIB))
        cluster_xml(cluster, source="demo.qcow2", fmt="qcow2")
        expected = _build(scene, payload)
        before = snapshot(site.repo)
        result = site.run("stage", "demo")
        assert result.code == 1
        line = one_line(result.err)
        assert line.startswith("Error: ") and expected in line, line
        assert listener.connections == 0
        assert snapshot(site.repo) == before


@pytest.mark.parametrize("payload", ["nbd-tcp", "json-nbd", "symlink-out", "second-level-nbd"])
def test_pragma_boot_allocates_nothing_for_a_hostile_chain(site, payload: str) -> None:
    cluster = site.repo / "demo"
    shutil.rmtree(cluster)
    with listening(site.root) as listener:
        scene = Scene(repo=site.repo, cluster=cluster, outside=site.root / "outside", listener=listener)
        scene.cluster.mkdir()
        scene.outside.mkdir()
        (scene.outside / "secret.raw").write_bytes(bytes(MIB))
        cluster_xml(cluster, source="demo.qcow2", fmt="qcow2")
        expected = _build(scene, payload)
        result = site.run("boot", "demo", "2", f"key={site.key}")
        assert result.code == 1 and expected in one_line(result.err)
        assert listener.connections == 0
    assert site.run("list", "cluster").out.count("\n") <= 1, "no cluster was allocated"


def test_the_tripwire_works_qemu_img_follows_an_unchecked_chain(scene: Scene) -> None:
    """What the checks prevent: qemu-img itself connects wherever the header says."""
    scene.on(f"nbd:127.0.0.1:{scene.listener.port}")
    subprocess.run(
        ["qemu-img", "info", "--backing-chain", "-f", "qcow2", str(scene.top)], capture_output=True, timeout=60, check=False
    )
    assert scene.listener.connections >= 1


def test_a_plain_chain_inside_the_cluster_directory_is_accepted(scene: Scene, monkeypatch) -> None:
    (scene.cluster / "base.raw").write_bytes(bytes(2 * MIB))
    (scene.cluster / "sub").mkdir()
    scene.on("base.raw", image=scene.cluster / "middle.qcow2")
    scene.on("middle.qcow2", "qcow2")
    (scene.cluster / "link.qcow2").symlink_to("demo.qcow2")  # a link that stays inside is fine
    disk = DiskImage(source="link.qcow2", format="qcow2")
    started = programs_started(monkeypatch)
    staged = Stager(progress=False).stage_image(describe(scene.cluster, disk), disk)
    assert staged.backing_file == scene.cluster / "middle.qcow2"
    assert staged.virtual_size == 16 * MIB
    assert [argv[-1].startswith("/dev/fd/") for argv in started] == [True, True], "qemu-img sees checked descriptors"
    assert all("--backing-chain" not in argv for argv in started)
    chain = check_image(scene.cluster / "demo.qcow2", "qcow2", root=scene.cluster).chain
    assert [level.path.name for level in chain] == ["demo.qcow2", "middle.qcow2", "base.raw"]
    assert scene.listener.connections == 0


@pytest.mark.parametrize("what", ["empty", "directory", "fifo"])
def test_an_image_that_is_empty_or_not_a_file_is_refused_in_one_line(scene: Scene, what: str) -> None:
    target = scene.cluster / "demo.raw"
    {"empty": lambda: target.write_bytes(b""), "directory": target.mkdir, "fifo": lambda: make_fifo(target)}[what]()
    disk = DiskImage(source="demo.raw", format="raw")
    with pytest.raises(StagingError) as info:
        Stager(progress=False).stage_image(describe(scene.cluster, disk), disk)
    expected = {"empty": "image is empty (0 bytes)", "directory": "is a directory", "fifo": "is a FIFO"}[what]
    assert expected in one_line(str(info.value))
