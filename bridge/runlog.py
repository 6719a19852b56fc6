"""Run log: crash-safe, append-only binary recording of a run's frames, and reading a run back.

A ``.gbrun`` file is little-endian throughout. The header is written once, when the writer opens::

    offset  bytes  field
    0       5      magic b"GBRUN"
    5       2      format version, uint16 (1)
    7       4      N, length of the JSON that follows, uint32
    11      N      UTF-8 JSON {"layer_names": [...], "metadata": {...}}  (``RunInfo``)
    11+N    4      CRC32 of the 11 + N bytes before it, uint32

then one fixed-size record per frame, ``record_bytes(L) = 36 + 4 × L`` bytes for L layers::

    0       8      step, int64
    8       8      time_s, float64 (seconds since the epoch)
    16      8      loss, float64
    24      8      lr, float64
    32      4×L    norms, float32 × L
    32+4L   4      CRC32 of the record's first 32 + 4L bytes, uint32

Norms are stored as float32: NaN, +Inf and -Inf stay what they are, finite values up to 3.4e38 keep
about 7 significant digits (relative error at most 2**-24 ≈ 6e-8), larger magnitudes become ±Inf and
magnitudes below 1.4e-45 become 0. Step, time, loss and lr are stored exactly.

Reading ignores a truncated last record (a write torn by ``kill -9``) and stops, with a
``RunLogWarning`` that says how many bytes were skipped, at the first record whose CRC does not match.

CSV: ``open_run`` also reads a CSV with a ``step`` column (any case; W&B's ``_step`` too) and one
column per layer, as TensorBoard and W&B export them. The CSV format lives in ``bridge.runcsv``;
``write_csv`` and ``LAYER_PREFIX`` are re-exported here, where they were first defined.
"""

from __future__ import annotations

import json
import os
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from types import TracebackType

import numpy as np

from bridge.errors import RunLogError
from bridge.frames import Frame, RunInfo
from bridge.paths import path_text, require_parent
from bridge.runcsv import EXPECTED_INPUT, LAYER_PREFIX, open_csv, write_csv

__all__ = ["BYTES_PER_LAYER", "FORMAT_VERSION", "LAYER_PREFIX", "MAGIC", "RECORD_FIXED_BYTES", "RunLogReader",
           "RunLogWarning", "RunLogWriter", "open_run", "read_run", "record_bytes", "write_csv"]

MAGIC = b"GBRUN"
FORMAT_VERSION = 1
#: Bytes of a record that do not depend on the layer count: step, time_s, loss, lr and the CRC32.
RECORD_FIXED_BYTES = 36
#: Bytes each layer adds to a record (one float32 norm).
BYTES_PER_LAYER = 4

_PREAMBLE = struct.Struct("<5sHI")  # magic, version, JSON length
_FIXED = struct.Struct("<qddd")  # step, time_s, loss, lr
_CRC = struct.Struct("<I")


class RunLogWarning(UserWarning):
    """A run log was damaged after some point; the frames before it were read."""


def record_bytes(layer_count: int) -> int:
    """Bytes one step takes on disk for ``layer_count`` layers: ``36 + 4 × layer_count``."""
    if isinstance(layer_count, bool) or not isinstance(layer_count, int):
        raise TypeError(f"layer_count must be an int; got {type(layer_count).__name__}")
    if layer_count < 1:
        raise ValueError(f"layer_count must be >= 1; got {layer_count}")
    return RECORD_FIXED_BYTES + BYTES_PER_LAYER * layer_count


def _encode_header(run_info: RunInfo) -> bytes:
    metadata = run_info.metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"run_info.metadata must be a dict with str keys; got {metadata!r}")
    try:
        text = json.dumps({"layer_names": list(run_info.layer_names), "metadata": metadata},
                          ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run_info.metadata must hold JSON values (str, number, bool, None, list, dict): "
                        f"{exc}; convert such values with str()") from exc
    body = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(text.encode("utf-8"))) + text.encode("utf-8")
    return body + _CRC.pack(zlib.crc32(body))


def _encode_record(frame: Frame) -> bytes:
    try:
        head = _FIXED.pack(frame.step, frame.time_s, frame.loss, frame.lr)
    except struct.error as exc:
        raise ValueError(f"frame.step must fit in int64 (-2**63 .. 2**63-1); got {frame.step}") from exc
    with np.errstate(over="ignore"):  # beyond float32's range becomes ±Inf, as documented
        body = head + frame.norms.astype("<f4").tobytes()
    return body + _CRC.pack(zlib.crc32(body))


def _write_all(fd: int, data: bytearray) -> None:
    """Write ``data`` to ``fd``, deleting from its front what was written (so a retry resumes there)."""
    while data:
        written = os.write(fd, data)
        if written <= 0:
            raise OSError(0, f"os.write wrote {written} bytes")
        del data[:written]


class RunLogWriter:
    """Append frames to a ``.gbrun`` run log; the file is created, or truncated if it exists, at open.

    Frames are encoded into an in-memory buffer and handed to the OS with ``os.write`` on an
    ``O_APPEND`` descriptor when ``flush_every`` frames are buffered or ``flush_interval_s`` seconds have
    passed since the last write (checked at each ``append``), and on ``flush()`` and ``close()``.
    ``kill -9`` loses exactly what was not yet written: at most ``flush_every - 1`` frames, all appended
    within ``flush_interval_s`` of the last write. The defaults lose nothing: every frame goes to the OS
    at once, and data in the OS page cache survives a killed process. Only an OS crash or power loss can
    lose it; ``fsync=True`` calls ``os.fsync`` after every write and survives those too, at the cost of
    a disk round trip (milliseconds) per write.

    A failed write (disk full, I/O error) raises ``RunLogError`` naming the path and the OS message; the
    frames it could not write stay buffered (``pending``) and the next ``append``, ``flush`` or ``close``
    retries them. ``close`` always releases the file: what it cannot write then is counted in
    ``dropped`` and reported in its error. Use from one thread at a time.

    Args:
        path: file to create; its directory must exist.
        run_info: layer names and metadata, stored in the header.
        flush_every: write after this many buffered frames, >= 1.
        flush_interval_s: write when this many seconds have passed since the last write, > 0
            (``math.inf``: only ``flush_every`` counts).
        fsync: also ``os.fsync`` after each write.
    """

    def __init__(self, path: str | os.PathLike[str], run_info: RunInfo, *, flush_every: int = 1,
                 flush_interval_s: float = 1.0, fsync: bool = False) -> None:
        self.path = path_text(path)
        if not isinstance(run_info, RunInfo):
            raise TypeError(f"run_info must be a bridge.frames.RunInfo; got {type(run_info).__name__}")
        if isinstance(flush_every, bool) or not isinstance(flush_every, int):
            raise TypeError(f"flush_every must be an int >= 1; got {type(flush_every).__name__}")
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1 (1 writes every frame at once); got {flush_every}")
        if isinstance(flush_interval_s, bool) or not isinstance(flush_interval_s, (int, float)):
            raise TypeError(f"flush_interval_s must be a number of seconds > 0; "
                            f"got {type(flush_interval_s).__name__}")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0 seconds (math.inf to flush by count only); "
                             f"got {flush_interval_s}")
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be True or False; got {type(fsync).__name__}")
        self.run_info = run_info
        self.flush_every = flush_every
        self.flush_interval_s = float(flush_interval_s)
        self.fsync = fsync
        self.layer_count = len(run_info.layer_names)
        self.record_bytes = record_bytes(self.layer_count)
        self.dropped = 0
        self._appended = 0
        self._buffer = bytearray()
        self._closed = False
        header = bytearray(_encode_header(run_info))
        require_parent(self.path, "run log")
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as exc:
            raise RunLogError(f"cannot create run log {self.path}: {exc.strerror or exc}") from exc
        try:
            _write_all(self._fd, header)
            if fsync:
                os.fsync(self._fd)
                self._fsync_directory()
        except OSError as exc:
            os.close(self._fd)
            self._closed = True
            raise RunLogError(f"cannot write the header of run log {self.path}: {exc.strerror or exc}") from exc
        self._last_write = time.monotonic()

    @property
    def pending(self) -> int:
        """Frames appended but not yet (completely) written to the file."""
        return -(-len(self._buffer) // self.record_bytes)

    @property
    def written(self) -> int:
        """Frames completely handed to the OS."""
        return self._appended - self.pending - self.dropped

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    def append(self, frame: Frame) -> None:
        """Record one frame; writes (and may raise ``RunLogError``) when a flush is due."""
        if self._closed:
            raise RunLogError(f"run log {self.path} is closed; open a new RunLogWriter to record more frames")
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a bridge.frames.Frame; got {type(frame).__name__}")
        frame = frame.resolve()
        if frame.layer_count != self.layer_count:
            raise ValueError(f"frame at step {frame.step} has {frame.layer_count} layer norms but run log "
                             f"{self.path} was opened with {self.layer_count} layers; append frames "
                             f"measured on the same layers as its RunInfo")
        self._buffer += _encode_record(frame)
        self._appended += 1
        if (self.pending >= self.flush_every
                or time.monotonic() - self._last_write >= self.flush_interval_s):
            self.flush()

    def flush(self) -> None:
        """Write every buffered frame now; on failure they stay buffered and ``RunLogError`` is raised."""
        if self._closed:
            return
        try:
            self._write_buffer()
        except OSError as exc:
            raise RunLogError(f"could not write run log {self.path}: {exc.strerror or exc}; "
                              f"{self.pending} frame(s) kept in memory, the next flush retries them "
                              f"(free disk space, then call flush())") from exc

    def close(self) -> None:
        """Write what is buffered and release the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._write_buffer()
        except OSError as exc:
            self.dropped = self.pending
            self._buffer.clear()
            raise RunLogError(f"could not write run log {self.path} while closing: {exc.strerror or exc}; "
                              f"{self.dropped} frame(s) lost") from exc
        finally:
            self._release()

    def __enter__(self) -> RunLogWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _write_buffer(self) -> None:
        if self._buffer:
            _write_all(self._fd, self._buffer)
            if self.fsync:
                os.fsync(self._fd)
        self._last_write = time.monotonic()

    def _release(self) -> None:
        try:
            os.close(self._fd)
        except OSError as exc:
            raise RunLogError(f"could not close run log {self.path}: {exc.strerror or exc}") from exc

    def _fsync_directory(self) -> None:
        """Make the new file's directory entry durable too (POSIX only)."""
        if hasattr(os, "O_DIRECTORY"):
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class RunLogReader:
    """Read a ``.gbrun`` run log: ``info`` at once, frames by iterating (streamed, in chunks).

    Raises ``RunLogError`` at construction when the file is missing, empty, not a run log, of an unknown
    format version or has a damaged header. Each iteration reopens the file, so it may be repeated.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path_text(path)
        try:
            with open(self.path, "rb") as f:
                preamble = f.read(_PREAMBLE.size)
                if len(preamble) == 0:
                    raise RunLogError(f"{self.path} is empty; {EXPECTED_INPUT}")
                if preamble[: len(MAGIC)] != MAGIC:
                    raise RunLogError(f"{self.path} is not a run log: it does not start with {MAGIC!r}; "
                                      f"{EXPECTED_INPUT}")
                if len(preamble) < _PREAMBLE.size:
                    raise RunLogError(f"run log {self.path} has a truncated header ({len(preamble)} bytes)")
                _, version, json_len = _PREAMBLE.unpack(preamble)
                if version != FORMAT_VERSION:
                    raise RunLogError(f"run log {self.path} has format version {version}; this gradbridge "
                                      f"reads version {FORMAT_VERSION}; use the gradbridge that wrote it")
                rest = f.read(json_len + _CRC.size)
        except OSError as exc:
            raise RunLogError(f"cannot read run log {self.path}: {exc.strerror or exc}; {EXPECTED_INPUT}") from exc
        if len(rest) < json_len + _CRC.size:
            raise RunLogError(f"run log {self.path} has a truncated header: {json_len + _CRC.size} bytes "
                              f"expected after the first {_PREAMBLE.size}, {len(rest)} found")
        (crc,) = _CRC.unpack_from(rest, json_len)
        if zlib.crc32(preamble + rest[:json_len]) != crc:
            raise RunLogError(f"run log {self.path} has a damaged header (CRC mismatch)")
        try:
            header = json.loads(rest[:json_len].decode("utf-8"))
            info = RunInfo(tuple(header["layer_names"]), dict(header.get("metadata", {})))
        except (ValueError, KeyError, TypeError) as exc:
            raise RunLogError(f"run log {self.path} has an unreadable header: {exc}") from exc
        self.info = info
        self.version = version
        self.header_bytes = _PREAMBLE.size + json_len + _CRC.size
        self.record_bytes = record_bytes(len(info.layer_names))

    @property
    def records_on_disk(self) -> int:
        """Complete records now in the file (before CRC checks): a cheap length for progress bars."""
        return max(0, os.path.getsize(self.path) - self.header_bytes) // self.record_bytes

    def __iter__(self) -> Iterator[Frame]:
        size, layers = self.record_bytes, len(self.info.layer_names)
        with open(self.path, "rb") as f:
            f.seek(self.header_bytes)
            index = 0
            while len(record := f.read(size)) == size:  # a shorter tail is a torn last write: ignored
                if zlib.crc32(memoryview(record)[: size - _CRC.size]) != _CRC.unpack_from(record, size - 4)[0]:
                    start = self.header_bytes + index * size
                    warnings.warn(RunLogWarning(
                        f"run log {self.path}: record {index} at byte {start} fails its CRC check; reading "
                        f"stops there, {os.fstat(f.fileno()).st_size - start} bytes skipped"), stacklevel=2)
                    return
                step, time_s, loss, lr = _FIXED.unpack_from(record)
                yield Frame(step, time_s, np.frombuffer(record, "<f4", layers, _FIXED.size), loss, lr)
                index += 1


def open_run(path: str | os.PathLike[str]) -> tuple[RunInfo, Iterator[Frame]]:
    """Open a ``.gbrun`` run log or a CSV of norms (told apart by the magic bytes, not the suffix).

    Returns the run's ``RunInfo`` and an iterator of its frames, read lazily. A file that does not start
    with ``MAGIC`` (and is not empty) is read as a CSV by ``bridge.runcsv.open_csv``: one header row with
    a ``step`` column (any case, also ``_step``/``Step``) and one column per layer, in file order; the
    optional columns ``wall_time`` (also ``Wall time``, W&B's ``_timestamp``), ``loss`` and ``lr`` fill
    ``time_s``, ``loss`` and ``lr``, which are NaN (unknown) when absent. A header ``layer:NAME`` is
    always a layer named ``NAME``. Empty cells and ``nan`` read as NaN, ``inf``/``-inf`` as ±Inf; steps
    may repeat but never decrease. Problems raise ``RunLogError`` naming the file, line and column.
    """
    path = path_text(path)
    try:
        with open(path, "rb") as f:
            start = f.read(len(MAGIC))
    except OSError as exc:
        raise RunLogError(f"cannot read run log {path}: {exc.strerror or exc}; {EXPECTED_INPUT}") from exc
    if start == MAGIC or not start:
        return (reader := RunLogReader(path)).info, iter(reader)
    return open_csv(path)


def read_run(path: str | os.PathLike[str]) -> tuple[RunInfo, list[Frame]]:
    """Read a whole ``.gbrun`` run log or CSV of norms into memory; see ``open_run``."""
    info, frames = open_run(path)
    return info, list(frames)
