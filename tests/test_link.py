"""Ableton Link (the ``link`` extra, LinkPython-extern): gradbridge as a peer of a session in this process.

Link peers find each other by UDP multicast on the machine's network interfaces; the tests skip when two
peers in one process do not find each other within 10 s (no multicast route here).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bridge.dispatch import Delivery
from bridge.frames import Frame, RunInfo
from bridge.live import LiveSettings
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs
from bridge.ticks import Tick

link = pytest.importorskip("link", reason="LinkPython-extern is not installed (pip install 'gradbridge[link]')")

from bridge.link import QUANTUM, LinkGrid  # noqa: E402  (after the skip: it needs the module)

FIND_S = 10.0


@pytest.fixture
def other() -> Iterator[object]:
    """Another Link peer in this process, at 100 BPM."""
    peer = link.Link(100.0)
    peer.enabled = True
    yield peer
    peer.enabled = False


def wait_for_peers(*counts: object) -> None:
    deadline = time.monotonic() + FIND_S
    while not all(count() >= 1 for count in counts):  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.skip(f"two Link peers in one process did not find each other within {FIND_S:g} s "
                        "(no multicast on this machine's network interfaces)")
        time.sleep(0.05)


def beat_of(peer: object, monotonic_s: float) -> float:
    """The other peer's beat at ``monotonic_s`` (``time.monotonic()`` seconds)."""
    offset_s = time.monotonic() - peer.clock().micros() / 1e6  # type: ignore[attr-defined]
    micros = round((monotonic_s - offset_s) * 1e6)
    return float(peer.captureSessionState().beatAtTime(micros, QUANTUM))  # type: ignore[attr-defined]


def test_two_peers_in_one_process_agree_on_tempo_and_phase(other: object) -> None:
    grid = LinkGrid(120.0)
    try:
        wait_for_peers(lambda: grid.peers, other.numPeers)  # type: ignore[attr-defined]
        time.sleep(0.5)  # the session's timeline settles
        tempo = other.captureSessionState().tempo()  # type: ignore[attr-defined]
        assert tempo in (pytest.approx(100.0, abs=1e-3), pytest.approx(120.0, abs=1e-3))  # one of the two won
        assert grid.tempo_bpm == pytest.approx(tempo, abs=1e-3)
        now = time.monotonic()
        # the same beat at the same moment, to within a millisecond's worth of beat
        assert grid.beat_at(now) == pytest.approx(beat_of(other, now), abs=tempo / 60 * 0.001)
        assert grid.time_of_beat(grid.beat_at(now) + 4) - now == pytest.approx(4 * 60 / tempo, abs=1e-3)
    finally:
        grid.close()


class Recorder:
    name, schedules_ahead = "recorder", False

    def __init__(self) -> None:
        self.ticks: list[Tick] = []

    def open(self, arrangement: object) -> None:
        """Nothing to open."""

    def send(self, events: object) -> None:
        raise AssertionError("a tick sink is sent ticks")

    def send_tick(self, tick: Tick) -> None:
        self.ticks.append(tick)

    def close(self) -> None:
        """Nothing to close."""


def test_the_live_clock_follows_a_tempo_change_made_by_another_peer(other: object) -> None:
    sink = Recorder()
    outputs = build_outputs(Mapping.load("daw"), RunInfo(("a",)), [], live_sinks=[sink],
                            live=LiveSettings(clock="tempo", link=True))
    delivery = Delivery(outputs.consumers)
    step = 0

    def train(seconds: float) -> None:
        nonlocal step
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            delivery.deliver(Frame(step, 0.0, [1.0]))
            step += 1
            time.sleep(0.005)

    try:
        wait_for_peers(other.numPeers)  # type: ignore[attr-defined]
        train(0.5)
        state = other.captureSessionState()  # type: ignore[attr-defined]
        state.setTempo(150.0, other.clock().micros())  # type: ignore[attr-defined]
        other.commitSessionState(state)  # type: ignore[attr-defined]
        changed = time.monotonic()
        train(1.2)
    finally:
        stats = outputs.finish_stats(delivery.close())
    assert not stats.errors
    after = [t for t in sink.ticks if t.due_s > changed + 0.2]
    assert len(after) >= 6
    # 150 BPM: sixteenth notes of 60 / 150 / 4 = 0.1 s, each on the other peer's quarter beats
    assert all(t.events.duration_s == pytest.approx(0.1, abs=1e-4) for t in after)
    assert all(b.due_s - a.due_s == pytest.approx(0.1 * (b.index - a.index), abs=1e-4) for a, b in zip(after, after[1:]))
    for tick in after:
        beat = beat_of(other, tick.due_s)
        assert beat * 4 == pytest.approx(round(beat * 4), abs=0.01)
    assert "(Ableton Link)" in stats.notes["live clock"] and "at 150 BPM" in stats.notes["live clock"]
