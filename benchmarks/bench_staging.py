"""Staging benchmark: pragma's one-pass stager against the legacy shell pipeline.

    python benchmarks/bench_staging.py [--size-mib N] [--workdir DIR] [--keep]

Builds a raw image of N MiB (default 1024): 90% zeros, 10% random data laid
in runs of 64 KiB to 4 MiB; gzips it (level 6, like ``gzip -6``) and splits
the result into 3 parts.  Then, in one run, it measures:

* legacy: ``sh -c 'cat part1 part2 part3 | gunzip -f > image'`` -- the
  pipeline pragma_boot ran (the shell is used here only as the baseline);
* pragma: :meth:`pragma_core.staging.Stager.stage_image` (splited_gzip);
* devnull: the same data decompressed to nothing with the fastest gzip
  library, the floor for any stager;

and prints the seconds and the ratios legacy/pragma (target >= 4),
pragma/devnull (target <= 2) and allocated/size of pragma's output
(target <= 15%).  Caches are not dropped: each step reads the same parts,
already in the page cache, and ``sync`` runs (untimed) before each step so
none pays for the previous one's dirty pages.  pragma's time includes its
``fsync`` of the image; the legacy pipeline's does not.  Each step runs ``--repeat`` times (default 3), interleaved,
and the medians are compared.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pragma_core.model import ClusterDescription, DiskImage, NodeTemplate, Part
from pragma_core.processors import OUTPUT_CHUNK, gzip_library
from pragma_core.staging import Stager

MIB = 1 << 20


def build_image(path: Path, size: int, seed: int = 42) -> int:
    """A sparse raw image: 10% random data in runs of 64 KiB..4 MiB, the rest zeros."""
    rng = random.Random(seed)
    data_target = size // 10
    written = 0
    with open(path, "wb") as f:
        f.truncate(size)
        # Place runs in disjoint slots so the data amount is close to 10%.
        while written < data_target:
            run = rng.randrange(64 << 10, (4 << 20) + 1) // 4096 * 4096
            run = min(run, data_target - written)
            offset = rng.randrange(0, (size - run) // 4096) * 4096
            f.seek(offset)
            f.write(rng.randbytes(run))
            written += run
    return written


def gzip_and_split(image: Path, directory: Path, parts: int = 3) -> list[Path]:
    """``gzip -6 -c image | split`` into ``parts`` pieces, without a shell."""
    gz = directory / (image.name + ".gz")
    with open(gz, "wb") as out:
        subprocess.run(["gzip", "-6", "-c", str(image)], stdout=out, check=True)
    total = gz.stat().st_size
    piece = -(-total // parts)
    names = []
    with open(gz, "rb") as src:
        for index in range(parts):
            name = directory / f"{image.name}.gz.a{chr(ord('a') + index)}"
            with open(name, "wb") as dst:
                remaining = piece
                while remaining and (chunk := src.read(min(remaining, 8 * MIB))):
                    dst.write(chunk)
                    remaining -= len(chunk)
            names.append(name)
    gz.unlink()
    return names


def timed(func) -> float:
    os.sync()  # no step pays for the previous one's dirty pages (legacy leaves 1 GiB of them)
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each step; the median is reported",
    )
    args = parser.parse_args(argv)
    size = args.size_mib * MIB

    work = Path(tempfile.mkdtemp(prefix="bench-staging-", dir=args.workdir))
    try:
        source = work / "source.img"
        print(f"building a {args.size_mib} MiB image in {work} ...", flush=True)
        data = build_image(source, size)
        parts = gzip_and_split(source, work)
        compressed = sum(p.stat().st_size for p in parts)
        print(
            f"  data {data / size:.1%}, gzip -6 {compressed / MIB:.1f} MiB in {len(parts)} parts",
            flush=True,
        )

        # legacy: the pipeline pragma_boot built as a shell string (the baseline only).
        legacy_out = work / "legacy.img"
        command = (
            "cat "
            + " ".join(shlex.quote(str(p)) for p in parts)
            + " | gunzip -f > "
            + shlex.quote(str(legacy_out))
        )

        def run_legacy() -> None:
            subprocess.run(["sh", "-c", command], check=True)

        # pragma
        cluster = work / "cluster"
        cluster.mkdir()
        for p in parts:
            os.link(p, cluster / p.name)
        disk = DiskImage(
            source="image.img",
            processor="splited_gzip",
            parts=[Part(name=p.name) for p in parts],
        )
        description = ClusterDescription(
            name="bench",
            path=cluster / "bench.xml",
            directory=cluster,
            frontend=NodeTemplate(role="frontend", domain_xml="<domain/>", disk=disk),
        )
        staged = cluster / "image.img"
        stamp = cluster / ".image.img.ready"

        def run_pragma() -> None:
            staged.unlink(missing_ok=True)  # start from an empty cache every time
            stamp.unlink(missing_ok=True)
            os.sync()
            started = time.perf_counter()
            Stager(progress=False).stage_image(description, disk)
            pragma_times.append(time.perf_counter() - started)

        pragma_times: list[float] = []

        # devnull: the floor, the fastest library decompressing the same parts to nothing.
        library = gzip_library()

        def devnull() -> None:
            d = library.factory()
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(MIB):
                        while chunk:
                            d.decompress(chunk, OUTPUT_CHUNK)
                            chunk = d.unconsumed_tail
            d.flush()

        times: dict[str, list[float]] = {"legacy": [], "devnull": []}
        for _ in range(
            args.repeat
        ):  # interleaved, so a busy moment hits every step alike
            times["legacy"].append(timed(run_legacy))
            legacy_st = legacy_out.stat()
            legacy_out.unlink()  # free its 1 GiB of page cache: every step starts alike
            run_pragma()
            times["devnull"].append(timed(devnull))
        legacy = statistics.median(times["legacy"])
        pragma = statistics.median(pragma_times)
        floor = statistics.median(times["devnull"])
        reuse = timed(lambda: Stager(progress=False).stage_image(description, disk))

        identical = (
            subprocess.run(
                ["cmp", "-s", str(staged), str(source)], check=False
            ).returncode
            == 0
        )
        st = staged.stat()
        allocated = st.st_blocks * 512
        print()
        print(
            f"gzip library            {library.name}   (median of {args.repeat} runs each)"
        )
        print(f"legacy cat|gunzip       {legacy:8.2f} s")
        print(f"pragma stage            {pragma:8.2f} s")
        print(f"pragma second call      {reuse:8.4f} s (reused)")
        print(f"decompress to /dev/null {floor:8.2f} s")
        print(f"output identical        {identical}")
        print()
        print(f"legacy/pragma           {legacy / pragma:8.2f}x   (target >= 4)")
        print(f"pragma/devnull          {pragma / floor:8.2f}x   (target <= 2)")
        print(
            f"allocated/size          {allocated / st.st_size:8.1%}   (target <= 15%; data is {data / size:.1%})"
        )
        print(
            f"legacy allocated/size   {legacy_st.st_blocks * 512 / legacy_st.st_size:8.1%}"
        )
        return 0 if identical else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
