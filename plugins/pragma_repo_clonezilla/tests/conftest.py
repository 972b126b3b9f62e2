"""Shared fixtures: a running Drive simulator and real Clonezilla restore ISOs (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from czbuild import make_clonezilla_image, make_ext4, make_iso
from drive_sim import DriveSim

#: Files written into the source filesystems; they must read back after restore.
FRONTEND_FILES = {"hello.txt": b"hello from the frontend\n", "etc/pragma/vc-in.conf": os.urandom(70_000) + b"end"}
COMPUTE_FILES = {"compute.txt": b"I am a compute node\n"}


@pytest.fixture
def drive_sim():
    sim = DriveSim().start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def isos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Restore ISOs: ``frontend`` (ext4 gz in 3+ pieces + swap, cziso name with .1G),
    ``compute`` (ext4 xz, GPT)."""
    work = tmp_path_factory.mktemp("isos")
    front_fs = make_ext4(work, "front", FRONTEND_FILES, size_mib=8)
    comp_fs = make_ext4(work, "comp", COMPUTE_FILES, size_mib=8)
    front = make_clonezilla_image(
        work, "clonezilla-live-demo-frontend", [{"size_mib": 9, "fs": front_fs}, {"size_mib": 2, "swap": True}], piece=200_000
    )
    comp = make_clonezilla_image(
        work, "clonezilla-live-demo-compute", [{"size_mib": 9, "fs": comp_fs, "compression": "xz"}], label="gpt"
    )
    return {
        "frontend": make_iso(front, work / "clonezilla-live-demo-frontend.1G.iso"),
        "compute": make_iso(comp, work / "clonezilla-live-demo-compute.iso"),
        "work": work,
    }
