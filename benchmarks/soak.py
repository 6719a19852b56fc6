"""Soak: frames at a high step rate into every output for minutes; memory and threads must stay put.

    python benchmarks/soak.py                    # 10 minutes at 2000 steps a second
    python benchmarks/soak.py --quick            # about 20 s
    python benchmarks/soak.py --minutes 60 --rate 0 --layers 32

The stand-in training loop of ``throughput.py`` (``standins.StandInLoop``: a random walk of norms per
layer, with a NaN and an Inf now and then, written as gradients and read by the real hook) runs at
``--rate`` steps a second (0: as fast as it can) under one ``bridge.watch``: the run log, a WAV file, a
MIDI file, OSC to a UDP reader on this machine, and live MIDI to a virtual port if a JACK server answers
(else left out, with a note), all driven by the follower process from the log. The follower may fall
behind; it catches up at close, and the WAV holds every step, so ``--rate 0`` writes over a gigabyte in
10 minutes.

It prints the resident memory of the training process and of the follower process (VmRSS from /proc)
after a warm-up, in the middle and at the end, frames captured and delivered, what each output holds, and
the threads before and after. It exits 1 when either process grew by more than ``--max-growth-mib``
(default 64 MiB) from the warm-up to the end, when a thread is left behind after close, or when the counts
do not add up (the run log and the WAV hold every frame captured, OSC no more than that); 0 otherwise.
Timings are printed, never judged.
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

from bridge.dispatch import DispatchStats
from bridge.runlog import RunLogReader

# benchmarks/ is on the path when a script here runs
from probes import OscReceiver, midi_track_count, native_threads, resident_bytes, wav_frame_count
from standins import PRESET, STEP_SAMPLES, StandInLoop, jack_midi_sink

MIB = 1024 * 1024


@dataclass
class Report:
    """What a soak saw."""

    seconds: float
    rate: float
    layers: int
    rss_mib: dict[str, float] = field(default_factory=dict)
    follower_rss_mib: dict[str, float] = field(default_factory=dict)
    frames_in: int = 0
    frames_done: int = 0
    frames_dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)
    run_log_frames: int = 0
    alarm_frames: int = 0
    wav_frames: int = 0
    wav_frames_expected: int = 0
    osc_received: int = 0
    live_midi: str = ""
    midi_tracks: int = 0
    threads_before: list[str] = field(default_factory=list)
    threads_after: list[str] = field(default_factory=list)
    native_threads: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def follower_resident_mib(pid: int | None) -> float:
    """The follower process's resident memory (VmRSS), MiB; NaN without one."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(seconds: float, rate: float, layers: int, folder: Path, max_growth_mib: float) -> Report:
    """Run the soak for ``seconds``, writing into ``folder``; return the report (``problems`` empty: pass)."""
    report = Report(seconds=seconds, rate=rate, layers=layers)
    preset_path = folder / "soak.toml"
    preset_path.write_text(PRESET, encoding="utf-8")
    threads_before = set(threading.enumerate())
    report.threads_before = sorted(t.name for t in threads_before)
    report.native_threads["before"] = native_threads()

    counter = OscReceiver(receive_buffer_bytes=8 * MIB)
    midi, report.live_midi = jack_midi_sink()
    live = {"midi": "gradbridge-soak", "midi_api": "jack", "midi_virtual": True} if midi is not None else {}
    loop = StandInLoop(layers)
    watch = loop.attach(mapping=preset_path, record=str(folder / "soak.gbrun"), wav=str(folder / "soak.wav"),
                        midi_file=str(folder / "soak.mid"), osc=f"127.0.0.1:{counter.port}", **live)
    loop.ready()
    report.native_threads["running"] = native_threads()

    started = time.monotonic()
    warm_at, middle_at, end_at = started + min(max(0.1 * seconds, 2.0), seconds / 2), started + seconds / 2, \
        started + seconds
    marks = [("start", warm_at), ("middle", middle_at)]
    burst = max(1, int(rate / 200)) if rate > 0 else 64
    while True:
        now = time.monotonic()
        if marks and now >= marks[0][1]:
            name = marks.pop(0)[0]
            report.rss_mib[name] = resident_bytes() / MIB
            report.follower_rss_mib[name] = follower_resident_mib(watch.outputs_pid)
        if now >= end_at:
            break
        for _ in range(burst):
            loop.one_step()
        if rate > 0:
            ahead = started + loop.step / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    report.rss_mib["end"] = resident_bytes() / MIB
    report.follower_rss_mib["end"] = follower_resident_mib(watch.outputs_pid)
    stats: DispatchStats = watch.remove()
    loop.close()
    counter.close()
    report.rss_mib["after close"] = resident_bytes() / MIB
    time.sleep(0.2)  # let finished threads be reaped before looking
    report.native_threads["after"] = native_threads()
    report.threads_after = sorted(t.name for t in set(threading.enumerate()))
    left = sorted(t.name for t in set(threading.enumerate()) - threads_before)

    report.frames_in, report.frames_done, report.frames_dropped = stats.frames_in, stats.frames_done, \
        stats.frames_dropped
    report.errors, report.first_errors = stats.errors, stats.first_errors
    for frame in RunLogReader(folder / "soak.gbrun"):  # every record is checked on the way
        report.run_log_frames += 1
        report.alarm_frames += not np.isfinite(frame.norms).all()
    report.wav_frames = wav_frame_count(folder / "soak.wav")
    report.wav_frames_expected = stats.frames_in * STEP_SAMPLES
    report.osc_received = counter.packets
    report.midi_tracks = midi_track_count(folder / "soak.mid")
    _judge(report, stats, left, max_growth_mib)
    return report


def _judge(report: Report, stats: DispatchStats, left: list[str], max_growth_mib: float) -> None:
    """Add to ``report.problems`` every bound or count that does not hold."""
    for who, rss in (("the training process", report.rss_mib), ("the follower process", report.follower_rss_mib)):
        growth = rss["end"] - rss["start"]
        if growth > max_growth_mib:
            report.problems.append(f"the resident memory of {who} grew {growth:.1f} MiB from the warm-up to the "
                                   f"end (bound {max_growth_mib:g} MiB)")
    if left:
        report.problems.append(f"threads left behind after close: {left}")
    if stats.frames_in != stats.frames_done or stats.frames_dropped or stats.frames_unreadable:
        report.problems.append(f"{stats.frames_in} frames captured, {stats.frames_done} delivered, "
                               f"{stats.frames_dropped} missing, {stats.frames_unreadable} unreadable")
    if report.errors:
        report.problems.append(f"outputs failed: {report.first_errors}")
    if report.run_log_frames != stats.frames_in:
        report.problems.append(f"the run log holds {report.run_log_frames} frames, {stats.frames_in} were captured")
    if report.wav_frames != report.wav_frames_expected:
        report.problems.append(f"the WAV holds {report.wav_frames} frames, {report.wav_frames_expected} expected "
                               f"({stats.frames_in} steps of {STEP_SAMPLES} samples)")
    if report.osc_received > stats.frames_in or report.osc_received == 0:
        report.problems.append(f"{report.osc_received} OSC datagrams arrived for {stats.frames_in} frames")
    tracks = 1 + report.layers + (1 if report.alarm_frames else 0)  # tempo, one per layer, alarms if any
    if report.midi_tracks != tracks:
        report.problems.append(f"the MIDI file's chunks are broken or it has {report.midi_tracks} tracks, "
                               f"{tracks} expected")


def print_report(report: Report) -> None:
    done_rate = report.frames_done / report.seconds if report.seconds else 0.0
    print(f"soak: {report.seconds:g} s, {report.layers} layers, rate "
          f"{'as fast as possible' if report.rate <= 0 else f'{report.rate:g} steps/s'}")
    print("resident memory of the training process (MiB): "
          + ", ".join(f"{k} {v:.1f}" for k, v in report.rss_mib.items()))
    print("resident memory of the follower process (MiB): "
          + ", ".join(f"{k} {v:.1f}" for k, v in report.follower_rss_mib.items()))
    print(f"frames: {report.frames_in} captured, {report.frames_done} delivered ({done_rate:.0f}/s), "
          f"{report.frames_dropped} missing")
    print(f"run log {report.run_log_frames} frames; WAV {report.wav_frames} sample frames "
          f"({report.wav_frames_expected} expected); MIDI file {report.midi_tracks} tracks; "
          f"OSC {report.osc_received} datagrams received")
    print(report.live_midi)
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
