"""The staging engine: parts -> one streaming pass -> sparse, verified, atomic, cached image."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import random
import subprocess
import zlib
from pathlib import Path

import pytest
from stagingkit import MIB, cache_files, describe, image_bytes

from pragma_core import staging
from pragma_core.errors import ChecksumError, StagingError
from pragma_core.model import (
    Checksum,
    DiskImage,
    Part,
)
from pragma_core.staging import Stager



# ---------------------------------------------------------------- helpers


def split(blob: bytes, pieces: int) -> list[bytes]:
    step = -(-len(blob) // pieces)
    return [blob[i : i + step] for i in range(0, len(blob), step)]


def write_parts(
    directory: Path, blobs: list[bytes], stem: str = "img.part"
) -> list[Part]:
    parts = []
    for index, blob in enumerate(blobs):
        name = f"{stem}{index:02d}"
        (directory / name).write_bytes(blob)
        parts.append(Part(name=name))
    return parts


def stage_gzip_split(
    tmp_path: Path, data: bytes, pieces: int = 3, **disk_args
) -> tuple[Stager, DiskImage]:
    parts = write_parts(tmp_path, split(gzip.compress(data), pieces))
    disk = DiskImage(
        source="img.raw", processor="splited_gzip", parts=parts, **disk_args
    )
    return Stager(progress=False), disk


@pytest.fixture(autouse=True)
def _default_gzip_library(monkeypatch):
    monkeypatch.delenv("PRAGMA_GZIP_LIBRARY", raising=False)


# ---------------------------------------------------------------- processors


def test_splited_gzip_reassembles_one_gzip_split_inside_its_stream(tmp_path):
    data = image_bytes()
    stager, disk = stage_gzip_split(tmp_path, data, pieces=5)
    staged = stager.stage_image(describe(tmp_path, disk), disk)
    assert staged.path == tmp_path / "img.raw"
    assert staged.path.read_bytes() == data
    assert staged.format == "raw" and staged.virtual_size == len(data)


def test_splited_gzip_handles_many_members_split_at_arbitrary_offsets(tmp_path):
    data = image_bytes(seed=2)
    members = b"".join(gzip.compress(piece) for piece in split(data, 7))
    parts = write_parts(tmp_path, split(members, 4))  # boundaries fall inside members
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert (tmp_path / "img.raw").read_bytes() == data


def test_gzip_parts_are_whole_gzip_files_decompressed_in_order_into_the_source_file(
    tmp_path,
):
    data = image_bytes(seed=3)
    # one part holds two members: a part is a gzip *file*, possibly multi-member
    pieces = split(data, 3)
    blobs = [
        gzip.compress(pieces[0]),
        gzip.compress(pieces[1][:1000]) + gzip.compress(pieces[1][1000:]),
        gzip.compress(pieces[2]),
    ]
    parts = write_parts(tmp_path, blobs, stem="img.raw.gz.")
    disk = DiskImage(source="img.raw", processor="gzip", parts=parts)
    Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert (tmp_path / "img.raw").read_bytes() == data
    assert all((tmp_path / p.name).exists() for p in parts), "parts are kept by default"


def test_splited_joins_parts_byte_for_byte(tmp_path):
    data = image_bytes(seed=4)
    parts = write_parts(tmp_path, split(data, 3))
    disk = DiskImage(source="img.raw", processor="splited", parts=parts)
    Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert (tmp_path / "img.raw").read_bytes() == data


def test_raw_image_is_used_in_place_untouched(tmp_path):
    image = tmp_path / "img.raw"
    image.write_bytes(image_bytes(seed=5))
    before = image.stat()
    disk = DiskImage(source="img.raw")
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    after = image.stat()
    assert staged.path == image
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert cache_files(tmp_path) == ["img.raw"], (
        "nothing to record for a plain raw file"
    )


def test_raw_image_that_is_missing_is_an_error_naming_it(tmp_path):
    disk = DiskImage(source="gone.raw")
    with pytest.raises(StagingError, match=r"gone\.raw: image not found") as info:
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert str(tmp_path / "gone.raw") in str(info.value)


def test_raw_image_a_remote_repository_holds_is_fetched_through_the_opener(tmp_path):
    data = image_bytes(seed=6)
    calls = []

    def opener(part):
        calls.append(part.name)
        return io.BytesIO(data)

    disk = DiskImage(source="img.raw")
    staged = Stager(progress=False).stage_image(
        describe(tmp_path, disk), disk, opener=opener
    )
    assert calls == ["img.raw"]
    assert staged.path.read_bytes() == data


def test_parts_stream_through_a_repository_opener_without_local_copies(tmp_path):
    data = image_bytes(seed=7)
    blobs = {
        f"remote.{i}": blob for i, blob in enumerate(split(gzip.compress(data), 3))
    }
    opened = []

    def opener(part):
        opened.append(part.name)
        return io.BytesIO(blobs[part.name])

    disk = DiskImage(
        source="img.raw", processor="splited_gzip", parts=[Part(name=n) for n in blobs]
    )
    stager = Stager(progress=False)
    stager.stage_image(describe(tmp_path, disk), disk, opener=opener)
    assert (tmp_path / "img.raw").read_bytes() == data
    assert opened == list(blobs)
    assert not any(p.name.startswith("remote.") for p in tmp_path.iterdir())
    # ready now: a second call neither opens nor downloads anything
    stager.stage_image(describe(tmp_path, disk), disk, opener=opener)
    assert opened == list(blobs)
    assert stager.reports[-1].reused


def test_stage_prepares_frontend_and_compute_images(tmp_path):
    front = image_bytes(seed=8)
    comp = image_bytes(seed=9)
    fparts = write_parts(tmp_path, split(gzip.compress(front), 2), stem="front.gz.")
    cparts = write_parts(tmp_path, split(comp, 2), stem="comp.")
    fdisk = DiskImage(source="front.img", processor="splited_gzip", parts=fparts)
    cdisk = DiskImage(source="comp.img", processor="splited", parts=cparts)
    cluster = Stager(progress=False).stage(describe(tmp_path, fdisk, cdisk))
    assert cluster.frontend.path.read_bytes() == front
    assert cluster.compute.path.read_bytes() == comp


def test_stage_without_compute_section_gives_computes_the_frontend_image(tmp_path):
    stager, disk = stage_gzip_split(tmp_path, image_bytes(seed=10))
    cluster = stager.stage(describe(tmp_path, disk))
    assert cluster.compute == cluster.frontend
    assert len(stager.reports) == 1


def test_staging_runs_no_program_and_writes_no_intermediate_file(tmp_path, monkeypatch):
    data = image_bytes(seed=11)
    stager, disk = stage_gzip_split(tmp_path, data)

    def no_programs(*args, **kwargs):
        raise AssertionError(f"staging started a program: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_programs)
    monkeypatch.setattr(os, "system", no_programs)
    created = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append(os.path.basename(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    stager.stage_image(describe(tmp_path, disk), disk)
    assert (tmp_path / "img.raw").read_bytes() == data
    # the lock and the stamp's temporary file are not image data
    image_files = [name for name in created if not name.endswith(".lock") and ".ready.tmp-" not in name]
    assert len(image_files) == 1 and image_files[0].startswith(".img.raw.staging-"), (
        created
    )


def test_each_part_is_read_once_in_order(tmp_path):
    data = image_bytes(seed=12)
    blobs = split(gzip.compress(data), 3)
    parts = write_parts(tmp_path, blobs)
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    log = []

    @contextlib.contextmanager
    def opener(part):
        with open(tmp_path / part.name, "rb") as f:

            class Counting(io.RawIOBase):
                def read(self, n=-1):
                    chunk = f.read(n)
                    log.append((part.name, len(chunk)))
                    return chunk

            yield Counting()

    Stager(progress=False).stage_image(describe(tmp_path, disk), disk, opener=opener)
    order = [name for name, n in log if n]
    assert order == sorted(order)
    assert sum(n for _, n in log) == sum(map(len, blobs))


# ---------------------------------------------------------------- sparse


def test_mostly_empty_large_image_occupies_only_its_data(tmp_path):
    # 2 GiB of image, 64 KiB of it data: 32 copies of a 64 MiB-of-zeros member
    # (cheap to build) with a data member in the middle.
    zeros = zlib.compressobj(6, zlib.DEFLATED, 31)
    member = zeros.compress(bytes(64 * MIB)) + zeros.flush()
    data = random.Random(0).randbytes(64 << 10)
    stream = member * 16 + gzip.compress(data) + member * 16  # 2 GiB + 64 KiB
    parts = write_parts(tmp_path, split(stream, 3))
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    staged = Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    st = staged.path.stat()
    assert st.st_size == 2048 * MIB + len(data)
    assert st.st_blocks * 512 <= 256 << 10, f"{st.st_blocks * 512} bytes allocated"
    with open(staged.path, "rb") as f:
        f.seek(16 * 64 * MIB)
        assert f.read(len(data)) == data


def test_trailing_zeros_are_a_hole_and_the_size_is_exact(tmp_path):
    data = b"\x01" * 5000 + bytes(3 * MIB + 123)
    stager, disk = stage_gzip_split(tmp_path, data)
    staged = stager.stage_image(describe(tmp_path, disk), disk)
    st = staged.path.stat()
    assert st.st_size == len(data)
    assert st.st_blocks * 512 <= 128 << 10
    assert staged.path.read_bytes() == data


def test_zero_blocks_inside_data_become_holes_without_losing_bytes(tmp_path):
    rng = random.Random(13)
    blocks = [
        rng.randbytes(staging.SPARSE_BLOCK)
        if i % 3 == 0
        else bytes(staging.SPARSE_BLOCK)
        for i in range(30)
    ]
    data = b"".join(blocks) + b"\x00\x07"  # unaligned tail
    stager, disk = stage_gzip_split(tmp_path, data)
    staged = stager.stage_image(describe(tmp_path, disk), disk)
    assert staged.path.read_bytes() == data
    assert staged.path.stat().st_blocks * 512 <= len(data) // 2


# ---------------------------------------------------------------- atomic, idempotent


def test_second_stage_call_does_no_work(tmp_path):
    stager, disk = stage_gzip_split(tmp_path, image_bytes(seed=14))
    description = describe(tmp_path, disk)
    first = stager.stage_image(description, disk)
    before = first.path.stat()
    for part in disk.parts:
        (tmp_path / part.name).unlink()  # nothing could be restaged from now on
    assert stager.is_ready(description, disk)
    second = stager.stage_image(description, disk)
    after = second.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [r.reused for r in stager.reports] == [False, True]


def test_a_changed_part_makes_the_image_stale_and_it_is_restaged(tmp_path):
    stager, disk = stage_gzip_split(tmp_path, image_bytes(seed=15), pieces=1)
    description = describe(tmp_path, disk)
    stager.stage_image(description, disk)
    new = image_bytes(seed=16)
    (tmp_path / disk.parts[0].name).write_bytes(gzip.compress(new))
    assert not stager.is_ready(description, disk)
    stager.stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == new


def test_a_modified_image_is_not_taken_as_ready(tmp_path):
    data = image_bytes(seed=17)
    stager, disk = stage_gzip_split(tmp_path, data)
    description = describe(tmp_path, disk)
    stager.stage_image(description, disk)
    with open(tmp_path / "img.raw", "r+b") as f:
        f.write(b"scribble")
    assert not stager.is_ready(description, disk)
    stager.stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == data


def test_an_image_without_its_stamp_is_not_ready(tmp_path):
    (tmp_path / "img.raw").write_bytes(b"half written by someone")
    stager, disk = stage_gzip_split(tmp_path, image_bytes(seed=18))
    assert not stager.is_ready(describe(tmp_path, disk), disk)


def test_failure_mid_stream_leaves_the_cache_as_it_was(tmp_path):
    data = image_bytes(seed=19)
    blobs = split(gzip.compress(data), 3)

    @contextlib.contextmanager
    def opener(part):
        if part.name == "p2":
            raise OSError(5, "Input/output error")
        yield io.BytesIO(blobs[int(part.name[1:])])

    disk = DiskImage(
        source="img.raw",
        processor="splited_gzip",
        parts=[Part(name=f"p{i}") for i in range(3)],
    )
    with pytest.raises(StagingError, match="p2: cannot read part: Input/output error"):
        Stager(progress=False).stage_image(
            describe(tmp_path, disk), disk, opener=opener
        )
    assert cache_files(tmp_path) == []


def test_interrupt_mid_stream_removes_the_temporary_file(tmp_path):
    parts = write_parts(tmp_path, split(gzip.compress(image_bytes(seed=20)), 3))
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)

    @contextlib.contextmanager
    def opener(part):
        if part.name == parts[1].name:
            raise KeyboardInterrupt
        with open(tmp_path / part.name, "rb") as f:
            yield f

    with pytest.raises(KeyboardInterrupt):
        Stager(progress=False).stage_image(
            describe(tmp_path, disk), disk, opener=opener
        )
    assert cache_files(tmp_path) == []


def test_delete_parts_removes_parts_only_after_success(tmp_path):
    data = image_bytes(seed=21)
    good = write_parts(tmp_path, split(gzip.compress(data), 2), stem="good.")
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=good)
    stager = Stager(progress=False, delete_parts=True)
    stager.stage_image(describe(tmp_path, disk), disk)
    assert not any((tmp_path / p.name).exists() for p in good)
    assert stager.is_ready(describe(tmp_path, disk), disk), (
        "still ready without its parts"
    )

    bad = write_parts(tmp_path, [gzip.compress(data)[:-20]], stem="bad.")
    bad_disk = DiskImage(source="bad.img", processor="splited_gzip", parts=bad)
    with pytest.raises(StagingError):
        stager.stage_image(describe(tmp_path, bad_disk), bad_disk)
    assert (tmp_path / bad[0].name).exists()


# ---------------------------------------------------------------- checksums


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def test_part_and_image_checksums_from_the_description_are_verified(tmp_path):
    data = image_bytes(seed=22)
    blobs = split(gzip.compress(data), 2)
    parts = [
        Part(
            name=p.name,
            checksum=Checksum(algorithm="sha256", hexdigest=sha256(b)),
            size=len(b),
        )
        for p, b in zip(write_parts(tmp_path, blobs), blobs, strict=True)
    ]
    disk = DiskImage(
        source="img.raw",
        processor="splited_gzip",
        parts=parts,
        checksum=Checksum(algorithm="md5", hexdigest=hashlib.md5(data).hexdigest()),
    )
    stager = Stager(progress=False)
    stager.stage_image(describe(tmp_path, disk), disk)
    assert stager.is_ready(describe(tmp_path, disk), disk)


def test_a_part_checksum_mismatch_names_the_part_and_both_digests(tmp_path):
    data = image_bytes(seed=23)
    blobs = split(gzip.compress(data), 2)
    parts = write_parts(tmp_path, blobs)
    wrong = "0" * 64
    parts[1] = Part(
        name=parts[1].name, checksum=Checksum(algorithm="sha256", hexdigest=wrong)
    )
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    with pytest.raises(ChecksumError) as info:
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    message = str(info.value)
    assert str(tmp_path / parts[1].name) in message
    assert wrong in message and sha256(blobs[1]) in message
    assert cache_files(tmp_path) == []


def test_an_image_checksum_mismatch_publishes_nothing(tmp_path):
    stager, disk = stage_gzip_split(
        tmp_path,
        image_bytes(seed=24),
        checksum=Checksum(algorithm="sha256", hexdigest="ab" * 32),
    )
    with pytest.raises(
        ChecksumError, match=r"img\.raw: sha256 mismatch: expected abab"
    ):
        stager.stage_image(describe(tmp_path, disk), disk)
    assert cache_files(tmp_path) == []


def test_sidecar_checksum_files_are_verified(tmp_path):
    data = image_bytes(seed=25)
    blobs = split(gzip.compress(data), 2)
    parts = write_parts(tmp_path, blobs)
    (tmp_path / f"{parts[0].name}.md5").write_text(
        f"{hashlib.md5(blobs[0]).hexdigest()} *{parts[0].name}\n"
    )
    (tmp_path / "img.raw.sha256").write_text(f"{sha256(data)}  img.raw\n")
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    stager = Stager(progress=False)
    stager.stage_image(describe(tmp_path, disk), disk)
    assert stager.is_ready(describe(tmp_path, disk), disk)
    # a new expected digest makes the image stale; restaging then fails the check
    (tmp_path / "img.raw.sha256").write_text(f"{'1' * 64}  img.raw\n")
    assert not stager.is_ready(describe(tmp_path, disk), disk)
    with pytest.raises(ChecksumError, match="1111"):
        stager.stage_image(describe(tmp_path, disk), disk)


def test_a_wrong_sidecar_next_to_a_part_stops_staging(tmp_path):
    parts = write_parts(tmp_path, [gzip.compress(image_bytes(seed=26))])
    (tmp_path / f"{parts[0].name}.sha256").write_text(f"{'2' * 64}  {parts[0].name}\n")
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    with pytest.raises(ChecksumError, match=parts[0].name):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)
    assert cache_files(tmp_path) == []


def test_a_malformed_sidecar_is_an_error_naming_it_and_the_line(tmp_path):
    parts = write_parts(tmp_path, [gzip.compress(b"x")])
    (tmp_path / f"{parts[0].name}.sha256").write_text("# comment\nnot-a-digest  file\n")
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    with pytest.raises(
        StagingError, match=r"\.sha256 line 2: not a sha256 checksum line"
    ):
        Stager(progress=False).stage_image(describe(tmp_path, disk), disk)


def test_raw_image_with_a_checksum_is_verified_once(tmp_path):
    data = image_bytes(seed=27)
    (tmp_path / "img.raw").write_bytes(data)
    disk = DiskImage(
        source="img.raw", checksum=Checksum(algorithm="sha256", hexdigest=sha256(data))
    )
    stager = Stager(progress=False)
    stager.stage_image(describe(tmp_path, disk), disk)
    assert stager.is_ready(describe(tmp_path, disk), disk)
    bad = DiskImage(
        source="img.raw", checksum=Checksum(algorithm="sha256", hexdigest="3" * 64)
    )
    assert not stager.is_ready(describe(tmp_path, bad), bad)
    with pytest.raises(ChecksumError):
        stager.stage_image(describe(tmp_path, bad), bad)


# ---------------------------------------------------------------- bad input


def one_line_error(tmp_path, disk, *, opener=None, source="img.raw") -> str:
    with pytest.raises(StagingError) as info:
        Stager(progress=False).stage_image(
            describe(tmp_path, disk), disk, opener=opener
        )
    message = str(info.value)
    assert "\n" not in message
    assert cache_files(tmp_path, source) == []
    return message


def test_missing_part_is_named(tmp_path):
    parts = write_parts(tmp_path, [gzip.compress(b"abc")]) + [
        Part(name="img.part.missing")
    ]
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    message = one_line_error(tmp_path, disk)
    assert (
        f"{tmp_path / 'img.part.missing'}: part not found (listed in {tmp_path / 'demo.xml'})"
        == message
    )


def test_truncated_gzip_is_named(tmp_path):
    blob = gzip.compress(image_bytes(seed=28))
    parts = write_parts(tmp_path, split(blob[:-100], 2))
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    message = one_line_error(tmp_path, disk)
    assert message.startswith(
        f"{tmp_path / parts[-1].name}: truncated splited_gzip data"
    )


def test_a_truncated_gzip_part_is_named_even_when_later_parts_follow(tmp_path):
    data = image_bytes(seed=29)
    first, second = gzip.compress(data[:MIB]), gzip.compress(data[MIB:])
    parts = write_parts(tmp_path, [first[:-30], second])
    disk = DiskImage(source="img.raw", processor="gzip", parts=parts)
    message = one_line_error(tmp_path, disk)
    assert str(tmp_path / parts[0].name) in message


def test_corrupt_gzip_is_named(tmp_path):
    blob = bytearray(gzip.compress(image_bytes(seed=30)))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\xff" * 64
    parts = write_parts(tmp_path, [bytes(blob)])
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    message = one_line_error(tmp_path, disk)
    assert message.startswith(f"{tmp_path / parts[0].name}: corrupt splited_gzip data")


def test_garbage_that_is_not_gzip_is_named(tmp_path):
    parts = write_parts(tmp_path, [b"this is not gzip at all" * 100])
    disk = DiskImage(source="img.raw", processor="gzip", parts=parts)
    assert "corrupt gzip data" in one_line_error(tmp_path, disk)


def test_empty_gzip_part_is_an_error(tmp_path):
    parts = write_parts(tmp_path, [b""])
    disk = DiskImage(source="img.raw", processor="splited_gzip", parts=parts)
    assert "no splited_gzip data" in one_line_error(tmp_path, disk)


@pytest.mark.parametrize("processor", ["gzip", "splited", "splited_gzip"])
def test_a_split_type_without_parts_names_the_cluster_file(tmp_path, processor):
    disk = DiskImage(source="img.raw", processor=processor)
    message = one_line_error(tmp_path, disk)
    assert (
        message.startswith(str(tmp_path / "demo.xml")) and "none are listed" in message
    )


def test_unknown_type_names_it_the_known_ones_and_the_cluster_file(tmp_path):
    disk = DiskImage(source="img.raw", processor="bzip9", parts=[Part(name="x")])
    message = one_line_error(tmp_path, disk)
    assert message == (
        f"{tmp_path / 'demo.xml'}: unknown image processor 'bzip9' (known: gzip, raw, splited, splited_gzip)"
    )


def test_a_part_escaping_the_cluster_directory_is_refused(tmp_path):
    disk = DiskImage(
        source="img.raw", processor="splited", parts=[Part(name="../../etc/passwd")]
    )
    assert "escapes the directory" in one_line_error(tmp_path, disk)


def test_a_part_size_differing_from_the_description_is_named(tmp_path):
    parts = write_parts(tmp_path, [b"12345"])
    disk = DiskImage(
        source="img.raw", processor="splited", parts=[Part(name=parts[0].name, size=6)]
    )
    message = one_line_error(tmp_path, disk)
    assert (
        message
        == f"{tmp_path / parts[0].name}: part is 5 bytes, the description says 6"
    )


# ---------------------------------------------------------------- progress and timing


def test_without_a_terminal_each_image_gets_a_log_line_with_duration_and_sizes(
    tmp_path, caplog
):
    stager, disk = stage_gzip_split(tmp_path, image_bytes(seed=31))
    stager = Stager()  # progress decided by stderr, which is not a terminal here
    with caplog.at_level(logging.INFO, logger="pragma_core.staging"):
        stager.stage_image(describe(tmp_path, disk), disk)
    lines = [r.getMessage() for r in caplog.records if r.name == "pragma_core.staging"]
    assert any(
        "img.raw: staged (splited_gzip)" in line
        and " in, " in line
        and " out, " in line
        and " s (" in line
        for line in lines
    ), lines
    report = stager.reports[-1]
    assert (
        report.bytes_out == 3 * MIB
        and report.bytes_in
        == sum((tmp_path / p.name).stat().st_size for p in disk.parts)
        and report.seconds > 0
    )


def test_progress_bar_shows_bytes_in_and_out_when_asked(tmp_path, capsys):
    _stager, disk = stage_gzip_split(tmp_path, image_bytes(seed=32))
    Stager(progress=True).stage_image(describe(tmp_path, disk), disk)
    err = capsys.readouterr().err
    assert "img.raw" in err and "100%" in err and "out 3.0 MiB" in err
