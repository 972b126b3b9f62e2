"""Native Clonezilla restore from an ISO vs partclone's own restore speed.

Builds a 512 MiB ext4 partition holding about 50 MiB of files, saves it
the Clonezilla way (partclone.ext4 -c, gzip, split into .aa/.ab...), packs
it into a restore ISO, then times, in one run:

* native: ``restore_iso_to_raw`` (sfdisk, stream pieces out of the ISO,
  decompress, pipe into ``partclone.ext4 -r --offset``);
* baseline: ``partclone.ext4 -r`` restoring the same image, already
  decompressed, from a file straight to a file and fsynced (the tool's own speed).

Prints both and the ratio (target: within 1.5x). Needs partclone, xorriso,
e2fsprogs, fdisk. Run: ``python benchmarks/bench_clonezilla.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "pragma_repo_clonezilla" / "tests"))

from czbuild import make_clonezilla_image, make_ext4, make_iso, partclone_image  # noqa: E402

from pragma_repo_clonezilla.restore import restore_iso_to_raw  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cz-") as tmp:
        work = Path(tmp)
        files = {f"data/file{i:03d}.bin": os.urandom(256 * 1024) + bytes(256 * 1024) for i in range(100)}
        fs = make_ext4(work, "fs", files, size_mib=512)
        image = make_clonezilla_image(work, "bench-frontend", [{"size_mib": 512, "fs": fs}], piece=64 << 20)
        iso = make_iso(image, work / "bench-frontend.iso")
        plain = work / "plain.ptcl"
        plain.write_bytes(partclone_image(fs, work))
        os.sync()

        baseline_out = work / "baseline.raw"
        with open(baseline_out, "wb") as handle:
            handle.truncate(513 << 20)
        start = time.perf_counter()
        subprocess.run(
            ["partclone.ext4", "-r", "-s", str(plain), "-O", str(baseline_out), "-L", str(work / "b.log"), "-q", "-f", "0"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        fd = os.open(baseline_out, os.O_RDONLY)  # same durability as the native path, which fsyncs
        os.fsync(fd)
        os.close(fd)
        baseline = time.perf_counter() - start

        start = time.perf_counter()
        restore_iso_to_raw(iso, work / "native.raw")
        native = time.perf_counter() - start

        print(f"partition 512 MiB, {sum(map(len, files.values())) >> 20} MiB of files, ISO {iso.stat().st_size >> 20} MiB")
        print(f"baseline partclone.ext4 -r from decompressed file: {baseline:.2f} s")
        print(f"native restore from ISO (gzip pieces, sfdisk, partclone): {native:.2f} s")
        print(f"ratio native/baseline: {native / baseline:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
