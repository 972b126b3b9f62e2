"""Staging benchmark: pragma's one-pass stager against the legacy shell pipeline.

    python benchmarks/bench_staging.py [--size-mib N] [--repeat R] [--legacy-repeat L]
                                       [--workdir DIR] [--keep]

Builds a raw image of N MiB (default 1024): 90% zeros, 10% random data laid
in runs of 64 KiB to 4 MiB; gzips it (level 6, like ``gzip -6``) and splits
the result into 3 parts.  Then, in one run, it measures:

* legacy: ``sh -c 'cat part1 part2 part3 | gunzip -f > image'`` -- the
  pipeline pragma_boot ran (the shell is used here only as the baseline);
* pragma: :meth:`pragma_core.staging.Stager.stage_image` (splited_gzip);
* devnull: the same parts read as pragma reads them
  (:data:`pragma_core.staging.INPUT_CHUNK` at a time) and decompressed to
  nothing with the fastest gzip library, the floor for any stager;

and prints the seconds and the ratios legacy/pragma (target >= 4),
pragma/devnull (target <= 2) and allocated/size of pragma's output
(target <= 15%).  Caches are not dropped: each step reads the same parts,
already in the page cache, and ``sync`` runs (untimed) before each step so
none pays for the previous one's dirty pages.  pragma's time is the whole
``stage_image`` call from an empty cache: hole detection, writes, ``fsync``,
renames and stamp; the legacy pipeline's includes no ``fsync``.

pragma and devnull run ``--repeat`` rounds (default 9; their order
alternates from one round to the next), after one untimed round that pays
the imports and first touches.  The legacy pipeline (5 s a run) runs
``--legacy-repeat`` times (default 3).  Medians are compared; the spread of
pragma/devnull measured within each round (min, median, max) is printed
too, since other jobs on the machine move both sides, and so is the ratio
of CPU times (process time, all threads), which such jobs move much less.
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
from pragma_core.staging import INPUT_CHUNK, Stager

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


def timed(func, cpu: list[float] | None = None) -> float:
    """Seconds ``func()`` takes; its CPU seconds (all threads) are appended to ``cpu``."""
    os.sync()  # no step pays for the previous one's dirty pages (legacy leaves 1 GiB of them)
    started, cpu_started = time.perf_counter(), time.process_time()
    func()
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--repeat",
        type=int,
        default=9,
        help="rounds of pragma and devnull; the medians are reported",
    )
    parser.add_argument(
        "--legacy-repeat",
        type=int,
        default=3,
        help="runs of the legacy pipeline (5 s each); the median is reported",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.legacy_repeat < 1:
        parser.error("--repeat and --legacy-repeat must be at least 1")
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

        def run_pragma() -> float:
            staged.unlink(missing_ok=True)  # start from an empty cache every time
            stamp.unlink(missing_ok=True)
            return timed(
                lambda: Stager(progress=False).stage_image(description, disk),
                cpu["pragma"],
            )

        # devnull: the floor, the fastest library decompressing the same parts to nothing.
        library = gzip_library()

        def devnull() -> None:
            d = library.factory()
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(INPUT_CHUNK):
                        while chunk:
                            d.decompress(chunk, OUTPUT_CHUNK)
                            chunk = d.unconsumed_tail
            d.flush()

        times: dict[str, list[float]] = {"legacy": [], "pragma": [], "devnull": []}
        cpu: dict[str, list[float]] = {"pragma": [], "devnull": []}
        for _ in range(args.legacy_repeat):
            times["legacy"].append(timed(run_legacy))
            legacy_st = legacy_out.stat()
            legacy_out.unlink()  # free its 1 GiB of page cache: every step starts alike
        run_pragma()  # untimed warm-up: imports, first touches
        timed(devnull)
        cpu["pragma"].clear()
        # Interleaved, so a busy moment hits both alike.
        for round_ in range(args.repeat):
            if round_ % 2:
                times["devnull"].append(timed(devnull, cpu["devnull"]))
                times["pragma"].append(run_pragma())
            else:
                times["pragma"].append(run_pragma())
                times["devnull"].append(timed(devnull, cpu["devnull"]))
        legacy = statistics.median(times["legacy"])
        pragma = statistics.median(times["pragma"])
        floor = statistics.median(times["devnull"])
        paired = sorted(
            p / d for p, d in zip(times["pragma"], times["devnull"], strict=True)
        )
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
            f"gzip library            {library.name}   (medians: legacy of {args.legacy_repeat} runs, "
            f"pragma and devnull of {args.repeat} rounds)"
        )
        print(f"legacy cat|gunzip       {legacy:8.2f} s")
        print(
            f"pragma stage            {pragma:8.3f} s   (min {min(times['pragma']):.3f}, max {max(times['pragma']):.3f})"
        )
        print(f"pragma second call      {reuse:8.4f} s (reused)")
        print(
            f"decompress to /dev/null {floor:8.3f} s   (min {min(times['devnull']):.3f}, max {max(times['devnull']):.3f})"
        )
        print(f"output identical        {identical}")
        print()
        print(f"legacy/pragma           {legacy / pragma:8.2f}x   (target >= 4)")
        print(f"pragma/devnull          {pragma / floor:8.2f}x   (target <= 2)")
        print(
            f"  per round             {statistics.median(paired):8.2f}x   "
            f"(min {paired[0]:.2f}, max {paired[-1]:.2f})"
        )
        print(
            f"  CPU time              {statistics.median(cpu['pragma']) / statistics.median(cpu['devnull']):8.2f}x   "
            f"(pragma {statistics.median(cpu['pragma']):.3f} s with its flush thread, "
            f"devnull {statistics.median(cpu['devnull']):.3f} s)"
        )
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
