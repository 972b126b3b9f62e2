"""The conformance kit: pytest test classes every driver and repository must pass.

A plugin author subclasses a contract and overrides its one factory fixture::

    from pragma_core.testing import DriverContract, DriverHarness

    class TestMyDriver(DriverContract):
        @pytest.fixture
        def driver_harness(self, tmp_path):
            return DriverHarness(driver=MyDriver(...), cluster=..., max_cpus=16)

Besides the driver's and the repository's own operations, the contracts
check what core relies on when it loads a plugin: the class is registered
in ``pragma.drivers`` / ``pragma.repositories`` under its ``name``; its
``config_class`` builds from its defaults (or, when the harness documents
``required_settings``, fails naming each of them); a driver's
``supports_wait`` says whether it implements ``wait_ready``, whose answer
names every node. Boots go through core's real
:class:`~pragma_core.pipeline.Pipeline` (:func:`boot`), and the kit injects
failures after the allocation -- a failing vc-out hook, a deploy that fails
once everything runs -- to check that the pipeline's rollback leaves nothing.

Core runs the same contracts against its own ``local`` repository and its
``fake`` driver (a test double, :mod:`pragma_core.testing.fake`), so the kit
is proven before anyone else relies on it.

:func:`make_cluster` builds a small staged cluster (raw images on disk)
that a harness can use. Importing this package needs pytest; the ``fake``
driver does not.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DriverContract": "pragma_core.testing.contract",
    "DriverHarness": "pragma_core.testing.contract",
    "RepositoryContract": "pragma_core.testing.contract",
    "RepositoryHarness": "pragma_core.testing.contract",
    "make_cluster": "pragma_core.testing.contract",
    "make_site": "pragma_core.testing.contract",
    "boot": "pragma_core.testing.contract",
    "make_pipeline": "pragma_core.testing.contract",
    "StagedRepository": "pragma_core.testing.contract",
    "StageRecorder": "pragma_core.testing.contract",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - one list of names: _EXPORTS


def __getattr__(name: str) -> Any:
    import importlib

    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(module), name)
