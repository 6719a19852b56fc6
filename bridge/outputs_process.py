"""The outputs process: runs a watched run's outputs apart from training (``bridge.watch(..., process=True)``).

Started by ``bridge.process_link`` as ``python -m bridge.outputs_process``; it never imports torch, so it
starts in a fraction of a second. What crosses the pipe, on its stdin:

- the setup, once: a 4-byte little-endian length, then that many bytes of UTF-8 JSON: the run's layer
  names and metadata, the preset's fields, and the outputs to open (``OutputsSetup``);
- then one record per frame, ``record_bytes(layer_count)`` bytes each: step (int64), time_s, loss, lr
  (float64), then the norms (float64 per layer), all little-endian.

On its stdout it writes one line of JSON when the outputs are open (``{"ready": true, "description": ...,
"failed_to_open": {name: text}}``, or ``{"ready": false, "error": text}``), and one when stdin ends and every
output is finished (``{"stats": {...}}``, the ``DispatchStats`` fields). Its warnings go to stderr.
Whatever ends the training process (a normal close, Ctrl-C, ``kill -9``), stdin reaches its end and every
file is finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

import numpy as np

from bridge.dispatch import Dispatcher, DispatchStats
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.outputs import file_sinks, live_sinks
from bridge.pipeline import build_outputs, rate_for
from bridge.presets import Preset
from bridge.runlog import RunLogWriter

_LENGTH = struct.Struct("<I")
_HEADER = struct.Struct("<qddd")  # step, time_s, loss, lr
_NORM = np.dtype("<f8")


def record_bytes(layer_count: int) -> int:
    """Size in bytes of one frame's record for ``layer_count`` layers (32 + 8 per layer)."""
    return _HEADER.size + _NORM.itemsize * layer_count


def encode_frame(frame: Frame) -> bytes:
    """One frame as its record: the header, then the norms as little-endian float64."""
    head = _HEADER.pack(frame.step, frame.time_s, frame.loss, frame.lr)
    return head + frame.norms.astype(_NORM, copy=False).tobytes()


def decode_frame(record: bytes, layer_count: int) -> Frame:
    """The frame held by one record of ``record_bytes(layer_count)`` bytes."""
    if len(record) != record_bytes(layer_count):
        raise ValueError(f"a frame record for {layer_count} layers is {record_bytes(layer_count)} bytes; "
                         f"got {len(record)}")
    step, time_s, loss, lr = _HEADER.unpack_from(record)
    norms = np.frombuffer(record, dtype=_NORM, offset=_HEADER.size).astype(np.float64)
    return Frame(step, time_s, norms, loss, lr)


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The preset's fields as JSON-ready values (tuples become lists)."""
    return dataclasses.asdict(preset)


def preset_from_dict(values: dict[str, Any]) -> Preset:
    """The ``Preset`` written by ``preset_to_dict`` (lists become tuples again)."""
    return Preset(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclass(frozen=True)
class OutputsSetup:
    """Everything the outputs process needs to open a run's outputs; the arguments of ``bridge.watch``."""

    run_info: RunInfo
    preset: Preset
    record: str | None = None
    flush_every: int = 1
    wav: str | None = None
    wav_format: str = "int16"
    midi_file: str | None = None
    midi: str | None = None
    midi_api: str | None = None
    midi_virtual: bool = False
    osc: str | None = None
    play: bool = False
    rate: dict[str, Any] = field(default_factory=dict)  # every, max_fps, aggregate (None: the preset's)

    def to_bytes(self) -> bytes:
        """The setup record: length, then JSON."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["run_info"] = {"layer_names": list(self.run_info.layer_names), "metadata": self.run_info.metadata}
        values["preset"] = preset_to_dict(self.preset)
        body = json.dumps(values).encode("utf-8")
        return _LENGTH.pack(len(body)) + body

    @classmethod
    def from_json(cls, body: bytes) -> "OutputsSetup":
        """The setup from the JSON part of its record."""
        values = json.loads(body.decode("utf-8"))
        info = values.pop("run_info")
        values["run_info"] = RunInfo(tuple(info["layer_names"]), dict(info["metadata"]))
        values["preset"] = preset_from_dict(values["preset"])
        return cls(**values)


def stats_to_dict(stats: DispatchStats) -> dict[str, Any]:
    """The stats as JSON-ready values."""
    return dataclasses.asdict(stats)


def stats_from_dict(values: dict[str, Any]) -> DispatchStats:
    """The ``DispatchStats`` written by ``stats_to_dict``."""
    return DispatchStats(**{**values, "consumers": tuple(values["consumers"])})


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes, or ``None`` at the end of the stream (a record cut short counts as the end)."""
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def read_frames(stream: BinaryIO, layer_count: int) -> Iterator[Frame]:
    """The frames on ``stream`` until its end."""
    size = record_bytes(layer_count)
    while (record := _read_exactly(stream, size)) is not None:
        yield decode_frame(record, layer_count)


def _say(protocol: TextIO, message: dict[str, Any]) -> None:
    try:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()
    except OSError as exc:  # the training process is gone (kill -9); the files are finished all the same
        logging.getLogger("bridge").warning("could not report to the training process (%s)", exc)


def serve(stream: BinaryIO, protocol: TextIO) -> int:
    """Read the setup from ``stream``, open the outputs, feed them every frame until its end; 0 on success."""
    head = _read_exactly(stream, _LENGTH.size)
    body = None if head is None else _read_exactly(stream, _LENGTH.unpack(head)[0])
    if body is None:
        _say(protocol, {"ready": False, "error": "stdin ended before the setup record"})
        return 1
    try:
        setup = OutputsSetup.from_json(body)
        mapping = Mapping(setup.preset)
        files = file_sinks(wav=setup.wav, midi_file=setup.midi_file, wav_format=setup.wav_format)
        live = live_sinks(midi=setup.midi, midi_api=setup.midi_api, midi_virtual=setup.midi_virtual,
                          osc=setup.osc, play=setup.play)
        writer = (RunLogWriter(setup.record, setup.run_info, flush_every=setup.flush_every)
                  if setup.record is not None else None)
        outputs = build_outputs(mapping, setup.run_info, files, record=writer, live_sinks=live,
                                rate=rate_for(mapping, **setup.rate))
    except Exception as exc:  # reported to the training process, which raises it before training starts
        kind = "TypeError" if isinstance(exc, TypeError) else "ValueError" if isinstance(exc, ValueError) else ""
        _say(protocol, {"ready": False, "error": f"{type(exc).__name__}: {exc}", "kind": kind})
        return 1
    _say(protocol, {"ready": True, "description": outputs.arrangement.description,
                    "failed_to_open": outputs.failed_to_open})
    stats = Dispatcher(outputs.consumers).run_sync(read_frames(stream, len(setup.run_info.layer_names)))
    _say(protocol, {"stats": stats_to_dict(stats)})
    return 0


def main() -> int:
    """Entry point: the protocol goes on the real stdout; anything else printed goes to stderr."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (C libraries too) cannot corrupt it
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, protocol)


if __name__ == "__main__":
    sys.exit(main())
