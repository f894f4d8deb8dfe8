"""Atomic file writing: every file slimkit writes goes to a temporary name first.

:func:`atomic_path` yields a hidden temporary path beside the destination,
``.slimkit-<16 hex digits>.<destination name>`` (it ends with the destination's own name, so writers
that check a suffix such as ``.weights.h5`` accept it), and renames it onto the destination when the
block succeeds. The destination is therefore always either the old file or the whole new one.

Temporary files never outlive their writer for long: while it writes, the writer holds an exclusive
``flock`` on its own lock file, ``.slimkit-lock-<same digits>.<destination name>`` (not on the temporary
file, which writers such as HDF5 lock themselves). Every write to a destination first deletes that
destination's temporary and lock files whose lock is free: those of writers that died, even by ``SIGKILL``
(the kernel drops a dead process's locks). A live writer's lock is held, so two live writers to one
destination never disturb each other; the last rename wins. (Where there is no ``flock``, on Windows,
nothing is cleaned up.)

Files are created with mode ``0o666`` minus the process umask, as ``open()`` creates them.

:func:`atomic_path` given a path that an enclosing :func:`atomic_path` of this process yielded writes it in
place (the enclosing block renames it), so a function that writes through :func:`atomic_path` can be handed a
temporary path. :func:`write_all` builds on that: several files renamed only when every one is written.

Example:

>>> import os, tempfile
>>> from slimkit.utils import atomic_path
>>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
>>> with atomic_path(target) as tmp:
...     _ = open(tmp, "w").write("hello")
>>> open(target).read(), os.listdir(os.path.dirname(target))
('hello', ['out.txt'])
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so no clean-up of dead writers' files
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".slimkit-"
LOCK_PREFIX = ".slimkit-lock-"
_TOKEN = "[0-9a-f]{16}"
_OPEN: set[str] = set()  # the temporary paths of this process's atomic_path blocks still open


def temp_name_pattern(destination: str, prefix: str = TEMP_PREFIX) -> re.Pattern[str]:
    """The names :func:`atomic_path` gives temporary files (``prefix=LOCK_PREFIX``: lock files) for
    ``destination`` (a file name, no folder); group 1 is the writer's token.

    Example:

    >>> bool(temp_name_pattern('model.pth').fullmatch('.slimkit-0123456789abcdef.model.pth'))
    True
    >>> bool(temp_name_pattern('model.pth').fullmatch('.slimkit-0123456789abcdef.other.pth'))
    False
    """
    return re.compile(re.escape(prefix) + f"({_TOKEN})" + re.escape("." + destination))


def _lock(fd: int, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def remove_dead_temps(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files of ``path`` whose writers died; returns their paths.

    Each writer holds a lock on its own lock file while it writes; a temporary file is deleted only when
    this process holds its writer's lock (or the lock file is gone), so a live writer is never disturbed.
    """
    if fcntl is None:  # pragma: no cover - see the import
        return []
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    temps, locks = temp_name_pattern(name), temp_name_pattern(name, LOCK_PREFIX)
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        names = [entry.name for entry in entries if entry.name.startswith(TEMP_PREFIX)]
    tokens = {match.group(1) for match in map(temps.fullmatch, names) if match}
    removed = []
    for token in {match.group(1) for match in map(locks.fullmatch, names) if match}:
        lock = os.path.join(directory, f"{LOCK_PREFIX}{token}.{name}")
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:  # gone already, or not ours to read
            continue
        try:
            if _lock(fd, wait=False) and os.path.samestat(os.fstat(fd), os.stat(lock)):
                tmp = os.path.join(directory, f"{TEMP_PREFIX}{token}.{name}")
                removed += [tmp] if _remove(tmp) else []
                os.remove(lock)
                tokens.discard(token)
        except OSError:
            pass
        finally:
            os.close(fd)
    for token in tokens:  # a temporary file is created after its lock file: without one, its writer is gone
        if not os.path.exists(os.path.join(directory, f"{LOCK_PREFIX}{token}.{name}")):
            tmp = os.path.join(directory, f"{TEMP_PREFIX}{token}.{name}")
            removed += [tmp] if _remove(tmp) else []
    return removed


def _start_writer(directory: str, name: str) -> tuple[str, str | None, int | None]:
    """A new temporary file for ``name`` in ``directory`` (created with the umask's mode), and the lock file
    and descriptor that hold its writer's lock (None where there are no locks)."""
    while True:
        token = secrets.token_hex(8)
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{token}.{name}")
        if fcntl is None:  # pragma: no cover - see the import
            lock, fd = None, None
        else:
            lock = os.path.join(directory, f"{LOCK_PREFIX}{token}.{name}")
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            _lock(fd, wait=True)
            if os.fstat(fd).st_nlink == 0:  # a cleaner locked it first, in the instant after creation, and removed it
                os.close(fd)
                continue
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return tmp, lock, fd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Before the temporary file is created, temporary files of ``path`` left by dead writers are deleted.
    On an exception the temporary file is removed and ``path`` is left as it was, so no half-written
    file is ever visible under the final name. ``path`` that is the temporary path of an enclosing block is
    yielded as it is: that block renames (or removes) it.
    """
    path = os.path.abspath(os.fspath(path))
    if path in _OPEN:
        yield path
        return
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    remove_dead_temps(path)
    tmp, lock, fd = _start_writer(directory, name)
    _OPEN.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _OPEN.discard(tmp)
        if lock is not None:
            _remove(lock)
            os.close(fd)


def write_all(writes: Iterable[tuple[str | os.PathLike | None, Callable[[str], None]]]) -> None:
    """All or nothing: call each ``write(tmp)`` with an :func:`atomic_path` temporary path of its destination
    (entries whose destination is None are skipped), and rename them all onto their destinations only when every
    write has succeeded. If one fails, every temporary file is removed and no destination is created or changed.

    Example:

    >>> import os, tempfile
    >>> from slimkit.utils.files import write_all
    >>> folder = tempfile.mkdtemp()
    >>> def fail(tmp):
    ...     raise RuntimeError('no second file')
    >>> try:
    ...     write_all([(os.path.join(folder, 'a.txt'), lambda tmp: open(tmp, 'w').close()),
    ...                (os.path.join(folder, 'b.txt'), fail)])
    ... except RuntimeError:
    ...     pass
    >>> os.listdir(folder)
    []
    """
    with contextlib.ExitStack() as stack:
        for path, write in writes:
            if path is not None:
                write(stack.enter_context(atomic_path(path)))
