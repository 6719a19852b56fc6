"""The WAV sink: the built-in synth's audio, streamed into a RIFF/WAVE file as the run goes.

The header is written at ``open`` with zero sizes, samples are appended as the synth finishes them, and
the sizes are patched in place after every batch of samples and at ``close``, so the file is a valid WAV
after any ending: a run cut short, even by ``kill -9`` of the process writing it, leaves a file that
players open up to its last batch. When a write fails (a full disk), the sink stops writing and ``close``
makes the header count the whole sample frames that are on disk, no more. Formats: 16-bit PCM (``"int16"``, the default,
``round(x × 32767)`` after clipping to [-1, 1]) or 32-bit IEEE float (``"float32"``, format tag 3 with
the ``fact`` chunk that format requires).
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents
from bridge.sinks.synth import Synth

#: Sample formats a WAV file can be written in.
SAMPLE_FORMATS = ("int16", "float32")

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_RIFF_LIMIT = 0xFFFFFFFF  # RIFF sizes are 32-bit
_CHUNK_FRAMES = 1 << 16  # frames popped from the synth at once (bounds memory across long silences)
# ... or this share of what the synth holds, when more: each pop moves what is left to the buffer's start,
# so popping a fixed amount from minutes of held audio (long notes) took time quadratic in their length
_CHUNK_SHARE = 8


class WavSink:
    """Writes the run's audio to a WAV file.

    Args:
        path: file to create (overwritten if it exists); its folder must exist.
        sample_format: ``"int16"`` (16-bit PCM) or ``"float32"`` (IEEE float).

    Attributes:
        progress: called with the sample frames written so far after each write (e.g. a progress bar), or None.
    """

    def __init__(self, path: str | os.PathLike[str], *, sample_format: str = "int16") -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"WavSink path must be a str or os.PathLike, got {type(path).__name__}")
        if sample_format not in SAMPLE_FORMATS:
            raise ValueError(f"WavSink sample_format must be one of {SAMPLE_FORMATS}; got {sample_format!r}. "
                             "Use 'int16' for the widest compatibility, 'float32' to keep every sample exactly.")
        self.name = "wav"
        self.path = Path(path)
        self.sample_format = sample_format
        self._file: BinaryIO | None = None
        self._synth: Synth | None = None
        self._frames = 0
        self._frames_at_patch = 0
        self._channels = 1
        self._sample_rate = 0
        self._write_failed = False
        self.progress: Callable[[int], None] | None = None

    @property
    def frames_written(self) -> int:
        """Sample frames written so far (one frame = one sample per channel)."""
        return self._frames

    def open(self, arrangement: Arrangement) -> None:
        """Create the file and write its header for ``arrangement``'s sample rate and channels."""
        if self._file is not None:
            raise SinkError(f"WAV sink for {self.path} is already open; close it before opening it again")
        synth = Synth(arrangement)  # validates the arrangement before any file is touched
        try:
            handle = open(self.path, "wb", buffering=0)  # noqa: SIM115 - kept open across send() calls
        except OSError as error:
            raise SinkError(f"cannot create WAV file {self.path}: {error.strerror or error}; check that the "
                            "folder exists and is writable, or choose another path") from error
        self._file, self._synth = handle, synth
        self._channels, self._sample_rate = synth.audio_channels, synth.sample_rate
        self._frames = self._frames_at_patch = 0
        self._write_failed = False
        try:
            _write_all(handle, self._header())  # a valid, empty WAV file from the start
        except OSError as error:
            self._release()
            raise SinkError(f"cannot write WAV file {self.path}: {error.strerror or error}") from error

    def send(self, events: StepEvents) -> None:
        """Render one step and append every sample that is final."""
        self._open_synth("send").render(events)
        self._append_ready()

    def send_many(self, events: Sequence[StepEvents]) -> None:
        """Render many steps at once (``Synth.render_many``: the same samples, faster) and append every
        sample that is final.

        The file is byte for byte what ``send`` of each step writes, as long as no note starts before its
        own step (true of every mapping's events): ``send`` makes the samples before each step final, so
        a step that starts earlier than one before it is rendered only after those are written.
        """
        synth = self._open_synth("send_many")
        steps, run_from, latest = list(events), 0, -math.inf
        try:
            for index, step in enumerate(steps):
                start = float(step.start_s) if isinstance(step, StepEvents) else latest
                if start < latest:  # out of order: what send() would have made final first
                    synth.render_many(steps[run_from:index])
                    self._append_ready()
                    run_from = index
                latest = max(latest, start)
            synth.render_many(steps[run_from:])
        finally:  # steps before a refused one were rendered: their samples are written all the same
            self._append_ready()

    def _open_synth(self, verb: str) -> Synth:
        if self._synth is None:
            raise SinkError(f"WAV sink for {self.path} is not open: {verb}() came before open() or after close()")
        return self._synth

    def _append_ready(self) -> None:
        """Append the samples the synth has made final, then patch the header's sizes."""
        if self._synth is None:
            raise SinkError(f"WAV file {self.path} is not open")
        if self._write_failed:
            raise SinkError(f"WAV file {self.path} failed earlier; it takes no more samples")
        while True:
            samples = self._synth.pop_ready(max_frames=self._chunk_frames())
            if samples.shape[0] == 0:
                break
            self._append(samples)
        if self._frames != self._frames_at_patch:
            self._patch_sizes()

    def close(self) -> None:
        """Write the tails of the last notes, patch the sizes, close the file. Idempotent.

        Whatever fails, the header ends up counting the whole sample frames on disk, and the first failure
        is the one raised. Closed while a ``KeyboardInterrupt`` unwinds (Ctrl-C that stops at once), it
        writes no more samples: the file keeps what it has, with a header that says so."""
        if self._file is None or self._synth is None:
            return
        first: BaseException | None = None
        stopping = isinstance(sys.exc_info()[1], KeyboardInterrupt)
        try:
            while not (self._write_failed or stopping):
                samples = self._synth.finish(max_frames=self._chunk_frames())
                if samples.shape[0] == 0:
                    break
                self._append(samples)
        except BaseException as error:  # raised below, once the header is right
            first = error
        for settle in (self._settle, self._release):
            try:
                settle()
            except SinkError as error:
                first = first or error
        if first is not None:
            raise first

    # -- internals ----------------------------------------------------------------------------------------

    def _chunk_frames(self) -> int:
        """How many frames to pop at once: ``_CHUNK_FRAMES``, or an eighth of what the synth holds if more."""
        held = self._synth.buffered_samples if self._synth is not None else 0
        return max(_CHUNK_FRAMES, held // _CHUNK_SHARE)

    def _settle(self) -> None:
        """Make the header count the whole sample frames on disk (after a failed write, cut a partial one)."""
        if self._file is None:
            return
        if self._write_failed:
            try:
                size = os.fstat(self._file.fileno()).st_size
                self._frames = max(0, size - self._header_size()) // self._block_align()
                if size > self._header_size() + self._frames * self._block_align():
                    self._file.truncate(self._header_size() + self._frames * self._block_align())
                self._file.seek(0, os.SEEK_END)
            except OSError as error:
                raise SinkError(f"cannot finish WAV file {self.path}: {error.strerror or error}") from error
        self._patch_sizes()

    def _release(self) -> None:
        handle, self._file, self._synth = self._file, None, None
        if handle is not None:
            try:
                handle.close()
            except OSError as error:
                raise SinkError(f"cannot finish WAV file {self.path}: {error.strerror or error}") from error

    def _append(self, samples: np.ndarray) -> None:
        if self._file is None:
            raise SinkError(f"WAV file {self.path} is not open")
        if self.sample_format == "int16":
            data = np.rint(np.clip(samples, -1.0, 1.0).astype(np.float64) * 32767.0).astype("<i2")
        else:
            data = np.clip(samples, -1.0, 1.0).astype("<f4")
        if self._header_size() + (self._frames + samples.shape[0]) * self._block_align() > _RIFF_LIMIT:
            raise SinkError(f"WAV file {self.path} reached the format's 4 GiB limit after {self._frames} frames; "
                            "render shorter runs, or use fewer channels or 'int16'")
        try:
            _write_all(self._file, data.tobytes())
        except OSError as error:
            self._write_failed = True
            raise SinkError(f"cannot write WAV file {self.path}: {error.strerror or error}; it keeps the "
                            f"{self._frames} sample frames written before, with a header that says so. Fix: free "
                            f"disk space, then write it from the run log: gradbridge render RUN.gbrun -o "
                            f"{self.path}") from error
        self._frames += samples.shape[0]
        if self.progress is not None:
            self.progress(self._frames)

    def _block_align(self) -> int:
        return self._channels * (2 if self.sample_format == "int16" else 4)

    def _header_size(self) -> int:
        return 44 if self.sample_format == "int16" else 58

    def _header(self) -> bytes:
        """RIFF header for ``self._frames`` frames: 44 bytes (PCM) or 58 bytes (float, with ``fact``)."""
        data_size = self._frames * self._block_align()
        rate, channels, align = self._sample_rate, self._channels, self._block_align()
        if self.sample_format == "int16":
            fmt = struct.pack("<HHIIHH", _WAVE_FORMAT_PCM, channels, rate, rate * align, align, 16)
            chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
        else:
            fmt = struct.pack("<HHIIHHH", _WAVE_FORMAT_IEEE_FLOAT, channels, rate, rate * align, align, 32, 0)
            chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, self._frames)
        chunks += b"data" + struct.pack("<I", data_size)
        return b"RIFF" + struct.pack("<I", 4 + len(chunks) + data_size) + b"WAVE" + chunks

    def _patch_sizes(self) -> None:
        """Rewrite the header in place with the sizes written so far; the file position is kept."""
        if self._file is None:
            raise SinkError(f"WAV file {self.path} is not open")
        try:
            end = self._file.tell()
            self._file.seek(0)
            _write_all(self._file, self._header())
            self._file.seek(end)
        except OSError as error:
            raise SinkError(f"cannot update WAV file {self.path}: {error.strerror or error}") from error
        self._frames_at_patch = self._frames


def _write_all(handle: BinaryIO, data: bytes) -> None:
    """Write all of ``data`` to the unbuffered ``handle`` (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError(0, f"the file took none of {len(view)} bytes")
        view = view[written:]
