"""Path safety: names from configuration, catalogues and XML never leave their directory.

Two kinds of check, one function each:

* :func:`safe_join` -- lexical: a name joined onto a directory stays inside
  it (``..`` and absolute names are refused). It holds for files that do not
  exist yet, and follows no symbolic link.
* :func:`open_inside` / :func:`stat_inside` -- what a name *really* is, for
  every file pragma reads out of a repository: it must be a regular file
  whose real location lies inside the given root. A symbolic link that stays
  inside is fine; one that leads out, a device, a FIFO, a socket or a
  directory is refused with an :class:`UnsafeFileError` naming the file. The
  check is made on the opened descriptor (``O_PATH``, then
  ``/proc/self/fd``), so swapping the file between the check and the read
  changes nothing, opening a FIFO never blocks, and a device is never opened
  (opening some devices has effects).
* :func:`open_lane` -- where pragma *writes* inside a repository: a directory
  under a root reached without following any symbolic link, as a descriptor
  for ``dir_fd`` calls (``O_EXCL|O_NOFOLLOW`` creates, renames and removals
  that cannot be redirected).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import FormatError, PragmaError

__all__ = [
    "DEFAULT_MAX_IMAGE_SIZE",
    "FREE_SPACE_CHECK_EVERY",
    "FREE_SPACE_RESERVE",
    "UnsafeFileError",
    "free_bytes",
    "fsync_directory",
    "is_inside",
    "no_follow",
    "open_inside",
    "open_lane",
    "private_directory",
    "safe_join",
    "stat_inside",
    "unshared_directory",
]


@functools.lru_cache(maxsize=64)
def _root(base: str) -> str:
    return os.path.normpath(os.path.abspath(base))


def safe_join(base: Path, name: str, *, what: str = "path", source: Path | None = None) -> Path:
    """``base / name`` made absolute; a :class:`FormatError` if it escapes ``base``.

    ``name`` may be absolute only when it lies inside ``base``. Symbolic
    links are not followed here: the check is lexical, so it also holds for
    files that do not exist yet. ``what`` and ``source`` make the message
    ("<source>: part '../x' escapes the directory <base>").
    """
    if not name or "\x00" in name:
        raise FormatError(f"empty or invalid {what} name {name!r}", path=source)
    root = _root(os.fspath(base))
    candidate = os.path.normpath(os.path.join(root, name))
    if candidate == root:
        raise FormatError(f"{what} {name!r} names the directory itself", path=source)
    prefix = root if root.endswith(os.sep) else root + os.sep
    if not candidate.startswith(prefix):
        raise FormatError(f"{what} {name!r} escapes the directory {root}", path=source)
    return Path(candidate)


def no_follow(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open` that never follows a symbolic link at ``path`` itself.

    For files pragma makes and reopens by name (a download's ``.part``): a
    link planted at that name is an error (``ELOOP``), never written through.
    New files get mode 0644; the descriptor is close-on-exec.
    """
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


#: What writing an image (staging, a restore) always leaves free on its filesystem: 1 GiB. A few MB of
#: compressed data can expand to a TiB of non-zero bytes; the head node's disk must not fill.
FREE_SPACE_RESERVE = 1 << 30
#: Bytes of data written between two checks of the free space: 256 MiB.
FREE_SPACE_CHECK_EVERY = 256 << 20
#: The largest image staging writes unless the site says otherwise (``max_image_size``): 1 TiB.
DEFAULT_MAX_IMAGE_SIZE = 1 << 40


def free_bytes(where: int | os.PathLike[str] | str) -> int:
    """Bytes an unprivileged user may still write on the filesystem of ``where`` (an open descriptor or a path)."""
    st = os.fstatvfs(where) if isinstance(where, int) else os.statvfs(where)
    return st.f_bavail * st.f_frsize


def private_directory(path: Path) -> Path:
    """``path`` as a directory only this user can use: made with mode 0700 when missing.

    For what must not sit in a shared directory under a name others can
    guess (a lock file in ``/tmp`` that another user could hold). An existing
    ``path`` must be a real directory (not a link), owned by this user, that
    no one else may write; otherwise :class:`UnsafeFileError` (an
    :class:`OSError`) says why, and nothing is created in it.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    _check_unshared(path, owners={os.geteuid()})
    return path


def unshared_directory(path: Path) -> Path:
    """``path``, checked to be a real directory (not a link) owned by this user or by root, that no one
    else may write; otherwise :class:`UnsafeFileError` says why and how to fix it.

    For a directory this process writes into by name over a long run, as
    root (a sync's repository and its cluster folders): whoever else may
    write there could put a link in place of an entry between the moment it
    is checked and the moment it is written. With only its owner able to
    write, nobody can.
    """
    _check_unshared(path, owners={os.geteuid(), 0})
    return path


def _check_unshared(path: Path, *, owners: set[int]) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(path, "is not a directory (a link is never followed)", errno.ENOTDIR)
    if st.st_uid not in owners:
        raise UnsafeFileError(path, f"belongs to user {st.st_uid}, not to this one ({os.geteuid()})", errno.EPERM)
    if st.st_mode & 0o022:
        raise UnsafeFileError(path, f"can be written by others (mode {stat.S_IMODE(st.st_mode):o}): they could put"
                              f" a link in place of what pragma writes there; chmod go-w {path}", errno.EPERM)


def fsync_directory(directory: Path) -> None:
    """Make the renames and removals in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading inside a root


class UnsafeFileError(PragmaError, OSError):
    """A file is not a regular file really inside its directory (or a write would leave it).

    It is an :class:`OSError` too (``strerror`` says what is wrong, ``filename``
    names the file), so code that already turns ``OSError`` into a one-line
    message ("<file>: cannot read part: <strerror>") reports it unchanged.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, code: int = errno.EPERM) -> None:
        OSError.__init__(self, code, problem, os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


_PROC_FD = "/proc/self/fd"

_KINDS = (
    (stat.S_ISDIR, "a directory", errno.EISDIR),
    (stat.S_ISFIFO, "a FIFO", errno.EINVAL),
    (stat.S_ISSOCK, "a socket", errno.EINVAL),
    (stat.S_ISCHR, "a character device", errno.EINVAL),
    (stat.S_ISBLK, "a block device", errno.EINVAL),
)


def is_inside(path: str, root: str) -> bool:
    """Whether the absolute, normalized ``path`` lies strictly below ``root``."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix) and path != root


def _not_regular(path: str | os.PathLike[str], st: os.stat_result) -> UnsafeFileError | None:
    if stat.S_ISREG(st.st_mode):
        return None
    for test, kind, code in _KINDS:
        if test(st.st_mode):
            return UnsafeFileError(path, f"is {kind}, not a regular file", code)
    return UnsafeFileError(path, "is not a regular file", errno.EINVAL)


def _fd_location(fd: int) -> str | None:
    """Where the file open on ``fd`` really is (``None`` without ``/proc``)."""
    try:
        return os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        return None


@contextmanager
def _checked_path_fd(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Iterator[tuple[int, os.stat_result]]:
    """An ``O_PATH`` descriptor of ``path`` that is a regular file inside ``root``, and its stat.

    ``O_PATH`` opens nothing (no FIFO wait, no device side effect); the checks
    are made on that descriptor, so they hold for whatever is read through it.
    """
    real_root = os.path.realpath(root)
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        where = _fd_location(fd)
        if where is None:  # no /proc: resolve the name (not proof against a concurrent swap)
            where = os.path.realpath(path)
            if not os.path.samestat(st, os.stat(where)):
                raise UnsafeFileError(path, "changed while it was being checked", errno.EAGAIN)
        if not is_inside(where, real_root):
            raise UnsafeFileError(path, f"resolves to {where}, outside {real_root}", errno.EXDEV)
        problem = _not_regular(path, st)
        if problem is not None:
            raise problem
        yield fd, st
    finally:
        os.close(fd)


def stat_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> os.stat_result:
    """The stat of ``path`` once it is known to be a regular file really inside ``root``.

    Symbolic links are followed and must end inside ``root``. Raises
    :class:`UnsafeFileError` otherwise, and the usual :class:`OSError` s
    (:class:`FileNotFoundError` ...) when the file cannot be found.
    """
    with _checked_path_fd(root, path) as (_, st):
        return st


def open_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading (binary) once it is known to be a regular file really inside ``root``.

    The checks of :func:`stat_inside` are made on an ``O_PATH`` descriptor,
    and the file is then opened through that very descriptor
    (``/proc/self/fd/N``): what is read is what was checked. Raises
    :class:`UnsafeFileError` (an :class:`OSError` too) or the usual
    :class:`OSError` s.
    """
    with _checked_path_fd(root, path) as (pfd, st):
        source = f"{_PROC_FD}/{pfd}" if os.path.isdir(_PROC_FD) else os.fspath(path)
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if not os.path.samestat(st, os.fstat(fd)):
                raise UnsafeFileError(path, "changed while it was being checked", errno.EAGAIN)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


# --------------------------------------------------------------------------- writing inside a root


def open_lane(root: str | os.PathLike[str], relative: str | os.PathLike[str] = "", *, create: bool = False) -> int:
    """A directory descriptor of ``root/relative`` reached without following a symbolic link.

    ``root`` itself is opened as it is (it may be a link); every component of
    ``relative`` below it must be a real directory (``O_NOFOLLOW``), created
    when missing if ``create``. Files made through the descriptor with
    ``dir_fd`` calls therefore land in that directory and nowhere else.
    Raises :class:`UnsafeFileError` for a component that is a symbolic link or
    not a directory, :class:`OSError` otherwise. The caller closes it.
    """
    parts = [p for p in Path(relative).parts if p not in ("", ".")]
    if Path(relative).is_absolute() or ".." in parts:
        raise UnsafeFileError(Path(root, relative), f"is not a directory name inside {root}", errno.EXDEV)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = Path(root)
    try:
        for name in parts:
            here = here / name
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # O_DIRECTORY|O_NOFOLLOW on a link fails with ENOTDIR on Linux: say which it is
                if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise UnsafeFileError(here, "is a symbolic link; pragma does not write through symbolic links", errno.ELOOP) from None
                raise UnsafeFileError(here, "is not a directory", errno.ENOTDIR) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
