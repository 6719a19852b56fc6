"""The page as outputs of the follower: ``PageOutput`` holds the server, a sink and a frame consumer.

- ``PageSink`` is a live sink like the MIDI port or the speakers: it receives the ``StepEvents`` the follower
  sounds (through the live rate control today; the musical clock's ticks once there is one) and sends each
  page the step's notes, alarms and MIDI messages, paced to what a listener can hear (``SoundPacer``). That
  narrow input, ``send(StepEvents)``, is all the page's sound depends on.
- ``PageFeed`` is a consumer of every frame: each becomes its run log record, for the plots and the history.

``bridge.outputs.open_outputs`` makes one ``PageOutput`` when ``OutputSpec.serve`` is set, the sink among the
live sinks and the feed after every other consumer, so that it closes last: pages then hear that the run
ended, and the server stops (``linger``: it goes on serving the finished run until ``stop()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bridge.events import Arrangement, StepEvents
from bridge.frames import Frame, RunInfo
from bridge.recordformat import encode_frame, record_bytes
from bridge.serve.pacing import SoundPacer
from bridge.serve.protocol import hello, sound_message, spike_marks

if TYPE_CHECKING:
    from bridge.serve.server import PageServer


class PageOutput:
    """A page server for one run, as a live sink (``sink``) and a consumer of every frame (``feed``).

    Args:
        run_info: the run's layer names and metadata.
        host: address to listen on; port: TCP port (0: any free one); token: ``None`` for a random one.
        where: what the page calls the run (the run log's name), or ``""``.
    """

    def __init__(self, run_info: RunInfo, *, host: str, port: int, token: str | None = None, where: str = "") -> None:
        from bridge.serve.server import PageServer

        self.run_info = run_info
        self.where = where
        self.server: PageServer = PageServer(host, port, token)
        self.sink = PageSink(self)
        self.feed = PageFeed(self)
        self.linger = False  #: True: closing the feed leaves the server serving the finished run

    @property
    def url(self) -> str:
        """The page's address, token included (the port is known once the sink is open)."""
        return self.server.url

    def stop(self) -> None:
        """Stop serving (pages are closed after taking what was queued for them)."""
        self.server.stop()


class PageSink:
    """The live events of a run, sent to every page connected (see the module docstring)."""

    name = "page (sound)"

    def __init__(self, page: PageOutput) -> None:
        self._page = page
        self._pacer = SoundPacer()
        self._arrangement: Arrangement | None = None
        self._sounded = 0

    @property
    def thinned(self) -> int:
        """Steps let go because they came faster than a page can play them (alarms excepted)."""
        return self._pacer.thinned

    def open(self, arrangement: Arrangement) -> None:
        """Start the server (``SinkError`` when it cannot listen)."""
        self._arrangement = arrangement
        page = self._page
        page.server.start(hello(page.run_info, arrangement, where=page.where, history_frames=0, stride=1,
                                record_bytes=record_bytes(len(page.run_info.layer_names))))

    def send(self, events: StepEvents) -> None:
        sent = self._pacer.admit(events)
        if sent is not None:
            self._send(sent)

    def close(self) -> None:
        """Send an alarm step still waiting for room."""
        held = self._pacer.held_alarm()
        if held is not None and self._arrangement is not None:
            self._send(held)

    def _send(self, events: StepEvents) -> None:
        if self._arrangement is None:
            raise RuntimeError("PageSink.send before open")
        marks = spike_marks(events) if events.spikes else None
        self._page.server.push_sound(sound_message(events, self._arrangement, self._sounded), marks)
        self._sounded += 1


class PageFeed:
    """Every frame of the run, as run log records, for the pages' plots and the history."""

    name = "page (plots)"

    def __init__(self, page: PageOutput) -> None:
        self._page = page
        self.frames = 0

    @property
    def page(self) -> PageOutput:
        """The page output this feeds."""
        return self._page

    def handle(self, frame: Frame) -> None:
        self.frames += 1
        self._page.server.push_frame(encode_frame(frame), not bool(np.isfinite(frame.norms).all()))

    def close(self) -> None:
        """Tell pages the run ended; stop the server unless the page output lingers."""
        self._page.server.push_end(self.frames)
        if not self._page.linger:
            self._page.stop()
