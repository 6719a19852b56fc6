"""Run log: the append-only binary record of a run's frames, written on the training thread, read back.

The bytes are described in ``bridge.recordformat``. ``RunLogWriter`` appends one record per frame with
one ``os.write``, so a frame handed to it survives ``kill -9`` of the process; ``close`` adds the end
record that tells a follower the run is over. ``RunLogReader`` and ``open_run`` read a finished (or
growing, or damaged) log; ``bridge.tail`` follows one while it grows.

CSV: ``open_run`` also reads a CSV with a ``step`` column (any case; W&B's ``_step`` too) and one
column per layer, as TensorBoard and W&B export them. The CSV format lives in ``bridge.runcsv``;
``write_csv`` and ``LAYER_PREFIX`` are re-exported here, where they were first defined.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from types import TracebackType

from bridge.errors import RunLogError
from bridge.frames import Frame, RunInfo
from bridge.paths import path_text, require_parent
from bridge.recordformat import (BYTES_PER_LAYER, FORMAT_VERSION, MAGIC, PREAMBLE, RECORD_FIXED_BYTES, Damage,
                                 Header, RecordParser, decode_header, encode_end, encode_frame, encode_header,
                                 header_length, record_bytes)
from bridge.runcsv import EXPECTED_INPUT, LAYER_PREFIX, open_csv, write_csv

__all__ = ["BYTES_PER_LAYER", "FORMAT_VERSION", "LAYER_PREFIX", "MAGIC", "MAX_PENDING_BYTES", "RECORD_FIXED_BYTES",
           "RunLogReader", "RunLogWarning", "RunLogWriter", "open_run", "read_header", "read_run", "record_bytes",
           "write_csv"]

log = logging.getLogger("bridge")

#: Bytes of records a writer keeps in memory while it cannot write (disk full); beyond, frames are dropped.
MAX_PENDING_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: followers tell a finished log by its end record alone
    fcntl = None  # type: ignore[assignment]


class RunLogWarning(UserWarning):
    """A run log had damaged records; they were skipped and the others read."""


class RunLogWriter:
    """Append frames to a ``.gbrun`` run log; the file is created, or emptied if it exists, at open.

    Each ``append`` is one ``os.write`` of one record on an ``O_APPEND`` descriptor: nothing is buffered,
    so ``kill -9`` loses no frame that was appended (an OS crash or power loss can; ``fsync=True`` calls
    ``os.fsync`` after every write, at the cost of a disk round trip, milliseconds, per frame). While the
    writer lives it holds a lock on the file (``flock``, POSIX), which tells a follower it is alive.

    ``append`` never raises for a failing disk: when a write fails (disk full, I/O error) the record is
    kept in memory (up to ``MAX_PENDING_BYTES``; later frames are dropped and counted), the failure is
    logged once, every later ``append`` retries, and a log line says when writing works again. ``close``
    writes what is kept and the end record; if it cannot, it raises ``RunLogError`` naming the file, the
    frames lost and the fix. Use from one thread at a time.

    Args:
        path: file to create; its directory must exist.
        run_info: layer names and metadata, stored in the header.
        fsync: also ``os.fsync`` after each write.
    """

    def __init__(self, path: str | os.PathLike[str], run_info: RunInfo, *, fsync: bool = False) -> None:
        self.path = path_text(path)
        if not isinstance(run_info, RunInfo):
            raise TypeError(f"run_info must be a bridge.frames.RunInfo; got {type(run_info).__name__}")
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be True or False; got {type(fsync).__name__}")
        self.run_info = run_info
        self.fsync = fsync
        self.layer_count = len(run_info.layer_names)
        self.record_bytes = record_bytes(self.layer_count)
        self.appended = 0  #: frames given to ``append``
        self.dropped = 0  #: frames lost: not kept while the disk was full, or not written at close
        self.first_error: str | None = None  #: the first write failure, in words
        self._pending = bytearray()  # records (or the rest of one) not yet written
        self._failing_since: float | None = None
        self._closed = False
        header = encode_header(run_info, {"pid": os.getpid(), "host": socket.gethostname()})
        require_parent(self.path, "run log")
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise RunLogError(f"cannot create run log {self.path}: {exc.strerror or exc}") from exc
        try:
            self._lock()
            os.ftruncate(self._fd, 0)
            _write_all(self._fd, bytearray(header))
            if fsync:
                os.fsync(self._fd)
                _fsync_directory(self.path)
        except OSError as exc:
            os.close(self._fd)
            self._closed = True
            raise RunLogError(f"cannot write the header of run log {self.path}: {exc.strerror or exc}") from exc

    @property
    def pending(self) -> int:
        """Frames appended but not yet (completely) written to the file."""
        return -(-len(self._pending) // self.record_bytes)

    @property
    def written(self) -> int:
        """Frames completely handed to the OS."""
        return self.appended - self.pending - self.dropped

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    def append(self, frame: Frame) -> None:
        """Record one frame: one ``os.write`` (more only while retrying after a failed write)."""
        if self._closed:
            raise RunLogError(f"run log {self.path} is closed; open a new RunLogWriter to record more frames")
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a bridge.frames.Frame; got {type(frame).__name__}")
        if frame.layer_count != self.layer_count:
            raise ValueError(f"frame at step {frame.step} has {frame.layer_count} layer norms but run log "
                             f"{self.path} was opened with {self.layer_count} layers; append frames "
                             f"measured on the same layers as its RunInfo")
        record = encode_frame(frame)
        self.appended += 1
        if self._pending:
            if len(self._pending) + len(record) > MAX_PENDING_BYTES:
                self.dropped += 1
            else:
                self._pending += record
            self._retry()
            return
        try:
            written = os.write(self._fd, record)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._pending += record
            self._failed(exc)
            return
        if written < len(record):  # a short write: the disk is filling up
            self._pending += record[written:]
            self._retry()

    def flush(self) -> None:
        """Try now to write what a failing disk left in memory (``append`` and ``close`` try too)."""
        if not self._closed and self._pending:
            self._retry()

    def close(self) -> None:
        """Write what is kept in memory and the end record, then release the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._pending += encode_end(self.appended - self.dropped, time.time(), self.layer_count)
            _write_all(self._fd, self._pending)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            lost = max(0, self.pending - 1)  # the end record is not a frame
            self.dropped += lost
            self._pending.clear()
            raise RunLogError(f"could not finish run log {self.path} while closing ({exc.strerror or exc}): "
                              f"{lost} frame(s) lost, the {self.written} before them are in the file. Fix: free "
                              f"disk space; `gradbridge render {self.path}` reads what was written") from exc
        finally:
            try:
                os.close(self._fd)
            except OSError as exc:
                log.warning("could not close run log %s: %s", self.path, exc.strerror or exc)

    def __enter__(self) -> RunLogWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLogError(f"run log {self.path} is being written by another process; give this run another "
                              f"record= path") from None
        except OSError as exc:  # a file system without locks: followers rely on the end record alone
            log.debug("no lock on run log %s: %s", self.path, exc)

    def _retry(self) -> None:
        try:
            _write_all(self._fd, self._pending)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._failed(exc)
            return
        if self._failing_since is not None:
            log.warning("run log %s: writing again after %.1f s; every frame kept in memory is written%s",
                        self.path, time.monotonic() - self._failing_since,
                        f" ({self.dropped} dropped while memory was full)" if self.dropped else "")
            self._failing_since = None

    def _failed(self, exc: OSError) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            text = f"{exc.strerror or exc}"
            if self.first_error is None:
                self.first_error = f"at frame {self.appended - 1} ({text})"
            log.warning("run log %s: cannot write (%s); keeping up to %d MiB of frames in memory and retrying at "
                        "every step: free disk space and it catches up", self.path, text, MAX_PENDING_BYTES >> 20)


def _write_all(fd: int, data: bytearray) -> None:
    """Write ``data`` to ``fd``, deleting from its front what was written (so a retry resumes there)."""
    while data:
        written = os.write(fd, data)
        if written <= 0:
            raise OSError(0, f"os.write wrote {written} bytes")
        del data[:written]


def _fsync_directory(path: str) -> None:
    """Make a new file's directory entry durable too (POSIX only)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_header(f: object, where: str) -> Header:
    """The header of the run log open as binary file ``f`` (positioned at its start); ``RunLogError`` else."""
    read = f.read  # type: ignore[attr-defined]
    preamble = read(PREAMBLE.size)
    if not preamble:
        raise RunLogError(f"{where} is empty; {EXPECTED_INPUT}")
    try:
        size = header_length(preamble, where)
    except RunLogError as exc:
        if preamble[: len(MAGIC)] != MAGIC:
            raise RunLogError(f"{exc}; {EXPECTED_INPUT}") from None
        raise
    return decode_header(preamble + read(size - len(preamble)), where)


class RunLogReader:
    """Read a ``.gbrun`` run log: ``info`` at once, frames by iterating (streamed, in chunks).

    Raises ``RunLogError`` at construction when the file is missing, empty, not a run log, of an unknown
    format version or has a damaged header. Damaged records are skipped: iterating warns once
    (``RunLogWarning``) with how many, and ``damage`` holds the count afterwards; ``strict=True`` raises
    ``RunLogError`` at the first instead. Each iteration reopens the file, so it may be repeated.

    Attributes:
        info: the run's layer names and metadata.
        version: the format version (1 or 2).
        header_bytes: the header's length in bytes.
        record_bytes: each record's length in bytes.
        ended: after iterating, whether the log had its end record (the writer closed it).
        damage: after iterating, what was skipped.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = False) -> None:
        self.path = path_text(path)
        self.strict = strict
        try:
            with open(self.path, "rb") as f:
                self.header = read_header(f, self.path)
        except OSError as exc:
            raise RunLogError(f"cannot read run log {self.path}: {exc.strerror or exc}; {EXPECTED_INPUT}") from exc
        self.info = self.header.info
        self.version = self.header.version
        self.header_bytes = self.header.size
        self.record_bytes = self.header.record_bytes
        self.ended = False
        self.damage = Damage()

    @property
    def records_on_disk(self) -> int:
        """Complete records now in the file (before checks, the end record included): for progress bars."""
        return max(0, os.path.getsize(self.path) - self.header_bytes) // self.record_bytes

    def __iter__(self) -> Iterator[Frame]:
        parser = RecordParser(self.header, self.path, strict=self.strict)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.header_bytes)
                while not parser.ended and (chunk := f.read(_READ_CHUNK)):
                    parser.feed(chunk)
                    yield from parser.frames()
                yield from parser.frames(final=True)  # a shorter tail is a torn last write: ignored
        except OSError as exc:
            raise RunLogError(f"cannot read run log {self.path}: {exc.strerror or exc}") from exc
        finally:
            self.ended, self.damage = parser.ended, parser.damage
        if parser.damage.records:
            warnings.warn(RunLogWarning(parser.damage.describe(self.path) + "; the other records were read "
                                        "(strict reading refuses a damaged log)"), stacklevel=2)


def open_run(path: str | os.PathLike[str], *, strict: bool = False) -> tuple[RunInfo, Iterator[Frame]]:
    """Open a ``.gbrun`` run log or a CSV of norms (told apart by the magic bytes, not the suffix).

    Returns the run's ``RunInfo`` and an iterator of its frames, read lazily. A file that does not start
    with ``MAGIC`` (and is not empty) is read as a CSV by ``bridge.runcsv.open_csv``: one header row with
    a ``step`` column (any case, also ``_step``/``Step``) and one column per layer, in file order; the
    optional columns ``wall_time`` (also ``Wall time``, W&B's ``_timestamp``), ``loss`` and ``lr`` fill
    ``time_s``, ``loss`` and ``lr``, which are NaN (unknown) when absent. A header ``layer:NAME`` is
    always a layer named ``NAME``. Empty cells and ``nan`` read as NaN, ``inf``/``-inf`` as ±Inf; steps
    may repeat but never decrease. Problems raise ``RunLogError`` naming the file, line and column.
    ``strict``: a damaged run log record raises instead of being skipped with a warning.
    """
    path = path_text(path)
    try:
        with open(path, "rb") as f:
            start = f.read(len(MAGIC))
    except OSError as exc:
        raise RunLogError(f"cannot read run log {path}: {exc.strerror or exc}; {EXPECTED_INPUT}") from exc
    if start == MAGIC or not start:
        return (reader := RunLogReader(path, strict=strict)).info, iter(reader)
    return open_csv(path)


def read_run(path: str | os.PathLike[str], *, strict: bool = False) -> tuple[RunInfo, list[Frame]]:
    """Read a whole ``.gbrun`` run log or CSV of norms into memory; see ``open_run``."""
    info, frames = open_run(path, strict=strict)
    return info, list(frames)
