"""Boot-time staging of a split-gzip image from an HTTP repository: pragma vs the legacy sequence.

A 1 GiB disk image (90% zeros, 10% random bytes in runs) is gzipped, split
into parts and served on 127.0.0.1 by the test suite's HTTP server
(``tests/httpfaults.py``, in its own process). Then, one run each:

* legacy: what pragma_boot did -- download every part with ``curl`` (one
  process per part), then ``cat parts | gunzip > image`` (the pipeline is
  built from argument lists here, not a shell string);
* pragma: a child process builds the ``http`` repository, describes the
  cluster and stages it (stream, join, decompress, sparse write, checksum
  verification, atomic rename), then reports its peak memory
  (``ru_maxrss``).

Both images are compared with the original afterwards (not timed).
Targets: ratio >= 3x, pragma peak memory < 200 MiB.

Usage: ``python benchmarks/bench_http.py [--size-mib 1024] [--part-mib 32] [--workdir DIR]``
(the generated image and parts are kept in ``--workdir`` and reused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 8 << 20

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from pragma_core.config import ConfigFile, RepositorySettings, SiteConfig
    from pragma_core.repositories.http import HttpRepository
    from pragma_core.staging import Stager

    cache, url = Path(sys.argv[1]), sys.argv[2]
    settings = RepositorySettings(repository_class="http", repository_dir=cache, repository_url=url)
    site = SiteConfig(conf_dir=cache, source=ConfigFile(path=cache / "site_conf.conf", values={}, lines={}),
                      repository=settings)
    started = time.perf_counter()
    repo = HttpRepository(settings, site=site)
    staged = repo.stage(repo.describe("bench"), Stager(progress=False))
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_kib": peak_kib, "image": str(staged.frontend.path)}))
    """
)


def generate(workdir: Path, size: int, part_size: int) -> tuple[Path, str, list[str]]:
    """Write the image, its split gzip parts, the cluster XML and vcdb under ``workdir/www``."""
    www = workdir / "www"
    meta = workdir / "meta.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("size") == size and info.get("part_size") == part_size:
            return www, info["sha256"], info["parts"]
    shutil.rmtree(workdir, ignore_errors=True)
    (www / "bench").mkdir(parents=True)
    print(f"generating a {size >> 20} MiB image (10% random data) ...", flush=True)
    rng = random.Random(2026)
    image_hash = hashlib.sha256()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip container, like gzip -6
    parts: list[str] = []
    part_fh = None
    part_left = 0

    def emit(data: bytes) -> None:
        nonlocal part_fh, part_left
        view = memoryview(data)
        while view:
            if part_left == 0:
                if part_fh is not None:
                    part_fh.close()
                name = "bench.img.gz." + "a" + chr(ord("a") + len(parts))
                parts.append(name)
                part_fh = open(www / "bench" / name, "wb")  # noqa: SIM115 - closed when the next part starts
                part_left = part_size
            n = min(part_left, len(view))
            part_fh.write(view[:n])
            part_left -= n
            view = view[n:]

    run = 1 << 20  # 1 MiB runs: each is random data with probability 0.1, else zeros
    zero = bytes(run)
    written = 0
    while written < size:
        n = min(run, size - written)
        if rng.random() < 0.10:
            block = rng.randbytes(n)
        else:
            block = zero[:n]
        image_hash.update(block)
        emit(compressor.compress(block))
        written += n
    emit(compressor.flush())
    assert part_fh is not None
    part_fh.close()
    digest = image_hash.hexdigest()
    part_xml = "".join(f"<part>{name}</part>" for name in parts)
    (www / "bench" / "bench.xml").write_text(
        f"""<vc version="0.1"><virtualization engine="kvm" type="hvm" arch="x86_64"/>
<frontend><domain type="kvm"><name>bench</name><devices>
<disk type="file" device="disk"><driver name="qemu" type="raw"/>
<source file="bench.img" sha256="{digest}"/><target dev="vda" bus="virtio"/>
<file type="splited_gzip">{part_xml}</file></disk></devices></domain></frontend></vc>
"""
    )
    (www / "vcdb.txt").write_text("bench,bench/bench.xml\n")
    meta.write_text(json.dumps({"size": size, "part_size": part_size, "sha256": digest, "parts": parts}))
    return www, digest, parts


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def legacy(url: str, parts: list[str], work: Path) -> float:
    """pragma_boot's sequence: curl each part, then cat | gunzip > image."""
    curl = shutil.which("curl") or shutil.which("wget")
    if curl is None:
        sys.exit("curl (or wget) is needed for the legacy baseline: apt-get install curl")
    gunzip = shutil.which("gunzip")
    if gunzip is None:
        sys.exit("gunzip is needed for the legacy baseline")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    local = []
    for name in parts:
        target = work / name
        if os.path.basename(curl) == "curl":
            argv = [curl, "--retry", "5", "-L", "-s", "-S", "-o", str(target), f"{url}/bench/{name}"]
        else:
            argv = [curl, "-q", "-O", str(target), f"{url}/bench/{name}"]
        subprocess.run(argv, check=True)
        local.append(str(target))
    with open(work / "bench.img", "wb") as out:
        cat = subprocess.Popen(["cat", *local], stdout=subprocess.PIPE)
        unzip = subprocess.run([gunzip, "-f"], stdin=cat.stdout, stdout=out, check=True)
        assert cat.stdout is not None
        cat.stdout.close()
        if cat.wait() != 0 or unzip.returncode != 0:
            sys.exit("legacy pipeline failed")
    return time.perf_counter() - started


def pragma(url: str, cache: Path) -> tuple[float, float, int, Path]:
    """pragma's staging in a child process: (wall seconds, in-child seconds, peak KiB, image)."""
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache), url], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"pragma staging failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, result["seconds"], result["peak_kib"], Path(result["image"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-mib", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pragma-bench-http")
    args = parser.parse_args()

    www, digest, parts = generate(args.workdir, args.size_mib << 20, args.part_mib << 20)
    compressed = sum((www / "bench" / p).stat().st_size for p in parts)
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "httpfaults.py"), str(www)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        runs = args.workdir / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        subprocess.run(["sync"], check=False)

        legacy_s = legacy(url, parts, runs / "legacy")
        wall, inside, peak_kib, image = pragma(url, runs / "pragma")

        ok_legacy = file_sha256(runs / "legacy" / "bench.img") == digest
        ok_pragma = file_sha256(image) == digest
        allocated = image.stat().st_blocks * 512
    finally:
        server.terminate()
        server.wait()
    print(f"image: {args.size_mib} MiB, {len(parts)} gzip parts, {compressed / 2**20:.1f} MiB compressed")
    print(f"legacy (curl each part; cat | gunzip > image): {legacy_s:6.2f} s   image correct: {ok_legacy}")
    print(
        f"pragma (http repository, streamed staging):     {wall:6.2f} s   image correct: {ok_pragma}"
        f"   ({inside:.2f} s inside the child; {allocated / 2**20:.0f} MiB allocated, sparse)"
    )
    ratio = legacy_s / wall
    print(f"ratio legacy/pragma: {ratio:.2f}x (target >= 3x)")
    print(f"pragma peak memory (ru_maxrss of the staging process): {peak_kib / 1024:.0f} MiB (target < 200 MiB)")
    shutil.rmtree(runs, ignore_errors=True)
    return 0 if ok_legacy and ok_pragma else 1


if __name__ == "__main__":
    raise SystemExit(main())
