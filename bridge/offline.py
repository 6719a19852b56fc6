"""The offline commands' work (``gradbridge render``, ``midi``, ``export``): a run into a file, written whole.

Each output is written into a temporary file beside it and renamed into place once complete
(``bridge.atomic``), so a render that fails part-way (a damaged input, a full disk, Ctrl-C) leaves an older
file of that name untouched. Before a render starts, one line says how long the output will be
(``bridge.extent``); on a terminal a progress bar follows it. None of this imports torch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from bridge.atomic import replacing
from bridge.errors import GradbridgeError, SinkError
from bridge.frames import Frame

__all__ = ["WAV_LIMIT_BYTES", "Progress", "export_run", "render_run"]

#: The most bytes a WAV file can hold (its sizes are 32-bit): a longer render is refused before it starts.
WAV_LIMIT_BYTES = 0xFFFFFFFF


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.width = width
        self.enabled = stream.isatty()
        self._last = -1

    def update(self, done: int) -> None:
        """Show ``done`` of ``total`` (redraws only when the percentage changes)."""
        if not self.enabled:
            return
        percent = min(100, done * 100 // self.total)
        if percent != self._last:
            filled = self.width * percent // 100
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}%")
            self.stream.flush()
            self._last = percent

    def finish(self) -> None:
        """End the line."""
        if self.enabled:
            self.update(self.total)
            self.stream.write("\n")


def counted(frames: Iterable[Frame], progress: Progress | None) -> Iterator[Frame]:
    """``frames``, telling ``progress`` how many went by (every 64)."""
    for done, frame in enumerate(frames, 1):
        if progress is not None and done % 64 == 0:
            progress.update(done)
        yield frame


def mapping_for(run_metadata: dict[str, str], requested: str | None) -> str:
    """The preset to use: the one asked for, else the one the run was recorded with, else pentatonic."""
    return requested or run_metadata.get("mapping") or "pentatonic"


def render_run(run: str, output: str, kind: str, *, mapping: str | None = None, strict: bool = False,
               keep_gaps: bool = False, wav_format: str = "int16", announce: TextIO = sys.stderr) -> None:
    """Render the run log or CSV ``run`` into ``output``: ``kind`` ``"wav"`` (the built-in synth) or ``"midi"``
    (a Standard MIDI File). Says first how long the output will be; raises a gradbridge error naming
    ``output`` when it cannot be written, leaving an older file of that name as it was."""
    from bridge.extent import describe_duration, file_size_words, run_extent
    from bridge.mapping import Mapping
    from bridge.outputs import OutputSpec, open_outputs, refuse_same_files
    from bridge.pipeline import render_frames
    from bridge.runlog import open_run

    def spec(path: str) -> OutputSpec:
        return OutputSpec(wav=path, wav_format=wav_format) if kind == "wav" else OutputSpec(midi_file=path)

    spec(output)  # a bad wav_format is refused before anything is read
    refuse_same_files([("run", run), ("output", output)])
    info, frames = open_run(run, strict=strict)
    chosen = Mapping.load(mapping_for(info.metadata, mapping), keep_gaps=keep_gaps)
    arrangement = chosen.arrange(info.layer_names)
    print(f"gradbridge: {arrangement.description}", file=announce)
    extent = run_extent(run, keep_gaps=keep_gaps, strict=strict)
    music_s = extent.seconds(arrangement.seconds_per_step)
    name = Path(output).name
    if kind == "wav":
        bytes_per_frame = arrangement.audio_channels * (2 if wav_format == "int16" else 4)
        wav_bytes = music_s * arrangement.sample_rate * bytes_per_frame
        length = f"{describe_duration(music_s)} of audio, about {file_size_words(wav_bytes)}"
        if wav_bytes > WAV_LIMIT_BYTES:
            raise SinkError(f"{output} would hold {extent.frames} steps, {length}: over the 4 GiB a WAV file can "
                            f"hold. Fix: render a shorter run, a preset with shorter steps or fewer channels, or "
                            f"write a MIDI file (gradbridge midi)")
    else:
        length = f"{describe_duration(music_s)} of music"
    untouched = f"{output} was left as it was" if os.path.exists(output) else f"{output} was not written"
    started = time.perf_counter()
    with replacing(output, "WAV file" if kind == "wav" else "MIDI file") as temporary:
        print(f"gradbridge: writing {output}: {extent.frames} steps, {length}", file=announce)
        outputs = open_outputs(spec(temporary), chosen, info)
        if kind == "wav":
            progress = Progress(round(music_s * arrangement.sample_rate), f"wav {name}", stream=announce)
            for consumer in outputs.consumers:
                sink = getattr(consumer, "sink", None)
                if sink is not None and hasattr(sink, "progress"):
                    sink.progress = progress.update
            source = frames
        else:
            progress = Progress(extent.frames, f"midi {name}", stream=announce)
            source = counted(frames, progress)
        try:
            stats = render_frames(source, outputs)
        except GradbridgeError as exc:  # the same error, naming the output rather than its temporary file
            raise type(exc)(f"{str(exc).replace(temporary, output)}; {untouched}") from exc
        finally:
            progress.finish()
    seconds = time.perf_counter() - started
    if not keep_gaps:  # the frames read, which a damaged record may have made fewer than counted ahead
        music_s = stats.frames_done * arrangement.seconds_per_step
    print(f"gradbridge: wrote {output}: {stats.frames_done} steps, {music_s:.2f} s of music in {seconds:.2f} s",
          file=announce)


def export_run(run: str, output: str, *, strict: bool = False, announce: TextIO = sys.stderr) -> None:
    """Write the run log ``run`` as CSV ``output`` (``bridge.runcsv.write_csv``, written whole)."""
    from bridge.outputs import refuse_same_files
    from bridge.runlog import open_run, write_csv

    refuse_same_files([("run", run), ("output", output)])
    info, frames = open_run(run, strict=strict)
    rows = write_csv(output, info, frames)
    print(f"gradbridge: wrote {output}: {rows} steps x {len(info.layer_names)} layers", file=announce)
