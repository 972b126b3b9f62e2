"""Helpers shared by the CloudStack tests and the benchmark: a standard simulated cloud, a site, a driver."""

from __future__ import annotations

import os
from pathlib import Path

from cloudstack_simulator import CloudStackSimulator
from pragma_core.config import build_settings, load_site_config

from pragma_cloudstack.driver import CloudStackDriver

#: Poll fast in tests: jobs finish in milliseconds.
FAST = {"poll_interval": 0.005, "poll_max_interval": 0.02, "job_timeout": 10, "request_timeout": 5}


def standard_simulator(**options: object) -> CloudStackSimulator:
    """The standard simulated cloud, with the templates of ``make_cluster``'s ``demo`` cluster."""
    sim = CloudStackSimulator.standard(**options)
    zone = next(iter(sim.zones.values()))
    sim.add_template("demo-frontend", zone)
    sim.add_template("demo-compute", zone)
    return sim


def write_conf(conf_dir: Path, sim: CloudStackSimulator, *, legacy_url: bool = True, **settings: object) -> Path:
    """Write ``cloudstack.conf`` for ``sim`` (mode 600) and return its path."""
    values: dict[str, object] = {
        "baseurl": sim.url + ("?" if legacy_url else ""),
        "apikey": sim.api_key,
        "secretkey": sim.secret_key,
        "templatefilter": "community",
        **FAST,
    }
    values.update(settings)
    path = conf_dir / "cloudstack.conf"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in values.items()))
    os.chmod(path, 0o600)
    return path


def make_driver(conf_dir: Path) -> CloudStackDriver:
    """A driver built the way core builds it: settings from ``cloudstack.conf`` via ``build_settings``."""
    site = load_site_config(conf_dir)
    source = site.driver_config("cloudstack")
    assert source is not None
    config = build_settings(CloudStackDriver.config_class, source)
    return CloudStackDriver(config, site=site)
