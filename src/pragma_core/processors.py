"""Image processors: how the parts of a disk image become the image.

A cluster description names a processor for each disk
(``<file type="...">``, :attr:`pragma_core.model.DiskImage.processor`).
Core knows four, the legacy ones, with sensible semantics:

``raw``
    the ``<source file>`` is the image and is used in place; nothing to do.
    (With parts other than the image itself, the parts are joined.)
``splited``
    the parts, in order, are joined into the image (spelling kept from the
    legacy tool).
``splited_gzip``
    the joined parts are one gzip stream (one or more members), decompressed
    into the image.
``gzip``
    each part is a complete gzip file (one or more members); the parts are
    decompressed in order into the image.  Legacy ``gunzip -f`` ran once per
    part and left one file per part; here the members form one image, the
    ``<source file>``.

A plugin adds more (``xz``, ``zstd``...) through the
:func:`pragma_core.hookspecs.pragma_image_processors` hook::

    import lzma
    from pragma_core import hookimpl

    @hookimpl
    def pragma_image_processors(register):
        register("xz", lzma.LZMADecompressor)

A factory is called with no arguments for every compressed member (stream)
and returns a decompressor object shaped like :func:`zlib.decompressobj` or
:class:`lzma.LZMADecompressor`: ``decompress(data[, max_length])``, and
optionally ``flush()``, ``eof``, ``unused_data``, ``unconsumed_tail`` or
``needs_input``.  When the object has ``eof`` and ``unused_data``, data after
the end of one stream starts a new one (multi-member gzip, multi-stream xz).
A factory that is ``None`` or returns ``None`` means a plain join.

gzip is decoded by the fastest library that imports: zlib-ng, then
python-isal (both are dependencies of pragma-core, so a plain ``pip install
pragma-core`` has them), then the standard library's :mod:`zlib`, the
fallback for a platform without their wheels.
``PRAGMA_GZIP_LIBRARY=zlib-ng|isal|zlib`` forces one.  :func:`gzip_library`
is the one place this choice is made: the streaming stager uses its
decompressor factory, a plugin that needs a file object (Clonezilla's
partition images) its :meth:`GzipLibrary.open`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, Protocol

from attrs import frozen

from .errors import PluginError, StagingError

if TYPE_CHECKING:
    from .hooks import Hooks

log = logging.getLogger("pragma_core.staging")

#: Largest piece of output a decoder hands on at once: bounds memory whatever
#: the compression ratio (a MiB of gzip can hold a GiB of zeros).
OUTPUT_CHUNK = 1 << 20

#: Input fed at once to a decompressor that cannot bound its output.
_SMALL_INPUT = 64 << 10

#: gzip libraries, fastest first: (name, decompressor module, gzip file module, its reader class).
_GZIP_LIBRARIES = (
    ("zlib-ng", "zlib_ng.zlib_ng", "zlib_ng.gzip_ng", "GzipNGFile"),
    ("isal", "isal.isal_zlib", "isal.igzip", "IGzipFile"),
    ("zlib", "zlib", "gzip", "GzipFile"),
)

#: The gzip library environment override.
GZIP_LIBRARY_ENV = "PRAGMA_GZIP_LIBRARY"


class Decompressor(Protocol):
    """What a processor factory returns (the :func:`zlib.decompressobj` shape)."""

    def decompress(self, data: bytes, /) -> bytes: ...


DecompressorFactory = Callable[[], Any]


@frozen
class GzipLibrary:
    """The gzip implementation in use: ``name`` and a decompressor ``factory``.

    ``error`` is the class the library raises on corrupt deflate data (each
    library has its own: ``zlib.error``, ``zlib_ng.error``, ``IsalError``);
    ``reader`` names its :class:`gzip.GzipFile` counterpart as
    ``(module, class)``, imported only by :meth:`open`.
    """

    name: str
    factory: DecompressorFactory
    error: type[Exception] = Exception
    reader: tuple[str, str] = ("gzip", "GzipFile")

    def open(self, fileobj: IO[bytes]) -> IO[bytes]:
        """A binary reader of the gzip stream ``fileobj`` (all its members), decoded by this library."""
        module = importlib.import_module(self.reader[0])
        return getattr(module, self.reader[1])(fileobj=fileobj, mode="rb")  # type: ignore[no-any-return]


def gzip_library(prefer: str | None = None) -> GzipLibrary:
    """The fastest importable gzip library (or ``prefer``, or ``$PRAGMA_GZIP_LIBRARY``).

    A preferred library that is not installed is an error naming it.  Not
    cached: importing is cached by Python, and tests force the fallback by
    hiding the optional modules.
    """
    wanted = prefer or os.environ.get(GZIP_LIBRARY_ENV) or None
    names = [entry[0] for entry in _GZIP_LIBRARIES]
    if wanted is not None and wanted not in names:
        raise StagingError(
            f"{GZIP_LIBRARY_ENV}={wanted!r}: unknown gzip library (known: {', '.join(names)})"
        )
    for name, module_name, reader_module, reader_class in _GZIP_LIBRARIES:
        if wanted is not None and name != wanted:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if wanted is not None:
                raise StagingError(
                    f"gzip library {wanted!r} is not installed"
                ) from None
            continue
        decompressobj = module.decompressobj

        def factory(decompressobj: Callable[..., Any] = decompressobj) -> Any:
            return decompressobj(wbits=31)  # 16 + MAX_WBITS: gzip header and trailer

        factory.__qualname__ = f"gzip[{name}]"
        return GzipLibrary(name, factory, error=module.error, reader=(reader_module, reader_class))
    raise AssertionError("zlib is part of the standard library")  # pragma: no cover


def _gzip_factory() -> Any:
    return gzip_library().factory()


@frozen(kw_only=True)
class Processor:
    """A named way to turn parts into an image.

    ``factory`` makes one decompressor per compressed stream (``None``: plain
    join).  ``in_place`` is true for ``raw``: the image is the ``<source
    file>`` itself.  ``member_per_part`` means every part must end where a
    compressed stream ends (legacy ``gzip``: one gzip file per part), so a
    truncated part is named precisely.  ``origin`` says who registered it.
    """

    name: str
    factory: DecompressorFactory | None
    in_place: bool = False
    member_per_part: bool = False
    origin: str = "pragma-core"

    def decoder(self, *, label: str) -> StreamDecoder:
        """A fresh :class:`StreamDecoder`; ``label`` names the data in errors."""
        return StreamDecoder(self.factory, label=label, name=self.name)


def _describe(factory: object) -> str:
    if factory is None:
        return "plain join"
    module = getattr(factory, "__module__", None) or type(factory).__module__
    name = getattr(factory, "__qualname__", None) or type(factory).__qualname__
    return f"{module}.{name}"


def builtin_processors(register: Callable[..., None]) -> None:
    """Core's four processors, registered as a plugin's ``pragma_image_processors`` registers its own."""
    register("raw", None, in_place=True)
    register("splited", None)
    register("gzip", _gzip_factory, member_per_part=True)
    register("splited_gzip", _gzip_factory)


class ProcessorRegistry:
    """Processors by name: core's four, plus what plugins register.

    ``ProcessorRegistry()`` holds the built-in ones; fill in the plugins' with
    :meth:`load_hooks`.  Registering a name twice is a
    :class:`~pragma_core.errors.PluginError` naming both registrations.
    """

    BUILTIN = ("raw", "gzip", "splited", "splited_gzip")

    def __init__(self, *, builtins: bool = True) -> None:
        self._processors: dict[str, Processor] = {}
        if builtins:
            builtin_processors(functools.partial(self.register, origin="pragma-core"))

    def register(
        self,
        name: str,
        factory: DecompressorFactory | None,
        *,
        in_place: bool = False,
        member_per_part: bool = False,
        origin: str | None = None,
    ) -> None:
        """Add processor ``name`` whose decompressors ``factory()`` makes (``None``: join).

        This is the ``register`` the ``pragma_image_processors`` hook receives,
        and the one core's own processors go through
        (:func:`builtin_processors`). ``in_place``: the image is the
        ``<source file>`` itself (no factory); ``member_per_part``: every part
        must end where a compressed stream ends. ``origin`` names who
        registered it in a clash (default: the factory's module).
        """
        if (
            not isinstance(name, str)
            or not name
            or not name.replace("_", "").replace("-", "").isalnum()
        ):
            raise PluginError(f"image processor name {name!r} is not a simple word")
        if factory is not None and not callable(factory):
            raise PluginError(
                f"image processor {name!r}: factory {factory!r} is not callable"
            )
        if in_place and factory is not None:
            raise PluginError(f"image processor {name!r}: in_place needs no factory")
        if origin is None:
            origin = (getattr(factory, "__module__", None) if factory is not None else None) or "a plugin"
        processor = Processor(
            name=name, factory=factory, in_place=in_place, member_per_part=member_per_part, origin=origin
        )
        existing = self._processors.get(name)
        if existing is not None:
            raise PluginError(
                f"image processor {name!r} is registered twice: "
                f"by {existing.origin} ({_describe(existing.factory)}) "
                f"and by {processor.origin} ({_describe(processor.factory)})"
            )
        self._processors[name] = processor

    def load_hooks(self, hooks: Hooks) -> None:
        """Let every hook plugin register its processors with :meth:`register`, as core's own are."""
        hooks.image_processors(self.register)

    def get(self, name: str, *, source: object = None) -> Processor:
        """The processor ``name``; a :class:`StagingError` naming it, the known ones and ``source``."""
        try:
            return self._processors[name]
        except KeyError:
            where = f"{source}: " if source is not None else ""
            raise StagingError(
                f"{where}unknown image processor {name!r} (known: {', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._processors)

    def __contains__(self, name: object) -> bool:
        return name in self._processors


class StreamDecoder:
    """Feeds compressed bytes through member after member of one processor.

    :meth:`feed` yields output pieces of at most :data:`OUTPUT_CHUNK` bytes
    (for decompressors that can bound their output); :meth:`finish` checks
    the data did not stop in the middle of a stream.  Errors are
    :class:`StagingError` naming ``label``.
    """

    def __init__(
        self, factory: DecompressorFactory | None, *, label: str, name: str
    ) -> None:
        self._factory = factory
        self.label = label
        self.name = name
        self._decoder: Any = None
        self._passthrough = factory is None
        self._pending = False  # input fed to the current stream and not yet ended
        self.members = 0
        if factory is not None:
            self._decoder = self._new()
            self._passthrough = self._decoder is None

    def _new(self) -> Any:
        assert self._factory is not None
        try:
            return self._factory()
        except Exception as exc:  # a plugin's factory: report, do not crash
            raise StagingError(
                f"{self.label}: processor {self.name!r} failed to start: {exc}"
            ) from exc

    def _bad(self, exc: Exception) -> StagingError:
        return StagingError(f"{self.label}: corrupt {self.name} data: {exc}")

    @property
    def at_stream_end(self) -> bool:
        """True when every byte fed so far belongs to a finished stream."""
        return self._passthrough or not self._pending

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decompress ``data``, yielding output pieces."""
        if self._passthrough:
            if data:
                yield data
            return
        yield from self._guarded(self._feed(data))

    def _guarded(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        # Decompressor libraries each raise their own error class (zlib.error,
        # lzma.LZMAError, IsalError, zlib_ng.error...): any exception raised
        # while decoding is corrupt input, reported in one line.
        try:
            yield from pieces
        except StagingError:
            raise
        except Exception as exc:
            raise self._bad(exc) from exc

    def drain(self) -> Iterator[bytes]:
        """Give out what the decompressor holds back without more input.

        Afterwards :attr:`at_stream_end` is exact: a zlib-like decompressor
        stopped by the output limit may have consumed its last input bytes
        and still owe output (and its end-of-stream).
        """
        if self._passthrough or not self._pending:
            return
        yield from self._guarded(self._drain())

    def _drain(self) -> Iterator[bytes]:
        d = self._decoder
        if not (hasattr(d, "unconsumed_tail") or hasattr(d, "needs_input")):
            return
        while True:
            out = d.decompress(b"", OUTPUT_CHUNK)
            produced = bool(out)
            if produced:
                yield out
                out = b""  # released before the next decompress (see _feed)
            if d.eof:
                rest = d.unused_data
                self._next_member()
                if rest:
                    yield from self._feed(rest)
                return
            if not produced:
                return

    def _feed(self, data: bytes) -> Iterator[bytes]:
        # A piece is released as soon as it is taken (``out = b""``), before
        # the decompressor makes the next one: the allocator then reuses its
        # memory.  Holding it across the next decompress() made glibc hand the
        # memory back to the kernel and fault it in again, piece after piece
        # (~25,000 page faults and ~30 ms of CPU per GiB of image).
        d = self._decoder
        while data:
            self._pending = True
            if hasattr(d, "unconsumed_tail"):  # zlib, zlib-ng, isal
                out = d.decompress(data, OUTPUT_CHUNK)
                if out:
                    yield out
                    out = b""
                data = d.unconsumed_tail
                if getattr(d, "eof", False):
                    data = d.unused_data
                    d = self._next_member()
            elif hasattr(d, "needs_input"):  # lzma, bz2, compression.zstd
                out = d.decompress(data, OUTPUT_CHUNK)
                data = b""
                while True:
                    if out:
                        yield out
                        out = b""
                    if d.eof:
                        data = d.unused_data
                        d = self._next_member()
                        break
                    if d.needs_input:
                        break
                    out = d.decompress(b"", OUTPUT_CHUNK)
            else:  # decompress(data) only: keep the output small by feeding little
                piece, data = data[:_SMALL_INPUT], data[_SMALL_INPUT:]
                out = d.decompress(piece)
                if out:
                    yield out
                    out = b""
                if getattr(d, "eof", False):
                    data = (getattr(d, "unused_data", b"") or b"") + data
                    d = self._next_member()

    def _next_member(self) -> Any:
        self.members += 1
        self._pending = False
        self._decoder = self._new()
        return self._decoder

    def finish(self) -> Iterator[bytes]:
        """Flush the last stream; a :class:`StagingError` if it is cut short."""
        if self._passthrough:
            return
        yield from self.drain()
        d = self._decoder
        if not self._pending:
            if self.members == 0:
                raise StagingError(f"{self.label}: no {self.name} data (empty input)")
            return
        try:
            flush = getattr(d, "flush", None)
            out = flush() if flush is not None else b""
        except Exception as exc:
            raise self._bad(exc) from exc
        if out:
            yield out
        if hasattr(d, "eof"):
            if d.eof:
                self.members += 1
                self._pending = False
                if getattr(d, "unused_data", b""):
                    raise StagingError(
                        f"{self.label}: trailing garbage after the {self.name} data"
                    )
                return
            raise StagingError(
                f"{self.label}: truncated {self.name} data (ends inside a compressed stream)"
            )
        self.members += 1
        self._pending = False
