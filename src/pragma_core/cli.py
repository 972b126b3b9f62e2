"""The ``pragma`` command: the legacy command-line contract, on an explicit registry.

``pragma WORDS... [ARGS...] [key=value...] [--conf DIR] [--json]``

Words select a command by longest prefix (``list cluster``); ``key=value``
arguments are parameters, everything else fills the command's positional
arguments *from the front*. ``pragma <command> help`` explains one command,
``pragma help [words]`` and ``pragma list help [subdir=...]`` list them, and a
bare ``pragma`` is ``pragma list help``.

Exit status: 0 success, 1 error (one ``Error: ...`` line on stderr; the
traceback only with ``loglevel=DEBUG``), 2 usage error, 128 + N after signal
N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: what was allocated is rolled back,
see :mod:`pragma_core.signals`).

This module imports no driver or SDK at start-up: drivers and repositories
are loaded by name only by the commands that need them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .errors import PragmaError, UsageError

if TYPE_CHECKING:
    import pluggy

    from .config import SiteConfig
    from .interfaces import Driver, Repository
    from .model import BootRequest, ClusterStatus
    from .pipeline import Pipeline

log = logging.getLogger("pragma_core.cli")

_PARAM = re.compile(r"^([A-Za-z0-9_+-]+)=(.*)$", re.DOTALL)
_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")


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
    ) -> None:
        self.words = words
        self.func = func
        self.args = list(args)  # (name, required, help)
        self.params = sorted(params)  # (name, type, help)
        self.description = description.strip()
        self.examples = list(examples)
        self.json_output = json_output
        self.variadic = variadic  # takes any number of arguments and parameters (plugin commands)

    def usage(self) -> str:
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


class Context:
    """What a command runs with: options, output streams, and the site, loaded on demand."""

    def __init__(self, *, conf_dir: str | None, json_output: bool, out: TextIO, err: TextIO) -> None:
        self.conf_dir = conf_dir
        self.json = json_output
        self.out = out
        self.err = err
        self.debug = False
        self._site: SiteConfig | None = None
        self._hooks: pluggy.PluginManager | None = None
        self._driver: Driver | None = None
        self._repository: Repository | None = None

    @property
    def site(self) -> SiteConfig:
        if self._site is None:
            from .config import load_site_config

            self._site = load_site_config(self.conf_dir)
        return self._site

    @property
    def hooks(self) -> pluggy.PluginManager:
        if self._hooks is None:
            from .plugins import get_plugin_manager

            self._hooks = get_plugin_manager()
        return self._hooks

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            from .plugins import make_driver

            self._driver = make_driver(self.site)
        return self._driver

    @property
    def repository(self) -> Repository:
        if self._repository is None:
            from .plugins import make_repository

            self._repository = make_repository(self.site)
        return self._repository

    def pipeline(self, *, driver: bool = True) -> Pipeline:
        from .pipeline import Pipeline

        return Pipeline(
            site=self.site,
            driver=self.driver if driver else None,
            repository=self.repository,
            hooks=self.hooks,
        )

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def print_json(self, value: Any) -> None:
        json.dump(value, self.out, indent=2, sort_keys=True, default=str)
        self.out.write("\n")


# --------------------------------------------------------------------------- logging


def _setup_logging(ctx: Context, params: dict[str, str], *, logfile: Path | None = None, default_level: str = "INFO") -> None:
    """stderr at WARNING; with a log file (boot, sync) the file at ``loglevel``."""
    level_name = params.get("loglevel", default_level).upper()
    if level_name not in _LEVELS:
        raise UsageError(f"loglevel must be one of {', '.join(_LEVELS)}, not {params['loglevel']!r}")
    ctx.debug = level_name == "DEBUG"
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if ctx.debug else min(logging.INFO, getattr(logging, level_name)))
    for handler in root.handlers:
        handler.setLevel(logging.DEBUG if ctx.debug else logging.WARNING)
    if logfile is not None:
        try:
            logfile.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(logfile, encoding="utf-8")
        except OSError as exc:
            raise PragmaError(f"cannot open log file {logfile}: {exc.strerror}") from None
        handler.setLevel(getattr(logging, level_name))
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        root.addHandler(handler)


def _default_logfile(ctx: Context, params: dict[str, str], stem: str) -> Path:
    if params.get("logfile"):
        return Path(params["logfile"])
    log_dir = ctx.site.require("log_directory")
    return Path(log_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.log"


# --------------------------------------------------------------------------- parsing helpers


def _parse_cpus(value: str) -> int:
    if not re.fullmatch(r"\d+", value.strip()):
        raise UsageError(f"number of CPUs must be a whole number >= 0, not {value!r}")
    return int(value)


def parse_memory(value: str | None) -> Any:
    """``mem=N`` (both) or ``mem=FRONTEND:COMPUTE``, in MiB."""
    from .model import MemorySpec

    if value is None or value == "":
        return MemorySpec()
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", value)
    if not match:
        raise UsageError(f"mem must be N or FRONTEND:COMPUTE in MiB (e.g. 4096:2048), not {value!r}")
    fe = int(match.group(1))
    compute = int(match.group(2)) if match.group(2) is not None else fe
    if fe <= 0 or compute <= 0:
        raise UsageError(f"mem must be positive, not {value!r}")
    return MemorySpec(frontend_mib=fe, compute_mib=compute)


def parse_add_iface(value: str | None) -> tuple[Any, ...]:
    """``add-iface=net[:cidr],net2[:cidr]``."""
    import ipaddress

    from .model import InterfaceRequest

    if not value:
        return ()
    result = []
    seen = set()
    for item in (s.strip() for s in value.split(",")):
        if not item:
            continue
        name, _, cidr = item.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UsageError(f"add-iface: invalid network name {name!r}")
        if name in seen:
            raise UsageError(f"add-iface: network {name!r} given twice")
        seen.add(name)
        iface = None
        if cidr:
            try:
                iface = ipaddress.IPv4Interface(cidr)
            except ValueError:
                raise UsageError(f"add-iface: {cidr!r} is not an IPv4 CIDR such as 10.102.0.0/24") from None
            if iface.network.prefixlen > 30:
                raise UsageError(f"add-iface: subnet {cidr} is too small")
        result.append(InterfaceRequest(network=name, cidr=iface))
    return tuple(result)


def read_key(value: str | None) -> str:
    """The SSH public key text from ``key=FILE`` or the user's default key."""
    if value:
        candidates = [Path(value).expanduser()]
    else:
        home = Path.home() / ".ssh"
        candidates = [home / "id_rsa.pub", home / "id_ed25519.pub", home / "id_ecdsa.pub"]
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise PragmaError(f"key: cannot read {path}: {exc}") from None
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not lines or not all(line.startswith(_KEY_TYPES) for line in lines):
            raise PragmaError(f"key: {path} is not an SSH public key file")
        return "\n".join(lines)
    if value:
        raise PragmaError(f"key: file not found: {candidates[0]}")
    raise PragmaError("no SSH public key found in ~/.ssh; give one with key=FILE")


def build_request(image: str, cpus: str, params: dict[str, str]) -> BootRequest:
    """Validate ``boot`` arguments into a :class:`~pragma_core.model.BootRequest`."""
    from .config import to_bool
    from .model import BootRequest

    for ipop in ("enable-ipop-client", "enable-ipop-server"):
        if params.get(ipop):
            raise PragmaError(f"IPOP is not supported ({ipop}={params[ipop]})")
    try:
        ent = to_bool(params.get("enable-ent", "false"))
    except ValueError:
        raise UsageError(f"enable-ent must be true or false, not {params['enable-ent']!r}") from None
    mem = params.get("mem", params.get("memory"))
    if "mem" in params and "memory" in params and params["mem"] != params["memory"]:
        raise UsageError("give mem= or memory=, not both")
    count = _parse_cpus(cpus)
    memory = parse_memory(mem)
    add_ifaces = parse_add_iface(params.get("add-iface"))
    level = params.get("loglevel", "INFO").upper()
    if level not in _LEVELS:
        raise UsageError(f"loglevel must be one of {', '.join(_LEVELS)}, not {params['loglevel']!r}")
    return BootRequest(
        image=image,
        cpus=count,
        key=read_key(params.get("key")),
        memory=memory,
        add_ifaces=add_ifaces,
        enable_ent=ent,
        params=params,
    )


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
            rows.append([first, second, node.state, ip, node.private_ip or "-", node.host or "-", str(node.cpus or "-"), memory])
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
    ],
)
def _boot(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    image, cpus = args
    request = build_request(image, cpus, params)
    wait = parse_wait(params.get("wait"))
    _setup_logging(ctx, params, logfile=_default_logfile(ctx, params, image))
    if wait is not None:
        _require_wait_ready(ctx.driver)  # refuse before booting anything
    log.info("boot %s cpus=%d", image, request.cpus)
    result = ctx.pipeline().boot(request)
    alloc = result.allocation
    readiness = _wait_ready(ctx, alloc.cluster, wait) if wait is not None else None
    if ctx.json:
        data: dict[str, Any] = {"cluster": alloc.cluster, "frontend": alloc.frontend.name, "computes": [n.name for n in alloc.computes],
                "public_ip": str(alloc.public_ip) if alloc.public_ip else None, "vcout_format": result.vcout_format}
        if readiness is not None:
            data["ready"] = readiness
        ctx.print_json(data)
    else:
        cpus_total = sum(n.cpus for n in alloc.computes)
        ctx.print(f"Cluster {alloc.cluster} booted: frontend {alloc.frontend.name}, {len(alloc.computes)} compute nodes ({cpus_total} CPUs)")
        for line in format_clusters(ctx.driver.list_clusters(alloc.cluster)):
            ctx.print(line)
        if readiness is not None:
            for line in format_readiness(readiness):
                ctx.print(line)
    if readiness is not None and any(value != "ready" for value in readiness.values()):
        bad = sorted(node for node, value in readiness.items() if value != "ready")
        ctx.err.write(f"Error: cluster {alloc.cluster}: node(s) not ready after {wait:g} s: {', '.join(bad)}\n")
        return 1
    return 0


def parse_wait(value: str | None) -> float | None:
    """``wait=SECONDS``: a positive number of seconds, or ``None`` when not given."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UsageError(f"wait must be a positive number of seconds, not {value!r}")
    return seconds


def _require_wait_ready(driver: Driver) -> None:
    from .errors import NotSupportedError
    from .interfaces import Driver as DriverBase

    if type(driver).wait_ready is DriverBase.wait_ready:
        raise NotSupportedError(f"driver {driver.name!r} cannot wait for nodes to be ready (wait= is not supported)")


def _wait_ready(ctx: Context, cluster: str, timeout: float) -> dict[str, str]:
    log.info("waiting up to %g s for the nodes of %s", timeout, cluster)
    started = time.monotonic()
    readiness = ctx.driver.wait_ready(cluster, timeout)
    log.info("wait for %s done in %.1f s: %s", cluster, time.monotonic() - started, readiness)
    return readiness


def format_readiness(readiness: dict[str, str]) -> list[str]:
    """One line per node: ``NODE  ready`` or ``NODE  STATUS  DETAIL`` (``timeout``, ``failed``...)."""
    width = max((len(node) for node in readiness), default=0)
    lines = []
    for node, value in readiness.items():
        if value == "ready":
            lines.append(f"{node.ljust(width)}  ready")
            continue
        status, sep, detail = value.partition(": ")
        if not sep or " " in status:
            status, detail = "timeout", value
        lines.append(f"{node.ljust(width)}  {status}  {detail}".rstrip())
    return lines


@command(
    "clean",
    args=[("vc-name", True, "name of the virtual cluster")],
    description="Remove a shut-down virtual cluster: its nodes, disks and allocation.",
    examples=[("clean vc-a", "remove cluster vc-a")],
)
def _clean(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    (name,) = args
    ctx.print(f"Removing virtual cluster {name}")
    ctx.driver.clean(name)
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
    ctx.driver.shutdown(name)
    ctx.print(f"Cluster {name} successfully shutdown")
    return 0


@command(
    "list cluster",
    args=[("vc-name", False, "only this virtual cluster")],
    description="List virtual clusters and the state of their nodes.",
    examples=[("list cluster", "all clusters"), ("list cluster vc-a --json", "one cluster, as JSON")],
    json_output=True,
)
def _list_cluster(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    name = args[0] if args else None
    clusters = ctx.driver.list_clusters(name)
    if name is not None and not clusters:
        from .errors import NotFoundError

        raise NotFoundError(f"no virtual cluster named {name!r}")
    if ctx.json:
        ctx.print_json([_cluster_json(c) for c in clusters])
        return 0
    for line in format_clusters(clusters):
        ctx.print(line)
    return 0


@command(
    "list repository",
    description="List the virtual cluster images the site can boot.",
    examples=[("list repository", "one image name per line")],
    json_output=True,
)
def _list_repository(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    if ctx.site.site_ve_driver:
        names = ctx.driver.list_repository(ctx.repository)
    else:
        names = ctx.repository.list()
    if ctx.json:
        ctx.print_json(list(names))
        return 0
    ctx.out.write("VIRTUAL IMAGE\n" + "".join(f"{n}\n" for n in names))
    return 0


@command(
    "sync repository",
    params=_LOG_PARAMS,
    description="Bring the local repository up to date with the remote one (for cron).",
    examples=[("sync repository", "sync now")],
)
def _sync_repository(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    _setup_logging(ctx, params, logfile=_default_logfile(ctx, params, "sync"))
    changed = ctx.repository.sync()
    log.info("sync finished: %s", "changed" if changed else "nothing changed")
    return 0


@command(
    "stage",
    args=[("vc-name", True, "name of the virtual cluster image")],
    params=[("loglevel", "string", "DEBUG, INFO, WARNING (default) or ERROR")],
    description="Stage a cluster's images into the cache without booting it\n(run it from cron to pre-warm), and print the ready image paths.",
    examples=[("stage mycluster", "stage mycluster's images")],
    json_output=True,
)
def _stage(ctx: Context, args: list[str], params: dict[str, str]) -> int:
    _setup_logging(ctx, params, default_level="WARNING")
    staged = ctx.pipeline(driver=False).stage_images(args[0])
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
        rows.append([p.group, p.name, p.distribution, p.version, status])
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


def _plugin_commands(ctx: Context) -> dict[str, Command]:
    """Commands hook plugins add through ``pragma_cli_commands`` (built-ins win)."""
    global _plugin_cache
    if _plugin_cache is not None:
        return _plugin_cache
    found: dict[str, Command] = {}

    def register(words: str, func: Callable[..., int], *, usage: str = "", help: str = "") -> None:
        words = " ".join(words.split())
        if words in COMMANDS or words in found:
            log.warning("plugin command %r clashes with an existing command; ignored", words)
            return
        cmd = Command(words, lambda c, a, p: func(a, p, c), description=help, variadic=True)
        cmd.usage = lambda: usage  # type: ignore[method-assign]
        found[words] = cmd

    if _has_hook_plugins():
        ctx.hooks.hook.pragma_cli_commands(register=register)
    _plugin_cache = found
    return found


def _has_hook_plugins() -> bool:
    from importlib import metadata

    return any(True for _ in metadata.entry_points(group="pragma.plugins"))


# --------------------------------------------------------------------------- main


def _split_options(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    opts: dict[str, Any] = {"conf": None, "json": False, "version": False, "help": False}
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
                raise UsageError(f"unknown option {arg}")
        elif arg == "--json":
            opts["json"] = True
        elif arg == "--version":
            opts["version"] = True
        elif arg in ("--help", "-h"):
            opts["help"] = True
        elif arg.startswith("-") and len(arg) > 1 and not _PARAM.match(arg):
            raise UsageError(f"unknown option {arg} (options: --conf DIR, --json, --version, --help)")
        else:
            rest.append(arg)
        i += 1
    return rest, opts


def _resolve(ctx: Context, words: list[str]) -> tuple[Command | None, list[str]]:
    commands = COMMANDS
    for count in range(len(words), 0, -1):
        key = " ".join(words[:count])
        if key in commands:
            return commands[key], words[count:]
    plugin = _plugin_commands(ctx) if words and words[0] not in {w.split()[0] for w in COMMANDS} else {}
    for count in range(len(words), 0, -1):
        key = " ".join(words[:count])
        if key in plugin:
            return plugin[key], words[count:]
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
        tokens, opts = _split_options(list(argv))
        ctx.conf_dir, ctx.json = opts["conf"], opts["json"]
        if opts["version"]:
            ctx.print(f"pragma {__version__}")
            return 0
        if opts["help"]:
            # built-in commands only: --help stays fast and imports no plugin
            ctx.print("usage: pragma COMMAND [ARGS...] [key=value...] [--conf DIR] [--json]\n")
            for line in _help_lines(None, "", wrap=80):
                ctx.print(line)
            ctx.print("\n'pragma COMMAND help' explains one command; 'pragma list help' also lists")
            ctx.print("commands added by plugins; --version prints the version.")
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
                    err.write(line + "\n")
                return 2
            raise UsageError(f'invalid pragma command "{words[0] if words else tokens[0]}"')
        if rest[:1] == ["help"]:
            ctx.out.write(cmd.help())
            return 0
        if ctx.json and not cmd.json_output:
            raise UsageError(f"--json is not available for '{cmd.words}'")
        known = {name for name, _, _ in cmd.params} | ({"memory"} if cmd.words == "boot" else set())
        unknown = sorted(set(params) - known)
        if unknown and not cmd.variadic:
            raise UsageError(f"unknown parameter {unknown[0]}= for '{cmd.words}' (usage: pragma {cmd.line()})")
        need = [name for name, required, _ in cmd.args if required]
        if len(rest) < len(need):
            missing = need[len(rest)]
            raise UsageError(f"missing argument {{{missing}}} (usage: pragma {cmd.line()})")
        if len(rest) > len(cmd.args) and not cmd.variadic:
            raise UsageError(f"unexpected argument {rest[len(cmd.args)]!r} (usage: pragma {cmd.line()})")
        if "loglevel" in params and params["loglevel"].upper() == "DEBUG":
            ctx.debug = True
        return cmd.func(ctx, rest, params)
    except PragmaError as exc:
        if ctx.debug:
            import traceback

            traceback.print_exc(file=err)
        err.write(f"Error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM/SIGHUP too (pragma_core.signals.Interrupted)
        err.write(f"Error: {str(exc) or 'interrupted'}\n")
        return getattr(exc, "exit_code", 130)
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line, traceback at DEBUG
        if ctx.debug:
            import traceback

            traceback.print_exc(file=err)
        err.write(f"Error: internal error: {type(exc).__name__}: {exc} (run with loglevel=DEBUG for details)\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``pragma``."""
    from .signals import run_main

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s", stream=sys.stderr)
    # SIGTERM and SIGHUP roll back like Ctrl-C and exit 128 + signal number (pragma_core.signals)
    code = run_main(run, sys.argv[1:] if argv is None else argv, out=sys.stdout, err=sys.stderr)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
