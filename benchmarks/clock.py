"""The live clock through JACK: MIDI clock out, notes on its sixteenth notes, and the note rate at 1000 steps/s.

Everything is read where a DAW would read it: ``jack_midi_dump -a`` on the JACK port gradbridge plays to,
which prints each message with the frame stamp JACK gave it. JACK runs on the dummy driver at 48 kHz with
40-frame periods (0.833 ms; ``--realtime`` where SCHED_FIFO is allowed): python-rtmidi hands JACK a message
at the start of the next period, so the period is the resolution of every stamp, and 40 frames make a
120 BPM pulse (20.833 ms, 1000 frames) a whole number of periods (8-frame periods, the power of two that
does, made the dummy driver miss hundreds of periods on this machine). When the dummy driver misses
periods its frame count falls behind real time, so the pulses are also received by a JACK MIDI input in
this process that stamps them in real time (JACK's system clock): drift is judged on both. Pulses are
numbered by the count the sender reports (JACK drops the messages of a period a client missed: a
receiver then counts fewer, and the numbering falls back on the gaps).

Phases, each with a receiver of its own:

``stand-in``  a stand-in run writing its log at 1000 steps/s on absolute deadlines (no torch), followed by
              ``gradbridge follow --from-start --midi PORT --midi-clock`` (the ``daw`` preset: sixteenth notes
              at 120 BPM); layer b is NaN every 400 steps. Nothing else loads the machine.
``load``      a real training run, ``bridge.watch(model, optimizer, mapping="daw", midi=PORT, midi_clock=True)``
              on an MLP with torch on 2 threads, steps back to back, and beside it a data loader's stand-in
              (NumPy on one thread): both cores busy; the follower process drives the port, at its lower
              priority as for any watch, its MIDI writer thread on SCHED_FIFO where the system allows it.
``free``      the baseline: the stand-in at 1000 steps/s on the free clock (``--clock free``: each step as it
              arrives, gradbridge's behaviour before the live clock).

Goals (issue "In time with the DAW"), on the ``load`` phase: pulse interval median within 0.1 ms of
20.833 ms; p99 of the interval's distance from 20.833 ms within one JACK period + 1 ms; the 1440th pulse
within 2 ms of 30 s after Start; every note-on within one JACK period of a sixteenth-note pulse (every
sixth, from the first); and, on ``stand-in``, each channel at most the grid's notes a second (8).

    python benchmarks/clock.py            # about 2 minutes
    python benchmarks/clock.py --quick    # a smoke run: checks only
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from arrivals import jack_xruns
from harness import REPO_ROOT, Report
from jackserver import jack_server, realtime_allowed

JACK_RATE, JACK_PERIOD = 48000, 40
PULSE_MS = 60_000 / 120 / 24  # 20.833 ms at 120 BPM
CLOCK, START, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFC, 0xF2
NAN_EVERY = 400  # the stand-in's layer b is NaN at steps 200, 600, 1000, ...


@dataclass(frozen=True)
class Plan:
    standin_s: float
    load_s: float
    free_s: float
    width: int


FULL = Plan(standin_s=15.0, load_s=60.0, free_s=5.0, width=256)
QUICK = Plan(standin_s=2.0, load_s=3.0, free_s=1.0, width=64)

STANDIN = r"""
import math, sys, time
from bridge.frames import Frame, RunInfo
from bridge.runlog import RunLogWriter
path, seconds, nan_every = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
with RunLogWriter(path, RunInfo(("a", "b", "c"), {"mapping": "daw"})) as writer:
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        nan = step % nan_every == nan_every // 2
        writer.append(Frame(step, time.time(), [1.0 + (step % 7) / 10, math.nan if nan else 1.0, 2.0]))
        step += 1
        wait = start + step / 1000.0 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
print(step, flush=True)
"""

TRAINING = r"""
import json, sys, time, torch
from torch import nn
import bridge
torch.set_num_threads(2)
port, seconds, width = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, width), torch.randint(0, 10, (64,))
steps, cpu = 0, time.process_time()
with bridge.watch(model, optimizer, mapping="daw", midi=port, midi_api="jack", midi_clock=True) as w:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        w.record_loss(loss)
        optimizer.step()
        steps += 1
    elapsed = time.monotonic() - start
print(json.dumps({"steps": steps, "seconds": elapsed, "cpu_s": time.process_time() - cpu}), flush=True)
"""

#: A data loader's stand-in beside the training run, so that both cores stay busy: NumPy products on one
#: thread for ``seconds``; prints the CPU seconds it used.
BURNER = r"""
import os, sys, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np
a = np.random.default_rng(0).standard_normal((160, 160))
start, cpu = time.monotonic(), time.process_time()
while time.monotonic() - start < float(sys.argv[1]):
    a = np.tanh(a @ a.T / 160)
print(time.process_time() - cpu, flush=True)
"""

Message = tuple[int, tuple[int, ...]]


class Dump:
    """``jack_midi_dump -a NAME`` writing to a file; ``messages()`` parses it."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.txt"
        self.port = f"{name}:input"
        command = ["jack_midi_dump", "-a", name]
        if shutil.which("stdbuf"):
            command = ["stdbuf", "-oL", *command]
        with open(self.path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.port not in subprocess.run(["jack_lsp"], capture_output=True, text=True).stdout.splitlines():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jack_midi_dump did not show {self.port}")
            time.sleep(0.02)

    def stop(self) -> list[Message]:
        time.sleep(0.3)
        self.process.terminate()
        self.process.wait(timeout=10)
        messages = []
        for line in self.path.read_text().splitlines():
            head, sep, rest = line.partition(":")
            if sep and head.strip().isdigit():
                tokens = rest.split()
                status = int(tokens[0], 16)
                size = 1 if status >= 0xF8 else 3 if status == SONG_POSITION or status < 0xC0 or status >= 0xE0 else 2
                messages.append((int(head), tuple(int(t, 16) for t in tokens[:size])))
        return messages


class Stamper:
    """A JACK MIDI input in this process that joins gradbridge's output as soon as it appears and stamps each
    message in real time (JACK's system clock, microseconds), where ``jack_midi_dump -a`` gives the dummy
    driver's frame count, which falls behind real time when JACK misses periods."""

    def __init__(self) -> None:
        import threading

        import rtmidi

        self.messages: list[tuple[int, tuple[int, ...]]] = []
        self._in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, "gbclock-stamp")
        self._in.ignore_types(sysex=True, timing=False, active_sense=True)
        self._line_ns: int | None = None
        self._in.set_callback(self._stamp)
        self.joined = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._join, daemon=True)
        self._thread.start()

    def _stamp(self, event: tuple[list[int], float], _data: object = None) -> None:
        """JACK's own time of each message: the first one's arrival, then python-rtmidi's deltas (JACK's
        clock at the period that carried each message), so that this process's own delays do not count."""
        message, delta_s = event
        if self._line_ns is None:
            self._line_ns = time.monotonic_ns()
        else:
            self._line_ns += round(delta_s * 1e9)
        self.messages.append((self._line_ns, tuple(message)))

    def _join(self) -> None:
        while not self._stop.is_set():
            ports = self._in.get_ports()
            mine = [p for p in ports if p.startswith("gradbridge:")]
            if mine:
                self._in.open_port(ports.index(mine[0]), "stamp")
                self.joined = mine[0]
                return
            time.sleep(0.002)

    def stop(self) -> list[tuple[int, tuple[int, ...]]]:
        self._stop.set()
        self._thread.join(5)
        time.sleep(0.3)
        self._in.cancel_callback()
        self._in.close_port()
        self._in.delete()
        return self.messages


def real_time(stamped: list[tuple[int, tuple[int, ...]]], sent: int | None) -> dict[str, object]:
    """Pulse intervals and drift from real-time stamps (``Stamper``)."""
    starts = [t for t, m in stamped if m[0] == START]
    if not starts:
        return {"real-time pulses": 0}
    pulses = [t for t, m in stamped if m[0] == CLOCK and t >= starts[0]]
    by_number = numbered(pulses, PULSE_MS * 1e6, sent)
    intervals = [(b - a) / 1e6 for a, b in zip(pulses, pulses[1:])]
    deviation = [abs(i - PULSE_MS) for i in intervals]
    return {"real-time pulses": len(pulses), "pulses lost (-: repeated)": max(by_number) + 1 - len(pulses),
            "real-time median interval ms": harness.median(intervals),
            "real-time p99 |interval - 20.833| ms": percentile(deviation, 99),
            "real-time 1440th pulse - 30 s ms": (by_number[1439] - starts[0]) / 1e6 - 30_000 if 1439 in by_number
            else None}


def env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def numbered(pulses: list[int], pulse_units: float, sent: int | None = None) -> dict[int, int]:
    """Each received pulse by its number from the first (0). When all ``sent`` pulses arrived, by their order;
    else a gap of about n pulses counts n - 1 lost (JACK drops the messages of a period a client missed;
    in a stretch where the dummy driver missed periods and caught up, its frame stamps bunch, so this is
    only the fallback)."""
    if not pulses:
        return {}
    if sent is not None and len(pulses) > sent:  # a period delivered twice after a miss: drop the closest pairs
        close = sorted(range(1, len(pulses)), key=lambda i: pulses[i] - pulses[i - 1])[:len(pulses) - sent]
        pulses = [p for i, p in enumerate(pulses) if i not in set(close)]
    if sent is not None and len(pulses) == sent:
        return dict(enumerate(pulses))
    numbers = {0: pulses[0]}
    number = 0
    for before, after in zip(pulses, pulses[1:]):
        number += max(1, round((after - before) / pulse_units))
        numbers[number] = after
    return numbers


def analyse(messages: list[Message], sent: int | None, steps_per_beat: int = 4) -> dict[str, object]:
    """The clock and the notes of one phase, from the receiver's stamps (``sent``: the pulses the sender says
    it wrote)."""
    period_ms = JACK_PERIOD / JACK_RATE * 1000
    frames_ms = 1000 / JACK_RATE
    starts = [f for f, m in messages if m[0] == START]
    stops = [f for f, m in messages if m[0] == STOP]
    start = starts[0] if starts else None
    pulses = [f for f, m in messages if m[0] == CLOCK and start is not None and f >= start]
    order_ok = bool(starts) and bool(stops) and all(
        m[0] != CLOCK for f, m in messages if f > stops[-1] or (start is not None and f < start))
    spp_first = next((m for f, m in messages if m[0] in (SONG_POSITION, START)), None) == (SONG_POSITION, 0, 0)
    intervals = [(b - a) * frames_ms for a, b in zip(pulses, pulses[1:])]
    deviation = [abs(i - PULSE_MS) for i in intervals]
    row: dict[str, object] = {"pulses": len(pulses), "median interval ms": harness.median(intervals),
                              "p99 |interval - 20.833| ms": percentile(deviation, 99),
                              "max |interval - 20.833| ms": max(deviation) if deviation else float("nan")}
    by_number = numbered(pulses, PULSE_MS / frames_ms, sent)
    row["pulses lost"] = (max(by_number) + 1 - len(pulses)) if by_number else 0
    if start is not None and pulses:
        row["1440th pulse - 30 s ms"] = (by_number[1439] - start) * frames_ms - 30_000 if 1439 in by_number else None
    sixteenths = [f for k, f in sorted(by_number.items()) if k % (24 // steps_per_beat) == 0]
    ons = [(f, m[0] & 0x0F) for f, m in messages if m[0] & 0xF0 == 0x90 and m[2] > 0]
    off_grid = [min(abs(f - p) for p in sixteenths) * frames_ms for f, _ in ons] if sixteenths else []
    row.update({"note-ons": len(ons), "max note-on to its pulse ms": max(off_grid) if off_grid else None,
                "note-ons over a period off": sum(d > period_ms + 1e-9 for d in off_grid)})
    per_channel: dict[int, list[int]] = {}
    for frame, channel in ons:
        per_channel.setdefault(channel, []).append(frame)
    most_per_sixteenth = 0
    edge = JACK_PERIOD // 2
    for frames in per_channel.values():
        for a, b in zip(sixteenths, sixteenths[1:] + [10**12]):
            most_per_sixteenth = max(most_per_sixteenth, sum(a - edge <= f < b - edge for f in frames))
    busiest = 0  # the most note-ons of one melodic channel in any second of the clock (8 sixteenths at 120 BPM)
    for channel, frames in per_channel.items():
        if channel != 9:
            for a, b in zip(sixteenths, sixteenths[8:]):
                busiest = max(busiest, sum(a - edge <= f < b - edge for f in frames))
    row["most note-ons in a second, one channel"] = busiest
    row["most note-ons in a sixteenth, one channel"] = most_per_sixteenth
    row["alarms (ch 10, note 49)"] = sum(1 for f, m in messages if m[0] == 0x99 and m[1] == 49 and m[2] > 0)
    return {"row": row, "order_ok": order_ok, "spp_first": spp_first, "off_grid": off_grid}


def pulses_sent(summary: str) -> int | None:
    """The pulses the sender wrote, from its closing summary ("MIDI clock on ...: 709 pulses, ...")."""
    match = re.search(r"MIDI clock on [^:]*:[^:]*: (\d+) pulses", summary)
    return int(match.group(1)) if match else None


def follow_phase(folder: Path, name: str, seconds: float, extra: list[str]
                 ) -> tuple[list[Message], list[Message], str, int]:
    """A stand-in at 1000 steps/s followed to a receiver of its own; what it received (frame stamps, real-time
    stamps), the follower's last words and the steps written."""
    dump = Dump(folder, f"gbclock-{name}")
    stamper = Stamper()
    run = folder / f"{name}.gbrun"
    writer = subprocess.Popen([sys.executable, "-c", STANDIN, str(run), str(seconds), str(NAN_EVERY)],
                              stdout=subprocess.PIPE, text=True, env=env())
    follower = subprocess.Popen([sys.executable, "-m", "bridge", "follow", str(run), "--from-start", "--midi",
                                 dump.port, "--midi-api", "jack", *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env())
    out, _ = writer.communicate(timeout=seconds + 60)
    _, err = follower.communicate(timeout=60)
    return (dump.stop(), stamper.stop(), err.strip().splitlines()[-1] if err.strip() else "",
            int(out.strip() or 0))


def load_phase(folder: Path, plan: Plan) -> tuple[list[Message], list[Message], dict[str, float], str]:
    dump = Dump(folder, "gbclock-load")
    stamper = Stamper()
    training = subprocess.Popen([sys.executable, "-c", TRAINING, dump.port, str(plan.load_s), str(plan.width)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    burner = subprocess.Popen([sys.executable, "-c", BURNER, str(plan.load_s + 3)], stdout=subprocess.PIPE, text=True,
                              env={**env(), "OPENBLAS_NUM_THREADS": "1"})
    out, err = training.communicate(timeout=plan.load_s + 120)
    burned, _ = burner.communicate(timeout=60)
    summary = next((line for line in err.splitlines()[::-1] if "frames in" in line), err.strip()[-300:])
    if training.returncode != 0:
        raise RuntimeError(f"the training run failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["burner_cpu_s"] = float(burned.strip() or 0.0)
    return dump.stop(), stamper.stop(), result, summary


def run(plan: Plan, report: Report, folder: Path, realtime: bool) -> None:
    period_ms = JACK_PERIOD / JACK_RATE * 1000
    with jack_server(folder, prefix="gbclock", rate=JACK_RATE, period=JACK_PERIOD, realtime=realtime) as server:
        if server is None:
            report.note("skipped: jackd or jack_wait is missing (Debian package jackd2) or the server did not start")
            report.check("JACK server started", False, "see the log in the run's folder")
            return
        report.note(f"JACK: jackd {'--realtime' if realtime else '--no-realtime'}, dummy driver, {JACK_RATE} Hz, "
                    f"{JACK_PERIOD}-frame periods = {period_ms:.3g} ms")
        standin, standin_stamped, standin_said, standin_steps = follow_phase(folder, "standin", plan.standin_s,
                                                                            ["--midi-clock"])
        loaded, loaded_stamped, training, load_said = load_phase(folder, plan)
        free, _, free_said, free_steps = follow_phase(folder, "free", plan.free_s, ["--clock", "free"])
    xruns = jack_xruns(folder / f"{server}.log")
    sent = {name: pulses_sent(said) for name, said in (("standin", standin_said), ("load", load_said))}
    phases = {"stand-in, 1000 steps/s": analyse(standin, sent["standin"]),
              "load, training on both cores": analyse(loaded, sent["load"])}
    rows = [{"phase": name, **result["row"]} for name, result in phases.items()]  # type: ignore[arg-type]
    report.table("the MIDI clock and the notes as jack_midi_dump -a stamps them (daw: sixteenth notes at 120 BPM)",
                 rows)
    stamped = {"stand-in, 1000 steps/s": real_time(standin_stamped, sent["standin"]),
               "load, training on both cores": real_time(loaded_stamped, sent["load"])}
    report.table("the MIDI clock in real time: a JACK MIDI input stamps each pulse with JACK's system clock",
                 [{"phase": name, **row} for name, row in stamped.items()])

    def channel_1(messages: list[Message]) -> int:
        return sum(1 for _, m in messages if m[0] == 0x90 and m[2] > 0)

    tempo_rate, free_rate = channel_1(standin) / plan.standin_s, channel_1(free) / plan.free_s
    report.table("note rate at 1000 steps/s on channel 1: the tempo clock against the free clock (each step as "
                 "it arrives, the behaviour before the live clock)", [
                     {"clock": "tempo (stand-in)", "steps": standin_steps, "note-ons": channel_1(standin),
                      "seconds": plan.standin_s, "note-ons a second": tempo_rate},
                     {"clock": "free (baseline)", "steps": free_steps, "note-ons": channel_1(free),
                      "seconds": plan.free_s, "note-ons a second": free_rate}])
    load_rate = training["steps"] / training["seconds"]
    report.note(f"training: {training['steps']} steps in {training['seconds']:.1f} s ({load_rate:.0f} steps/s), "
                f"{training['cpu_s'] / training['seconds']:.2f} cores busy in the training process, and the data "
                f"loader stand-in's {training['burner_cpu_s'] / (plan.load_s + 3):.2f} beside it")
    report.note(f"follower, stand-in: {standin_said}")
    report.note(f"watch, load: {load_said}")
    report.note(f"JACK xruns (periods a client did not finish): {xruns or 'none'}")

    load = phases["load, training on both cores"]["row"]
    real = stamped["load, training on both cores"]
    for where, row, prefix in (("jack_midi_dump frames", load, ""), ("real time", real, "real-time ")):
        median_ms = row.get(f"{prefix}median interval ms")
        p99_ms = row.get(f"{prefix}p99 |interval - 20.833| ms")
        drift = row.get(f"{prefix}1440th pulse - 30 s ms")
        report.goal(f"pulse interval median (load, {where})", "20.833 ms ± 0.1",
                    "n/a" if median_ms is None else f"{median_ms:.4g} ms",
                    median_ms is not None and abs(float(median_ms) - PULSE_MS) <= 0.1)  # type: ignore[arg-type]
        report.goal(f"pulse interval p99 distance from 20.833 ms (load, {where})",
                    f"<= one JACK period + 1 ms = {period_ms + 1:.3g} ms", "n/a" if p99_ms is None else f"{p99_ms:.3g} ms",
                    p99_ms is not None and float(p99_ms) <= period_ms + 1)  # type: ignore[arg-type]
        report.goal(f"no drift: the 1440th pulse 30 s after Start (load, {where})", "within 2 ms",
                    "n/a (fewer than 1440 pulses)" if drift is None else f"{drift:+.3g} ms",
                    drift is not None and abs(float(drift)) <= 2.0)  # type: ignore[arg-type]
    report.goal("every note-on within one JACK period of its sixteenth's pulse (load)", f"0 beyond {period_ms:.3g} ms",
                f"{load['note-ons over a period off']} of {load['note-ons']} beyond; max "
                f"{load['max note-on to its pulse ms']:.3g} ms", load["note-ons over a period off"] == 0)
    standin_row = phases["stand-in, 1000 steps/s"]["row"]
    busiest = int(standin_row["most note-ons in a second, one channel"])  # type: ignore[call-overload]
    report.goal("note-ons in any second of the clock, per channel, at 1000 steps/s (stand-in)", "<= 8 (the grid's)",
                str(busiest), busiest <= 8)

    for name, result in phases.items():
        report.check(f"{name}: Song Position 0 and Start, then pulses only, then Stop",
                     bool(result["order_ok"]) and bool(result["spp_first"]), str(result["row"]["pulses"]) + " pulses")
        report.check(f"{name}: at most one note-on per channel in each sixteenth note",
                     result["row"]["most note-ons in a sixteenth, one channel"] == 1,
                     f"{result['row']['most note-ons in a sixteenth, one channel']}")
    nan_steps = sum(1 for s in range(standin_steps) if s % NAN_EVERY == NAN_EVERY // 2)
    alarms = standin_row["alarms (ch 10, note 49)"]
    lost = sum(xruns.values())
    report.check("stand-in: every NaN step (400 apart, one per tick) sounds its alarm (unless JACK lost it)",
                 alarms == nan_steps or (alarms < nan_steps and nan_steps - alarms <= lost),  # type: ignore[operator]
                 f"{alarms} alarms for {nan_steps} NaN steps; JACK xruns {lost}")
    report.check("free clock: the baseline plays about every step (the rate the live clock brings down)",
                 free_rate > 100, f"{free_rate:.0f} note-ons a second on channel 1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds a phase, checks only matter")
    parser.add_argument("--jack-no-realtime", action="store_true",
                        help="run jackd with --no-realtime even where realtime scheduling is allowed")
    parser.add_argument("--keep", type=Path, help="keep jackd's log, the run logs and the receivers' output here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    realtime = not args.jack_no_realtime and realtime_allowed()
    harness.banner("gradbridge clock", args.quick)
    report = Report("clock", args.quick, settings={"plan": plan.__dict__, "jack_rate": JACK_RATE,
                                                   "jack_period": JACK_PERIOD})
    report.note(f"load: MLP {plan.width}-{plan.width}-{plan.width}-10 at batch 64, torch threads 2, steps back to "
                "back; stand-in and free: 3 layers at 1000 steps/s, no torch")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(plan, report, args.keep, realtime)
    else:
        with tempfile.TemporaryDirectory(prefix="gradbridge-clock-") as tmp:
            run(plan, report, Path(tmp), realtime)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
