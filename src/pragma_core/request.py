"""Boot requests from what a user typed: CPUs, memory, extra networks, the SSH key, waiting.

These are the parsers behind ``pragma boot``'s arguments and behind
:meth:`pragma_core.Site.boot`, so a Python tool and the command line accept
exactly the same spellings and refuse the same mistakes with the same
one-line message (a :class:`~pragma_core.errors.UsageError` naming the
parameter). Every number is bounded before it is converted: a value of
thousands of digits costs nothing and is simply too large.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PragmaError, UsageError

if TYPE_CHECKING:  # the model (attrs) is imported when a request is built: the CLI's --help needs none of it
    from .model import BootRequest, InterfaceRequest, MemorySpec

#: Log levels ``loglevel=`` accepts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The largest CPU count and memory size (MiB) a request may name: far above any site, far below overflow.
MAX_CPUS = 100_000
MAX_MEMORY_MIB = 1 << 30
#: The longest ``wait=``: a week.
MAX_WAIT_SECONDS = 7 * 24 * 3600
#: A public key file larger than this is no public key file (a few keys take a few KiB).
MAX_KEY_BYTES = 64 * 1024
#: The longest extra-network name.
MAX_NETWORK_NAME = 128
KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def quote(value: str, limit: int = 40) -> str:
    """``value`` quoted for a message, shortened when long (it may be thousands of characters)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def whole(value: str, maximum: int) -> int | None:
    """``value`` (ASCII digits) as a whole number, capped at ``maximum + 1``; ``None`` when not digits.

    The length is checked before converting, so thousands of digits cost nothing.
    """
    text = value.strip()
    if not re.fullmatch(r"[0-9]+", text):
        return None
    digits = text.lstrip("0") or "0"
    return maximum + 1 if len(digits) > len(str(maximum)) else min(int(digits), maximum + 1)


def parse_cpus(value: str | int) -> int:
    """``num-cpus``: a whole number from 0 (frontend only) to :data:`MAX_CPUS`."""
    text = str(value) if not isinstance(value, bool) else "?"
    count = whole(text, MAX_CPUS)
    if count is None:
        stripped = text.strip()
        if stripped.startswith("-") and whole(stripped[1:], MAX_CPUS) is not None:
            raise UsageError(f"number of CPUs must be >= 0, not {quote(stripped)}")
        raise UsageError(f"number of CPUs must be a whole number >= 0, not {quote(text)}")
    if count > MAX_CPUS:
        raise UsageError(f"number of CPUs must be at most {MAX_CPUS}, not {quote(text)}")
    return count


def parse_memory(value: str | int | MemorySpec | None) -> MemorySpec:
    """``mem=N`` (every node) or ``mem=FRONTEND:COMPUTE``, in MiB; ``None`` or ``""``: the image's own."""
    from .model import MemorySpec

    if isinstance(value, MemorySpec):
        return value
    if value is None or value == "":
        return MemorySpec()
    text = str(value) if not isinstance(value, bool) else "?"
    first, sep, second = text.partition(":")
    frontend = whole(first, MAX_MEMORY_MIB)
    compute = whole(second, MAX_MEMORY_MIB) if sep else frontend
    if frontend is None or compute is None:
        raise UsageError(f"mem must be N or FRONTEND:COMPUTE in MiB (e.g. 4096:2048), not {quote(text)}")
    if frontend <= 0 or compute <= 0:
        raise UsageError(f"mem must be positive, not {quote(text)}")
    if max(frontend, compute) > MAX_MEMORY_MIB:
        raise UsageError(f"mem must be at most {MAX_MEMORY_MIB} MiB, not {quote(text)}")
    return MemorySpec(frontend_mib=frontend, compute_mib=compute)


def parse_add_iface(value: str | Iterable[str | InterfaceRequest] | None) -> tuple[InterfaceRequest, ...]:
    """``add-iface=net[:cidr],net2[:cidr]`` (or a sequence of such items or requests)."""
    if not value:
        return ()
    from .model import InterfaceRequest

    items = value.split(",") if isinstance(value, str) else list(value)
    result: list[InterfaceRequest] = []
    seen: set[str] = set()
    for item in items:
        request = item if isinstance(item, InterfaceRequest) else _one_iface(str(item).strip())
        if request is None:
            continue
        if request.network in seen:
            raise UsageError(f"add-iface: network {request.network!r} given twice")
        seen.add(request.network)
        result.append(request)
    return tuple(result)


def _one_iface(item: str) -> InterfaceRequest | None:
    if not item:
        return None
    name, _, cidr = item.partition(":")
    if not _NETWORK_NAME.fullmatch(name) or len(name) > MAX_NETWORK_NAME:
        raise UsageError(f"add-iface: invalid network name {quote(name)}")
    from .model import InterfaceRequest

    if not cidr:
        return InterfaceRequest(network=name)
    import ipaddress

    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError:
        raise UsageError(f"add-iface: {quote(cidr)} is not an IPv4 CIDR such as 10.102.0.0/24") from None
    if iface.network.prefixlen > 30:
        raise UsageError(f"add-iface: subnet {cidr} is too small")
    return InterfaceRequest(network=name, cidr=iface)


def parse_wait(value: str | float | None) -> float | None:
    """``wait=SECONDS``: a positive number of seconds up to :data:`MAX_WAIT_SECONDS`; ``None`` when not given."""
    if value is None:
        return None
    text = str(value)
    try:
        seconds = float(value) if not isinstance(value, bool) and len(text) <= 40 else -1.0
    except ValueError:
        seconds = -1.0
    if math.isnan(seconds) or not 0 < seconds < math.inf:
        raise UsageError(f"wait must be a positive number of seconds, not {quote(text)}")
    if seconds > MAX_WAIT_SECONDS:
        raise UsageError(f"wait must be at most {MAX_WAIT_SECONDS} seconds, not {quote(text)}")
    return seconds


def read_key(value: str | os.PathLike[str] | None) -> str:
    """The SSH public key: ``value`` itself when it is key text, else the file it names.

    ``None``: the user's default key (``~/.ssh/id_rsa.pub``, ``id_ed25519.pub``,
    ``id_ecdsa.pub``, the first that exists). Only a regular file is read, and
    at most :data:`MAX_KEY_BYTES` of it (``key=/dev/zero`` or a FIFO never
    hangs the command).
    """
    if isinstance(value, str) and value.lstrip().startswith(KEY_TYPES):
        return _key_lines(value, "key")
    if value:
        try:
            candidates = [Path(value).expanduser()]
        except RuntimeError:  # ~user of an unknown user
            raise PragmaError(f"key: cannot find the home directory in {quote(os.fspath(value))}") from None
    else:
        home = Path.home() / ".ssh"
        candidates = [home / "id_rsa.pub", home / "id_ed25519.pub", home / "id_ecdsa.pub"]
    for path in candidates:
        try:
            text = _read_key_file(path)
            if text is None:
                continue
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise PragmaError(f"key: cannot read {path}: {reason}") from None
        except ValueError:  # a NUL byte in the name
            raise PragmaError(f"key: invalid file name {quote(str(path))}") from None
        if len(text) > MAX_KEY_BYTES:
            raise PragmaError(f"key: {path} is not an SSH public key file")
        return _key_lines(text, str(path))
    if value:
        raise PragmaError(f"key: file not found: {candidates[0]}")
    raise PragmaError("no SSH public key found in ~/.ssh; give one with key=FILE")


def _read_key_file(path: Path) -> str | None:
    """The text of key file ``path`` (``None`` when there is none), read only when the file opened is regular.

    Checked on the descriptor, not the name: opened non-blocking (a FIFO swapped in after any look at
    the name cannot hang the command), then ``fstat``-ed, then read, at most ``MAX_KEY_BYTES + 1``.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PragmaError(f"key: {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_KEY_BYTES + 1).decode("utf-8").strip()
    finally:
        os.close(fd)


def check_key(text: str) -> str:
    """SSH public key text (one key a line, comments dropped); a :class:`PragmaError` when it is not one."""
    return _key_lines(text, "key")


def _key_lines(text: str, where: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("#")]
    if not lines or not all(line.startswith(KEY_TYPES) and "\x00" not in line and _is_utf8(line) for line in lines):
        raise PragmaError("key: the text given is not an SSH public key" if where == "key" else f"key: {where} is not an SSH public key file")
    return "\n".join(lines)


def _is_utf8(text: str) -> bool:
    """Whether ``text`` is real text: a command line's undecodable bytes arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_bool(name: str, value: str | bool) -> bool:
    """A boolean parameter (``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    from .settings import to_bool

    try:
        return to_bool(value)
    except ValueError:
        raise UsageError(f"{name} must be true or false, not {quote(str(value))}") from None


def check_loglevel(value: str | None) -> str | None:
    """``loglevel=``: one of :data:`LOG_LEVELS` (any case), upper-cased; ``None`` when not given."""
    if value is None:
        return None
    level = value.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"loglevel must be one of {', '.join(LOG_LEVELS)}, not {quote(value)}")
    return level


def build_request(
    image: str,
    cpus: str | int,
    *,
    key: str | os.PathLike[str] | None = None,
    memory: str | int | MemorySpec | None = None,
    add_ifaces: str | Iterable[str | InterfaceRequest] = (),
    enable_ent: bool | str = False,
    params: Mapping[str, str] | None = None,
) -> BootRequest:
    """Validate a boot's arguments into a :class:`~pragma_core.model.BootRequest`.

    ``image`` must be a valid name (:func:`pragma_core.vcdb.is_valid_name`);
    ``params`` are the ``key=value`` parameters as typed (kept on the request
    for hook plugins); IPOP parameters are refused as the legacy tool did.
    """
    from .vcdb import invalid_name, is_valid_name

    if not is_valid_name(image):
        raise UsageError(invalid_name(image, "vc-name"))
    params = dict(params or {})
    for ipop in ("enable-ipop-client", "enable-ipop-server"):
        if params.get(ipop):
            raise PragmaError(f"IPOP is not supported ({ipop}={quote(params[ipop])})")
    ent = parse_bool("enable-ent", enable_ent)
    count = parse_cpus(cpus)
    mem = parse_memory(memory)
    ifaces = parse_add_iface(add_ifaces)
    from .model import BootRequest

    return BootRequest(image=image, cpus=count, key=read_key(key), memory=mem, add_ifaces=ifaces, enable_ent=ent, params=params)


def request_from_params(image: str, cpus: str, params: Mapping[str, str]) -> BootRequest:
    """:func:`build_request` from ``pragma boot``'s ``key=value`` parameters (``mem=`` or ``memory=``)."""
    if "mem" in params and "memory" in params and params["mem"] != params["memory"]:
        raise UsageError("give mem= or memory=, not both")
    check_loglevel(params.get("loglevel"))
    return build_request(
        image,
        cpus,
        key=params.get("key") or None,
        memory=params.get("mem", params.get("memory")),
        add_ifaces=params.get("add-iface") or (),
        enable_ent=params.get("enable-ent", "false"),
        params=params,
    )
