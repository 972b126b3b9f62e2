"""Start-up cost of the pragma command, as a ratio to a bare interpreter start.

Measures, in one run, the median wall time of:
  * ``python -c pass``                      (the floor)
  * ``pragma --help``
  * ``pragma list repository`` on a 1,000-cluster vcdb (local repository, fake driver)
and prints each one's ratio to the floor. Target: both under 4x.

    python benchmarks/bench_startup.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_seconds(argv: list[str], rounds: int) -> float:
    subprocess.run(argv, check=True, capture_output=True)  # warm the page cache
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_site(root: Path, clusters: int) -> Path:
    etc = root / "etc"
    repo = root / "repo"
    for d in (etc, repo, root / "tmp", root / "log"):
        d.mkdir(parents=True)
    (etc / "site_conf.conf").write_text(
        'site_ve_driver = "fake"\n'
        f'temp_directory = "{root / "tmp"}"\n'
        f'log_directory = "{root / "log"}"\n'
        f'repository_settings = {{"repository_class": "local", "repository_dir": "{repo}"}}\n'
    )
    (repo / "vcdb.txt").write_text("".join(f"cluster-{i:04d},cluster-{i:04d}/cluster-{i:04d}.xml\n" for i in range(clusters)))
    return etc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--clusters", type=int, default=1000)
    opts = parser.parse_args()
    script = Path(sys.executable).with_name("pragma")  # this interpreter's (.venv/bin/pragma), not PATH's
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pragma_core.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        etc = make_site(Path(tmp), opts.clusters)
        listing = subprocess.run([*command, "--conf", str(etc), "list", "repository"], capture_output=True, text=True, check=True)
        assert listing.stdout.count("\n") == opts.clusters + 1, "list repository must print every cluster"
        floor = median_seconds([sys.executable, "-c", "pass"], opts.rounds)
        helptime = median_seconds([*command, "--help"], opts.rounds)
        listtime = median_seconds([*command, "--conf", str(etc), "list", "repository"], opts.rounds)
    print(f"python -c pass                       {floor * 1000:7.1f} ms")
    print(f"pragma --help                        {helptime * 1000:7.1f} ms   ratio {helptime / floor:4.2f}x  (target < 4x)")
    print(f"pragma list repository ({opts.clusters} images) {listtime * 1000:7.1f} ms   ratio {listtime / floor:4.2f}x  (target < 4x)")


if __name__ == "__main__":
    main()
