"""MidiPortSink against real peers: a JACK server on the dummy driver and ``jack_midi_dump`` as the receiver.

Times come from ``jack_midi_dump -a``: absolute frame stamps at 44.1 kHz. JACK hands MIDI over once a period
(256 frames = 5.8 ms), so every stamp is late by 0 to 1 period.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import rtmidi

from bridge.errors import SinkError
from bridge.events import Alarm, Arrangement, Notes, StepEvents
from bridge.frames import Frame
from bridge.mapping import Mapping
from bridge.sinks.midi_port import MidiPortSink
from bridge.sinks.midi_system import available_apis, describe_ports, list_output_ports
from tests.conftest import WAIT_S, MidiDump, jack_ports

JACK_RATE, JACK_PERIOD = 44100, 256  # the conftest server: 44.1 kHz, 256-frame periods


def arrange(preset: str, layers: int, **changes: object) -> tuple[Mapping, Arrangement]:
    mapping = Mapping.load(preset)
    arrangement = mapping.arrange([f"layer{i}" for i in range(layers)])
    return mapping, dataclasses.replace(arrangement, **changes)


def step_events(start_s: float, offsets_s: list[float], durations_s: list[float], notes: list[int],
                values: list[float] | None = None, alarms: tuple[Alarm, ...] = ()) -> StepEvents:
    """A step by hand: layer i plays ``notes[i]`` at ``start_s + offsets_s[i]`` for ``durations_s[i]``."""
    count = len(notes)
    return StepEvents(
        step=0, start_s=start_s, duration_s=1.0, wall_time_s=0.0, loss=float("nan"), lr=float("nan"),
        norms=np.ones(count + len(alarms)),
        notes=Notes(layer=np.arange(count), start_s=start_s + np.asarray(offsets_s, dtype=float),
                    duration_s=np.asarray(durations_s, dtype=float), frequency_hz=np.full(count, 440.0),
                    midi_note=np.asarray(notes), velocity=np.full(count, 100), amplitude=np.full(count, 0.1),
                    value=np.asarray(values if values is not None else [0.5] * count, dtype=float)),
        alarms=alarms)


def assert_lasts(frames: int, expected_s: float) -> None:
    """``frames``, a difference of two receiver stamps, is ``expected_s`` within the tolerance argued here.

    Each stamp is late by 0 to 1 period, so a difference is off by up to 2 periods (11.6 ms). Frames are
    counted per JACK cycle run: a server short of CPU runs fewer cycles than the clock allows, so intervals
    shrink (by a quarter with every core busy), and a starved scheduler thread wakes late, so they grow.
    Hence ±50 %: 150 ms still stands apart from 0 (everything sent at once) and from 300 ms.
    """
    low = 0.5 * expected_s * JACK_RATE - 2 * JACK_PERIOD
    high = 1.5 * expected_s * JACK_RATE + 2 * JACK_PERIOD
    assert low <= frames <= high, f"{frames} frames ({frames / JACK_RATE:.3f} s), expected {expected_s} s"


def pairs_per_channel(messages: list[tuple[int, ...]]) -> dict[int, list[tuple[str, int]]]:
    """Each channel's notes as ("on", pitch) / ("off", pitch), in arrival order."""
    out: dict[int, list[tuple[str, int]]] = {}
    for m in messages:
        if m[0] & 0xF0 in (0x80, 0x90):
            out.setdefault(m[0] & 0x0F, []).append(("on" if m[0] & 0xF0 == 0x90 else "off", m[1]))
    return out


def test_daw_run_one_channel_per_layer_every_note_ended(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    mapping, arrangement = arrange("daw", 3)
    sent = []
    with MidiPortSink(dump.port, api="jack") as sink:
        sink.open(arrangement)
        for step, norms in enumerate([[1.0, 2.0, 3.0], [2.0, 1.0, 0.5], [4.0, 4.0, 4.0], [0.1, 8.0, 2.0]]):
            events = mapping.map_frame(Frame(step, time.time(), np.array(norms)))
            channels = [arrangement.voices[i].channel for i in events.notes.layer]
            sent += list(zip(channels, events.notes.midi_note.tolist(), events.notes.velocity.tolist()))
            sink.send(events)
            time.sleep(0.15)  # longer than the preset's 0.1 s notes: each step ends before the next
    got = [m for _, m in dump.wait_for(lambda ms: sum(m[:2] == (0xB2, 123) for m in ms) == 1)]

    # the daw preset has program 0 for every layer; layers 0, 1, 2 play on channels 0, 1, 2
    assert got[:3] == [(0xC0, 0), (0xC1, 0), (0xC2, 0)]
    note_ons = [(m[0] & 0x0F, m[1], m[2]) for m in got if m[0] & 0xF0 == 0x90]
    assert len(note_ons) == 4 * 3
    assert note_ons == sent
    for channel, notes in pairs_per_channel(got).items():
        assert len(notes) == 2 * 4, channel
        assert notes[0::2] == [("on", p) for _, p in notes[0::2]]
        assert notes[1::2] == [("off", p) for _, p in notes[0::2]]
    assert got[-3:] == [(0xB0, 123, 0), (0xB1, 123, 0), (0xB2, 123, 0)]
    counters = sink.counters
    assert (counters.notes_on, counters.notes_off, counters.messages_sent) == (12, 12, 3 + 24 + 3)


def test_perone2019_plays_layers_in_turn(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    mapping, arrangement = arrange("perone2019", 4)
    with MidiPortSink(dump.port.upper()[:-6], api="jack") as sink:  # a unique part of the name, any case
        sink.open(arrangement)
        assert sink.port_name == dump.port
        for step in range(3):
            sink.send(mapping.map_frame(Frame(step, time.time(), np.array([0.5, 1.0, 1.5, 2.0]))))
            time.sleep(0.1)  # a step lasts 4 × 10 ms + 20 ms
    got = [m for _, m in dump.wait_for(lambda ms: sum(m[1] == 123 and m[0] >> 4 == 0xB for m in ms) == 4)]
    # program 80 on channels 0-3; 200 Hz + 100 Hz × norm → 250, 300, 350, 400 Hz → MIDI 59, 62, 65, 67
    assert got[:4] == [(0xC0, 80), (0xC1, 80), (0xC2, 80), (0xC3, 80)]
    note_ons = [(m[0] & 0x0F, m[1]) for m in got if m[0] & 0xF0 == 0x90]
    assert note_ons == [(0, 59), (1, 62), (2, 65), (3, 67)] * 3
    for channel, notes in pairs_per_channel(got).items():
        assert notes == [("on", notes[0][1]), ("off", notes[0][1])] * 3, channel


def test_staggered_notes_keep_their_offsets_and_lengths(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    _, arrangement = arrange("perone2019", 3)
    with MidiPortSink(dump.port, api="jack") as sink:
        sink.open(arrangement)
        # musical time 10 s: offsets are relative to the step's start, played relative to arrival
        sink.send(step_events(10.0, [0.0, 0.15, 0.30], [0.1, 0.1, 0.1], [60, 62, 64]))
        messages = dump.wait_for(lambda ms: sum(m[0] & 0xF0 == 0x80 for m in ms) == 3)
    on = {m[0] & 0x0F: frame for frame, m in messages if m[0] & 0xF0 == 0x90}
    off = {m[0] & 0x0F: frame for frame, m in messages if m[0] & 0xF0 == 0x80}
    for channel, offset_s in ((1, 0.15), (2, 0.30)):
        assert_lasts(on[channel] - on[0], offset_s)
    for channel in range(3):
        assert_lasts(off[channel] - on[channel], 0.1)


@pytest.mark.parametrize("mode, expected", [
    # values 0, 0.3, 0.5, 1 on channels 0-3, controller 20 (0x14), fine part 52 (0x34):
    # cc: round(v × 127) = 0, 38 (38.1), 64 (63.5 rounds to even), 127
    ("cc", [(0xB0, 20, 0), (0xB1, 20, 38), (0xB2, 20, 64), (0xB3, 20, 127)]),
    # cc14: v14 = round(v × 16383) = 0, 4915 (4914.9), 8192 (8191.5 to even), 16383; coarse v14 >> 7, fine v14 & 127
    # 4915 = 38 × 128 + 51; 8192 = 64 × 128; 16383 = 127 × 128 + 127
    ("cc14", [(0xB0, 20, 0), (0xB0, 52, 0), (0xB1, 20, 38), (0xB1, 52, 51),
              (0xB2, 20, 64), (0xB2, 52, 0), (0xB3, 20, 127), (0xB3, 52, 127)]),
    # pitch bend −8192, −3277, 0, 8191 → unsigned 0, 4915, 8192, 16383 → bytes (LSB, MSB)
    ("pitchbend", [(0xE0, 0, 0), (0xE1, 51, 38), (0xE2, 0, 64), (0xE3, 127, 127)]),
])
def test_continuous_modes_send_worked_out_values(midi_dump: Callable[..., MidiDump], mode: str,
                                                 expected: list[tuple[int, ...]]) -> None:
    dump = midi_dump()
    _, arrangement = arrange("daw", 5, midi_mode=mode, midi_cc=20)
    alarm = Alarm(layer=4, kind="nan", start_s=0.0, duration_s=0.05, midi_note=49, velocity=120)
    with MidiPortSink(dump.port, api="jack") as sink:
        sink.open(arrangement)
        sink.send(step_events(0.0, [0.0] * 4, [0.1] * 4, [60] * 4, values=[0.0, 0.3, 0.5, 1.0], alarms=(alarm,)))
        dump.wait_for(lambda ms: (0x89, 49, 0) in ms)
    got = [m for _, m in dump.wait_for(lambda ms: (0xB9, 123, 0) in ms)]
    # no program changes and no notes, except the alarm on channel 10 (index 9)
    assert got == expected + [(0x99, 49, 120), (0x89, 49, 0)] + [(0xB0 | c, 123, 0) for c in (0, 1, 2, 3, 4, 9)]


def test_close_ends_sounding_notes_at_once_and_sends_all_notes_off(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    _, arrangement = arrange("daw", 4)
    alarm = Alarm(layer=3, kind="+inf", start_s=0.0, duration_s=30.0, midi_note=52, velocity=120)
    sink = MidiPortSink(dump.port, api="jack")
    sink.open(arrangement)
    # two 30 s notes and a 30 s alarm sound; layer 2's note would start only after 20 s
    sink.send(step_events(0.0, [0.0, 0.0, 20.0], [30.0, 30.0, 30.0], [60, 64, 67], alarms=(alarm,)))
    dump.wait_for(lambda ms: (0x99, 52, 120) in ms)
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < WAIT_S  # it does not wait for the notes to end
    sink.close()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == f"gradbridge-{sink.name}"]  # the scheduler was joined
    got = [m for _, m in dump.wait_for(lambda ms: (0xB9, 123, 0) in ms)]
    assert got[4:] == [(0x90, 60, 100), (0x91, 64, 100), (0x99, 52, 120),
                       (0x80, 60, 0), (0x81, 64, 0), (0x89, 52, 0),
                       (0xB0, 123, 0), (0xB1, 123, 0), (0xB2, 123, 0), (0xB3, 123, 0), (0xB9, 123, 0)]


def test_a_step_sent_just_before_close_is_still_heard(midi_dump: Callable[..., MidiDump]) -> None:
    # The notes of a step are due as it arrives; closing at once (before the scheduler thread may have woken)
    # still writes them, then ends them and sends All Notes Off: nothing handed to the sink is lost.
    dump = midi_dump()
    _, arrangement = arrange("daw", 2)
    for _ in range(3):
        sink = MidiPortSink(dump.port, api="jack")
        sink.open(arrangement)
        sink.send(step_events(0.0, [0.0, 0.0], [30.0, 30.0], [60, 64]))
        sink.close()
    got = [m for _, m in dump.wait_for(lambda ms: sum(m == (0xB1, 123, 0) for m in ms) == 3)]
    run = [(0x90, 60, 100), (0x91, 64, 100), (0x80, 60, 0), (0x81, 64, 0), (0xB0, 123, 0), (0xB1, 123, 0)]
    assert [m for m in got if m[0] & 0xF0 != 0xC0] == run * 3  # program changes at open aside


def test_interrupted_run_is_silenced_on_the_way_out(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    _, arrangement = arrange("daw", 2)
    with pytest.raises(KeyboardInterrupt):
        with MidiPortSink(dump.port, api="jack") as sink:
            sink.open(arrangement)
            sink.send(step_events(0.0, [0.0, 0.0], [30.0, 30.0], [48, 55]))
            dump.wait_for(lambda ms: (0x91, 55, 100) in ms)
            raise KeyboardInterrupt  # Ctrl-C while both 30 s notes sound
    got = [m for _, m in dump.wait_for(lambda ms: (0xB1, 123, 0) in ms)]
    assert got[-4:] == [(0x80, 48, 0), (0x81, 55, 0), (0xB0, 123, 0), (0xB1, 123, 0)]


def test_same_pitch_struck_again_is_ended_first_and_not_cut_later(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    _, arrangement = arrange("daw", 1)
    with MidiPortSink(dump.port, api="jack") as sink:
        sink.open(arrangement)
        sink.send(step_events(0.0, [0.0], [0.3], [60]))
        dump.wait_for(lambda ms: (0x90, 60, 100) in ms)
        sink.send(step_events(1.0, [0.0], [1.0], [60]))  # struck again while the 0.3 s note sounds
        messages = dump.wait_for(lambda ms: ms.count((0x80, 60, 0)) == 2)
    got = [m for _, m in dump.wait_for(lambda ms: (0xB0, 123, 0) in ms)]
    # the first note ends when the second starts, and its own note-off (due at 0.3 s) is not sent: it would
    # cut the second note short. One note-off per note-on.
    assert got == [(0xC0, 0), (0x90, 60, 100), (0x80, 60, 0), (0x90, 60, 100), (0x80, 60, 0), (0xB0, 123, 0)]
    second_on, second_off = messages[3][0], messages[4][0]
    # the second note lasts its 1 s, not the 0.3 s or less left of the first note when it was cut
    assert_lasts(second_off - second_on, 1.0)


def test_missing_or_ambiguous_port_lists_the_outputs(midi_dump: Callable[..., MidiDump]) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second = midi_dump(f"gbamb{tag}-a"), midi_dump(f"gbamb{tag}-b")
    _, arrangement = arrange("daw", 1)
    with pytest.raises(SinkError) as missing:
        MidiPortSink("no-such-synth", api="jack").open(arrangement)
    assert "no-such-synth" in str(missing.value)
    assert first.port in str(missing.value) and second.port in str(missing.value)
    assert "gradbridge ports" in str(missing.value)
    with pytest.raises(SinkError) as ambiguous:
        MidiPortSink(f"GBAMB{tag}", api="jack").open(arrangement)
    assert "matches 2 outputs" in str(ambiguous.value)
    assert first.port in str(ambiguous.value) and second.port in str(ambiguous.value)
    assert first.port in list_output_ports("jack")
    described = describe_ports("jack")
    assert "MIDI API: JACK" in described and first.port in described and second.port in described


def test_virtual_port_reaches_a_receiver_connected_with_jack_connect(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    tag = uuid.uuid4().hex[:8]
    _, arrangement = arrange("daw", 1)
    with MidiPortSink(f"out{tag}", api="jack", virtual=True, client_name=f"gbclient{tag}") as sink:
        sink.open(arrangement)
        ours = f"gbclient{tag}:out{tag}"
        assert ours in jack_ports()
        subprocess.run(["jack_connect", ours, dump.port], check=True, timeout=WAIT_S)
        sink.send(step_events(0.0, [0.0], [0.05], [72]))
        dump.wait_for(lambda ms: (0x80, 72, 0) in ms)
    got = [m for _, m in dump.wait_for(lambda ms: (0xB0, 123, 0) in ms)]
    assert got == [(0x90, 72, 100), (0x80, 72, 0), (0xB0, 123, 0)]  # the program went out before connecting


def test_receiver_gone_mid_run_is_raised_by_send(midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    _, arrangement = arrange("daw", 1)
    with MidiPortSink(dump.port, api="jack") as sink:
        sink.open(arrangement)
        sink.send(step_events(0.0, [0.0], [0.05], [60]))
        dump.wait_for(lambda ms: (0x80, 60, 0) in ms)
        dump.stop()
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(SinkError, match="is gone"):
            while time.monotonic() < deadline:
                sink.send(step_events(0.0, [0.0], [0.05], [60]))
                time.sleep(0.05)
    # reported once already by send: close silences what it can and returns


def test_jack_server_stopped_mid_run_is_raised_not_hung(private_jack_server: Any) -> None:
    _, arrangement = arrange("daw", 15)
    with MidiPortSink("gbvirt", api="jack", virtual=True) as sink:
        sink.open(arrangement)
        private_jack_server.process.terminate()
        private_jack_server.process.wait(timeout=WAIT_S)
        # A stopped server never drains python-rtmidi's JACK buffer; about 2300 messages fill it, and the next
        # write would block for ever with the interpreter locked. This sends at most 50 × 30 = 1500, so a sink
        # that missed the stop fails here ("did not raise") instead of hanging.
        with pytest.raises(SinkError, match="JACK server stopped"):
            for _ in range(50):
                sink.send(step_events(0.0, [0.0] * 15, [0.001] * 15, list(range(40, 55))))
                time.sleep(0.1)


def test_alsa_without_its_device_says_so_plainly() -> None:
    if os.path.exists("/dev/snd/seq"):
        pytest.skip("this machine has /dev/snd/seq, so ALSA MIDI can start")
    _, arrangement = arrange("daw", 1)
    with pytest.raises(SinkError) as raised:
        MidiPortSink("any", api="alsa").open(arrangement)
    text = str(raised.value)
    assert "/dev/snd/seq does not exist" in text
    assert "jackd -d dummy" in text and "OSC" in text and "MIDI file" in text
    with pytest.raises(SinkError, match="/dev/snd/seq"):
        list_output_ports("alsa")
    assert "/dev/snd/seq does not exist" in describe_ports("alsa")


def test_jack_without_a_server_says_so_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"gbtest-none-{uuid.uuid4().hex[:8]}")
    _, arrangement = arrange("daw", 1)
    with pytest.raises(SinkError) as raised:
        MidiPortSink("any", api="jack").open(arrangement)
    assert "no JACK server is running" in str(raised.value) and "jackd -d dummy" in str(raised.value)
    assert "no JACK server is running" in describe_ports("jack")


def test_available_apis_are_the_compiled_in_ones() -> None:
    ours = {rtmidi.API_LINUX_ALSA: "alsa", rtmidi.API_UNIX_JACK: "jack", rtmidi.API_MACOSX_CORE: "coremidi",
            rtmidi.API_WINDOWS_MM: "winmm"}
    assert available_apis() == [ours[a] for a in rtmidi.get_compiled_api() if a in ours]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="port must be a str"):
        MidiPortSink(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="api must be one of 'alsa', 'jack', 'coremidi', 'winmm'"):
        MidiPortSink("x", api="oss")
    with pytest.raises(SinkError, match="not open"):
        MidiPortSink("x").send(step_events(0.0, [0.0], [0.1], [60]))


def test_layers_sharing_a_channel_strike_a_pitch_once_and_a_spike_rings_on_channel_10(
        midi_dump: Callable[..., MidiDump]) -> None:
    dump = midi_dump()
    mapping = Mapping.load("daw")
    # 16 layers of two modules: more than 15, so each module gets one channel (1 and 2), with one program
    arrangement = mapping.arrange([f"{module}.{i}" for module in ("a", "b") for i in range(8)])
    assert [v.channel for v in arrangement.voices] == [0] * 8 + [1] * 8
    with MidiPortSink(dump.port, api="jack") as sink:
        sink.open(arrangement)
        for step in range(5):  # steady at 1: every layer at the centre, C4; then layer a.0 jumps tenfold
            norms = np.ones(16)
            norms[0] = 10.0 if step == 4 else 1.0
            sink.send(mapping.map_frame(Frame(step, time.time(), norms)))
            time.sleep(0.15)
    got = [m for _, m in dump.wait_for(lambda ms: sum(m[:2] == (0xB1, 123) for m in ms) == 1)]
    assert [m for m in got if m[0] & 0xF0 == 0xC0] == [(0xC0, 0), (0xC1, 0)]  # one program per channel
    note_ons = [(m[0] & 0x0F, m[1]) for m in got if m[0] & 0xF0 == 0x90 and m[0] & 0x0F != 9]
    # each step one C4 per channel, not eight; at the last step a.0 climbs an octave (12 semitones per decade)
    assert note_ons == [(0, 60), (1, 60)] * 4 + [(0, 72), (0, 60), (1, 60)]
    # the jump is 10 times the median of a.0's window: a spike, GM cowbell (56) on channel 10
    assert [m for m in got if m[0] == 0x99] == [(0x99, 56, 120)]
