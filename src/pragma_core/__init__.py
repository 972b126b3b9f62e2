"""pragma: boot virtual clusters from a repository of images.

The public API, all importable from here:

* :data:`hookimpl` -- decorate pipeline hook implementations (see :mod:`pragma_core.hookspecs`);
* :class:`Driver`, :class:`Repository` -- the plugin interfaces (:mod:`pragma_core.interfaces`);
* the value types of :mod:`pragma_core.model`;
* :class:`PragmaError` and its subclasses (:mod:`pragma_core.errors`);
* :class:`Site`, the front door for Python tools (:mod:`pragma_core.site`).

Names are imported on first use so that ``import pragma_core`` stays cheap.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: ``import pragma_core`` stays cheap

__version__ = "0.1.0"

_EXPORTS = {
    "Site": "pragma_core.site",
    "Booted": "pragma_core.model",
    "Hooks": "pragma_core.hooks",
    "hookimpl": "pragma_core.hookspecs",
    "hookspec": "pragma_core.hookspecs",
    "Driver": "pragma_core.interfaces",
    "Repository": "pragma_core.interfaces",
    "StageEvent": "pragma_core.events",
    "Allocation": "pragma_core.model",
    "BootRequest": "pragma_core.model",
    "Checksum": "pragma_core.model",
    "ClusterDescription": "pragma_core.model",
    "ClusterStatus": "pragma_core.model",
    "ClusterReadiness": "pragma_core.model",
    "Role": "pragma_core.model",
    "NodeReadiness": "pragma_core.model",
    "Readiness": "pragma_core.model",
    "DiskImage": "pragma_core.model",
    "Interface": "pragma_core.model",
    "InterfaceRequest": "pragma_core.model",
    "MemorySpec": "pragma_core.model",
    "Network": "pragma_core.model",
    "Node": "pragma_core.model",
    "NodeStatus": "pragma_core.model",
    "NodeTemplate": "pragma_core.model",
    "Part": "pragma_core.model",
    "ResolvedCluster": "pragma_core.model",
    "StagedCluster": "pragma_core.model",
    "StagedImage": "pragma_core.model",
    "PragmaError": "pragma_core.errors",
    "ConfigError": "pragma_core.errors",
    "FormatError": "pragma_core.errors",
    "PluginError": "pragma_core.errors",
    "DriverError": "pragma_core.errors",
    "CapacityError": "pragma_core.errors",
    "NotFoundError": "pragma_core.errors",
    "RepositoryError": "pragma_core.errors",
    "StagingError": "pragma_core.errors",
    "ChecksumError": "pragma_core.errors",
    "NotSupportedError": "pragma_core.errors",
    "UsageError": "pragma_core.errors",
}

if TYPE_CHECKING:  # what type checkers see; at run time names load on first use
    from typing import Any

    from .errors import CapacityError as CapacityError, ChecksumError as ChecksumError, ConfigError as ConfigError, DriverError as DriverError, FormatError as FormatError, NotFoundError as NotFoundError, NotSupportedError as NotSupportedError, PluginError as PluginError, PragmaError as PragmaError, RepositoryError as RepositoryError, StagingError as StagingError, UsageError as UsageError
    from .events import StageEvent as StageEvent
    from .hooks import Hooks as Hooks
    from .hookspecs import hookimpl as hookimpl, hookspec as hookspec
    from .interfaces import Driver as Driver, Repository as Repository
    from .model import Allocation as Allocation, Booted as Booted, BootRequest as BootRequest, Checksum as Checksum, ClusterDescription as ClusterDescription, ClusterReadiness as ClusterReadiness, ClusterStatus as ClusterStatus, DiskImage as DiskImage, Interface as Interface, InterfaceRequest as InterfaceRequest, MemorySpec as MemorySpec, Network as Network, Node as Node, NodeReadiness as NodeReadiness, NodeStatus as NodeStatus, NodeTemplate as NodeTemplate, Part as Part, Readiness as Readiness, ResolvedCluster as ResolvedCluster, Role as Role, StagedCluster as StagedCluster, StagedImage as StagedImage
    from .site import Site as Site

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pragma_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
