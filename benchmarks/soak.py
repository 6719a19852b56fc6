"""Soak: frames at a high step rate into every output for minutes; memory and threads must stay put.

    python benchmarks/soak.py                    # 10 minutes at 2000 steps a second
    python benchmarks/soak.py --quick            # about 20 s
    python benchmarks/soak.py --minutes 60 --rate 0 --layers 32

A stand-in training loop makes ``Frame``s (a random walk of norms per layer, with a NaN and an Inf now and
then) at ``--rate`` steps a second (0: as fast as it can) and hands them to the same pipeline
``bridge.watch`` builds: the dispatcher thread, the run log, a WAV file, a MIDI file, OSC to a UDP reader
on this machine, and live MIDI to a virtual port if a JACK server answers (else skipped, with a note).
Frames the dispatcher cannot take are dropped and counted, as in training; the WAV still spans every step
(silence where frames were dropped), so ``--rate 0`` writes over a gigabyte in 10 minutes.

It prints resident memory (VmRSS from /proc/self/status) after a warm-up, in the middle and at the end,
frames in, done and dropped, what each output received, and the threads before and after. It exits 1
when memory grew by more than ``--max-growth-mib`` (default 64 MiB) from the warm-up to the end, when a
thread is left behind after close, or when the counts do not add up (frames in = done + dropped; the run
log, the WAV and OSC hold every frame done); 0 otherwise. Timings are printed, never judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bridge.dispatch import Dispatcher, DispatchStats
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.outputs import file_sinks
from bridge.pipeline import build_outputs, rate_for
from bridge.runlog import RunLogReader, RunLogWriter
from bridge.sinks.base import Sink
from bridge.sinks.osc import OscSink

# benchmarks/ is on the path when a script here runs
from probes import OscReceiver, midi_track_count, native_threads, resident_bytes, wav_frame_count
from standins import PRESET, STEP_SAMPLES, Norms, jack_midi_sink

MIB = 1024 * 1024


@dataclass
class Report:
    """What a soak saw."""

    seconds: float
    rate: float
    layers: int
    rss_mib: dict[str, float] = field(default_factory=dict)
    frames_in: int = 0
    frames_done: int = 0
    frames_dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)
    run_log_frames: int = 0
    alarm_frames: int = 0
    wav_frames: int = 0
    wav_frames_expected: int = 0
    osc_sent: int = 0
    osc_received: int = 0
    live_midi: str = ""
    live_midi_counters: dict[str, float] = field(default_factory=dict)
    midi_tracks: int = 0
    threads_before: list[str] = field(default_factory=list)
    threads_after: list[str] = field(default_factory=list)
    native_threads: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def soak(seconds: float, rate: float, layers: int, folder: Path, max_growth_mib: float,
         queue_size: int = 1024) -> Report:
    """Run the soak for ``seconds``, writing into ``folder``; return the report (``problems`` empty: pass)."""
    report = Report(seconds=seconds, rate=rate, layers=layers)
    preset_path = folder / "soak.toml"
    preset_path.write_text(PRESET, encoding="utf-8")
    threads_before = set(threading.enumerate())
    report.threads_before = sorted(t.name for t in threads_before)
    report.native_threads["before"] = native_threads()

    counter = OscReceiver(receive_buffer_bytes=8 * MIB)
    osc = OscSink("127.0.0.1", counter.port)
    live: list[Sink] = [osc]
    midi, report.live_midi = jack_midi_sink()
    if midi is not None:
        live.append(midi)
    mapping = Mapping.load(preset_path)
    info = RunInfo(tuple(f"layer{i}" for i in range(layers)), {"mapping": "soak"})
    writer = RunLogWriter(folder / "soak.gbrun", info)
    outputs = build_outputs(mapping, info, file_sinks(wav=folder / "soak.wav", midi_file=folder / "soak.mid"),
                            record=writer, live_sinks=live, rate=rate_for(mapping))
    dispatcher = Dispatcher(outputs.consumers, queue_size=queue_size).start()
    report.native_threads["running"] = native_threads()

    norms = Norms(layers)
    started = time.monotonic()
    warm_at, middle_at, end_at = started + min(max(0.1 * seconds, 2.0), seconds / 2), started + seconds / 2, \
        started + seconds
    marks = [("start", warm_at), ("middle", middle_at)]
    step, burst = 0, max(1, int(rate / 200)) if rate > 0 else 64
    while True:
        now = time.monotonic()
        if marks and now >= marks[0][1]:
            report.rss_mib[marks.pop(0)[0]] = resident_bytes() / MIB
        if now >= end_at:
            break
        for _ in range(burst):
            dispatcher.submit(Frame(step, time.time(), norms.at(step), loss=1.0 / (1 + step), lr=0.01))
            step += 1
        if rate > 0:
            ahead = started + step / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    report.rss_mib["end"] = resident_bytes() / MIB
    stats: DispatchStats = dispatcher.close()
    counter.close()
    report.rss_mib["after close"] = resident_bytes() / MIB
    time.sleep(0.2)  # let finished threads be reaped before looking
    report.native_threads["after"] = native_threads()
    report.threads_after = sorted(t.name for t in set(threading.enumerate()))
    left = sorted(t.name for t in set(threading.enumerate()) - threads_before)

    report.frames_in, report.frames_done, report.frames_dropped = stats.frames_in, stats.frames_done, \
        stats.frames_dropped
    report.errors, report.first_errors = stats.errors, stats.first_errors
    for name, text in outputs.failed_to_open.items():
        report.errors[name] = report.errors.get(name, 0) + 1
        report.first_errors.setdefault(name, f"at start ({text})")
    last_step = -1
    for frame in RunLogReader(folder / "soak.gbrun"):  # every record's CRC is checked on the way
        report.run_log_frames += 1
        report.alarm_frames += not np.isfinite(frame.norms).all()
        last_step = frame.step
    report.wav_frames = wav_frame_count(folder / "soak.wav")
    report.wav_frames_expected = (last_step + 1) * STEP_SAMPLES
    report.osc_sent, report.osc_received = osc.sent, counter.packets
    counters = getattr(midi, "counters", None)
    if counters is not None:
        report.live_midi_counters = asdict(counters)
        if counters.notes_on != counters.notes_off:
            report.problems.append(f"live MIDI: {counters.notes_on} notes on but {counters.notes_off} notes off "
                                   "after close (a note hangs)")

    report.midi_tracks = midi_track_count(folder / "soak.mid")
    _judge(report, stats, left, max_growth_mib)
    return report


def _judge(report: Report, stats: DispatchStats, left: list[str], max_growth_mib: float) -> None:
    """Add to ``report.problems`` every bound or count that does not hold."""
    growth = report.rss_mib["end"] - report.rss_mib["start"]
    if growth > max_growth_mib:
        report.problems.append(f"resident memory grew {growth:.1f} MiB from the warm-up to the end "
                               f"(bound {max_growth_mib:g} MiB)")
    if left:
        report.problems.append(f"threads left behind after close: {left}")
    if stats.frames_in != stats.frames_done + stats.frames_dropped + stats.frames_unreadable:
        report.problems.append(f"frames in ({stats.frames_in}) != done ({stats.frames_done}) + dropped "
                               f"({stats.frames_dropped}) + unreadable ({stats.frames_unreadable})")
    if report.errors:
        report.problems.append(f"outputs failed: {report.first_errors}")
    if report.run_log_frames != stats.frames_done:
        report.problems.append(f"the run log holds {report.run_log_frames} frames, {stats.frames_done} were done")
    if report.wav_frames != report.wav_frames_expected:
        report.problems.append(f"the WAV holds {report.wav_frames} frames, {report.wav_frames_expected} expected "
                               f"(steps 0–{report.wav_frames_expected // STEP_SAMPLES - 1} of {STEP_SAMPLES} "
                               "samples)")
    if report.osc_sent != stats.frames_done or report.osc_received > report.osc_sent:
        report.problems.append(f"OSC sent {report.osc_sent} datagrams and {report.osc_received} arrived for "
                               f"{stats.frames_done} frames done")
    tracks = 1 + report.layers + (1 if report.alarm_frames else 0)  # tempo, one per layer, alarms if any
    if report.midi_tracks != tracks:
        report.problems.append(f"the MIDI file's chunks are broken or it has {report.midi_tracks} tracks, "
                               f"{tracks} expected")


def print_report(report: Report) -> None:
    done_rate = report.frames_done / report.seconds if report.seconds else 0.0
    print(f"soak: {report.seconds:g} s, {report.layers} layers, rate "
          f"{'as fast as possible' if report.rate <= 0 else f'{report.rate:g} steps/s'}")
    print("resident memory (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in report.rss_mib.items()))
    print(f"frames: {report.frames_in} in, {report.frames_done} done ({done_rate:.0f}/s), "
          f"{report.frames_dropped} dropped")
    print(f"run log {report.run_log_frames} frames; WAV {report.wav_frames} sample frames "
          f"({report.wav_frames_expected} expected); MIDI file {report.midi_tracks} tracks; "
          f"OSC {report.osc_sent} sent, {report.osc_received} received")
    print(report.live_midi + (f": {report.live_midi_counters}" if report.live_midi_counters else ""))
    print(f"threads: before {report.threads_before}, after {report.threads_after}; OS threads "
          + ", ".join(f"{k} {v}" for k, v in report.native_threads.items()))
    if report.errors:
        print(f"output errors: {report.first_errors}")
    print("PASS" if not report.problems else "FAIL: " + "; ".join(report.problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--quick", action="store_true", help="run about 20 s instead")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="steps a second the stand-in loop makes (default 2000; 0: as fast as it can)")
    parser.add_argument("--layers", type=int, default=8, help="layers per frame (default 8)")
    parser.add_argument("--max-growth-mib", type=float, default=64.0,
                        help="largest resident-memory growth from the warm-up to the end, MiB (default 64)")
    parser.add_argument("--keep", type=Path, help="write the outputs into this folder and keep them")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.minutes <= 0 or args.rate < 0:
        parser.error("--layers must be >= 1, --minutes > 0 and --rate >= 0")
    seconds = 20.0 if args.quick else 60.0 * args.minutes
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = soak(seconds, args.rate, args.layers, args.keep, args.max_growth_mib)
    else:
        with tempfile.TemporaryDirectory(prefix="gradbridge-soak-") as folder:
            report = soak(seconds, args.rate, args.layers, Path(folder), args.max_growth_mib)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
