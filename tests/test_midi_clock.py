"""In time with a DAW, through JACK (dummy driver) to ``jack_midi_dump -a``: MIDI clock out, the live clock's
grid at 1000 training steps a second, and an incoming MIDI clock that the notes follow.

Times here are JACK's frame stamps as the receiver prints them: 44 100 a second, moved a period (256
frames, 5.8 ms) at a time. The bounds are generous: timing goals belong to ``benchmarks/clock.py``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.sinks.midi_system import describe_ports
from tests.conftest import JACK_PERIOD, JACK_RATE, MidiDump
from tests.test_follow import TIMEOUT_S, env, follow
from tests.test_osc import Peer, READY, free_udp_port, need

CLOCK, START, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFC, 0xF2

#: Appends frames of three layers to a run log at ``rate`` steps a second, on absolute deadlines, for
#: ``steps`` steps (-1: until killed); layer b is NaN at every step that is a multiple of ``nan_every``.
#: With a sixth argument it prints "open" once the log has its header and waits for a line on stdin.
WRITER = r"""
import math, sys, time
from bridge.frames import Frame, RunInfo
from bridge.runlog import RunLogWriter
path, mapping, rate, steps, nan_every = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
with RunLogWriter(path, RunInfo(("a", "b", "c"), {"mapping": mapping})) as writer:
    if len(sys.argv) > 6:
        print("open", flush=True)
        sys.stdin.readline()
    start = time.monotonic()
    step = 0
    while steps < 0 or step < steps:
        nan = nan_every > 0 and step % nan_every == nan_every // 2
        writer.append(Frame(step, time.time(), [1.0 + (step % 7) / 10, math.nan if nan else 1.0, 2.0]))
        step += 1
        wait = start + step / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if step == 1:
            print("started", flush=True)
"""

#: A DAW's MIDI clock on JACK output ``gbsender:out``: on a line on stdin, Start, then 24 pulses a beat at
#: ``bpm`` on absolute deadlines, until the next line; then Stop.
SENDER = r"""
import sys, threading, time, rtmidi
bpm = float(sys.argv[1])
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "gbsender")
out.open_virtual_port("out")
print("READY", flush=True)
sys.stdin.readline()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
out.send_message([0xFA])
start, pulse = time.monotonic(), 0
while not stop.is_set():
    wait = start + pulse * 60.0 / bpm / 24 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    out.send_message([0xF8])
    pulse += 1
out.send_message([0xFC])
time.sleep(0.2)
out.close_port()
"""


def writer(path: Path, mapping: str, rate: float, steps: int, nan_every: int = 0,
           before_start: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    """The WRITER, started; ``before_start`` runs once the log has its header, before the first step."""
    wait = ["wait"] if before_start is not None else []
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mapping, str(rate), str(steps),
                                str(nan_every), *wait], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env())
    assert process.stdout is not None
    if before_start is not None:
        assert process.stdout.readline() == "open\n"
        before_start()
        tell(process, "go")
    assert process.stdout.readline() == "started\n"
    return process


def realtime(messages: list[tuple[int, tuple[int, ...]]]) -> list[tuple[int, int]]:
    """(frame, status) of the clock's own messages: Song Position, Start, pulses, Stop."""
    return [(frame, m[0]) for frame, m in messages if m[0] in (CLOCK, START, STOP, SONG_POSITION)]


def note_ons(messages: list[tuple[int, tuple[int, ...]]], channel: int) -> list[int]:
    return [frame for frame, m in messages if m[0] == 0x90 | channel and m[2] > 0]


def test_midi_clock_starts_ticks_at_the_tempo_and_stops_also_on_sigterm(
        midi_dump: Callable[..., MidiDump], tmp_path: Path) -> None:
    dump = midi_dump()
    run = tmp_path / "run.gbrun"
    training = writer(run, "daw", 200.0, -1)  # a run that never ends by itself
    try:
        follower = follow(str(run), "--midi", dump.port, "--midi-api", "jack", "--midi-clock")
        dump.wait_for(lambda ms: ms.count((CLOCK,)) >= 100)
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=TIMEOUT_S)
    finally:
        training.kill()
        training.wait()
    assert follower.returncode == 143, err
    messages = dump.wait_for(lambda ms: (STOP,) in ms)
    clock = realtime(messages)
    # Song Position 0 and Start, then pulses only, then Stop, last
    statuses = [status for _, status in clock]
    assert statuses[:2] == [SONG_POSITION, START] and statuses[-1] == STOP
    assert set(statuses[2:-1]) == {CLOCK} and len(statuses) - 3 >= 100
    assert messages[[m for _, m in messages].index((SONG_POSITION, 0, 0))][1] == (SONG_POSITION, 0, 0)
    pulses = [frame for frame, status in clock if status == CLOCK]
    # 120 BPM: 24 pulses a beat, 20.83 ms apart on average (each moved to a 5.8 ms period boundary)
    mean_ms = (pulses[-1] - pulses[0]) / (len(pulses) - 1) / JACK_RATE * 1000
    assert 19.8 < mean_ms < 21.9
    assert clock[-1][0] >= pulses[-1]  # Stop after the last pulse
    # the notes fall on the grid: the chords on sixteenths' pulses (every sixth), most within a period
    sixteenths = pulses[::6]
    assert statistics.median(min(abs(frame - p) for p in sixteenths) for frame in note_ons(messages, 0)) <= JACK_PERIOD


def ended(lines: list[str]) -> bool:
    """Whether oscdump printed the whole tick that ends with step 2999 (its /norms comes last)."""
    last = [i for i, line in enumerate(lines) if line.split()[1:3] == ["/gradbridge/step", "ifffifii"]
            and line.split()[10] == "2999"]
    return bool(last) and any(" /gradbridge/norms " in line for line in lines[last[0]:])


def test_a_run_at_1000_steps_a_second_plays_the_daw_grid_with_every_nan_alarm(
        midi_dump: Callable[..., MidiDump], tmp_path: Path) -> None:
    need("oscdump")
    dump = midi_dump()
    port = free_udp_port()
    osc = Peer(["oscdump", "-L", str(port)])
    try:
        osc.wait_ready(port, READY, "/ready")
        run = tmp_path / "run.gbrun"
        followers: list[subprocess.Popen[str]] = []

        def start_following() -> None:  # the steps start once the follower is ready, however busy the machine
            followers.append(follow(str(run), "--from-start", "--midi", dump.port, "--midi-api", "jack",
                                    "--osc", f"127.0.0.1:{port}"))
            assert followers[0].stderr is not None
            assert followers[0].stderr.readline().startswith("gradbridge: following ")

        training = writer(run, "daw", 1000.0, 3000, nan_every=400, before_start=start_following)  # 3 s; a NaN
        follower = followers[0]  # on layer b at steps 200, 600, ...
        training.wait(timeout=TIMEOUT_S)
        _, err = follower.communicate(timeout=TIMEOUT_S)
        assert follower.returncode == 0, err
        messages = dump.wait_for(lambda ms: sum(m[:2] == (0xB0 | c, 123) for m in ms for c in (0, 1, 2)) == 3)
        lines = osc.wait_for(ended, timeout_s=10)
    finally:
        osc.stop()
    nan_steps = [s for s in range(3000) if s % 400 == 200]
    # daw: sixteenth notes at 120 BPM, 8 ticks a second: about 24 chords for 3 s of training, not 3000
    for channel in (0, 2):
        ons = note_ons(messages, channel)
        assert 16 <= len(ons) <= 3 * 8 + 4
        gaps_ms = [(b - a) / JACK_RATE * 1000 for a, b in zip(ons, ons[1:])]
        assert 110 < statistics.median(gaps_ms) < 140  # 125 ms, each end moved by at most a period
    # every tick gathers the steps since the one before (its first and last in /gradbridge/step), none left out
    ticks = {line.split()[0]: (int(line.split()[9]), int(line.split()[10])) for line in lines
             if line.split()[1:3] == ["/gradbridge/step", "ifffifii"]}
    ranges = list(ticks.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == 2999
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(ranges, ranges[1:]))
    assert len(ticks) == len(note_ons(messages, 0))  # the same ticks on both outputs
    # every NaN (400 steps apart, 50 ticks) sounds its alarm, once, in the tick that gathered it: crash cymbal
    # on channel 10, and /gradbridge/alarm in that tick's bundle (the same timetag)
    with_nan = {tag for tag, (first, last) in ticks.items() if any(first <= s <= last for s in nan_steps)}
    assert len(with_nan) == len(nan_steps)
    assert {line.split()[0] for line in lines if " /gradbridge/alarm " in line} == with_nan
    assert sum(" /gradbridge/alarm " in line for line in lines) == len(with_nan)
    alarms = [m for _, m in messages if m[0] == 0x99 and m[1] == 49 and m[2] > 0]
    assert len(alarms) == len(with_nan)


def connected(port: str, part: str) -> bool:
    """Whether JACK port ``port`` is connected to a port whose name contains ``part``."""
    listed = subprocess.run(["jack_lsp", "-c", port], capture_output=True, text=True, timeout=10, env=env())
    return any(part in line for line in listed.stdout.splitlines()[1:])


def tell(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def test_notes_follow_an_incoming_midi_clock_at_90_bpm(midi_dump: Callable[..., MidiDump], tmp_path: Path) -> None:
    dump = midi_dump()
    sender = subprocess.Popen([sys.executable, "-c", SENDER, "90"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env())
    training = None
    try:
        assert sender.stdout is not None and sender.stdout.readline() == "READY\n"
        assert "gbsender:out" in describe_ports("jack").split("MIDI clock sources for --clock-in")[1]
        subprocess.run(["jack_connect", "gbsender:out", dump.port], check=True, timeout=10, env=env())
        run = tmp_path / "run.gbrun"
        training = writer(run, "daw", 1000.0, -1)
        follower = follow(str(run), "--midi", dump.port, "--midi-api", "jack", "--clock-in", "gbsender")
        deadline = time.monotonic() + TIMEOUT_S
        while not connected("gbsender:out", "gradbridge-clock-in"):  # the follower listens: the DAW starts
            if follower.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the follower did not connect: {follower.communicate(timeout=TIMEOUT_S)}")
            time.sleep(0.05)
        tell(sender, "go")
        dump.wait_for(lambda ms: ms.count((CLOCK,)) >= 24 * 5)  # five beats of the sender's clock
        tell(sender, "stop")
        sender.wait(timeout=TIMEOUT_S)
        time.sleep(0.5)  # the DAW has stopped: no more notes
        heard = len(dump.messages())
        time.sleep(0.5)
        assert [m for _, m in dump.messages()[heard:] if m[0] & 0xF0 == 0x90 and m[2] > 0] == []
        heard = len(dump.messages())
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=TIMEOUT_S)
    finally:
        for process in (sender, training):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert follower.returncode == 143, err
    heard_bpm = float(err.split("on the MIDI clock of 'gbsender:out' (")[1].split(" BPM when last heard")[0])
    assert 88.0 < heard_bpm < 92.0
    messages = dump.messages()
    started = next(frame for frame, m in messages if m == (START,))
    stopped = next(frame for frame, m in messages if m == (STOP,))
    pulses = [frame for frame, m in messages if m == (CLOCK,) and frame >= started]
    ons = [frame for frame in note_ons(messages, 0) if frame <= stopped]
    # after the DAW's Stop, silence (above); at the end of the run the steps gathered meanwhile sound, once
    assert len(note_ons(dump.wait_for(lambda ms: len(ms) > heard and (0xB0, 123, 0) in ms[heard:])[heard:], 0)) == 1
    # 90 BPM: a sixteenth note lasts 60 / 90 / 4 = 167 ms (the preset's own tempo, 120 BPM, would be 125 ms)
    gaps_ms = [(b - a) / JACK_RATE * 1000 for a, b in zip(ons, ons[1:])]
    assert len(ons) >= 12 and 150 < statistics.median(gaps_ms) < 185
    # the chords fall on the sender's sixteenth notes (pulses 6k after Start; a pulse lasts 4.8 periods), most
    # within two periods: one as each side's message waits for a period's start, one as the next pulse's
    # moment is foreseen from a time stamped a period at a time
    assert statistics.median(min(abs(frame - p) for p in pulses[::6]) for frame in ons) <= 2 * JACK_PERIOD
