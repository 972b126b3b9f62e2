"""Fault injection for the real ``pragma`` command: signal it at a chosen point, then check what is left.

Used by ``tests/hostile/test_signals.py`` (fake driver, http repository) and
``plugins/pragma_kvm_rocks/tests/test_signals_libvirtd.py`` (the real libvirtd).

* :class:`Probe` is a hook plugin the child process loads (a ``.dist-info`` put
  on its ``PYTHONPATH``): it appends every ``pragma_stage_event`` to a file,
  and can *hold* the command at one event until the test lets it go. Nothing
  in pragma itself is instrumented.
* :func:`run_trial` starts ``pragma`` as a child process, waits for a point
  (a stage event, or any condition the test gives, such as a request reaching
  the test's HTTP server), then a seeded random delay, sends the signal and
  waits for the end. :func:`judge` applies the rules:

  - SIGTERM / SIGHUP: exit status 128 + n with exactly one ``Error:`` line,
    naming the signal -- or exit 0 when the command finished first. What the
    command completed (exit 0, or an ``Error:`` line saying a cluster "was
    booted before it") is undone with ``pragma shutdown`` / ``pragma clean``;
    then nothing may be left.
  - SIGKILL: no handler runs, so the test's ``recover`` does what pragma
    offers for that (``pragma clean`` of every listed cluster, or the
    command run again); then no cluster, domain, disk, record or
    reservation may be left. A temporary file the killed process was
    writing (``leftovers`` reports it as ``temporary file left: ...``) is
    recorded as a note, not a failure: nothing can remove it in a killed
    process, and the summary lists each one.

Every trial is counted in :data:`TALLY`; :func:`register_report` makes pytest
print ``fault injection: N trials, N clean (K SIGKILL, T SIGTERM, H SIGHUP)``
with the seed at the end of the run. ``PRAGMA_FAULT_SEED=N`` replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The signals every fault-injection test sends.
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGHUP)

#: Seed of this run's random points and delays (``PRAGMA_FAULT_SEED`` to replay one).
SEED = int(os.environ.get("PRAGMA_FAULT_SEED") or random.SystemRandom().randrange(1, 1_000_000))

#: Upper bound that only detects a hang: no trial is timed.
HANG = 120.0

#: How ``leftovers`` callbacks start the report of a temporary or half-written file.
TEMPORARY_LEFT = "temporary file left: "

_PROBE = '''\
"""faultkit probe: records pragma's stage events; can hold the command at one of them."""
import os
import time

from pragma_core import hookimpl


@hookimpl
def pragma_stage_event(event):
    point = f"{event.stage}:{event.status}"
    path = os.environ.get("FAULTKIT_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{point} {event.allocation or '-'}\\n")
    hold, _, release = os.environ.get("FAULTKIT_HOLD", "").partition("=")
    if hold == point:
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
'''


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


# --------------------------------------------------------------------------- the probe


class Probe:
    """A hook plugin for child ``pragma`` processes, installed in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "faultkit_probe.py").write_text(_PROBE)
        dist = directory / "faultkit_probe-1.0.dist-info"
        dist.mkdir(exist_ok=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: faultkit-probe\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text("[pragma.plugins]\nfaultkit-probe = faultkit_probe\n")
        self.events = directory / "events.log"
        self.release = directory / "release"

    def env(self, *, hold: str | None = None, tmpdir: Path | None = None, **extra: str) -> dict[str, str]:
        """The child's environment: the probe on ``PYTHONPATH``, a fresh event file, ``hold`` at a point."""
        self.events.unlink(missing_ok=True)
        self.release.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.directory), env.get("PYTHONPATH", "")) if p)
        env["FAULTKIT_EVENTS"] = str(self.events)
        env.pop("FAULTKIT_HOLD", None)
        if hold:
            env["FAULTKIT_HOLD"] = f"{hold}={self.release}"
        if tmpdir is not None:
            tmpdir.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(tmpdir)
        env.update(extra)
        return env

    def seen(self) -> list[str]:
        """The events the child announced so far: ``"deploy:start vc1"``..."""
        try:
            return self.events.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def reached(self, point: str) -> Callable[[], bool]:
        """A condition: the child announced ``point`` (``stage:status``)."""
        return lambda: any(line.split()[0] == point for line in self.seen() if line.strip())

    def let_go(self) -> None:
        """Release a child held at its ``hold`` point."""
        self.release.write_text("go\n")


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Trial:
    """One planned trial: which signal, at which point, how long after it, holding the child there or not."""

    label: str
    signum: int
    point: str
    delay: float = 0.0
    hold: bool = False
    number: int = 0

    @property
    def id(self) -> str:
        """The test id: the same in every process whatever the seed (pytest-xdist compares them)."""
        return f"{self.label}-{signal_name(self.signum)}-{self.number}"

    @property
    def where(self) -> str:
        """Where the signal lands: the point, and the hold or delay after it."""
        how = "held" if self.hold else f"+{self.delay * 1000:.0f}ms"
        return f"{self.point}{how}"


def plan(label: str, points: Sequence[str], *, per_signal: int, max_delay: float,
         hold: bool = True, signals: Iterable[int] = SIGNALS) -> list[Trial]:
    """``per_signal`` trials for each signal at points drawn from ``points`` (each point in turn first).

    Seeded with :data:`SEED` and ``label``: the same seed gives the same
    trials. With ``hold``, about half the trials at a stage event
    (``stage:status``) hold the child there (the signal lands exactly there);
    the others wait a random delay after their point.
    """
    rng = random.Random(f"{SEED}:{label}")
    trials = []
    for signum in signals:
        order = list(points)
        rng.shuffle(order)
        for i in range(per_signal):
            point = order[i % len(order)]
            held = hold and ":" in point and rng.random() < 0.5
            delay = 0.0 if held else round(rng.uniform(0, max_delay), 3)
            trials.append(Trial(label=label, signum=int(signum), point=point, delay=delay, hold=held, number=i))
    return trials


# --------------------------------------------------------------------------- running and judging


@dataclass
class Outcome:
    """What one trial did, and whether it ended clean."""

    trial: Trial
    code: int = 0
    stdout: str = ""
    stderr: str = ""
    sent: bool = False
    finished_first: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def stopped_in(self) -> str:
        """The last stage event the command announced before it stopped (rollback aside), or ``-``."""
        points = [line.split()[0] for line in self.events if line.strip() and not line.startswith("rollback")]
        return points[-1] if points else "-"

    def describe(self) -> str:
        t = self.trial
        lines = [f"trial {t.id} at {t.where} (seed {SEED}): exit {self.code}, signal {'sent' if self.sent else 'not sent'}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        lines += ["  stderr:", *("    " + line for line in self.stderr.splitlines()[-30:])]
        return "\n".join(lines)


def run_trial(trial: Trial, argv: Sequence[str], *, env: dict[str, str], ready: Callable[[], bool],
              probe: Probe | None = None, workdir: Path) -> Outcome:
    """Run ``argv``; once ``ready()`` (and ``trial.delay`` later) send ``trial.signum``; wait for the end.

    With ``trial.hold`` the child is held at ``trial.point`` by ``probe`` (its
    ``env`` must have been made with ``hold=trial.point``); it is released
    after the signal, so a signal that cannot interrupt it yet (SIGTERM in a
    section that defers it) is still delivered.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + HANG
            while not ready() and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{trial.id}: the point {trial.point} never came")
                time.sleep(0.002)
            if trial.delay and proc.poll() is None:
                time.sleep(trial.delay)
            sent = proc.poll() is None
            if sent:
                proc.send_signal(trial.signum)
            if trial.hold and probe is not None:
                probe.let_go()
            code = proc.wait(timeout=HANG)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return Outcome(trial=trial, code=code, stdout=out_path.read_text(), stderr=err_path.read_text(), sent=sent,
                   events=probe.seen() if probe is not None else [])


def judge(outcome: Outcome, *, undo: Callable[[Outcome], list[str]], recover: Callable[[Outcome], list[str]],
          leftovers: Callable[[], list[str]]) -> Outcome:
    """Apply the rules (module docstring) to ``outcome``; fill its problems and count it in :data:`TALLY`.

    ``undo(outcome)`` removes what a command that completed made; ``recover(outcome)``
    is what is done after SIGKILL; both return problems met. ``leftovers()``
    lists anything still allocated or half-made.
    """
    trial = outcome.trial
    name = signal_name(trial.signum)
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("Error:")]
    if trial.signum == signal.SIGKILL:
        if outcome.code == 0:
            outcome.finished_first = True
        elif outcome.code != -signal.SIGKILL:
            outcome.problems.append(f"exit {outcome.code}, expected -9 (killed) or 0")
        outcome.problems += recover(outcome)
    else:
        if outcome.code == 0:
            outcome.finished_first = True
            if errors:
                outcome.problems.append(f"exit 0 with {errors!r}")
            outcome.problems += undo(outcome)
        elif outcome.code == 128 + trial.signum:
            if len(errors) != 1:
                outcome.problems.append(f"{len(errors)} Error: lines, expected one: {errors!r}")
            elif f"interrupted by {name}" not in errors[0]:
                outcome.problems.append(f"the Error: line does not name {name}: {errors[0]!r}")
            elif "was booted before it" in errors[0]:
                outcome.finished_first = True
                outcome.problems += undo(outcome)
        else:
            outcome.problems.append(f"exit {outcome.code}, expected {128 + trial.signum} or 0")
        if "Traceback" in outcome.stderr:
            outcome.problems.append("a traceback on stderr")
    for problem in leftovers():
        if trial.signum == signal.SIGKILL and problem.startswith(TEMPORARY_LEFT):
            outcome.notes.append(f"SIGKILL left {problem[len(TEMPORARY_LEFT):]} (nothing removes it)")
        else:
            outcome.problems.append(problem)
    TALLY.add(outcome)
    return outcome


# --------------------------------------------------------------------------- the tally


@dataclass
class Tally:
    """Every trial of the run, for the summary line."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def summary(self) -> list[str]:
        if not self.outcomes:
            return []
        by = {s: sum(1 for o in self.outcomes if o.trial.signum == s) for s in SIGNALS}
        clean = sum(1 for o in self.outcomes if o.clean)
        first = sum(1 for o in self.outcomes if o.finished_first)
        lines = [
            f"fault injection: {len(self.outcomes)} trials, {clean} clean"
            f" ({by[signal.SIGKILL]} SIGKILL, {by[signal.SIGTERM]} SIGTERM, {by[signal.SIGHUP]} SIGHUP);"
            f" {first} finished before the signal took effect; seed {SEED} (PRAGMA_FAULT_SEED)"
        ]
        labels = sorted({o.trial.label for o in self.outcomes})
        for label in labels:
            mine = [o for o in self.outcomes if o.trial.label == label]
            where: dict[str, int] = {}
            for o in mine:
                where[o.stopped_in] = where.get(o.stopped_in, 0) + 1
            stops = ", ".join(f"{k} {v}" for k, v in sorted(where.items()) if k != "-")
            lines.append(f"  {label}: {len(mine)} trials, {sum(o.clean for o in mine)} clean"
                         + (f"; last stage event: {stops}" if stops else ""))
        notes = sorted({n for o in self.outcomes for n in o.notes})
        lines += [f"  note: {n}" for n in notes]
        lines += [o.describe() for o in self.outcomes if not o.clean]
        return lines


TALLY = Tally()


class _Reporter:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in TALLY.summary():
            terminalreporter.write_line(line)


def register_report(config: Any) -> None:
    """Make pytest print :data:`TALLY`'s summary at the end of the run (once per run)."""
    if not config.pluginmanager.has_plugin("faultkit-report"):
        config.pluginmanager.register(_Reporter(), "faultkit-report")


# --------------------------------------------------------------------------- helpers


def pragma(etc: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``pragma --conf ETC ARGS`` (no probe) and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "pragma_core.cli", "--conf", str(etc), *args],
        capture_output=True, text=True, timeout=HANG, check=False, env=env,
    )


def files_matching(directory: Path, *, prefixes: Iterable[str] = (), contains: Iterable[str] = (),
                   suffixes: Iterable[str] = ()) -> list[str]:
    """Paths under ``directory`` (relative) whose name starts, contains or ends as given."""
    if not directory.exists():
        return []
    prefixes, contains, suffixes = tuple(prefixes), tuple(contains), tuple(suffixes)
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.name.startswith(prefixes) or any(c in p.name for c in contains) or p.name.endswith(suffixes)
    )

