"""Processors: the gzip library choice and its fallback, and processors plugins register."""

from __future__ import annotations

import gzip
import importlib.util
import lzma
import random
import subprocess
import sys
import zlib

import pytest

from pragma_core import hookimpl
from pragma_core.hooks import HookManager, Hooks
from pragma_core.errors import PluginError, StagingError
from pragma_core.model import ClusterDescription, DiskImage, NodeTemplate, Part
from pragma_core.processors import ProcessorRegistry, builtin_processors, gzip_library
from pragma_core.staging import Stager

MIB = 1 << 20
FAST = ("zlib_ng", "zlib_ng.zlib_ng", "isal", "isal.isal_zlib")


def sample(seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(300_000) + bytes(MIB) + rng.randbytes(100_000) + bytes(5000)


def make_disk(tmp_path, blob: bytes, processor: str, pieces: int = 3):
    step = -(-len(blob) // pieces)
    parts = []
    for index, start in enumerate(range(0, len(blob), step)):
        name = f"img.{processor}.{index}"
        (tmp_path / name).write_bytes(blob[start : start + step])
        parts.append(Part(name=name))
    disk = DiskImage(source="img.raw", processor=processor, parts=parts)
    description = ClusterDescription(
        name="demo",
        path=tmp_path / "demo.xml",
        directory=tmp_path,
        frontend=NodeTemplate(role="frontend", domain_xml="<domain/>", disk=disk),
    )
    return description, disk


def hide(monkeypatch, *modules: str) -> None:
    """Make ``import <module>`` fail as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("PRAGMA_GZIP_LIBRARY", raising=False)


# ---------------------------------------------------------------- gzip libraries


def test_the_fastest_installed_gzip_library_is_chosen(monkeypatch):
    if (
        importlib.util.find_spec("zlib_ng") is None
        or importlib.util.find_spec("isal") is None
    ):
        pytest.skip("needs pragma-core[fast]: zlib-ng and isal")
    assert gzip_library().name == "zlib-ng"
    hide(monkeypatch, "zlib_ng", "zlib_ng.zlib_ng")
    assert gzip_library().name == "isal"
    hide(monkeypatch, "isal", "isal.isal_zlib")
    assert gzip_library().name == "zlib"


def test_without_fast_libraries_staging_falls_back_to_stdlib_zlib(
    tmp_path, monkeypatch
):
    hide(monkeypatch, *FAST)
    used = []
    real = zlib.decompressobj

    def counting(*args, **kwargs):
        used.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(zlib, "decompressobj", counting)
    data = sample(1)
    blob = gzip.compress(data[:400_000]) + gzip.compress(data[400_000:])  # two members
    description, disk = make_disk(tmp_path, blob, "splited_gzip")
    Stager(progress=False).stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == data
    assert used and used[0] == {"wbits": 31}


@pytest.mark.parametrize("library", ["zlib-ng", "isal", "zlib"])
def test_each_gzip_library_produces_the_same_image(tmp_path, monkeypatch, library):
    module = {"zlib-ng": "zlib_ng", "isal": "isal", "zlib": "zlib"}[library]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    monkeypatch.setenv("PRAGMA_GZIP_LIBRARY", library)
    assert gzip_library().name == library
    data = sample(2)
    blob = b"".join(
        gzip.compress(data[i : i + 250_000]) for i in range(0, len(data), 250_000)
    )
    description, disk = make_disk(tmp_path, blob, "splited_gzip", pieces=4)
    Stager(progress=False).stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == data


def test_an_unknown_forced_gzip_library_is_an_error(monkeypatch):
    monkeypatch.setenv("PRAGMA_GZIP_LIBRARY", "pigz")
    with pytest.raises(
        StagingError, match="PRAGMA_GZIP_LIBRARY='pigz': unknown gzip library"
    ):
        gzip_library()


def test_a_forced_library_that_is_not_installed_is_an_error(monkeypatch):
    hide(monkeypatch, "isal", "isal.isal_zlib")
    with pytest.raises(StagingError, match="gzip library 'isal' is not installed"):
        gzip_library("isal")


def test_importing_staging_loads_no_optional_library():
    code = (
        "import sys; import pragma_core.staging, pragma_core.processors; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zlib_ng', 'isal', 'tqdm', 'filelock')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- plugin processors


class XzPlugin:
    @hookimpl
    def pragma_image_processors(self, register):
        register("xz", lzma.LZMADecompressor)


def plugin_hooks(*plugins) -> Hooks:
    pm = HookManager()
    for plugin in plugins:
        pm.register(plugin)
    return Hooks(pm)


def test_a_plugin_registers_xz_through_the_hook(tmp_path):
    registry = ProcessorRegistry()
    registry.load_hooks(plugin_hooks(XzPlugin()))
    assert registry.names() == ["gzip", "raw", "splited", "splited_gzip", "xz"]
    data = sample(3)
    blob = lzma.compress(data[:700_000]) + lzma.compress(
        data[700_000:]
    )  # two xz streams
    description, disk = make_disk(tmp_path, blob, "xz", pieces=3)
    Stager(processors=registry, progress=False).stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == data


def test_a_truncated_xz_stream_is_an_error(tmp_path):
    registry = ProcessorRegistry()
    registry.load_hooks(plugin_hooks(XzPlugin()))
    description, disk = make_disk(
        tmp_path, lzma.compress(sample(4))[:-50], "xz", pieces=2
    )
    with pytest.raises(StagingError, match=r"img\.xz\.1: truncated xz data"):
        Stager(processors=registry, progress=False).stage_image(description, disk)
    assert not (tmp_path / "img.raw").exists()


def test_a_processor_name_registered_twice_names_both_registrations():
    class Clash:
        @hookimpl
        def pragma_image_processors(self, register):
            register("gzip", lzma.LZMADecompressor)

    registry = ProcessorRegistry()
    with pytest.raises(PluginError) as info:
        registry.load_hooks(plugin_hooks(Clash()))
    message = str(info.value)
    assert "'gzip' is registered twice" in message
    assert "pragma-core" in message and "_lzma.LZMADecompressor" in message


def test_core_registers_its_own_processors_through_the_register_plugins_get():
    calls = []
    builtin_processors(lambda name, factory, **options: calls.append((name, options)))
    assert calls == [("raw", {"in_place": True}), ("splited", {}), ("gzip", {"member_per_part": True}), ("splited_gzip", {})]
    registry = ProcessorRegistry()
    assert registry.names() == sorted(name for name, _ in calls)
    assert registry.get("gzip").member_per_part and registry.get("raw").in_place


def test_a_plugin_processor_can_ask_for_one_stream_per_part(tmp_path):
    class PerPartXz:
        @hookimpl
        def pragma_image_processors(self, register):
            register("xz_parts", lzma.LZMADecompressor, member_per_part=True)

    registry = ProcessorRegistry()
    registry.load_hooks(plugin_hooks(PerPartXz()))
    data = sample(3)
    blob = lzma.compress(data)
    description, disk = make_disk(tmp_path, blob, "xz_parts", pieces=2)  # one stream cut over two parts
    with pytest.raises(StagingError, match=r"img\.xz_parts\.0: truncated xz_parts data \(the part ends inside"):
        Stager(processors=registry, progress=False).stage_image(description, disk)
    assert not (tmp_path / "img.raw").exists()


def test_a_factory_returning_none_is_a_plain_join(tmp_path):
    registry = ProcessorRegistry()
    registry.register("concat", lambda: None)
    data = sample(5)
    description, disk = make_disk(tmp_path, data, "concat")
    Stager(processors=registry, progress=False).stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == data


class PlainGzip:
    """A decompressor with only ``decompress(data)``/``flush()``/``eof``/``unused_data`` (like zstandard's)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)

    def decompress(self, data: bytes) -> bytes:
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return self._d.flush()

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


def test_a_decompressor_without_an_output_limit_works_member_after_member(tmp_path):
    registry = ProcessorRegistry()
    registry.register("plain_gz", PlainGzip)
    data = sample(6)
    blob = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    description, disk = make_disk(tmp_path, blob, "plain_gz", pieces=2)
    Stager(processors=registry, progress=False).stage_image(description, disk)
    assert (tmp_path / "img.raw").read_bytes() == data


def test_a_factory_that_fails_is_a_staging_error(tmp_path):
    def broken():
        raise RuntimeError("no codec")

    registry = ProcessorRegistry()
    registry.register("broken", broken)
    description, disk = make_disk(tmp_path, b"data", "broken", pieces=1)
    with pytest.raises(
        StagingError, match="processor 'broken' failed to start: no codec"
    ):
        Stager(processors=registry, progress=False).stage_image(description, disk)


@pytest.mark.parametrize("name", ["", "two words", "../x", 7])
def test_a_processor_name_must_be_a_simple_word(name):
    with pytest.raises(PluginError):
        ProcessorRegistry().register(name, None)
