"""Tests for ``bridge.sinks.midi_file``: files read back by midicsv, pretty_midi and mido, rendered by FluidSynth.

Unless a test says otherwise: tempo 120 bpm and 960 ticks per beat, so one second is 960 × 120 / 60 = 1920 ticks.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections import defaultdict
from pathlib import Path

import mido
import numpy as np
import pytest

from bridge.errors import SinkError
from bridge.events import PERCUSSION_CHANNEL, Alarm, Arrangement, LayerVoice, Notes, StepEvents
from bridge.sinks import midi_file
from bridge.sinks.base import Sink
from bridge.sinks.midi_file import MidiFileSink, seconds_to_ticks

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


# ---------------------------------------------------------------- helpers: events built by hand


def make_arrangement(
    layers: list[tuple[str, int, int]], *, tempo_bpm: float = 120.0, seconds_per_step: float = 0.5
) -> Arrangement:
    """An arrangement from (name, channel, program) per layer."""
    voices = tuple(
        LayerVoice(index=i, name=name, channel=channel, program=program, waveform="sine", pan=0.0)
        for i, (name, channel, program) in enumerate(layers)
    )
    return Arrangement(
        voices=voices, mapping_name="handmade", description="built by hand for tests", sample_rate=44100,
        audio_channels=1, seconds_per_step=seconds_per_step, tempo_bpm=tempo_bpm, attack_s=0.0,
        release_s=0.0, phase="reset", max_frequency_hz=4000.0,
    )


def make_step(
    step: int, start_s: float, duration_s: float, notes: list[tuple[int, float, float, int, int]],
    alarms: tuple[Alarm, ...] = (),
) -> StepEvents:
    """A step from (layer, start_s, duration_s, midi_note, velocity) per note."""
    n = len(notes)
    column = list(zip(*notes)) if notes else [()] * 5
    return StepEvents(
        step=step, start_s=start_s, duration_s=duration_s, wall_time_s=0.0, loss=float("nan"),
        lr=float("nan"), norms=np.zeros(1),
        notes=Notes(
            layer=np.asarray(column[0], dtype=np.int64), start_s=np.asarray(column[1], dtype=np.float64),
            duration_s=np.asarray(column[2], dtype=np.float64), frequency_hz=np.full(n, 440.0),
            midi_note=np.asarray(column[3], dtype=np.int64), velocity=np.asarray(column[4], dtype=np.int64),
            amplitude=np.full(n, 0.5), value=np.full(n, 0.5),
        ),
        alarms=alarms,
    )


def write(path: Path, arrangement: Arrangement, steps: list[StepEvents], block: int | None = None,
          **kwargs: int) -> Path:
    """Write ``steps`` with ``send`` one by one, or with ``send_many`` ``block`` steps at a time."""
    sink = MidiFileSink(path, **kwargs)
    sink.open(arrangement)
    if block is None:
        for events in steps:
            sink.send(events)
    else:
        for first in range(0, len(steps), block):
            sink.send_many(steps[first:first + block])
    sink.close()
    return path


def require(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed (Debian package {program}); it reads the file independently")
    return found


def midicsv_rows(path: Path) -> list[list[str]]:
    """midicsv's reading of ``path``: one list of stripped fields per record."""
    out = subprocess.run([require("midicsv"), str(path)], capture_output=True, text=True, check=True).stdout
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]


def note_events(rows: list[list[str]], track: int) -> list[tuple[int, str, int, int]]:
    """(tick, record type, channel, note) of every Note_on_c / Note_off_c of midicsv track ``track``."""
    return [
        (int(r[1]), r[2], int(r[3]), int(r[4]))
        for r in rows
        if r[0] == str(track) and r[2] in ("Note_on_c", "Note_off_c")
    ]


def assert_paired(events: list[tuple[int, str, int, int]]) -> None:
    """Each (channel, note) alternates on, off, on, off… in file order, ending with an off."""
    sounding: dict[tuple[int, int], bool] = defaultdict(bool)
    for tick, kind, channel, note in events:
        assert sounding[(channel, note)] == (kind == "Note_off_c"), (tick, kind, channel, note)
        sounding[(channel, note)] = kind == "Note_on_c"
    assert not any(sounding.values())


@pytest.fixture
def basic_run(tmp_path: Path) -> Path:
    """Two layers and one alarm, two steps of 0.5 s.

    fc1 (channel 0, program 0): note 60 at 0.5 s for 0.25 s -> ticks 960..1440; note 64 at 1.0 s for 0.25 s ->
    1920..2400. fc2 (channel 1, program 40): note 62 at 0.5 s for 1.0 s -> 960..2880. Alarm: note 49 at 1.0 s for
    0.1 s -> 1920..2112 on channel index 9. The run ends at 1.5 s = tick 2880.
    """
    arrangement = make_arrangement([("fc1", 0, 0), ("fc2", 1, 40)])
    steps = [
        make_step(0, 0.5, 0.5, [(0, 0.5, 0.25, 60, 100), (1, 0.5, 1.0, 62, 90)]),
        make_step(1, 1.0, 0.5, [(0, 1.0, 0.25, 64, 80)], alarms=(Alarm(1, "nan", 1.0, 0.1, 49, 127),)),
    ]
    return write(tmp_path / "run.mid", arrangement, steps)


# ---------------------------------------------------------------- pure conversion


def test_seconds_to_ticks_worked_values() -> None:
    assert seconds_to_ticks(0.5, 960, 120.0) == 960
    assert seconds_to_ticks(0.75, 960, 120.0) == 1440
    # 100 bpm at 480 tpb: 800 ticks per second; 1/3 s = 266.67 ticks -> 267.
    assert seconds_to_ticks(1 / 3, 480, 100.0) == 267
    ticks = seconds_to_ticks(np.array([0.0, 0.01, 0.29, 100.0]), 960, 120.0)
    assert ticks.dtype == np.int64
    assert ticks.tolist() == [0, 19, 557, 192000]  # 19.2 -> 19, 556.8 -> 557


def test_tempo_is_stored_in_whole_microseconds() -> None:
    assert midi_file.tempo_to_microseconds(120.0) == 500000
    assert midi_file.tempo_to_microseconds(90.0) == 666667  # 666 666.67 rounded


# ---------------------------------------------------------------- read back by midicsv


def test_midicsv_reads_header_names_programs_and_ticks(basic_run: Path) -> None:
    rows = midicsv_rows(basic_run)
    assert rows[0] == ["0", "0", "Header", "1", "4", "960"]  # format 1, 2 layers + tempo + alarms
    titles = {r[0]: r[3] for r in rows if r[2] == "Title_t"}
    assert titles == {"1": '"gradbridge: handmade"', "2": '"fc1"', "3": '"fc2"', "4": '"alarms"'}
    assert ["1", "0", "Tempo", "500000"] in rows
    assert ["1", "0", "Time_signature", "4", "2", "24", "8"] in rows
    programs = [r for r in rows if r[2] == "Program_c"]
    assert programs == [["2", "0", "Program_c", "0", "0"], ["3", "0", "Program_c", "1", "40"]]
    assert note_events(rows, 2) == [
        (960, "Note_on_c", 0, 60), (1440, "Note_off_c", 0, 60),
        (1920, "Note_on_c", 0, 64), (2400, "Note_off_c", 0, 64),
    ]
    assert note_events(rows, 3) == [(960, "Note_on_c", 1, 62), (2880, "Note_off_c", 1, 62)]
    assert note_events(rows, 4) == [(1920, "Note_on_c", 9, 49), (2112, "Note_off_c", 9, 49)]
    velocities = [int(r[5]) for r in rows if r[2] == "Note_on_c"]
    assert velocities == [100, 80, 90, 127]
    assert all(int(r[5]) == 64 for r in rows if r[2] == "Note_off_c")
    ends = {r[0]: int(r[1]) for r in rows if r[2] == "End_track"}
    assert ends == {"1": 2880, "2": 2880, "3": 2880, "4": 2880}


def test_other_tempo_and_resolution(tmp_path: Path) -> None:
    # 90 bpm at 480 tpb: 720 ticks per second; 0.3 s -> 216, 1.0 s -> 720.
    arrangement = make_arrangement([("only", 3, 5)], tempo_bpm=90.0)
    path = write(tmp_path / "t.mid", arrangement, [make_step(0, 0.0, 1.0, [(0, 0.3, 0.7, 70, 50)])],
                 ticks_per_beat=480)
    rows = midicsv_rows(path)
    assert rows[0] == ["0", "0", "Header", "1", "2", "480"]
    assert ["1", "0", "Tempo", "666667"] in rows
    assert note_events(rows, 2) == [(216, "Note_on_c", 3, 70), (720, "Note_off_c", 3, 70)]


def test_no_alarms_means_no_alarm_track(tmp_path: Path) -> None:
    arrangement = make_arrangement([("a", 0, 0), ("b", 1, 0), ("c", 2, 0)])
    path = write(tmp_path / "n.mid", arrangement, [make_step(0, 0.0, 0.5, [(2, 0.0, 0.5, 60, 100)])])
    rows = midicsv_rows(path)
    assert rows[0] == ["0", "0", "Header", "1", "4", "960"]
    assert [r[3] for r in rows if r[2] == "Title_t"] == ['"gradbridge: handmade"', '"a"', '"b"', '"c"']
    assert note_events(rows, 4) == [(0, "Note_on_c", 2, 60), (960, "Note_off_c", 2, 60)]


# ---------------------------------------------------------------- read back by pretty_midi and mido


def test_pretty_midi_instruments_names_and_seconds(basic_run: Path) -> None:
    pretty_midi = pytest.importorskip("pretty_midi")
    pm = pretty_midi.PrettyMIDI(str(basic_run))
    by_name = {inst.name: inst for inst in pm.instruments}
    assert sorted(by_name) == ["alarms", "fc1", "fc2"]
    assert (by_name["fc1"].program, by_name["fc1"].is_drum) == (0, False)
    assert (by_name["fc2"].program, by_name["fc2"].is_drum) == (40, False)
    assert by_name["alarms"].is_drum
    expected = {
        "fc1": [(0.5, 0.75, 60, 100), (1.0, 1.25, 64, 80)],
        "fc2": [(0.5, 1.5, 62, 90)],
        "alarms": [(1.0, 1.1, 49, 127)],
    }
    for name, notes in expected.items():
        got = sorted((n.start, n.end, n.pitch, n.velocity) for n in by_name[name].notes)
        assert len(got) == len(notes)
        for (start, end, pitch, velocity), want in zip(got, notes):
            assert abs(start - want[0]) < 1e-3 and abs(end - want[1]) < 1e-3
            assert (pitch, velocity) == want[2:]


def test_mido_message_types_and_channels(basic_run: Path) -> None:
    tracks = mido.MidiFile(str(basic_run)).tracks
    assert mido.MidiFile(str(basic_run)).type == 1
    assert [t.name for t in tracks] == ["gradbridge: handmade", "fc1", "fc2", "alarms"]
    assert not [m for m in tracks[0] if not m.is_meta]
    for track, channel in zip(tracks[1:], (0, 1, PERCUSSION_CHANNEL)):
        kinds = [m.type for m in track if not m.is_meta]
        assert {m.channel for m in track if not m.is_meta} == {channel}
        assert kinds.count("note_on") == kinds.count("note_off") >= 1  # real note-offs, not on with velocity 0
        assert set(kinds) <= {"program_change", "note_on", "note_off"}
        assert track[-1].type == "end_of_track"
    assert [m.type for m in tracks[1][:2]] == ["track_name", "program_change"]


def test_mido_sees_sink_protocol_and_clipped_bytes(tmp_path: Path) -> None:
    sink = MidiFileSink(tmp_path / "c.mid")
    assert isinstance(sink, Sink)
    # Out-of-range values are clipped: channel 20 -> 15, program 300 -> 127, note 200 -> 127, velocity 0 -> 1,
    # velocity 500 -> 127, note -5 -> 0.
    sink.open(make_arrangement([("wild", 20, 300)]))
    sink.send(make_step(0, 0.0, 0.5, [(0, 0.0, 0.1, 200, 0), (0, 0.2, 0.1, -5, 500)]))
    sink.close()
    messages = [m for m in mido.MidiFile(str(tmp_path / "c.mid")).tracks[1] if not m.is_meta]
    assert [(m.type, m.channel) for m in messages][0] == ("program_change", 15)
    assert messages[0].program == 127
    ons = [(m.note, m.velocity) for m in messages if m.type == "note_on"]
    assert ons == [(127, 1), (0, 127)]


# ---------------------------------------------------------------- overlaps, repeats, alarms, drift


@pytest.mark.parametrize("block", [None, 3])
def test_repeated_pitch_back_to_back_puts_off_before_on(tmp_path: Path, block: int | None) -> None:
    # Note 60 every 0.1 s for 0.1 s: each off (192 ticks apart) falls on the next on's tick and must precede it.
    # In one block of 3 the first two notes are encoded at once (they do not overlap), the last one by itself.
    steps = [make_step(k, 0.1 * k, 0.1, [(0, 0.1 * k, 0.1, 60, 100)]) for k in range(3)]
    path = write(tmp_path / "r.mid", make_arrangement([("l", 0, 0)]), steps, block)
    assert note_events(midicsv_rows(path), 2) == [
        (0, "Note_on_c", 0, 60), (192, "Note_off_c", 0, 60), (192, "Note_on_c", 0, 60),
        (384, "Note_off_c", 0, 60), (384, "Note_on_c", 0, 60), (576, "Note_off_c", 0, 60),
    ]


def test_overlapping_notes_of_different_pitch_all_sound(tmp_path: Path) -> None:
    # 0.25 s notes every 0.1 s: ons at 0, 192, 384; offs at 480, 672, 864.
    steps = [make_step(k, 0.1 * k, 0.1, [(0, 0.1 * k, 0.25, 60 + 2 * k, 100)]) for k in range(3)]
    path = write(tmp_path / "o.mid", make_arrangement([("l", 0, 0)]), steps)
    assert note_events(midicsv_rows(path), 2) == [
        (0, "Note_on_c", 0, 60), (192, "Note_on_c", 0, 62), (384, "Note_on_c", 0, 64),
        (480, "Note_off_c", 0, 60), (672, "Note_off_c", 0, 62), (864, "Note_off_c", 0, 64),
    ]


@pytest.mark.parametrize("block", [None, 2, 3])
def test_overlapping_repeat_of_a_pitch_is_retriggered(tmp_path: Path, block: int | None) -> None:
    # The same pitch struck again while sounding ends at the new strike; the last lasts its full 0.25 s.
    # Sent one step at a time or in blocks (send_many), the file is the same.
    steps = [make_step(k, 0.1 * k, 0.1, [(0, 0.1 * k, 0.25, 60, 100)]) for k in range(3)]
    path = write(tmp_path / "s.mid", make_arrangement([("l", 0, 0)]), steps, block)
    assert note_events(midicsv_rows(path), 2) == [
        (0, "Note_on_c", 0, 60), (192, "Note_off_c", 0, 60), (192, "Note_on_c", 0, 60),
        (384, "Note_off_c", 0, 60), (384, "Note_on_c", 0, 60), (864, "Note_off_c", 0, 60),
    ]


def test_random_overlaps_stay_paired_and_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    arrangement = make_arrangement([("a", 0, 0), ("b", 1, 0)])
    steps = []
    for k in range(300):
        layers = [(layer, 0.01 * k, float(rng.choice([0.0, 0.005, 0.01, 0.03, 0.2])),
                   int(rng.integers(60, 64)), 100) for layer in (0, 1)]
        steps.append(make_step(k, 0.01 * k, 0.01, layers))
    rows = midicsv_rows(write(tmp_path / "z.mid", arrangement, steps))
    for track in (2, 3):
        events = note_events(rows, track)
        assert sum(kind == "Note_on_c" for _, kind, _, _ in events) == 300
        assert [tick for tick, *_ in events] == sorted(tick for tick, *_ in events)
        assert_paired(events)
        # a 0-second note still lasts at least one tick: no off shares its own on's tick
        on_tick: dict[int, int] = {}
        for tick, kind, _, note in events:
            if kind == "Note_on_c":
                on_tick[note] = tick
            else:
                assert tick >= on_tick[note] + 1


def test_blocks_write_the_same_bytes_as_steps_one_by_one(tmp_path: Path) -> None:
    # Random overlapping notes on two layers, alarms now and then, a note with a NaN start: blocks of 1, 7 and 64
    # steps give byte for byte the file that sending each step gives.
    rng = np.random.default_rng(11)
    steps = []
    for k in range(200):
        notes = [(layer, 0.01 * k, float(rng.choice([0.0, 0.005, 0.03, 0.2])), int(rng.integers(60, 64)), 100)
                 for layer in (0, 1)]
        if k == 50:
            notes[0] = (0, float("nan"), 0.01, 60, 100)
        alarms = (Alarm(1, "nan", 0.01 * k, 0.005, 49, 127),) if k % 37 == 0 else ()
        steps.append(make_step(k, 0.01 * k, 0.01, notes, alarms))
    arrangement = make_arrangement([("a", 0, 0), ("b", 1, 0)])
    with pytest.warns(RuntimeWarning, match="1 notes with a non-finite time"):
        expected = write(tmp_path / "one.mid", arrangement, steps).read_bytes()
    for block in (1, 7, 64):
        with pytest.warns(RuntimeWarning, match="1 notes with a non-finite time"):
            got = write(tmp_path / f"block{block}.mid", arrangement, steps, block).read_bytes()
        assert got == expected, block


def test_a_block_of_notes_with_long_gaps_keeps_every_tick(tmp_path: Path) -> None:
    # One layer, one note a step, each 1 tick long (1/1920 s), with gaps that need delta times of 1, 2, 3 and 4
    # bytes: ons at ticks 100, 300 (gap 199), 20 301 (gap 20 000), 3 020 302 (gap 3 000 000). Sent as one block.
    ons = [100, 300, 20_301, 3_020_302]
    steps = [make_step(k, on / 1920, 1 / 1920, [(0, on / 1920, 1 / 1920, 60 + k, 90)]) for k, on in enumerate(ons)]
    path = write(tmp_path / "gaps.mid", make_arrangement([("l", 0, 0)]), steps, block=4)
    expected = []
    for k, on in enumerate(ons):
        expected += [(on, "Note_on_c", 0, 60 + k), (on + 1, "Note_off_c", 0, 60 + k)]
    assert note_events(midicsv_rows(path), 2) == expected
    velocities = [m.velocity for m in mido.MidiFile(path).tracks[1] if m.type == "note_on"]
    assert velocities == [90, 90, 90, 90]


def test_melodies_in_blocks_write_the_same_bytes_as_steps_one_by_one(tmp_path: Path) -> None:
    # Three layers of notes that follow one another (the usual case, encoded a block at a time), one layer of
    # notes that overlap (note by note): any block size gives the bytes of step-by-step sending.
    rng = np.random.default_rng(3)
    steps = []
    for k in range(300):
        notes = [(0, 0.125 * k, 0.125, int(rng.integers(40, 90)), int(rng.integers(1, 128))),
                 (1, 0.125 * k + 0.01, 0.05, int(rng.integers(40, 90)), 100),
                 (2, 0.125 * k, 0.125 if k % 5 else 0.3, 60, 100),
                 (3, 40.0 * k, 0.125, 70, 100)]
        steps.append(make_step(k, 0.125 * k, 0.125, notes))
    arrangement = make_arrangement([("a", 0, 0), ("b", 1, 0), ("c", 2, 0), ("d", 3, 0)])
    expected = write(tmp_path / "one.mid", arrangement, steps).read_bytes()
    for block in (2, 3, 64, 300):
        assert write(tmp_path / f"b{block}.mid", arrangement, steps, block).read_bytes() == expected, block


def test_zero_length_note_lasts_one_tick(tmp_path: Path) -> None:
    # 0.5 s -> 960; 0.0001 s is 0.192 ticks, rounds to 0, so both notes end one tick after they start.
    steps = [make_step(0, 0.5, 0.5, [(0, 0.5, 0.0, 60, 100), (1, 0.5, 0.0001, 61, 100)])]
    rows = midicsv_rows(write(tmp_path / "zero.mid", make_arrangement([("a", 0, 0), ("b", 1, 0)]), steps))
    assert note_events(rows, 2) == [(960, "Note_on_c", 0, 60), (961, "Note_off_c", 0, 60)]
    assert note_events(rows, 3) == [(960, "Note_on_c", 1, 61), (961, "Note_off_c", 1, 61)]


def test_alarms_track_on_percussion_channel(tmp_path: Path) -> None:
    # Step 0: two layers NaN at 0.0 s (note 49, crash) make one hit 0..96 (0.05 s); step 1: +inf at 0.5 s (note 57)
    # for 0.05 s -> 960..1056.
    steps = [
        make_step(0, 0.0, 0.5, [],
                  alarms=(Alarm(0, "nan", 0.0, 0.05, 49, 100), Alarm(1, "nan", 0.0, 0.05, 49, 100))),
        make_step(1, 0.5, 0.5, [(0, 0.5, 0.25, 60, 100)], alarms=(Alarm(1, "+inf", 0.5, 0.05, 57, 110),)),
    ]
    rows = midicsv_rows(write(tmp_path / "al.mid", make_arrangement([("a", 0, 0), ("b", 1, 0)]), steps))
    assert rows[0][4] == "4"
    assert [r[3] for r in rows if r[0] == "4" and r[2] == "Title_t"] == ['"alarms"']
    assert not [r for r in rows if r[0] == "4" and r[2] == "Program_c"]
    assert note_events(rows, 4) == [
        (0, "Note_on_c", 9, 49), (96, "Note_off_c", 9, 49), (960, "Note_on_c", 9, 57), (1056, "Note_off_c", 9, 57),
    ]


@pytest.mark.parametrize("memory_budget", [None, 1], ids=["in-memory", "spilled-to-disk"])
def test_no_drift_over_ten_thousand_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          memory_budget: int | None) -> None:
    if memory_budget is not None:  # force every track through the temporary spill file
        monkeypatch.setattr(midi_file, "_MEMORY_BUDGET_BYTES", memory_budget)
    # 10 000 notes of 10 ms, one per step: note k at 0.01 k s = 19.2 k ticks. Accumulating rounded 19-tick deltas
    # would end at 190 000; absolute conversion ends at round(100.0 s × 1920) = 192 000.
    steps = [make_step(k, 0.01 * k, 0.01, [(0, 0.01 * k, 0.01, 60 + k % 2, 100)]) for k in range(10_000)]
    path = write(tmp_path / "d.mid", make_arrangement([("l", 0, 0)]), steps)
    track = mido.MidiFile(str(path)).tracks[1]
    ticks, now = defaultdict(list), 0
    for message in track:
        now += message.time
        ticks[message.type].append(now)
    expected_on = [round(0.01 * k * 1920) for k in range(10_000)]
    assert ticks["note_on"] == expected_on
    assert ticks["note_off"] == expected_on[1:] + [192000]
    assert ticks["end_of_track"] == [192000]


def test_non_finite_times_are_skipped_with_a_warning(tmp_path: Path) -> None:
    steps = [make_step(0, 0.0, 0.5, [(0, float("nan"), 0.1, 60, 100), (0, 0.25, 0.25, 62, 100)])]
    with pytest.warns(RuntimeWarning, match="1 notes with a non-finite time"):
        path = write(tmp_path / "nan.mid", make_arrangement([("l", 0, 0)]), steps)
    assert note_events(midicsv_rows(path), 2) == [(480, "Note_on_c", 0, 62), (960, "Note_off_c", 0, 62)]


@pytest.mark.parametrize("block", [None, 2])
def test_unknown_layer_and_late_notes_are_reported(tmp_path: Path, block: int | None) -> None:
    # Layer 5 is not in the arrangement: skipped. Step 1 sends a note at 0.25 s after one at 0.5 s was written:
    # it cannot go back in time, so it starts at 0.5 s (tick 960) and keeps its end, 0.75 s (tick 1440).
    # In one block the two steps still arrive in step order, so the late note is late there too.
    steps = [
        make_step(0, 0.5, 0.5, [(0, 0.5, 0.1, 60, 100), (5, 0.5, 0.1, 61, 100)]),
        make_step(1, 1.0, 0.5, [(0, 0.25, 0.5, 64, 100)]),
    ]
    with pytest.warns(RuntimeWarning) as record:
        path = write(tmp_path / "late.mid", make_arrangement([("l", 0, 0)]), steps, block)
    message = str(record[0].message)
    assert "1 notes of a layer not in the arrangement" in message
    assert "1 notes that arrived earlier than notes already written (moved later)" in message
    assert note_events(midicsv_rows(path), 2) == [
        (960, "Note_on_c", 0, 60), (960, "Note_on_c", 0, 64), (1152, "Note_off_c", 0, 60),
        (1440, "Note_off_c", 0, 64),
    ]


def test_gap_longer_than_one_delta_time_holds(tmp_path: Path) -> None:
    # A note at 200 000 s is tick 384 000 000, past the largest delta a MIDI file holds (2**28 - 1 = 268 435 455):
    # the gap is split by an empty text event and the note still lands on its tick.
    steps = [make_step(0, 0.0, 0.5, [(0, 0.0, 0.5, 60, 100)]),
             make_step(1, 200_000.0, 0.5, [(0, 200_000.0, 0.5, 62, 100)])]
    rows = midicsv_rows(write(tmp_path / "gap.mid", make_arrangement([("l", 0, 0)]), steps))
    assert note_events(rows, 2) == [
        (0, "Note_on_c", 0, 60), (960, "Note_off_c", 0, 60),
        (384_000_000, "Note_on_c", 0, 62), (384_000_960, "Note_off_c", 0, 62),
    ]
    assert ["2", str(960 + 268_435_455), "Text_t", '""'] in rows


# ---------------------------------------------------------------- rendered by FluidSynth


def test_fluidsynth_renders_audible_audio_of_the_right_length(tmp_path: Path) -> None:
    fluidsynth = require("fluidsynth")
    if not SOUNDFONT.exists():
        pytest.skip(f"{SOUNDFONT} is missing (Debian package timgm6mb-soundfont)")
    # Four steps of 0.25 s; both layers play from 0.5 s to 1.0 s: the run lasts 1.0 s.
    arrangement = make_arrangement([("fc1", 0, 0), ("fc2", 1, 40)], seconds_per_step=0.25)
    steps = [make_step(k, 0.25 * k, 0.25, [] if k < 2 else [(0, 0.25 * k, 0.25, 60 + 4 * k, 110),
                                                           (1, 0.25 * k, 0.25, 67, 110)]) for k in range(4)]
    midi_path = write(tmp_path / "run.mid", arrangement, steps)
    wav_path = tmp_path / "out.wav"
    subprocess.run([fluidsynth, "-ni", "-q", "-F", str(wav_path), "-r", "44100", str(SOUNDFONT), str(midi_path)],
                   check=True, capture_output=True, timeout=60)
    with wave.open(str(wav_path)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, channels) / 32768.0
    assert rate == 44100
    length_s = samples.shape[0] / rate
    # FluidSynth renders to the end of the file, then lets the last voices release (3.0 s with TimGM6mb's
    # violin, program 40); 5 s leaves room for other FluidSynth versions' tails.
    assert 1.0 <= length_s <= 1.0 + 5.0
    rms = lambda a, b: float(np.sqrt(np.mean(samples[int(a * rate):int(b * rate)] ** 2)))  # noqa: E731
    # Before 0.5 s nothing plays: only FluidSynth's dither, about one 16-bit step (1 / 32768 = 3e-5) RMS.
    assert rms(0.0, 0.49) < 1e-4
    # While the notes sound: well above -60 dBFS (1e-3), i.e. >30x a 16-bit step, so clearly not silence.
    assert rms(0.5, 1.0) > 1e-3
    # The sound starts with the first note-on at 0.5 s (the attack takes a few milliseconds to pass 1e-3).
    onset_s = int(np.argmax(np.abs(samples).max(axis=1) > 1e-3)) / rate
    assert 0.5 <= onset_s < 0.53


# ---------------------------------------------------------------- errors and lifecycle


def test_missing_directory_raises_sink_error_at_open(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "run.mid"
    sink = MidiFileSink(path)
    with pytest.raises(SinkError) as caught:
        sink.open(make_arrangement([("l", 0, 0)]))
    message = str(caught.value)
    assert str(path) in message
    assert f"folder {path.parent} does not exist. Fix: create it first" in message
    assert not path.parent.exists()
    sink.close()  # nothing was opened: closing is a no-op


def test_directory_as_path_raises_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="it is a folder. Fix: give the name of a file in it"):
        MidiFileSink(tmp_path).open(make_arrangement([("l", 0, 0)]))


def test_close_twice_writes_once_and_send_after_close_fails(tmp_path: Path) -> None:
    path = tmp_path / "twice.mid"
    sink = MidiFileSink(path)
    sink.open(make_arrangement([("l", 0, 0)]))
    sink.send(make_step(0, 0.0, 0.5, [(0, 0.0, 0.5, 60, 100)]))
    sink.close()
    written = path.read_bytes()
    sink.close()
    assert path.read_bytes() == written
    assert written[:14] == b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x03\xc0"  # format 1, 2 tracks, 960 = 0x03C0
    with pytest.raises(SinkError, match="send"):
        sink.send(make_step(1, 0.5, 0.5, []))


def test_send_before_open_fails(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="open"):
        MidiFileSink(tmp_path / "x.mid").send(make_step(0, 0.0, 0.5, []))


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (40000, ValueError), ("960", TypeError), (960.0, TypeError)]
)
def test_ticks_per_beat_is_validated(tmp_path: Path, bad: object, error: type) -> None:
    with pytest.raises(error, match="ticks_per_beat"):
        MidiFileSink(tmp_path / "x.mid", ticks_per_beat=bad)  # type: ignore[arg-type]
