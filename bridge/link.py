"""Ableton Link: the live clock on a Link session's tempo and beats (``--link``, ``watch(link=True)``).

Needs the ``link`` extra (``pip install "gradbridge[link]"``: LinkPython-extern, Ableton's Link library with
wheels for Linux, macOS and Windows). gradbridge joins the session on this machine's network as one more
peer: it takes the session's tempo and beat phase (a session of its own at the preset's tempo while it is
alone), and its steps fall on the session's beats (a sixteenth-note step on every quarter of a beat), so
they land with every other peer's. A tempo change by any peer bends the grid from that moment on; MIDI
clock out (``--midi-clock``) follows it too. gradbridge never changes the session's tempo itself.

``LinkGrid`` is a ``bridge.beatgrid.Grid``: Link's clock (the host's raw monotonic clock, in microseconds)
is mapped to ``time.monotonic()`` at each question.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from bridge.beatgrid import check_tempo
from bridge.errors import SinkError

#: Beats per bar of the session's phase: peers agree on the beat's place within it.
QUANTUM = 4.0
_FIRST_BEAT_AFTER_S = 0.05  # the MIDI clock's first pulse: the first whole beat at least this far ahead

INSTALL_HINT = ('Ableton Link needs the link extra: pip install "gradbridge[link]" (LinkPython-extern). '
                "Fix: install it, or follow a DAW's MIDI clock instead (--clock-in PORT)")


def import_link() -> Any:
    """The ``link`` module of LinkPython-extern; ``SinkError`` saying how to install it when missing."""
    try:
        import link
    except ImportError as exc:
        raise SinkError(INSTALL_HINT) from exc
    if not hasattr(link, "Link"):
        raise SinkError(f"the module 'link' found at {getattr(link, '__file__', '?')} is not LinkPython. "
                        + INSTALL_HINT)
    return link


class LinkGrid:
    """A ``bridge.beatgrid.Grid`` on an Ableton Link session; join it at ``tempo_bpm`` (the session's tempo
    wins when it has other peers). ``close`` leaves the session."""

    def __init__(self, tempo_bpm: float) -> None:
        module = import_link()
        self._link = module.Link(check_tempo(tempo_bpm))
        self._wake: threading.Event | None = None
        self._link.setTempoCallback(self._on_tempo)
        self._link.enabled = True
        self._first: float | None = None

    @property
    def peers(self) -> int:
        """Other peers in the session now."""
        return int(self._link.numPeers())

    @property
    def tempo_bpm(self) -> float:
        return float(self._link.captureSessionState().tempo())

    def _offset_s(self) -> float:
        """``time.monotonic()`` minus Link's clock, seconds."""
        return time.monotonic() - self._link.clock().micros() / 1e6

    def time_of_beat(self, beat: float) -> float:
        micros = self._link.captureSessionState().timeAtBeat(beat, QUANTUM)
        return micros / 1e6 + self._offset_s()

    def beat_at(self, time_s: float) -> float:
        micros = round((time_s - self._offset_s()) * 1e6)
        return float(self._link.captureSessionState().beatAtTime(micros, QUANTUM))

    def first_beat(self) -> float:
        if self._first is None:
            self._first = float(math.ceil(self.beat_at(time.monotonic() + _FIRST_BEAT_AFTER_S)))
        return self._first

    def set_waker(self, wake: threading.Event | None) -> None:
        self._wake = wake

    def close(self) -> None:
        """Leave the session."""
        self._link.setTempoCallback(lambda _tempo: None)
        self._link.enabled = False

    def _on_tempo(self, tempo: float) -> None:  # Link's thread: a peer changed the tempo
        if self._wake is not None:
            self._wake.set()
