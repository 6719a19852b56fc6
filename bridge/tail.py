"""Following a run log while it grows: a file another process (or thread) writes, or a stream of one.

``LogTail.read_new()`` gives the frames of every record written since the last call (never blocking);
``wait(timeout_s)`` sleeps until there may be more (inotify/kqueue on a file, ``select`` on a stream);
``finished`` turns True when nothing more will come: the end record was read, the stream ended, or the file
was replaced. ``writer_alive()`` tells, for a file, whether a writer still holds it (its lock).
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from bridge.errors import RunLogError
from bridge.filewatch import FileWatch
from bridge.frames import Frame, RunInfo
from bridge.paths import path_text
from bridge.recordformat import PREAMBLE, Damage, Header, RecordParser, decode_header, header_length
from bridge.runlog import fcntl, read_header

_CHUNK = 1 << 20
#: How often ``open_tail`` looks for a run log that does not exist yet, seconds.
_WAIT_FOR_FILE_S = 0.1
#: Most bytes one ``read_new`` takes from a file, so a follower far behind catches up in bounded steps.
_MAX_READ = 1 << 20


class LogTail:
    """What both kinds of tail share: the parser, and how far they got."""

    def __init__(self, header: Header, where: str, *, strict: bool) -> None:
        self.header = header
        self.where = where
        self._parser = RecordParser(header, where, strict=strict)
        self.finished = False
        self.reason = ""  #: why ``finished`` turned True, in words
        self.frames_read = 0
        self.skipped_at_start = 0  #: frames left out by starting from now instead of from the start
        self._frozen = False

    @property
    def info(self) -> RunInfo:
        """The run's layer names and metadata."""
        return self.header.info

    @property
    def damage(self) -> Damage:
        """Damaged records skipped so far."""
        return self._parser.damage

    @property
    def frames_written(self) -> int | None:
        """From the end record: how many frames the writer wrote (``None`` before it is read)."""
        return self._parser.frames_written

    @property
    def closed_at_s(self) -> float | None:
        """From the end record: when the writer closed the log, seconds since the epoch (``None`` before)."""
        return self._parser.closed_at_s

    def read_new(self, *, final: bool = False) -> list[Frame]:
        """The frames written since the last call, in order; ``final``: the last read (nothing more comes)."""
        data = self._read_available()
        if data:
            self._parser.feed(data)
        frames = self._parser.frames(final=final or self.finished)
        self.frames_read += len(frames)
        if self._parser.ended and not self.finished:
            self.finished, self.reason = True, "the writer closed the run log"
        return frames

    def wait(self, timeout_s: float, also: Sequence[int] = ()) -> None:
        """Sleep until more may have been written, an ``also`` descriptor is readable, or ``timeout_s`` passes."""
        raise NotImplementedError

    def writer_alive(self) -> bool | None:
        """Whether a writer still holds the log (``None``: cannot tell here)."""
        return None

    def frames_left(self) -> int | None:
        """After ``freeze``: about how many frames ``read_new`` has still to give (``None``: unknown)."""
        return None

    def freeze(self) -> None:
        """Read nothing written from now on: what ``read_new`` gives next is the log as it stands (a follower
        asked to stop delivers that much and no more, however fast the writer goes on)."""
        self._frozen = True

    def close(self) -> None:
        """Release the file or stream."""

    def _read_available(self) -> bytes:
        raise NotImplementedError


class FileTail(LogTail):
    """Follows a run log file. ``from_start=False`` skips the frames already in it (a live listener joining)."""

    def __init__(self, path: str | os.PathLike[str], *, from_start: bool = True, strict: bool = False) -> None:
        path = path_text(path)
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - kept open while following; closed by close()
        except OSError as exc:
            raise RunLogError(f"cannot read run log {path}: {exc.strerror or exc}") from exc
        try:
            header = read_header(self._file, path)
        except BaseException:
            self._file.close()
            raise
        super().__init__(header, path, strict=strict)
        self.path = path
        self._position = header.size
        if not from_start:
            records = (os.fstat(self._file.fileno()).st_size - header.size) // header.record_bytes
            self._position += records * header.record_bytes
            self.skipped_at_start = records
            self._parser = RecordParser(header, path, offset=self._position, strict=strict)
        self._inode = os.fstat(self._file.fileno()).st_ino
        self._watch = FileWatch(path)

    def wait(self, timeout_s: float, also: Sequence[int] = ()) -> None:
        self._watch.wait(timeout_s, also)

    def writer_alive(self) -> bool | None:
        if fcntl is None:
            return None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no locks on this file system
            return None
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        self._watch.close()
        self._file.close()

    def freeze(self) -> None:
        super().freeze()
        self._limit = os.fstat(self._file.fileno()).st_size

    def frames_left(self) -> int | None:
        if not self._frozen:
            return None
        return max(0, self._limit - self._position + self._parser.buffered) // self.header.record_bytes

    def _read_available(self) -> bytes:
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        if self._frozen:
            size = min(size, self._limit)
        if size < self._position:
            self.finished, self.reason = True, f"the run log {self.path} was emptied by another run"
            return b""
        if self._replaced():  # the path names another run now: what ours still holds, then the end
            self.finished, self.reason = True, f"the run log {self.path} was replaced by another run"
        parts = []
        size = min(size, self._position + _MAX_READ)
        while size > self._position:
            chunk = os.pread(fd, min(_CHUNK, size - self._position), self._position)
            if not chunk:
                break
            parts.append(chunk)
            self._position += len(chunk)
        return b"".join(parts)

    def _replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True


class StreamTail(LogTail):
    """Follows a run log arriving on a stream (``gradbridge follow -``: ``ssh host cat run.gbrun | ...``);
    the stream's end is the run's end."""

    def __init__(self, stream: BinaryIO, *, where: str = "standard input", strict: bool = False) -> None:
        self._stream = stream
        self._fd = stream.fileno()
        preamble = self._read_exactly(PREAMBLE.size, where)
        rest = self._read_exactly(header_length(preamble, where) - len(preamble), where)
        super().__init__(decode_header(preamble + rest, where), where, strict=strict)

    def wait(self, timeout_s: float, also: Sequence[int] = ()) -> None:
        if os.name == "posix":
            select.select([self._fd, *also], [], [], max(0.0, timeout_s))

    def freeze(self) -> None:
        super().freeze()
        self._reads_left = 1  # what the pipe holds now: one read

    def _read_available(self) -> bytes:
        if self.finished or (self._frozen and self._reads_left <= 0):
            return b""
        if self._frozen:
            self._reads_left -= 1
        if os.name == "posix" and not select.select([self._fd], [], [], 0)[0]:
            return b""
        chunk = os.read(self._fd, _CHUNK)
        if not chunk:
            self.finished, self.reason = True, f"{self.where} ended"
        return chunk

    def _read_exactly(self, count: int, where: str) -> bytes:
        data = b""
        while len(data) < count:
            chunk = os.read(self._fd, count - len(data))
            if not chunk:
                if not data:
                    raise RunLogError(f"{where} ended before a run log header; pipe a .gbrun run log into it "
                                      f"(ssh host cat run.gbrun | gradbridge follow - ...)")
                raise RunLogError(f"{where} ended inside the run log header ({len(data)} of {count} bytes)")
            data += chunk
        return data


def stdin_tail(strict: bool = False) -> StreamTail:
    """A tail of the run log piped into standard input."""
    return StreamTail(sys.stdin.buffer, strict=strict)


def open_tail(run: str, *, from_start: bool = False, stop: threading.Event | None = None,
              announce: TextIO = sys.stderr, strict: bool = False) -> LogTail | None:
    """The tail ``gradbridge follow RUN`` reads: standard input for ``"-"``, else the file ``run``, waited for
    (with one line on ``announce``) until it exists and holds a whole header. ``None`` when ``stop`` was set
    while waiting."""
    if run == "-":
        return stdin_tail(strict=strict)
    said = False
    while stop is None or not stop.is_set():
        try:
            if os.path.getsize(run) >= PREAMBLE.size:
                with open(run, "rb") as f:
                    size = header_length(f.read(PREAMBLE.size), run)
                if os.path.getsize(run) >= size:
                    return FileTail(run, from_start=from_start, strict=strict)
        except FileNotFoundError:  # not there yet: the writer may start after us
            said = said or _say_waiting(run, announce)
            time.sleep(_WAIT_FOR_FILE_S)
            continue
        said = said or _say_waiting(run, announce)
        time.sleep(_WAIT_FOR_FILE_S)
    return None


def _say_waiting(run: str, announce: TextIO) -> bool:
    print(f"gradbridge: waiting for {run} to be written (Ctrl-C to stop)", file=announce)
    return True
