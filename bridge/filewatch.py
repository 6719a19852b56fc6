"""Waiting for a file to change, without spinning: inotify on Linux, kqueue on macOS and the BSDs, else polling.

``FileWatch(path).wait(timeout_s, also=(fd, ...))`` returns when the file was written to, when one of the
``also`` descriptors is readable (a pipe that ends, say), or after ``timeout_s`` seconds; the caller then
looks at the file itself. Where no wake-up exists (Windows) it sleeps ``POLL_S`` seconds at most and says the
file may have changed: the caller's look costs one ``stat``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("bridge")

#: Longest sleep, in seconds, between two looks at a file where no wake-up exists.
POLL_S = 0.005

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_IN_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF


def _inotify() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc if hasattr(libc, "inotify_init1") else None
    except OSError:  # pragma: no cover - a Linux without a C library to load
        return None


class FileWatch:
    """Wakes a reader when ``path`` is written to. Close it with ``close()`` (or use it in a ``with``).

    Attributes:
        kind: ``"inotify"``, ``"kqueue"`` or ``"poll"``: how it waits.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.kind = "poll"
        self._fd: int | None = None  # inotify descriptor
        self._kqueue: object | None = None
        self._file_fd: int | None = None  # kqueue watches an open descriptor
        libc = _inotify()
        if libc is not None:
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)  # type: ignore[attr-defined]
            if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), _IN_MASK) >= 0:  # type: ignore[attr-defined]
                self._fd, self.kind = fd, "inotify"
                return
            if fd >= 0:
                os.close(fd)
            log.debug("inotify unavailable for %s (errno %d); polling", path, ctypes.get_errno())
        if hasattr(select, "kqueue"):
            try:
                self._file_fd = os.open(path, os.O_RDONLY)
                kq = select.kqueue()
                event = select.kevent(self._file_fd, filter=select.KQ_FILTER_VNODE,
                                      flags=select.KQ_EV_ADD | select.KQ_EV_CLEAR,
                                      fflags=select.KQ_NOTE_WRITE | select.KQ_NOTE_EXTEND | select.KQ_NOTE_DELETE)
                kq.control([event], 0, 0)
                self._kqueue, self.kind = kq, "kqueue"
            except OSError as exc:  # pragma: no cover - macOS only
                log.debug("kqueue unavailable for %s (%s); polling", path, exc)

    def wait(self, timeout_s: float, also: Sequence[int] = ()) -> bool:
        """Block until the file changes, an ``also`` descriptor is readable, or ``timeout_s`` passes.

        Returns True when the file may have changed (always True when polling), False on a timeout or
        when only an ``also`` descriptor woke it.
        """
        if self._fd is not None:
            ready = select.select([self._fd, *also], [], [], max(0.0, timeout_s))[0]
            if self._fd in ready:
                try:
                    while os.read(self._fd, 65536):
                        pass
                except BlockingIOError:
                    pass
                return True
            return False
        if self._kqueue is not None:  # pragma: no cover - macOS only
            if also and select.select(list(also), [], [], 0)[0]:
                return False
            events = self._kqueue.control(None, 1, max(0.0, timeout_s if not also else min(timeout_s, POLL_S)))  # type: ignore[attr-defined]
            return bool(events)
        if also and os.name == "posix":
            select.select(list(also), [], [], min(max(0.0, timeout_s), POLL_S))
        else:
            time.sleep(min(max(0.0, timeout_s), POLL_S))
        return True

    def close(self) -> None:
        """Release the watch; idempotent."""
        for fd in (self._fd, self._file_fd):
            if fd is not None:
                os.close(fd)
        if self._kqueue is not None:  # pragma: no cover - macOS only
            self._kqueue.close()  # type: ignore[attr-defined]
        self._fd = self._file_fd = self._kqueue = None

    def __enter__(self) -> "FileWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
