"""The ``cloudstack`` driver: virtual clusters as Apache CloudStack VMs.

A cluster ``<vm_prefix><n>`` (e.g. ``vc-3``) is:

* an isolated network named like the cluster, from the configured (or first
  suitable) network offering, with egress opened for the cluster's subnet;
* a frontend VM named like the cluster, with a NIC on that network (eth0,
  ``private``) and one on ``public_network`` (eth1, ``public``);
* compute VMs ``<cluster>-compute-<i>`` on the private network only.

Every VM and the network carry the resource tags ``pragma-cluster=<cluster>``
and ``pragma-role=frontend|compute``; ``list``, ``shutdown`` and ``clean``
find a cluster by exact tag value, never by a substring of a name, and only
among the resources of the account the API key belongs to
(:mod:`.ownership`): an admin key sees other tenants, who may use the same
names and tags. A frontend
name is ``<prefix><number>`` and the prefix may not contain ``compute``, so a
frontend name can never equal another cluster's compute name.

The VMs boot from CloudStack templates named after the description's disks,
so the driver needs no local image file (``uses_local_images = False``): core
resolves the cluster description and stages nothing.

``allocate`` deploys everything stopped (``startvm=false``) and reads the
NICs back; ``deploy`` hands each VM its ``vc-out.xml`` as userdata (POST,
base64) and starts the frontend, then the computes with ``max_parallel``
threads. Whatever a failed ``allocate`` made is removed before it raises;
core calls :meth:`CloudStackDriver.rollback` for a failed ``deploy``. The ids
CloudStack gave travel in the allocation as a
:class:`~pragma_cloudstack.state.CloudStackState`.

One module per idea: :mod:`.naming` (tags, names, the naming lock),
:mod:`.ownership` (whose resources may be touched), :mod:`.lookups` (what
is read from CloudStack), :mod:`.allocate`,
:mod:`.deploy`, :mod:`.teardown` (shutdown, clean, rollback) and
:mod:`.listing`; this class holds the settings and the client and hands each
call to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pragma_core import Allocation, BootRequest, ClusterStatus, ConfigError, Driver, ResolvedCluster
from pragma_core.pluginkit import run_parallel

from . import listing
from .allocate import Allocator
from .config import CloudStackSettings, warn_about_secret_file
from .deploy import deploy_cluster
from .lookups import Lookups
from .naming import template_name
from .state import CloudStackState
from .teardown import Teardown

if TYPE_CHECKING:
    from pragma_core import Repository
    from pragma_core.pluginkit import SiteConfig

    from .client import CloudStackClient

__all__ = ["CloudStackDriver", "template_name"]

T = TypeVar("T")
R = TypeVar("R")


class CloudStackDriver(Driver[CloudStackSettings, CloudStackState]):
    """Boots virtual clusters on Apache CloudStack (settings: ``cloudstack.conf``)."""

    name = "cloudstack"
    uses_local_images = False

    def __init__(self, config: CloudStackSettings | None, *, site: SiteConfig) -> None:
        if config is None:
            raise ConfigError(f"configuration file not found: {Path(site.conf_dir) / 'cloudstack.conf'}")
        super().__init__(config, site=site)
        warn_about_secret_file(Path(site.conf_dir))
        self._client: CloudStackClient | None = None
        #: What the driver reads from CloudStack.
        self.lookups = Lookups(self)
        #: Stops and removes clusters (and remembers whether the account may expunge).
        self.teardown = Teardown(self)

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> CloudStackClient:
        """The API client, made on first use."""
        if self._client is None:
            from .client import CloudStackClient

            cfg = self.config
            self._client = CloudStackClient(
                cfg.baseurl,
                cfg.apikey,
                cfg.secretkey,
                timeout=cfg.request_timeout,
                retries=cfg.retries,
                retry_backoff=cfg.poll_interval,
                expires_after=cfg.signature_lifetime,
                page_size=cfg.page_size,
                poll_interval=cfg.poll_interval,
                poll_max_interval=cfg.poll_max_interval,
                job_timeout=cfg.job_timeout,
                verify_tls=cfg.verify_tls,
                pool_size=cfg.max_parallel + 2,
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _parallel(
        self, func: Callable[[T], R], items: Iterable[T], *, label: Callable[[T], str] | None = None, what: str = "calls"
    ) -> list[R]:
        """``func`` over ``items`` with ``max_parallel`` threads; waits for all, then raises every failure.

        One failure is raised as it is, several as one
        :class:`~pragma_core.pluginkit.ParallelError` naming each (still a
        :class:`DriverError` when they all are).
        """
        return run_parallel(func, items, workers=self.config.max_parallel, label=label, what=what)

    # ------------------------------------------------------------------ Driver

    def allocate(self, request: BootRequest, cluster: ResolvedCluster) -> Allocation:
        """Create the cluster's network and its stopped VMs; read their NICs into an :class:`Allocation`."""
        return Allocator(self).allocate(request, cluster)

    def deploy(self, allocation: Allocation, cluster: ResolvedCluster, vcout: Mapping[str, bytes]) -> None:
        """Give each VM its vc-out.xml as userdata, then start the frontend and the computes."""
        deploy_cluster(self, allocation, vcout)

    def rollback(self, allocation: Allocation) -> None:
        """Destroy (expunge) the VMs and delete the network whose ids ``allocation`` records; safe to repeat."""
        self.teardown.rollback(allocation)

    def clean(self, name: str) -> None:
        """Destroy (expunge) cluster ``name``'s VMs and delete its network; refuses while a node runs."""
        self.teardown.clean(name)

    def shutdown(self, name: str) -> ClusterStatus:
        """Stop the computes, then the frontend; a stop that fails is retried with ``forced=true``."""
        return self.teardown.shutdown(name)

    def list_clusters(self, name: str | None = None) -> list[ClusterStatus]:
        """The clusters found by their ``pragma-cluster`` tag, frontend first, sorted by name."""
        return listing.list_clusters(self.lookups, name)

    def list_repository(self, repository: Repository[Any]) -> list[str]:
        """The names of the ready CloudStack templates this account can use."""
        zone = self.lookups.zone()
        return sorted({t["name"] for t in self.lookups.templates(zone) if t.get("isready", True)})
