"""Boot requests from what a user typed: CPUs, memory, extra networks, the SSH key, waiting.

These are the parsers behind ``pragma boot``'s arguments and behind
:meth:`pragma_core.Site.boot`, so a Python tool and the command line accept
exactly the same spellings and refuse the same mistakes with the same
message (a :class:`~pragma_core.errors.UsageError` naming the parameter).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import PragmaError, UsageError
from .model import BootRequest, InterfaceRequest, MemorySpec

#: Log levels ``loglevel=`` accepts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The largest CPU count and memory size (MiB) a request may name: far above any site, far below overflow.
MAX_CPUS = 1_000_000
MAX_MEMORY_MIB = 1 << 30
#: The longest ``wait=``: a week.
MAX_WAIT_SECONDS = 7 * 24 * 3600.0
_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")
_MAX_KEY_BYTES = 64 * 1024
_NETWORK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _short(value: str, limit: int = 40) -> str:
    """``value`` for an error message: repr'd, and cut when long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def parse_cpus(value: str | int) -> int:
    """``num-cpus``: a whole number from 0 (frontend only) to :data:`MAX_CPUS`."""
    if isinstance(value, bool):
        raise UsageError(f"number of CPUs must be a whole number >= 0, not {value!r}")
    text = str(value).strip()
    if text.startswith("-") and text[1:].isdigit():
        raise UsageError(f"number of CPUs must be >= 0, not {_short(text)}")
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise UsageError(f"number of CPUs must be a whole number >= 0, not {_short(text)}")
    count = int(text)
    if count > MAX_CPUS:
        raise UsageError(f"number of CPUs must be at most {MAX_CPUS}, not {count}")
    return count


def parse_memory(value: str | int | MemorySpec | None) -> MemorySpec:
    """``mem=N`` (every node) or ``mem=FRONTEND:COMPUTE``, in MiB; ``None`` or ``""``: the image's own."""
    if isinstance(value, MemorySpec):
        return value
    if value is None or value == "":
        return MemorySpec()
    text = str(value)
    match = re.fullmatch(r"\s*([0-9]{1,12})\s*(?::\s*([0-9]{1,12})\s*)?", text)
    if not match or isinstance(value, bool):
        raise UsageError(f"mem must be N or FRONTEND:COMPUTE in MiB (e.g. 4096:2048), not {_short(text)}")
    frontend = int(match.group(1))
    compute = int(match.group(2)) if match.group(2) is not None else frontend
    if frontend <= 0 or compute <= 0:
        raise UsageError(f"mem must be positive, not {_short(text)}")
    if max(frontend, compute) > MAX_MEMORY_MIB:
        raise UsageError(f"mem must be at most {MAX_MEMORY_MIB} MiB, not {_short(text)}")
    return MemorySpec(frontend_mib=frontend, compute_mib=compute)


def parse_add_iface(value: str | Iterable[str | InterfaceRequest] | None) -> tuple[InterfaceRequest, ...]:
    """``add-iface=net[:cidr],net2[:cidr]`` (or a sequence of such items or requests)."""
    if not value:
        return ()
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
    if not _NETWORK_NAME.fullmatch(name):
        raise UsageError(f"add-iface: invalid network name {_short(name)}")
    if not cidr:
        return InterfaceRequest(network=name)
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError:
        raise UsageError(f"add-iface: {_short(cidr)} is not an IPv4 CIDR such as 10.102.0.0/24") from None
    if iface.network.prefixlen > 30:
        raise UsageError(f"add-iface: subnet {cidr} is too small")
    return InterfaceRequest(network=name, cidr=iface)


def parse_wait(value: str | float | None) -> float | None:
    """``wait=SECONDS``: a positive number of seconds up to :data:`MAX_WAIT_SECONDS`; ``None`` when not given."""
    if value is None:
        return None
    try:
        seconds = float(value) if not isinstance(value, bool) and len(str(value)) <= 32 else -1.0
    except ValueError:
        seconds = -1.0
    if not (0 < seconds <= MAX_WAIT_SECONDS) or math.isnan(seconds):
        raise UsageError(f"wait must be a positive number of seconds up to {MAX_WAIT_SECONDS:g}, not {_short(str(value))}")
    return seconds


def _is_key_text(value: str) -> bool:
    return value.lstrip().startswith(_KEY_TYPES)


def read_key(value: str | os.PathLike[str] | None) -> str:
    """The SSH public key: ``value`` itself when it is key text, else the file it names.

    ``None``: the user's default key (``~/.ssh/id_rsa.pub``, ``id_ed25519.pub``,
    ``id_ecdsa.pub``, the first that exists).
    """
    if isinstance(value, str) and _is_key_text(value):
        return _check_key(value, "key")
    if value:
        candidates = [Path(value).expanduser()]
    else:
        home = Path.home() / ".ssh"
        candidates = [home / "id_rsa.pub", home / "id_ed25519.pub", home / "id_ecdsa.pub"]
    for path in candidates:
        try:
            with open(path, "rb") as handle:
                data = handle.read(_MAX_KEY_BYTES + 1)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PragmaError(f"key: cannot read {path}: {exc.strerror}") from None
        if len(data) > _MAX_KEY_BYTES:
            raise PragmaError(f"key: {path} is too large for an SSH public key file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PragmaError(f"key: {path} is not an SSH public key file") from None
        return _check_key(text, str(path))
    if value:
        raise PragmaError(f"key: file not found: {candidates[0]}")
    raise PragmaError("no SSH public key found in ~/.ssh; give one with key=FILE")


def _check_key(text: str, where: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("#")]
    if not lines or not all(line.startswith(_KEY_TYPES) and "\x00" not in line for line in lines):
        raise PragmaError(f"key: {where} is not an SSH public key" + (" file" if where != "key" else ""))
    return "\n".join(lines)


def parse_bool(name: str, value: str | bool) -> bool:
    """A boolean parameter (``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    from .config import to_bool

    try:
        return to_bool(value)
    except ValueError:
        raise UsageError(f"{name} must be true or false, not {_short(str(value))}") from None


def check_loglevel(value: str | None) -> str | None:
    """``loglevel=``: one of :data:`LOG_LEVELS` (any case), upper-cased; ``None`` when not given."""
    if value is None:
        return None
    level = value.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"loglevel must be one of {', '.join(LOG_LEVELS)}, not {_short(value)}")
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

    ``params`` are the ``key=value`` parameters as typed (kept on the request
    for hook plugins); IPOP parameters are refused as the legacy tool did.
    """
    params = dict(params or {})
    for ipop in ("enable-ipop-client", "enable-ipop-server"):
        if params.get(ipop):
            raise PragmaError(f"IPOP is not supported ({ipop}={params[ipop]})")
    return BootRequest(
        image=image,
        cpus=parse_cpus(cpus),
        key=read_key(key),
        memory=parse_memory(memory),
        add_ifaces=parse_add_iface(add_ifaces),
        enable_ent=parse_bool("enable-ent", enable_ent),
        params=params,
    )


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
