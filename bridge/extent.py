"""How long a run will sound, found before it is rendered, so a long render says so before it starts.

By default each logged step is one musical step (``bridge.steps``), so the length is the number of frames
× the preset's seconds per step: counted from a run log's size (its end record left out) or a CSV's
lines, without reading the norms. With kept gaps the steps themselves are read, once, and checked by the
same ``StepClock`` the mapping uses: a gap it would refuse is refused here, before any output opens.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import StepError
from bridge.recordformat import END_KIND, MAGIC, RECORD_MARK
from bridge.steps import StepClock

__all__ = ["RunExtent", "describe_duration", "file_size_words", "run_extent"]


@dataclass(frozen=True)
class RunExtent:
    """What a run holds, ahead of rendering it.

    Attributes:
        frames: frames (logged steps) in the run: exact for a CSV and a whole run log; damaged records
            of a run log count as frames here.
        musical_steps: the steps of music they make (``frames``, or with kept gaps last position + 1).
    """

    frames: int
    musical_steps: int

    def seconds(self, seconds_per_step: float) -> float:
        """The music's length in seconds at ``seconds_per_step``."""
        return self.musical_steps * seconds_per_step


def run_extent(path: str, *, keep_gaps: bool = False, strict: bool = False) -> RunExtent:
    """The frames in the run log or CSV at ``path`` and the musical steps they make (see the module
    docstring). Errors of the file, and steps kept gaps cannot place, raise as reading it would."""
    if not keep_gaps:
        frames = _count_frames(path)
        return RunExtent(frames, frames)
    from bridge.runlog import open_run

    clock = StepClock(keep_gaps=True)
    _, frames_iter = open_run(path, strict=strict)
    try:
        for frame in frames_iter:
            clock.position(frame.step)
    except StepError as exc:
        raise StepError(f"{path}: {exc}") from None
    return RunExtent(clock.count, clock.next_position)


def _count_frames(path: str) -> int:
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            f.seek(0)
            lines = sum(1 for line in f if line.strip())
            return max(0, lines - 1)  # the header row
    from bridge.runlog import RunLogReader

    reader = RunLogReader(path)
    records = reader.records_on_disk
    if records and reader.version >= 2:
        with open(path, "rb") as f:
            f.seek(reader.header_bytes + (records - 1) * reader.record_bytes)
            if f.read(4) == RECORD_MARK + END_KIND:
                records -= 1
    return records


def describe_duration(seconds: float) -> str:
    """A length in words: ``"6.25 s"``, ``"20 min 0 s"``, ``"3 h 20 min"``."""
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours / 24:.1f} days"


def file_size_words(size_bytes: float) -> str:
    """A file size in words: ``"980 kB"``, ``"212 MB"``, ``"4.1 GB"`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.3g} {unit}"
    return f"{int(size_bytes)} bytes"
