"""The interface every sink implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bridge.events import Arrangement, StepEvents


@runtime_checkable
class Sink(Protocol):
    """A destination for events: MIDI port, MIDI file, OSC, live synth, WAV.

    The follower calls ``open`` once, ``send`` for each step in step order, then ``close`` once, never
    two at a time: a file sink from the follower's thread, a live sink's ``send`` from the live clock's
    thread (``bridge.live``; it must return quickly: every live output shares that thread), which has
    stopped when ``close`` comes. A live sink may also take ``send_tick`` (``bridge.ticks.TickSink``). A
    sink raises ``bridge.errors.SinkError`` (or any exception) when it fails; the follower reports that
    once and keeps the other sinks going. A sink that goes on through failures of its own (an OSC receiver
    that refuses) may have ``failures() -> (count, text) | None``, the text read after "failed" (``"14
    time(s) from step 3 (why)"``): the closing summary then says so instead of "ok".
    """

    name: str

    def open(self, arrangement: Arrangement) -> None:
        """Prepare for a run laid out as ``arrangement``."""

    def send(self, events: StepEvents) -> None:
        """Deliver one step's events."""

    def close(self) -> None:
        """Finish: write what is buffered, silence every note, release the resource. Idempotent."""
