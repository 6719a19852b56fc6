"""Files written whole: into a temporary file beside the target, renamed over the target once complete.

A command that fails part-way (a damaged input, a full disk, Ctrl-C) leaves its target as it was: an older
file of that name is untouched and no half-written file takes its place. The temporary file lies in the
target's folder (``NAME.XXXXXXXX.part``), so the rename (``os.replace``) stays within one file system,
where it is atomic on POSIX and Windows. Only a process killed outright (``kill -9``) leaves a ``.part``
file behind; the target is untouched then too. A target that exists but is not a regular file (``/dev/null``,
a named pipe, a terminal) is written directly: there is nothing there to keep, and it must never be renamed
over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator

from bridge.errors import SinkError

log = logging.getLogger("bridge")

__all__ = ["PART_SUFFIX", "discard", "put_in_place", "replacing", "temporary_beside", "written_in_place"]

#: The suffix of a file being written, before it is renamed into place.
PART_SUFFIX = ".part"


def _target_of(path: str) -> str:
    """The file a write to ``path`` replaces: ``path``, or where it points when it is a symbolic link."""
    return os.path.realpath(path) if os.path.islink(path) else path


def written_in_place(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a device, a named pipe, a
    terminal): such a target is written directly, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def temporary_beside(path: str | os.PathLike[str], what: str = "file") -> str:
    """Create an empty file beside ``path`` (``NAME.XXXXXXXX.part``) and return its path; for a target
    written in place (``written_in_place``), ``path`` itself.

    Its permissions are the existing target's, else a new file's (0666 less the umask). Raises
    ``SinkError`` naming ``what`` and ``path`` when the folder is missing or cannot be written, or
    when ``path`` is a folder.
    """
    if not os.fspath(path):
        raise SinkError(f"the {what}'s path is empty. Fix: give a file name")
    if written_in_place(path):
        return os.fspath(path)
    target = _target_of(os.fspath(path))
    folder = os.path.dirname(os.path.abspath(target))
    if os.path.isdir(target):
        raise SinkError(f"cannot write {what} {path}: it is a folder. Fix: give the name of a file in it")
    if not os.path.isdir(folder):
        raise SinkError(f"cannot write {what} {path}: folder {folder} does not exist. Fix: create it first, or "
                        f"choose another path")
    name = os.path.basename(target)
    for _ in range(100):
        temporary = os.path.join(folder, f"{name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise SinkError(f"cannot write {what} {path}: {exc.strerror or exc} in folder {folder}. Fix: choose "
                            f"a folder you can write to") from exc
        os.close(fd)
        try:
            if os.path.exists(target):
                os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))
        except OSError as exc:  # the older file's permissions could not be copied: a new file's are kept
            log.debug("keeping a new file's permissions for %s: %s", temporary, exc)
        return temporary
    raise SinkError(f"cannot write {what} {path}: no free temporary name in {folder}. Fix: remove the old "
                    f"*{PART_SUFFIX} files there")


def put_in_place(temporary: str, path: str | os.PathLike[str], what: str = "file") -> None:
    """Rename the complete ``temporary`` over ``path`` (``SinkError`` naming both if it cannot be)."""
    if temporary == os.fspath(path):  # written in place
        return
    try:
        os.replace(temporary, _target_of(os.fspath(path)))
    except OSError as exc:
        discard(temporary, path)
        raise SinkError(f"cannot put {what} {path} in place: {exc.strerror or exc}; it was left as it was. "
                        f"Fix: check that you can write to its folder") from exc


def discard(temporary: str, path: str | os.PathLike[str]) -> None:
    """Remove the unfinished temporary file of ``path`` (gone already, or ``path`` written in place: nothing
    to do)."""
    if temporary == os.fspath(path):
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], what: str = "file") -> Iterator[str]:
    """Yield the path of a new temporary file beside ``path`` to write; when the block ends normally it
    replaces ``path``, when it raises (Ctrl-C included) it is removed and ``path`` is left untouched."""
    temporary = temporary_beside(path, what)
    try:
        yield temporary
    except BaseException:
        discard(temporary, path)
        raise
    put_in_place(temporary, path, what)
