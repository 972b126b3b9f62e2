"""The ``pragma`` command: the legacy command-line contract, on an explicit registry.

``pragma WORDS... [ARGS...] [key=value...] [--conf DIR] [--json]``

Words select a command by longest prefix (``list cluster``); ``key=value``
arguments are parameters, everything else fills the command's positional
arguments *from the front* (a negative number such as ``-1`` is an argument,
not an option). ``pragma <command> help`` explains one command,
``pragma help [words]`` and ``pragma list help [subdir=...]`` list them, and a
bare ``pragma`` is ``pragma list help``. Every command takes ``loglevel=`` and
``logfile=`` (:data:`COMMON_PARAMS`); logging is set up once per command, by
:func:`_setup_logging`.

Exit status: 0 success, 1 error (one ``Error: ...`` line on stderr; the
traceback only with ``loglevel=DEBUG``), 2 usage error, 128 + N after signal
N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: what was allocated is rolled back,
see :mod:`pragma_core.signals`), 141 (128 + SIGPIPE)
when standard output was closed before everything was written
(``pragma list repository | head -1``): nothing more is printed then.

Progress: when standard error is a terminal and ``--json`` is not given,
long commands (``boot``, ``stage``) print each stage as it starts and ends,
and node counts, on standard error (:mod:`pragma_core.progress`).

Names come first: every ``vc-name`` argument is checked with
:func:`pragma_core.vcdb.is_valid_name` before the command runs, so nothing
(not even a log file) is made from a name that could leave its directory.
Every text echoed to the terminal or a log goes through
:func:`pragma_core.printable.printable`: control characters are escaped.

This module imports no driver or SDK at start-up: drivers and repositories
are loaded by name only by the commands that need them.
"""

from __future__ import annotations

import os
import re
import sys

from . import __version__
from .errors import PragmaError, UsageError
from .printable import ERROR_LINE_LIMIT, printable
from .wording import closest, plural

# What only a type checker needs; at run time ``--help`` and ``--version`` import no more than the above
# (not :mod:`typing`, :mod:`logging` or :mod:`pathlib`: see benchmarks/bench_startup.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    import logging
    from typing import Any, NoReturn, TextIO

    from .commandlog import LogFile
    from .config import SiteConfig
    from .hooks import Hooks
    from .interfaces import Driver, Repository
    from .model import ClusterReadiness, ClusterStatus
    from .pipeline import Pipeline
    from .site import Site


def _log() -> logging.Logger:
    """This module's logger (logging is set up, and imported, once a command runs)."""
    import logging

    return logging.getLogger("pragma_core.cli")

_PARAM = re.compile(r"^([A-Za-z0-9_+-]+)=(.*)$", re.DOTALL)
#: A negative number: an argument (``boot demo -1`` -> "must be >= 0"), never an option.
_NEGATIVE = re.compile(r"^-[0-9][0-9.]*$")
#: Arguments that name an image or a cluster: checked before any command runs.
_NAME_ARGS = frozenset({"vc-name"})
#: Exit status when standard output is closed early (128 + SIGPIPE, as a shell reports it).
EXIT_OUTPUT_CLOSED = 141
#: Longest readiness detail printed (it is a guest's console text).
_DETAIL_LIMIT = 400
_WRITE_BLOCK = 1024  # characters per write of a listing: well inside PIPE_BUF (4096 bytes) even for UTF-8


# --------------------------------------------------------------------------- registry


class Command:
    """One ``pragma`` command: its words, arguments, parameters, help and function."""

    def __init__(
        self,
        words: str,
        func: Callable[[Context, list[str], dict[str, str]], int],
        *,
        args: Sequence[tuple[str, bool, str]] = (),
        params: Sequence[tuple[str, str, str]] = (),
        description: str = "",
        examples: Sequence[tuple[str, str]] = (),
        json_output: bool = False,
        variadic: bool = False,
        usage: str | None = None,
        logs_itself: bool = False,
    ) -> None:
        self.words = words
        self.func = func
        self.args = list(args)  # (name, required, help)
        self.params = sorted(params)  # (name, type, help)
        self.description = description.strip()
        self.examples = list(examples)
        self.json_output = json_output
        self.variadic = variadic  # takes any number of arguments and parameters (plugin commands)
        self._usage = usage  # fixed usage text (plugin commands); else made from args and params
        self.logs_itself = logs_itself  # sets up logging itself, once its input is checked (a default log file)

    def usage(self) -> str:
        if self._usage is not None:
            return self._usage
        items = [f"{{{n}}}" if req else f"[{n}]" for n, req, _ in self.args]
        items += [f"[{n}={t}]" for n, t, _ in self.params]
        return " ".join(items)

    def line(self) -> str:
        usage = self.usage()
        return f"{self.words} {usage}".rstrip()

    def help(self) -> str:
        out = [f"pragma {self.line()}", "", "Description:"]
        out += [f"\t{line}" for line in self.description.splitlines()]
        if self.args:
            out += ["", "Arguments:"]
            for name, req, text in self.args:
                out += [f"\t{{{name}}}" if req else f"\t[{name}]", f"\t\t{text}"]
        if self.params:
            out += ["", "Parameters:"]
            for name, typ, text in self.params:
                out += [f"\t[{name}={typ}]", f"\t\t{text}"]
        declared = {name for name, _, _ in self.params}
        common = [(n, t, text) for n, t, text in COMMON_PARAMS if n not in declared]
        if common and not self.variadic:
            out += ["", "Common parameters (every command):"]
            for name, typ, text in common:
                out += [f"\t[{name}={typ}]", f"\t\t{text}"]
        if self.json_output:
            out += ["", "Options:", "\t--json", "\t\tprint the result as JSON"]
        if self.examples:
            out += ["", "Examples:"]
            for cmd, text in self.examples:
                out += [f"\t$ pragma {cmd}", f"\t\t{text}"]
        return "\n".join(out) + "\n"


COMMANDS: dict[str, Command] = {}


def command(words: str, **kwargs: Any) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register a built-in command."""

    def decorate(func: Callable[..., int]) -> Callable[..., int]:
        COMMANDS[words] = Command(words, func, **kwargs)
        return func

    return decorate


# --------------------------------------------------------------------------- context


class OutputClosed(Exception):
    """Standard output was closed by its reader (``pragma ... | head``)."""


class _Output:
    """The command's output stream; a closed pipe becomes :class:`OutputClosed`.

    Only writes to this stream are treated so: a broken pipe anywhere else (a
    child process, a socket) stays the error it is.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise OutputClosed from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno...
        return getattr(self.stream, name)


class Context:
    """What a command runs with: options, output streams, and the site, loaded on demand."""

    def __init__(self, *, conf_dir: str | None, json_output: bool, out: TextIO, err: TextIO) -> None:
        self.conf_dir = conf_dir
        self.json = json_output
        self.out: TextIO = _Output(out)  # type: ignore[assignment]
        self.err = err
        self.debug = False
        self.log_files: list[LogFile] = []
        self._lib: Site | None = None

    @property
    def lib(self) -> Site:
        """The :class:`pragma_core.Site` every command works through (opened on first use).

        Its progress reporter prints stages on standard error when that is a
        terminal and ``--json`` is not given (:func:`pragma_core.progress.for_terminal`).
        """
        if self._lib is None:
            from .progress import for_terminal
            from .site import Site

            self._lib = Site.open(self.conf_dir, progress=for_terminal(self.err, json_output=self.json))
        return self._lib

    @property
    def site(self) -> SiteConfig:
        """The site's configuration."""
        return self.lib.config

    @property
    def hooks(self) -> Hooks:
        return self.lib.hooks

    @property
    def driver(self) -> Driver:
        return self.lib.driver

    @property
    def repository(self) -> Repository:
        return self.lib.repository

    def pipeline(self, *, driver: bool = True) -> Pipeline:
        return self.lib.pipeline(driver=driver)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def print_lines(self, lines: Iterable[str]) -> None:
        """Print many lines, a few KiB per write.

        No write is larger than a pipe writes at once (``PIPE_BUF``): with an
        unbuffered standard output a larger one can be cut short silently.
        A reader that leaves early is still noticed (exit 141).
        """
        block: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) >= _WRITE_BLOCK and block:
                self.out.write("".join(block))
                block, size = [], 0
            block.append(f"{line}\n")
            size += len(line) + 1
        if block:
            self.out.write("".join(block))

    def print_json(self, value: Any) -> None:
        import json

        json.dump(value, self.out, indent=2, sort_keys=True, default=str)
        self.out.write("\n")


# --------------------------------------------------------------------------- parsing helpers


def _cut(word: str, limit: int = 40) -> str:
    """``word`` shortened for a message (unquoted)."""
    return word if len(word) <= limit else f"{word[:limit]}... ({len(word)} characters)"


# --------------------------------------------------------------------------- output


def format_clusters(clusters: Sequence[ClusterStatus]) -> list[str]:
    """The ``list cluster`` table: legacy columns first, aligned, then private IP, host, vCPUs, memory."""
    rows = [["FRONTEND", "COMPUTE NODES", "STATUS", "PUBLIC IP", "PRIVATE IP", "HOST", "VCPUS", "MEMORY"]]
    for cluster in clusters:
        for node in cluster.nodes:
            if node.role == "frontend":
                first, second, ip = f"{cluster.name}:", "-" * 16, node.public_ip or cluster.public_ip or "-" * 15
            else:
                first, second, ip = ":", node.name, "-" * 15
            memory = f"{node.memory_mib} MiB" if node.memory_mib else "-"
            cells = [first, second, node.state, ip, node.private_ip or "-", node.host or "-", str(node.cpus or "-"), memory]
            rows.append([printable(str(cell)) for cell in cells])  # driver and server texts
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _cluster_json(cluster: ClusterStatus) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "public_ip": cluster.public_ip,
        "nodes": [
            {
                "name": n.name,
                "role": n.role,
                "state": n.state,
                "host": n.host,
                "cpus": n.cpus,
                "memory_mib": n.memory_mib,
                "public_ip": n.public_ip,
                "private_ip": n.private_ip,
            }
            for n in cluster.nodes
        ],
    }


# --------------------------------------------------------------------------- commands

_LOG_PARAMS = [
    ("logfile", "string", "log file (default <log_directory>/<name>-<date>.log)"),
    ("loglevel", "string", "DEBUG, INFO (default), WARNING or ERROR; DEBUG also shows tracebacks"),
]
#: Parameters every command takes (boot and sync list them with their own defaults).
COMMON_PARAMS = [
    ("logfile", "string", "also log to this file (its directory must exist)"),
    ("loglevel", "string", ("DEBUG, INFO, WARNING or ERROR: the log file's level (default INFO), or without one"
                            " stderr's (default WARNING); DEBUG also shows tracebacks")),
]


@command(
    "boot",
    args=[
        ("vc-name", True, "name of the virtual cluster image in the repository (pragma list repository)"),
        ("num-cpus", True, "number of CPUs for compute nodes; 0 boots the frontend only"),
    ],
    params=[
        ("add-iface", "string", "extra networks for every node: net[:cidr][,net2[:cidr]] (cidr host part = first address)"),
        ("enable-ent", "boolean", "add each node an interface on the network named by the driver's ent setting"),
        ("enable-ipop-client", "string", "not supported (refused)"),
        ("enable-ipop-server", "string", "not supported (refused)"),
        ("key", "string", "SSH public key file for root on the nodes (default ~/.ssh/id_rsa.pub)"),
        ("mem", "string", "memory in MiB: N for every node, or FRONTEND:COMPUTE (also spelled memory=)"),
        ("wait", "seconds", ("after booting, wait up to this long for every node to be ready; print one line per node"
                             " (node ready|timeout|... detail) and exit 1 if any is not")),
        *_LOG_PARAMS,
    ],
    description="""Boot a virtual cluster: stage its images, allocate a frontend and
enough compute nodes for num-cpus, write each node's vc-out.xml and start
the nodes. On any failure everything made so far is rolled back.
With wait=SECONDS it then waits for the nodes to report ready (drivers that
support it) and exits 1 if one is not; the cluster stays booted either way.""",
    examples=[
        ("boot mycluster 8", "boot mycluster with 8 compute CPUs"),
        ("boot mycluster 0 mem=4096", "boot its frontend only, with 4 GiB"),
        ("boot mycluster 2 wait=300", "boot, then wait up to 5 minutes for every node to be ready"),
        ("boot mycluster 2 --json", "print the cluster's name, nodes and public IP as JSON"),
    ],
    json_output=True,
    logs_itself=True,
)
def _boot(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    from .request import parse_wait, request_from_params

    image, cpus = args
    request = request_from_params(image, cpus, params)
    wait = parse_wait(params.get("wait"))
    from .commandlog import default_logfile, setup_logging

    setup_logging(ctx, params, logfile=default_logfile(ctx, params, image))
    _log().info("boot %s cpus=%d", image, request.cpus)
    booted = ctx.lib.boot(request, wait=wait)
    alloc, readiness = booted.allocation, booted.readiness
    if ctx.json:
        data: dict[str, Any] = {"cluster": alloc.cluster, "frontend": alloc.frontend.name, "computes": [n.name for n in alloc.computes],
                "public_ip": str(alloc.public_ip) if alloc.public_ip else None, "vcout_format": booted.vcout_format}
        if readiness is not None:
            data["ready"] = {n.node: "ready" if n.ready else f"{n.state.value}: {n.detail}" for n in readiness.nodes}
        ctx.print_json(data)
    else:
        cpus_total = sum(n.cpus for n in alloc.computes)
        computes = f"{plural(len(alloc.computes), 'compute node')} ({plural(cpus_total, 'CPU')})"
        ctx.print(printable(f"Cluster {alloc.cluster} booted: frontend {alloc.frontend.name}, {computes}"))
        for line in format_clusters(ctx.lib.clusters(alloc.cluster)):
            ctx.print(line)
        if readiness is not None:
            for line in format_readiness(readiness):
                ctx.print(line)
    if readiness is not None and not readiness.ready:
        _report_error(ctx.err, f"cluster {alloc.cluster}: node(s) not ready after {wait:g} s: {', '.join(readiness.not_ready)}")
        return 1
    return 0


def format_readiness(readiness: ClusterReadiness | Mapping[str, str]) -> list[str]:
    """One line per node: ``NODE  ready`` or ``NODE  STATE  DETAIL`` (``timeout``, ``failed``, ``stopped``)."""
    from .model import ClusterReadiness

    if not isinstance(readiness, ClusterReadiness):
        readiness = ClusterReadiness.from_mapping("", readiness)
    rows = [(printable(n.node), n.state.value, printable(n.detail, limit=_DETAIL_LIMIT)) for n in readiness.nodes]  # guest console text
    width = max((len(node) for node, _, _ in rows), default=0)
    return [f"{node.ljust(width)}  {state}  {detail}".rstrip() for node, state, detail in rows]


@command(
    "clean",
    args=[("vc-name", True, "name of the virtual cluster")],
    params=[("force", "boolean", "power off the cluster's running nodes first, at once (also spelled --force)")],
    description="""Remove a shut-down virtual cluster: its nodes, disks and allocation.
A cluster with a running node is refused, unless force=true: then its nodes
are powered off (no graceful shutdown) and it is removed, in one command.""",
    examples=[("clean vc-a", "remove cluster vc-a"), ("clean vc-a force=true", "power off and remove vc-a")],
)
def _clean(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    (name,) = args
    from .request import parse_bool

    force = parse_bool("force", params.get("force", "false"))
    ctx.print(f"Removing virtual cluster {name}")
    ctx.lib.clean(name, force=force)
    ctx.print(f"Cluster {name} is successfully removed")
    return 0


@command(
    "shutdown",
    args=[("vc-name", True, "name of the virtual cluster")],
    description="Shut down every node of a virtual cluster (forced off after a timeout).",
    examples=[("shutdown vc-a", "shut down cluster vc-a")],
)
def _shutdown(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    (name,) = args
    ctx.print(f"Shutting down virtual cluster {name}")
    ctx.lib.shutdown(name)
    ctx.print(f"Cluster {name} shut down")
    return 0


@command(
    "list cluster",
    args=[("vc-name", False, "only this virtual cluster")],
    description="List virtual clusters and the state of their nodes.",
    examples=[("list cluster", "all clusters"), ("list cluster vc-a --json", "one cluster, as JSON")],
    json_output=True,
)
def _list_cluster(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    clusters = ctx.lib.clusters(args[0] if args else None)
    if ctx.json:
        ctx.print_json([_cluster_json(c) for c in clusters])
        return 0
    ctx.print_lines(format_clusters(clusters))
    return 0


@command(
    "list repository",
    description="List the virtual cluster images the site can boot.",
    examples=[("list repository", "one image name per line")],
    json_output=True,
)
def _list_repository(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    names = ctx.lib.images()
    if ctx.json:
        ctx.print_json(list(names))
        return 0
    ctx.print_lines(["VIRTUAL IMAGE", *(printable(name) for name in names)])
    return 0


@command(
    "sync repository",
    params=_LOG_PARAMS,
    description="Bring the local repository up to date with the remote one (for cron).",
    examples=[("sync repository", "sync now")],
    logs_itself=True,
)
def _sync_repository(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    from .commandlog import default_logfile, setup_logging

    setup_logging(ctx, params, logfile=default_logfile(ctx, params, "sync"))
    changed = ctx.lib.sync()
    _log().info("sync finished: %s", "changed" if changed else "nothing changed")
    return 0


@command(
    "stage",
    args=[("vc-name", True, "name of the virtual cluster image")],
    description="Stage a cluster's images into the cache without booting it\n(run it from cron to pre-warm), and print the ready image paths.",
    examples=[("stage mycluster", "stage mycluster's images")],
    json_output=True,
)
def _stage(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    staged = ctx.lib.stage(args[0])
    images = {"frontend": staged.frontend, "compute": staged.compute}
    if ctx.json:
        ctx.print_json({role: {"path": str(img.path), "format": img.format, "virtual_size": img.virtual_size} for role, img in images.items()})
        return 0
    for role, img in images.items():
        ctx.print(f"{role}: {img.path}")
    return 0


@command(
    "plugins",
    description="List installed drivers, repositories and hook plugins with their status.",
    examples=[("plugins --json", "as JSON")],
    json_output=True,
)
def _plugins(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    from .plugins import list_plugins

    report = list_plugins()
    if ctx.json:
        ctx.print_json([p.as_dict() for p in report])
        return 0
    rows = [["GROUP", "NAME", "DISTRIBUTION", "VERSION", "STATUS"]]
    for p in report:
        status = p.status if not p.reason else f"{p.status}: {p.reason}"
        rows.append([printable(str(cell)) for cell in (p.group, p.name, p.distribution, p.version, status)])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        ctx.print("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[4]]).rstrip())
    return 0


@command(
    "help",
    args=[("words", False, "show only commands containing these words")],
    variadic=True,
    description="List pragma commands, or those that contain the given words.",
    examples=[("help list", "the list commands")],
)
def _help(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    text = " ".join(args)
    for line in _help_lines(ctx, "", wrap=0):
        if text in line:
            ctx.print(line)
    return 0


@command(
    "list help",
    params=[("subdir", "string", "only commands under these words, e.g. subdir=list")],
    description="List pragma commands with their usage.",
    examples=[("list help", "every command")],
)
def _list_help(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    subdir = params.get("subdir", "").replace("/", " ").strip()
    cols = os.environ.get("COLUMNS", "80")
    width = int(cols) if cols.isdigit() else 80
    for line in _help_lines(ctx, subdir, wrap=width):
        ctx.print(line)
    return 0


def _all_commands(ctx: Context | None) -> dict[str, Command]:
    commands = dict(COMMANDS)
    if ctx is not None:
        commands.update(_plugin_commands(ctx))
    return commands


def _help_lines(ctx: Context | None, subdir: str, *, wrap: int) -> list[str]:
    lines = []
    for words, cmd in sorted(_all_commands(ctx).items()):
        if subdir and not (words == subdir or words.startswith(subdir + " ")):
            continue
        line = cmd.line()
        lines.extend(_wrap(line, wrap) if wrap else [line])
    return lines


def _wrap(line: str, width: int) -> list[str]:
    out: list[str] = []
    current = ""
    for token in line.split(" "):
        if current and len(current) + 1 + len(token) > width:
            out.append(current)
            current = "\t" + token
        else:
            current = f"{current} {token}" if current else token
    out.append(current)
    return out


_plugin_cache: dict[str, Command] | None = None
_USAGE_ARG = re.compile(r"([{\[])([A-Za-z0-9_-]+)[}\]]")


def _plugin_commands(ctx: Context) -> dict[str, Command]:
    """The commands hook plugins add through ``pragma_cli_commands``: :class:`Command` objects like the built-ins."""
    global _plugin_cache
    if _plugin_cache is not None:
        return _plugin_cache
    found: dict[str, Command] = {}

    def register(
        words: str,
        func: Callable[[list[str], dict[str, str], Context], int],
        *,
        usage: str | None = None,
        help: str = "",
        args: Sequence[tuple[str, bool, str]] | None = None,
        params: Sequence[tuple[str, str, str]] | None = None,
        examples: Sequence[tuple[str, str]] = (),
        json_output: bool = False,
    ) -> None:
        words = " ".join(words.split())
        other = _clash(words, COMMANDS) or (words if words in found else None)
        if not words or other is not None:
            origin = getattr(func, "__module__", None) or "a plugin"
            _log().warning("command %r from %s clashes with an existing command %r; ignored", words, origin, other)
            return
        if args is None:
            # the arguments its usage names ({required} [optional]): a {vc-name} is checked like a built-in's
            named = [(m.group(2), m.group(1) == "{", "") for m in _USAGE_ARG.finditer(usage or "")]
        else:
            named = list(args)

        def run_plugin_command(c: Context, a: list[str], p: dict[str, str]) -> int:
            return func(a, p, c)

        found[words] = Command(
            words, run_plugin_command, args=named, params=params or (), description=help, examples=examples,
            json_output=json_output, variadic=args is None and params is None, usage=usage,
        )

    if _has_hook_plugins():
        ctx.hooks.cli_commands(register)
    _plugin_cache = found
    return found


def _clash(words: str, builtins: Iterable[str]) -> str | None:
    """The built-in command ``words`` would hide or be hidden by (the same, a word prefix, an extension), if any."""
    for other in builtins:
        if words == other or other.startswith(words + " ") or words.startswith(other + " "):
            return other
    return None


def _has_hook_plugins() -> bool:
    from .plugins import HOOKS, claims

    return bool(claims(HOOKS))


# --------------------------------------------------------------------------- main


def _split_options(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The words, arguments and parameters, and the ``--`` options apart (``--`` ends the options)."""
    opts: dict[str, Any] = {"conf": None, "json": False, "version": False, "help": False, "force": False}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i + 1 :])
            break
        if arg.startswith("--conf"):
            if arg.startswith("--conf="):
                opts["conf"] = arg.split("=", 1)[1]
            elif arg == "--conf":
                if i + 1 >= len(argv):
                    raise UsageError("--conf needs a directory")
                opts["conf"] = argv[i + 1]
                i += 1
            else:
                raise UsageError(f"unknown option {_cut(arg)}")
            if not opts["conf"]:
                raise UsageError("--conf needs a directory (--conf DIR), not an empty name")
        elif arg == "--json":
            opts["json"] = True
        elif arg == "--force":
            opts["force"] = True
        elif arg == "--version":
            opts["version"] = True
        elif arg in ("--help", "-h"):
            opts["help"] = True
        elif arg.startswith("-") and len(arg) > 1 and not _PARAM.match(arg) and not _NEGATIVE.match(arg):
            raise UsageError(f"unknown option {_cut(arg)} (options: --conf DIR, --json, --force, --version, --help)")
        else:
            rest.append(arg)
        i += 1
    return rest, opts


def _resolve(ctx: Context, words: list[str]) -> tuple[Command | None, list[str]]:
    """The command ``words`` start with (longest prefix) and the words left.

    Built-ins first, so that running one loads no plugin; a plugin command
    never hides or extends a built-in one (:func:`_clash`), so this is the
    longest prefix over both.
    """
    cmd, rest = _longest_prefix(COMMANDS, words)
    if cmd is None and words:
        cmd, rest = _longest_prefix(_plugin_commands(ctx), words)
    return cmd, rest


def _longest_prefix(commands: dict[str, Command], words: list[str]) -> tuple[Command | None, list[str]]:
    for count in range(len(words), 0, -1):
        key = " ".join(words[:count])
        if key in commands:
            return commands[key], words[count:]
    return None, words


def _split_params(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    args: list[str] = []
    params: dict[str, str] = {}
    for token in tokens:
        match = _PARAM.match(token)
        if match:
            params[match.group(1)] = match.group(2)
        else:
            args.append(token)
    return args, params


def run(argv: Sequence[str], *, out: TextIO, err: TextIO) -> int:
    """Run one ``pragma`` command line; return its exit status."""
    ctx = Context(conf_dir=None, json_output=False, out=out, err=err)
    try:
        return _dispatch(ctx, list(argv))
    except OutputClosed:
        return EXIT_OUTPUT_CLOSED
    except PragmaError as exc:
        _report_error(err, str(exc), debug=ctx.debug)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM/SIGHUP too (pragma_core.signals.Interrupted)
        _report_error(err, str(exc) or "interrupted")
        return getattr(exc, "exit_code", 130)
    except Exception as exc:
        _report_error(err, f"internal error: {type(exc).__name__}: {exc} (run with loglevel=DEBUG for details)", debug=ctx.debug)
        return 1
    finally:
        if ctx.log_files:
            from .commandlog import close_log_files

            close_log_files(ctx)


def _report_error(err: TextIO, message: str, *, debug: bool = False) -> None:
    """Write the one ``Error: ...`` line of a failed command (at DEBUG, the traceback before it).

    Every error the command reports goes through here. Control characters
    are escaped and a very long message is cut, so a hostile name or server
    text cannot forge lines. A closed stderr is ignored: the exit status
    still tells.
    """
    from .redaction import redact

    try:
        if debug:
            import traceback

            err.write(printable(redact(traceback.format_exc()), keep="\n"))
        err.write(f"Error: {printable(redact(message), limit=ERROR_LINE_LIMIT)}\n")
        err.flush()
    except (OSError, ValueError):  # ValueError: stderr already closed
        pass


def _dispatch(ctx: Context, argv: list[str]) -> int:
    """Parse the command line, check it (names first), run the command; errors propagate."""
    tokens, opts = _split_options(argv)
    ctx.conf_dir, ctx.json = opts["conf"], opts["json"]
    if opts["version"]:
        ctx.print(f"pragma {__version__}")
        return 0
    if opts["help"]:
        # built-in commands only: --help stays fast and imports no plugin
        ctx.print_lines([
            "usage: pragma COMMAND [ARGS...] [key=value...] [--conf DIR] [--json]",
            "",
            *_help_lines(None, "", wrap=80),
            "",
            "Every command also takes loglevel=LEVEL and logfile=FILE. 'pragma COMMAND help'",
            "explains one command; 'pragma list help' also lists commands added by plugins;",
            "--version prints the version.",
        ])
        return 0
    if not tokens:
        tokens = ["list", "help"]
    if len(tokens) == 1 and " " in tokens[0].strip():
        tokens = tokens[0].split()  # legacy quoted form: pragma "list repository"
    words, params = _split_params(tokens)
    cmd, rest = _resolve(ctx, words)
    if cmd is None:
        prefix = [w for w in COMMANDS if w.startswith(words[0] + " ")] if words else []
        if prefix:
            for line in _help_lines(ctx, words[0], wrap=80):
                ctx.err.write(line + "\n")
            return 2
        raise UsageError(f'invalid pragma command "{_cut(words[0] if words else tokens[0])}"')
    if rest[:1] == ["help"]:
        ctx.out.write(cmd.help())
        return 0
    if opts["force"]:
        params = _force_param(cmd, params)
    _check_command_line(ctx, cmd, rest, params)
    if "loglevel" in params and params["loglevel"].upper() == "DEBUG":
        ctx.debug = True
    if not cmd.logs_itself:
        from pathlib import Path

        from .commandlog import setup_logging

        setup_logging(ctx, params, logfile=Path(params["logfile"]) if params.get("logfile") else None)
    code = cmd.func(ctx, rest, params)
    if ctx.log_files:
        from .commandlog import check_log_files

        check_log_files(ctx)
    return code


def _force_param(cmd: Command, params: dict[str, str]) -> dict[str, str]:
    """``--force`` as the ``force=true`` parameter, for a command that has one."""
    if "force" not in {name for name, _, _ in cmd.params}:
        raise UsageError(f"--force is not available for '{cmd.words}'")
    if "force" in params:
        raise UsageError("give --force or force=, not both")
    return {**params, "force": "true"}


def _check_command_line(ctx: Context, cmd: Command, rest: list[str], params: dict[str, str]) -> None:
    """Options, parameters, argument count, and every name argument -- before anything runs."""
    from .request import parse_bool, quote
    from .vcdb import invalid_name, is_valid_name

    if ctx.json and not cmd.json_output:
        raise UsageError(f"--json is not available for '{cmd.words}'")
    known = {name for name, _, _ in [*cmd.params, *COMMON_PARAMS]} | ({"memory"} if cmd.words == "boot" else set())
    unknown = sorted(set(params) - known)
    if unknown and not cmd.variadic:
        near = closest(unknown[0], sorted(known))
        guess = f"; did you mean {near}=?" if near is not None else ""
        raise UsageError(f"unknown parameter {_cut(unknown[0])}= for '{cmd.words}'{guess} (usage: pragma {cmd.line()})")
    for name, typ, _help in cmd.params:
        if typ == "boolean" and name in params:
            parse_bool(name, params[name])
    need = [name for name, required, _ in cmd.args if required]
    if len(rest) < len(need):
        missing = need[len(rest)]
        raise UsageError(f"missing argument {{{missing}}} (usage: pragma {cmd.line()})")
    if len(rest) > len(cmd.args) and not cmd.variadic:
        raise UsageError(f"unexpected argument {quote(rest[len(cmd.args)])} (usage: pragma {cmd.line()})")
    for (arg, _required, _help), value in zip(cmd.args, rest):
        if arg in _NAME_ARGS and not is_valid_name(value):
            raise UsageError(invalid_name(value, arg))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``pragma``."""
    args = sys.argv[1:] if argv is None else list(argv)
    out, err = sys.stdout or _devnull(), sys.stderr or _devnull()
    if _prints_only(args):  # nothing to log and nothing to roll back: no logging, no signal handlers
        return _flush_stdout(run(args, out=out, err=err))
    from .commandlog import log_to_stderr
    from .signals import run_main

    log_to_stderr()
    # SIGTERM and SIGHUP roll back like Ctrl-C and exit 128 + signal number (pragma_core.signals)
    return _flush_stdout(run_main(run, args, out=out, err=err))


def console() -> NoReturn:
    """The ``pragma`` console script: :func:`main`, then a quick exit with its status.

    Once the command has returned, its output is flushed and the exit
    handlers have run (log files closed, temporary directories removed), the
    process ends without the interpreter tearing down every module and
    object one by one: 40-80 ms after a boot, most of what follows the
    command's last line. The normal exit is kept while another non-daemon
    thread still runs (it is waited for) and under a profiler or tracer
    (which writes its results at exit).
    """
    code = main()
    if sys.getprofile() is None and sys.gettrace() is None and _only_main_thread():
        import atexit

        atexit._run_exitfuncs()  # what the interpreter runs first at exit: logging.shutdown, finalizers
        code = _flush_stdout(code)
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)
    sys.exit(code)


def _only_main_thread() -> bool:
    """No thread but the main one and daemon threads is alive (``threading`` unused counts as none)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return True
    main_thread = threading.main_thread()
    return all(t is main_thread or t.daemon or not t.is_alive() for t in threading.enumerate())


def _prints_only(args: list[str]) -> bool:
    """``--help`` or ``--version``: the command line only prints built-in text."""
    try:
        opts = _split_options(args)[1]
    except UsageError:
        return False
    return bool(opts["help"] or opts["version"])


def _devnull() -> TextIO:
    return open(os.devnull, "w", encoding="utf-8")


def _flush_stdout(code: int) -> int:
    """Flush standard output; if its reader is gone, point it at /dev/null so that the
    interpreter's own flush at exit stays quiet, and exit with :data:`EXIT_OUTPUT_CLOSED`."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return code or EXIT_OUTPUT_CLOSED


if __name__ == "__main__":
    console()
