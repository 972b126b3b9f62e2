"""``fake``: a driver that boots nothing -- a test double, registered as ``fake``.

It exists so that core's pipeline, CLI and conformance kit can be exercised
without a virtualization engine, and so a demo site can run anywhere. It
keeps its "clusters" in a JSON file (``state_file``, default
``<temp_directory>/pragma-fake-driver.json``) under a file lock, so
separate ``pragma`` processes see the same state, and it writes each node's
vc-out.xml next to that file so tests can read what a guest would get.
``add-iface=`` networks (and ``enable-ent=true``: a network ``ent``) get a
NIC on every node, as kvm_rocks gives them.

**Never use it on a real site: it starts no VM.**

Settings (``fake.conf``, all optional): ``total_cpus`` (64),
``cpus_per_node`` (4), ``public_ips`` (``192.0.2.10``-``.29``),
``public_network`` (``192.0.2.0/24``), ``private_network``
(``10.1.0.0/16``), ``dns`` (``8.8.8.8``), ``state_file``, and, to exercise
failures: ``fail_deploy`` (``True`` makes every deploy fail, to exercise
rollback), ``fail_rollback`` (``True`` makes every rollback fail, as a
driver whose engine is unreachable would) and ``deploy_delay`` (seconds
each node's deploy takes, ``0``; gives signals and faults a window).

Like a real driver, an allocation is a reservation (nodes ``reserved``)
until deploy starts the nodes (``running``). A cluster none of whose nodes
runs, and whose allocating process is gone, is *reserved, not running*: a
:class:`~pragma_core.errors.CapacityError` names it, with the ``pragma
clean`` that frees it.

It reports node progress (``deploy`` and ``wait_ready`` take ``progress``)
and cleans by force (``clean(name, force=True)`` removes a running cluster).

A state file that is not what this driver writes (not JSON, a wrong shape,
an invalid cluster or node name, larger than :data:`MAX_STATE_BYTES`) is a
:class:`~pragma_core.errors.DriverError` naming it; names are checked with
:func:`pragma_core.vcdb.is_valid_name` before they become file names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from attrs import frozen

from ..settings import (
    setting,
    to_bool,
    to_ipv4_list,
    to_ipv4_network,
    to_non_negative_int,
    to_optional_path,
    to_positive_int,
)
from ..errors import CapacityError, DriverError, NotFoundError
from ..interfaces import Driver
from ..events import NodeProgress
from ..model import (
    Allocation,
    BootRequest,
    ClusterStatus,
    Interface,
    Network,
    Node,
    NodeStatus,
    StagedCluster,
)
from ..signals import process_alive
from ..vcdb import invalid_name, is_valid_name

#: A state file larger than this is refused (a cluster takes a few hundred bytes).
MAX_STATE_BYTES = 16 * 1024 * 1024
_NODE_FIELDS = {"name": str, "role": str, "cpus": int, "memory_mib": int, "state": str, "private_ip": str}


def _check_state(data: Any) -> dict[str, Any]:
    """``data`` if it has the shape this driver writes; else a :class:`ValueError` saying where not."""
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), dict):
        raise ValueError("no 'clusters' object")
    if not isinstance(data.get("serial"), int) or isinstance(data["serial"], bool) or data["serial"] < 0:
        raise ValueError("'serial' is not a whole number")
    for name, entry in data["clusters"].items():
        if not is_valid_name(name):
            raise ValueError(invalid_name(name, "cluster name"))
        if not isinstance(entry, dict) or not isinstance(entry.get("public_ip"), str) or not isinstance(entry.get("nodes"), list):
            raise ValueError(f"cluster {name}: not an object with public_ip and nodes")
        for node in entry["nodes"]:
            if not isinstance(node, dict) or any(
                not isinstance(node.get(key), kind) or isinstance(node.get(key), bool) for key, kind in _NODE_FIELDS.items()
            ):
                raise ValueError(f"cluster {name}: a node lacks one of {', '.join(_NODE_FIELDS)}")
            if not is_valid_name(node["name"]):
                raise ValueError(invalid_name(node["name"], "node name"))
    return data


def _with_extra_networks(request: BootRequest, nodes: tuple[Node, ...], serial: int) -> tuple[list[Network], list[Node]]:
    """The networks of ``add-iface=`` (and ``enable-ent=true``: network ``ent``), with a NIC on each for every node.

    Like kvm_rocks: a network's subnet is the CIDR given, else ``10.<200+k>.0.0/24``
    for the k-th network; addresses are handed out from the CIDR's host part
    (when not zero) or from the first host, frontend first.
    """
    requested = [(item.network, item.cidr) for item in request.add_ifaces]
    if request.enable_ent and all(net != "ent" for net, _ in requested):
        requested.append(("ent", None))
    networks: list[Network] = []
    nodes_out = list(nodes)
    for k, (net, cidr) in enumerate(requested):
        iface = cidr or ipaddress.IPv4Interface(f"10.{200 + k}.0.0/24")
        subnet = iface.network
        first = int(iface.ip) if int(iface.ip) != int(subnet.network_address) else int(subnet.network_address) + 1
        if first + len(nodes) - 1 >= int(subnet.broadcast_address):
            raise CapacityError(f"add-iface: subnet {subnet} of network {net!r} has no room for {len(nodes)} nodes")
        networks.append(Network(name=net, subnet=subnet))
        for i, node in enumerate(nodes_out):
            mac = "52:54:01:%02x:%02x:%02x" % (serial & 0xFF, k & 0xFF, i & 0xFF)
            nic = Interface(network=net, ip=ipaddress.IPv4Address(first + i), mac=mac)
            nodes_out[i] = attrs.evolve(node, interfaces=(*node.interfaces, nic))
    return networks, nodes_out


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 <= seconds <= 60:
        raise ValueError(f"must be a number of seconds from 0 to 60, not {value!r}")
    return seconds


@frozen(kw_only=True)
class FakeConfig:
    """Settings of the fake driver (``fake.conf``)."""

    total_cpus: int = setting(to_non_negative_int, default=64, help="CPUs all clusters share")
    cpus_per_node: int = setting(to_positive_int, default=4, help="CPUs of each compute node")
    public_ips: tuple[str, ...] = setting(to_ipv4_list, default=tuple(f"192.0.2.{i}" for i in range(10, 30)))
    public_network: ipaddress.IPv4Network = setting(to_ipv4_network, default="192.0.2.0/24")
    private_network: ipaddress.IPv4Network = setting(to_ipv4_network, default="10.1.0.0/16")
    dns: tuple[str, ...] = setting(to_ipv4_list, default=("8.8.8.8",))
    state_file: Path | None = setting(to_optional_path, default=None, help="where the clusters are recorded")
    fail_deploy: bool = setting(to_bool, default=False, help="make every deploy fail (exercises rollback)")
    fail_rollback: bool = setting(to_bool, default=False, help="make every rollback fail (an unreachable engine)")
    deploy_delay: float = setting(_seconds, default=0.0, help="seconds each node's deploy takes, 0 to 60 (a window for faults)")


class FakeDriver(Driver[FakeConfig, None]):
    """A test double that records clusters in a JSON file instead of starting VMs."""

    name = "fake"
    config_class = FakeConfig
    supports_wait = True

    def __init__(self, config: FakeConfig | None, *, site: Any) -> None:
        super().__init__(config or FakeConfig(), site=site)
        state = self.config.state_file
        if state is None:
            base = getattr(site, "temp_directory", None)
            if base is None:
                raise DriverError("fake driver: set state_file in fake.conf or temp_directory in site_conf.conf")
            state = Path(base) / "pragma-fake-driver.json"
        self.state_file = Path(state)

    # ------------------------------------------------------------------ state

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        from filelock import FileLock

        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.state_file) + ".lock"):
            state = self._read_state()
            before = json.dumps(state, sort_keys=True)
            yield state
            after = json.dumps(state, sort_keys=True, indent=1)
            if after != before:
                tmp = self.state_file.with_name(self.state_file.name + f".tmp{os.getpid()}")
                tmp.write_text(after)
                os.replace(tmp, self.state_file)

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self.state_file, "rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {"clusters": {}, "serial": 0}
        except OSError as exc:
            raise DriverError(f"{self.state_file}: cannot read fake driver state: {exc.strerror or exc}") from None
        try:
            if len(data) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            return _check_state(json.loads(data))
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8, shape; RecursionError: absurd nesting
            reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
            raise DriverError(f"{self.state_file}: corrupt fake driver state ({reason}); remove it to start afresh") from None

    def vcout_dir(self, cluster: str) -> Path:
        """Where deploy writes the vc-out files of ``cluster`` (for tests and demos)."""
        if not is_valid_name(cluster):
            raise DriverError(invalid_name(cluster, "cluster name"))
        return self.state_file.parent / "pragma-fake-vcout" / cluster

    # ------------------------------------------------------------------ Driver

    def allocate(self, request: BootRequest, cluster: StagedCluster) -> Allocation:
        from ..addressing import plan_addresses

        cfg = self.config
        per_node = cfg.cpus_per_node
        counts = [min(per_node, request.cpus - i) for i in range(0, request.cpus, per_node)]
        with self._state() as state:
            self._remove_temporary_states()
            used_cpus = sum(sum(n["cpus"] for n in c["nodes"] if n["role"] == "compute") for c in state["clusters"].values())
            free = cfg.total_cpus - used_cpus
            idle = _reserved_not_running(state)
            if request.cpus > free:
                raise CapacityError(
                    f"not enough capacity: requested {request.cpus} CPUs, {free} available", reserved=idle
                )
            used_ips = {c["public_ip"] for c in state["clusters"].values()}
            public_ip = next((ip for ip in cfg.public_ips if ip not in used_ips), None)
            if public_ip is None:
                raise CapacityError(f"no free public IP ({len(cfg.public_ips)} configured, all in use)", reserved=idle)
            state["serial"] += 1
            serial = state["serial"]
            name = f"vc{serial}"
            plan = plan_addresses(cfg.private_network, len(counts))
            fe_mem = request.memory.frontend_mib or 2048
            cn_mem = request.memory.compute_mib or 2048
            public = Network(name="public", subnet=cfg.public_network, gateway=next(cfg.public_network.hosts()))
            private = Network(name="private", subnet=cfg.private_network, vlan=serial)

            def mac(index: int) -> str:
                return "52:54:00:%02x:%02x:%02x" % ((serial >> 8) & 0xFF, serial & 0xFF, index)

            frontend = Node(
                name=name,
                hostname=name,
                role="frontend",
                cpus=1,
                memory_mib=fe_mem,
                interfaces=(
                    Interface(network="private", ip=plan.frontend, mac=mac(0)),
                    Interface(network="public", ip=ipaddress.IPv4Address(public_ip), mac=mac(1)),
                ),
                gateway=public.gateway,
                host="fake-host",
            )
            computes = tuple(
                Node(
                    name=f"{name}-compute-{i}",
                    hostname=f"compute-{i}",
                    role="compute",
                    cpus=count,
                    memory_mib=cn_mem,
                    interfaces=(Interface(network="private", ip=plan.computes[i], mac=mac(2 + i)),),
                    gateway=plan.frontend,
                    host="fake-host",
                )
                for i, count in enumerate(counts)
            )
            extra_networks, (frontend, *rest) = _with_extra_networks(request, (frontend, *computes), serial)
            computes = tuple(rest)
            allocation = Allocation(
                cluster=name,
                image=request.image,
                fqdn=f"{name}.fake.invalid",
                frontend=frontend,
                computes=computes,
                networks=(private, public, *extra_networks),
                dns=cfg.dns,
                key=request.key,
                vlan=serial,
            )
            state["clusters"][name] = {
                "public_ip": public_ip,
                "image": request.image,
                "owner_pid": os.getpid(),
                "nodes": [
                    {"name": n.name, "role": n.role, "cpus": n.cpus, "memory_mib": n.memory_mib, "state": "reserved",
                     "private_ip": str(n.interfaces[0].ip)}
                    for n in allocation.nodes
                ],
            }
        return allocation

    def deploy(
        self,
        allocation: Allocation,
        cluster: StagedCluster,
        vcout: Mapping[str, bytes],
        *,
        progress: NodeProgress | None = None,
    ) -> None:
        for node in allocation.nodes:
            if node.name not in vcout:
                raise DriverError(f"no vc-out.xml for node {node.name}")
        for node_name in vcout:
            if not is_valid_name(node_name):
                raise DriverError(invalid_name(node_name, "node name"))
        directory = self.vcout_dir(allocation.cluster)
        directory.mkdir(parents=True, exist_ok=True)
        for node_name, data in vcout.items():
            (directory / f"{node_name}.xml").write_bytes(data)
            time.sleep(self.config.deploy_delay)
        if self.config.fail_deploy:
            raise DriverError(f"fake driver: deploy of {allocation.cluster} failed (fail_deploy is set)")
        with self._state() as state:
            entry = state["clusters"].get(allocation.cluster)
            if entry is None:
                raise DriverError(f"cluster {allocation.cluster} vanished during deploy")
            for started, node in enumerate(entry["nodes"], 1):
                node["state"] = "running"
                if progress is not None:
                    progress(started, len(entry["nodes"]))

    def rollback(self, allocation: Allocation) -> None:
        if self.config.fail_rollback:
            raise DriverError(f"fake driver: rollback of {allocation.cluster} failed (fail_rollback is set)")
        with self._state() as state:
            state["clusters"].pop(allocation.cluster, None)
            self._remove_temporary_states()
        self._remove_vcout(allocation.cluster)

    def _remove_temporary_states(self) -> None:
        """Remove state files a killed process was writing (the caller holds the state lock: none is being written)."""
        for path in self.state_file.parent.glob(self.state_file.name + ".tmp*"):
            path.unlink(missing_ok=True)

    def _remove_vcout(self, name: str) -> None:
        directory = self.vcout_dir(name)
        if directory.is_dir():
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()

    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        with self._state() as state:
            clusters = state["clusters"]
            names = sorted(clusters) if name is None else [name] if name in clusters else []
            return [
                ClusterStatus(
                    name=n,
                    public_ip=clusters[n]["public_ip"],
                    nodes=tuple(
                        NodeStatus(
                            name=node["name"],
                            role=node["role"],
                            state=node["state"],
                            host="fake-host",
                            cpus=node["cpus"],
                            memory_mib=node["memory_mib"],
                            public_ip=clusters[n]["public_ip"] if node["role"] == "frontend" else None,
                            private_ip=node["private_ip"],
                        )
                        for node in clusters[n]["nodes"]
                    ),
                )
                for n in names
            ]

    def shutdown(self, name: str) -> ClusterStatus:
        with self._state() as state:
            entry = state["clusters"].get(name)
            if entry is None:
                raise NotFoundError(f"no virtual cluster named {name!r}")
            for node in entry["nodes"]:
                node["state"] = "shutoff"
        return self.list_clusters(name)[0]

    def wait_ready(self, name: str, timeout: float, *, progress: NodeProgress | None = None) -> dict[str, str]:
        """A running node is ready at once; any other reports ``timeout: node is <state>`` (no waiting)."""
        with self._state() as state:
            entry = state["clusters"].get(name)
            if entry is None:
                raise NotFoundError(f"no virtual cluster named {name!r}")
            verdicts = {
                node["name"]: "ready" if node["state"] == "running" else f"timeout: node is {node['state']}"
                for node in entry["nodes"]
            }
        if progress is not None:
            ready = [v for v in verdicts.values() if v == "ready"]
            for count in range(len(ready) + 1):
                progress(count, len(verdicts))
        return verdicts

    def clean(self, name: str, *, force: bool = False) -> None:
        with self._state() as state:
            entry = state["clusters"].get(name)
            if entry is None:
                raise NotFoundError(f"no virtual cluster named {name!r}")
            running = [n["name"] for n in entry["nodes"] if n["state"] == "running"]
            if running and not force:
                raise DriverError(f"cluster {name} is still running ({', '.join(running)}); shut it down first")
            del state["clusters"][name]
            self._remove_temporary_states()
        self._remove_vcout(name)


def _reserved_not_running(state: Mapping[str, Any]) -> list[str]:
    """Clusters of ``state`` none of whose nodes runs and whose allocating process is gone, sorted."""
    return sorted(
        name
        for name, entry in state["clusters"].items()
        if not any(node["state"] == "running" for node in entry["nodes"])
        and not process_alive(entry.get("owner_pid", 0))
    )

