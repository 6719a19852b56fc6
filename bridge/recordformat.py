"""The run log's bytes: the header, one fixed-size record per frame, and a parser that survives damage.

A ``.gbrun`` file is little-endian throughout. The header is written once, when the writer opens::

    offset  bytes  field
    0       5      magic b"GBRUN"
    5       2      format version, uint16 (2; version 1 is still read)
    7       4      N, length of the JSON that follows, uint32, at most ``MAX_HEADER_JSON_BYTES``
    11      N      UTF-8 JSON {"layer_names": [...], "metadata": {...}, "writer": {"pid": .., "host": ..}}
    11+N    4      CRC32 of the 11 + N bytes before it, uint32

then one record per frame, ``record_bytes(L) = 40 + 4 × L`` bytes for L layers::

    0       4      mark: b"\\x8eGR" then the kind, b"F" (a frame) or b"E" (the end: the writer closed the log)
    4       8      step, int64 (in an end record: how many frames the writer wrote)
    12      8      time_s, float64 (seconds since the epoch)
    20      8      loss, float64
    28      8      lr, float64
    36      4×L    norms, float32 × L
    36+4L   4      CRC32 of the record's first 36 + 4L bytes, uint32

Norms are stored as float32: NaN, +Inf and -Inf stay what they are, finite values up to 3.4e38 keep
about 7 significant digits (relative error at most 2**-24 ≈ 6e-8), larger magnitudes become ±Inf and
magnitudes below 1.4e-45 become 0. Step, time, loss and lr are stored exactly.

Each record is checked on its own: a record whose mark or CRC is wrong is skipped and counted, and
reading goes on at the next record that checks (found by its mark, so a lost or inserted byte costs only
the records it touches). Version 1 (gradbridge 0.1) has no mark and no end record: a record that fails
its CRC is skipped and reading goes on one record further.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass

import numpy as np

from bridge.errors import RunLogError
from bridge.frames import Frame, RunInfo

MAGIC = b"GBRUN"
FORMAT_VERSION = 2
#: Versions this gradbridge reads.
READABLE_VERSIONS = (1, 2)
#: Largest header JSON accepted, in bytes: a bigger length field is damage, refused before allocating.
MAX_HEADER_JSON_BYTES = 16 * 1024 * 1024
#: Most layers a run log may hold (a record of 4 MB).
MAX_LAYERS = 1_000_000
#: Bytes of a record that do not depend on the layer count: mark, step, time_s, loss, lr and the CRC32.
RECORD_FIXED_BYTES = 40
#: Bytes each layer adds to a record (one float32 norm).
BYTES_PER_LAYER = 4
#: The first three bytes of every version 2 record; the fourth says its kind.
RECORD_MARK = b"\x8eGR"
FRAME_KIND, END_KIND = b"F", b"E"

PREAMBLE = struct.Struct("<5sHI")  # magic, version, JSON length
CRC = struct.Struct("<I")
_FIXED = struct.Struct("<4sqddd")  # mark + kind, step, time_s, loss, lr
_FIXED_V1 = struct.Struct("<qddd")  # version 1: step, time_s, loss, lr
_V1_FIXED_BYTES = 36


def record_bytes(layer_count: int, version: int = FORMAT_VERSION) -> int:
    """Bytes one step takes on disk for ``layer_count`` layers: ``40 + 4 × layer_count`` (version 1: 36 + 4 ×)."""
    if isinstance(layer_count, bool) or not isinstance(layer_count, int):
        raise TypeError(f"layer_count must be an int; got {type(layer_count).__name__}")
    if not 1 <= layer_count <= MAX_LAYERS:
        raise ValueError(f"layer_count must be between 1 and {MAX_LAYERS}; got {layer_count}")
    fixed = RECORD_FIXED_BYTES if version >= 2 else _V1_FIXED_BYTES
    return fixed + BYTES_PER_LAYER * layer_count


def encode_header(run_info: RunInfo, writer: dict[str, object] | None = None) -> bytes:
    """The header of a version 2 run log for ``run_info``; ``writer`` says who writes it (pid, host)."""
    metadata = run_info.metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"run_info.metadata must be a dict with str keys; got {metadata!r}")
    if len(run_info.layer_names) > MAX_LAYERS:
        raise ValueError(f"a run log holds at most {MAX_LAYERS} layers; got {len(run_info.layer_names)}: group "
                         f"layers (groups= or depth=)")
    try:
        text = json.dumps({"layer_names": list(run_info.layer_names), "metadata": metadata,
                           "writer": writer or {}}, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run_info.metadata must hold JSON values (str, number, bool, None, list, dict): "
                        f"{exc}; convert such values with str()") from exc
    body = text.encode("utf-8")
    if len(body) > MAX_HEADER_JSON_BYTES:
        raise ValueError(f"the run log header would be {len(body)} bytes, over the {MAX_HEADER_JSON_BYTES} "
                         f"allowed: shorten the metadata or the layer names")
    head = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body)) + body
    return head + CRC.pack(zlib.crc32(head))


_BIG_ENDIAN = sys.byteorder == "big"


def encode_frame(frame: Frame) -> bytes:
    """One frame's version 2 record."""
    return encode_record(FRAME_KIND, frame.step, frame.time_s, frame.loss, frame.lr, frame.norms)


def encode_end(frames_written: int, time_s: float, layer_count: int) -> bytes:
    """The end record: the writer closed the log after ``frames_written`` frames."""
    return encode_record(END_KIND, frames_written, time_s, math.nan, math.nan, np.zeros(layer_count))


def encode_record(kind: bytes, step: int, time_s: float, loss: float, lr: float, norms: np.ndarray) -> bytes:
    """A version 2 record of ``kind`` (``FRAME_KIND`` or ``END_KIND``)."""
    try:
        head = _FIXED.pack(RECORD_MARK + kind, step, time_s, loss, lr)
    except struct.error as exc:
        raise ValueError(f"step must fit in int64 (-2**63 .. 2**63-1); got {step}") from exc
    # array("f") turns a value beyond float32's range into ±Inf, as documented, without NumPy's overflow
    # warning (and without its errstate, which costs 20 µs on the training thread right after backward)
    values = array("f", np.asarray(norms, dtype=np.float64).tolist())
    if _BIG_ENDIAN:
        values.byteswap()
    body = head + values.tobytes()
    return body + CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class Header:
    """A run log's header: the run, the format version, the writer, and the header's length in bytes."""

    info: RunInfo
    version: int
    size: int
    writer_pid: int | None = None
    writer_host: str | None = None

    @property
    def record_bytes(self) -> int:
        """Bytes of each record of this log."""
        return record_bytes(len(self.info.layer_names), self.version)


def header_length(preamble: bytes, where: str) -> int:
    """From the first ``PREAMBLE.size`` bytes, how many bytes the whole header takes; ``RunLogError`` if
    they are not a run log's (``where`` names the file or stream in the message)."""
    if preamble[: len(MAGIC)] != MAGIC:
        raise RunLogError(f"{where} is not a run log: it does not start with {MAGIC!r}")
    if len(preamble) < PREAMBLE.size:
        raise RunLogError(f"run log {where} has a truncated header ({len(preamble)} bytes)")
    _, version, json_len = PREAMBLE.unpack_from(preamble)
    if version not in READABLE_VERSIONS:
        raise RunLogError(f"run log {where} has format version {version}; this gradbridge reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; use the gradbridge that wrote it")
    if json_len > MAX_HEADER_JSON_BYTES:
        raise RunLogError(f"run log {where} has a damaged header: it claims {json_len} bytes of JSON, over the "
                          f"{MAX_HEADER_JSON_BYTES} a run log may have")
    return PREAMBLE.size + json_len + CRC.size


def decode_header(data: bytes, where: str) -> Header:
    """The header at the start of ``data`` (which holds at least ``header_length`` bytes)."""
    size = header_length(data[: PREAMBLE.size], where)
    if len(data) < size:
        raise RunLogError(f"run log {where} has a truncated header: {size} bytes expected, {len(data)} found")
    _, version, json_len = PREAMBLE.unpack_from(data)
    (crc,) = CRC.unpack_from(data, size - CRC.size)
    if zlib.crc32(data[: size - CRC.size]) != crc:
        raise RunLogError(f"run log {where} has a damaged header (CRC mismatch)")
    try:
        header = json.loads(data[PREAMBLE.size: PREAMBLE.size + json_len].decode("utf-8"))
        names, metadata = header["layer_names"], header.get("metadata", {})
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(metadata, dict):
            raise TypeError("layer_names must be a list of strings and metadata an object")
        if not 1 <= len(names) <= MAX_LAYERS:
            raise ValueError(f"{len(names)} layer names, 1 to {MAX_LAYERS} expected")
        info = RunInfo(tuple(names), {str(k): v for k, v in metadata.items()})
        writer = header.get("writer", {})
        pid = writer.get("pid") if isinstance(writer, dict) else None
        host = writer.get("host") if isinstance(writer, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise RunLogError(f"run log {where} has an unreadable header: {type(exc).__name__}: {exc}") from exc
    return Header(info, version, size, pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                  host if isinstance(host, str) else None)


@dataclass
class Damage:
    """What a parser skipped: records that failed their checks, and bytes that held no record."""

    records: int = 0
    bytes: int = 0
    first_offset: int | None = None

    def describe(self, where: str) -> str:
        """In words, e.g. ``"run log x.gbrun: 2 damaged records skipped (96 bytes from byte 140)"``."""
        return (f"run log {where}: {self.records} damaged record{'s' if self.records != 1 else ''} skipped "
                f"({self.bytes} bytes from byte {self.first_offset})")


class RecordParser:
    """Turns the bytes after a header into frames, however they arrive: a file read in chunks, a file that
    grows, a stream. ``feed(data)`` then ``frames()`` gives every complete record that checks; damaged ones
    are skipped and counted in ``damage`` (``strict``: ``RunLogError`` at the first). ``ended`` turns True at
    the end record; nothing after it is read.

    Args:
        header: the log's header (layer count and version).
        where: the file or stream, for messages.
        offset: the file offset of the first byte fed (the end of the header), for messages.
        strict: raise at the first damaged record instead of skipping it.
    """

    def __init__(self, header: Header, where: str, *, offset: int | None = None, strict: bool = False) -> None:
        self.header = header
        self.where = where
        self.strict = strict
        self.damage = Damage()
        self.ended = False
        self.frames_written: int | None = None  #: from the end record: how many frames the writer wrote
        self.closed_at_s: float | None = None  #: from the end record: when the writer closed, epoch seconds
        self._layers = len(header.info.layer_names)
        self._size = header.record_bytes
        self._buffer = bytearray()
        self._offset = header.size if offset is None else offset  # file offset of self._buffer[0]

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet a whole record."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add the next bytes (ignored after the end record)."""
        if not self.ended:
            self._buffer += data

    def frames(self, *, final: bool = False) -> list[Frame]:
        """The frames of every complete, checked record fed so far (in order), removed from the buffer.

        ``final``: no more bytes will come, so a damaged record with no good record after it is skipped
        now (while following a growing log, such a record may still be in the middle of being written).
        """
        out: list[Frame] = []
        size, buffer, v2 = self._size, self._buffer, self.header.version >= 2
        pos = 0
        while not self.ended and len(buffer) - pos >= size:
            record = bytes(buffer[pos: pos + size])
            if self._checks(record, v2):
                self._take(record, v2, out)
                pos += size
                continue
            skip = self._next_good(pos, final) if v2 else size
            if skip is None:  # nothing that checks yet: wait for more bytes (or skip all at the end)
                break
            self._skip(pos, skip)
            pos += skip
        del buffer[:pos]
        self._offset += pos
        return out

    def _checks(self, record: bytes, v2: bool) -> bool:
        size = self._size
        if v2 and (record[:3] != RECORD_MARK or record[3:4] not in (FRAME_KIND, END_KIND)):
            return False
        return zlib.crc32(memoryview(record)[: size - CRC.size]) == CRC.unpack_from(record, size - CRC.size)[0]

    def _take(self, record: bytes, v2: bool, out: list[Frame]) -> None:
        if v2:
            kind, step, time_s, loss, lr = _FIXED.unpack_from(record)
            if kind[3:] == END_KIND:
                self.ended, self.frames_written, self.closed_at_s = True, step, time_s
                return
            offset = _FIXED.size
        else:
            step, time_s, loss, lr = _FIXED_V1.unpack_from(record)
            offset = _FIXED_V1.size
        norms = np.frombuffer(record, "<f4", self._layers, offset).astype(np.float64)
        out.append(Frame(step, time_s, norms, loss, lr))

    def _next_good(self, pos: int, final: bool) -> int | None:
        """Bytes from ``pos`` to the next record that checks (by its mark), or ``None`` when none is whole yet
        (at the end, ``final``: everything that is left)."""
        buffer, size = self._buffer, self._size
        start = pos + 1
        while (found := buffer.find(RECORD_MARK, start)) != -1 and len(buffer) - found >= size:
            if self._checks(bytes(buffer[found: found + size]), True):
                return found - pos
            start = found + 1
        if final:
            return len(buffer) - pos
        return None

    def _skip(self, pos: int, count: int) -> None:
        where = self._offset + pos
        if self.strict:
            raise RunLogError(f"run log {self.where}: the record at byte {where} is damaged (its mark or CRC does "
                              f"not check); without strict checking it would be skipped")
        self.damage.records += max(1, round(count / self._size))
        self.damage.bytes += count
        if self.damage.first_offset is None:
            self.damage.first_offset = where
