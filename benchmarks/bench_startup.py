"""Start-up cost of the pragma command, as a ratio to a bare interpreter start.

Measures, in one run, the median wall time (and CPU time) of:
  * ``python -c pass``                      (the floor, the interpreter the ``pragma`` script runs on)
  * ``pragma --help``                       (target: under 2x the floor)
  * ``pragma list repository`` on a 1,000-cluster vcdb (local repository, fake driver; target under 2.5x)
and prints each one's ratio to the floor. Beside them, the same listing written
by hand as tightly as an expert would (:data:`HAND_LISTER`: the site file read
with ``ast``, the entry points of ``sys.path`` scanned, the vcdb read with each
name checked, the names printed; standard library only) -- run once as it is
once importing :mod:`logging` too, which pragma's contract requires (the
command logs through the standard ``logging``), and once importing as well
:mod:`typing` and :mod:`pathlib`, which a driver's module needs (``Driver`` is
generic over its config and state classes; paths are :class:`~pathlib.Path`):
what any implementation of that contract pays before its own code.

``pragma`` is the installed console script of this interpreter's environment
(``sysconfig``'s scripts directory), run directly -- not a version manager's
shim found on ``PATH`` (pyenv's ``shims/pragma`` is a shell script that runs
pyenv first, ~50 ms no site pays) -- and the floor is the interpreter named
on the script's ``#!`` line. Python's bytecode cache is used as installed:
``PYTHONDONTWRITEBYTECODE`` is removed from the commands' environment and an
untimed first run writes any missing cache file; the run says whether the
cache of ``pragma_core.cli`` is there.

With ``--imports`` it also prints, per command, the modules whose import
took longest (medians of ``python -X importtime``, cumulative milliseconds).
The CPU-time ratio is printed too: other jobs on a shared machine move it
much less than the wall time. With ``--instructions`` (needs valgrind) it
also counts the instructions each command executes (``callgrind``, one run
each, ~5 s per command): a measure no other job on the machine moves, for
comparing two versions of the code on a busy machine.

    python benchmarks/bench_startup.py [--rounds 21] [--clusters 1000] [--imports] [--instructions]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def installed_pragma() -> tuple[str, str]:
    """The installed ``pragma`` script and the interpreter on its ``#!`` line (not a shim)."""
    script = Path(sysconfig.get_path("scripts")) / "pragma"
    if not script.is_file():
        found = shutil.which("pragma")
        if found is None:
            raise SystemExit("bench_startup: no installed pragma script (pip install -e .)")
        script = Path(found)
    first = script.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    interpreter = first[2:].strip().split()[0] if first.startswith("#!") else ""
    if not interpreter or "python" not in Path(interpreter).name:
        raise SystemExit(f"bench_startup: {script} is not a Python console script (a shim?): pass the real one")
    return str(script), interpreter


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str], rounds: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``argv`` over ``rounds`` runs (after one untimed run)."""
    subprocess.run(argv, check=True, capture_output=True, env=ENV)  # page cache, bytecode cache
    walls, cpus = [], []
    for _ in range(rounds):
        cpu = children_cpu()
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=ENV)
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def import_profile(argv: list[str], interpreter: str, rounds: int, top: int = 14) -> list[tuple[float, str]]:
    """The ``top`` imports by median cumulative time (ms) of ``interpreter -X importtime argv``."""
    times: dict[str, list[int]] = defaultdict(list)
    for _ in range(rounds):
        err = subprocess.run([interpreter, "-X", "importtime", *argv], capture_output=True, text=True,
                             env=ENV, check=False).stderr
        for line in err.splitlines():
            if line.startswith("import time:") and "|" in line and "cumulative" not in line:
                _, cumulative, name = line[len("import time:"):].split("|")
                times[name.rstrip()].append(int(cumulative))
    ranked = sorted(((statistics.median(v) / 1000, k) for k, v in times.items()), reverse=True)
    return ranked[:top]


def instructions(argv: list[str]) -> int:
    """Instructions executed by ``argv`` (all its threads), counted by valgrind's callgrind."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
                          capture_output=True, text=True, env=ENV, check=False)
    for line in proc.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise SystemExit(f"bench_startup: callgrind gave no count for {argv[0]}: {proc.stderr.strip()[-200:]}")


#: ``pragma list repository`` by hand: what the command must do, and nothing else.
HAND_LISTER = r"""
import ast, os, re, sys
for module in sys.argv[2:]:
    __import__(module)
conf = os.path.join(sys.argv[1], "site_conf.conf")
with open(conf, encoding="utf-8") as fh:
    tree = ast.parse(fh.read(), conf)
settings = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}
repo = settings["repository_settings"]["repository_dir"]
for directory in sys.path:  # the entry points that name the repository and driver classes
    try:
        names = os.listdir(directory or ".")
    except OSError:
        continue
    for name in names:
        if name.endswith(".dist-info"):
            try:
                with open(os.path.join(directory, name, "entry_points.txt"), encoding="utf-8") as fh:
                    fh.read()
            except OSError:
                pass
valid = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
images = []
with open(os.path.join(repo, "vcdb.txt"), encoding="utf-8") as fh:
    for line in fh:
        name, _, xml = line.strip().partition(",")
        if valid.fullmatch(name) and xml:
            images.append(name)
sys.stdout.write("\n".join(["VIRTUAL IMAGE", *sorted(images)]) + "\n")
"""


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


def bytecode_cached(interpreter: str) -> str:
    """Where the bytecode cache of ``pragma_core.cli`` would be, and whether it is there."""
    code = ("import importlib.util as u, pragma_core.cli as m, os; c = u.cache_from_source(m.__file__); "
            "print(c, os.path.exists(c))")
    out = subprocess.run([interpreter, "-c", code], capture_output=True, text=True, env=ENV, check=False).stdout
    return out.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--imports", action="store_true", help="also print the slowest imports of each command")
    parser.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    opts = parser.parse_args()
    pragma, interpreter = installed_pragma()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    print(f"pragma {pragma} (interpreter {interpreter}); load average {' '.join(load)}")
    with tempfile.TemporaryDirectory() as tmp:
        etc = make_site(Path(tmp), opts.clusters)
        listing = [pragma, "--conf", str(etc), "list", "repository"]
        out = subprocess.run(listing, capture_output=True, text=True, check=True, env=ENV)
        assert out.stdout.count("\n") == opts.clusters + 1, "list repository must print every cluster"
        print(f"bytecode cache of pragma_core.cli: {bytecode_cached(interpreter)}")
        hand = Path(tmp) / "hand_lister.py"
        hand.write_text(HAND_LISTER)
        by_hand = [interpreter, str(hand), str(etc)]
        assert subprocess.run(by_hand, capture_output=True, text=True, check=True).stdout == out.stdout, \
            "the hand-written lister must print what pragma prints"
        floor = measure([interpreter, "-c", "pass"], opts.rounds)
        helptime = measure([pragma, "--help"], opts.rounds)
        listtime = measure(listing, opts.rounds)
        handtime = measure(by_hand, opts.rounds)
        handlogtime = measure([*by_hand, "logging"], opts.rounds)
        handcontract = measure([*by_hand, "logging", "typing", "pathlib"], opts.rounds)
        rows = [("python -c pass", floor, None), ("pragma --help", helptime, 2.0),
                (f"pragma list repository ({opts.clusters} images)", listtime, 2.5),
                ("  the same, by hand", handtime, None),
                ("  the same, by hand, importing logging", handlogtime, None),
                ("  ... and typing and pathlib", handcontract, None)]
        print(f"{'':40} {'wall':>8} {'ratio':>7} {'CPU':>8} {'ratio':>7}")
        for label, (wall, cpu), target in rows:
            goal = f"   (target < {target}x)" if target else ""
            print(f"{label:40} {wall * 1000:6.1f}ms {wall / floor[0]:6.2f}x {cpu * 1000:6.1f}ms {cpu / floor[1]:6.2f}x{goal}")
        print(f"pragma list repository / by hand with logging, typing and pathlib:"
              f" {listtime[0] / handcontract[0]:.2f}x wall, {listtime[1] / handcontract[1]:.2f}x CPU")
        if opts.instructions:
            counts = [(label, instructions(argv)) for label, argv in (
                ("python -c pass", [interpreter, "-c", "pass"]), ("pragma --help", [interpreter, pragma, "--help"]),
                (f"pragma list repository ({opts.clusters} images)", [interpreter, *listing]))]
            print("\ninstructions executed (callgrind):")
            for label, count in counts:
                print(f"{label:40} {count / 1e6:8.1f} M {count / counts[0][1]:6.2f}x")
        if opts.imports:
            rounds = max(3, opts.rounds // 3)
            for label, argv in (("python -c pass", ["-c", "pass"]), ("pragma --help", [pragma, "--help"]),
                                ("pragma list repository", listing[:])):
                print(f"\nslowest imports of {label} (cumulative ms, median of {rounds}):")
                for ms, name in import_profile(argv, interpreter, rounds):
                    print(f"  {ms:7.1f}  {name}")


if __name__ == "__main__":
    if importlib.util.find_spec("pragma_core") is None:
        sys.exit("bench_startup: pragma_core is not importable")
    main()
