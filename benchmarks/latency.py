"""Latency: from ``optimizer.step()`` to the OSC datagram on loopback and the MIDI message through JACK.

A real ``bridge.watch(model, optimizer, osc=..., midi=..., midi_api="jack")`` on a real training loop
(an MLP, torch on 2 threads). Each step is stamped with CLOCK_MONOTONIC (``time.monotonic_ns``, one clock
for every process on the machine) by two optimizer step pre-hooks, one registered before the watch's
(the step call) and one after it (the hand-off: the norms are read and the step's record is in the run
log). From there the follower process, woken by the log's growth (inotify), reads the record, maps it
and sends it. Latency is judged from the hand-off, the moment the step's sound exists: the norm pass
before it is the hook's cost, which ``overhead.py`` measures and which grows with the model; latency
from the step call, norm pass included, is shown beside it. Two receivers, each in its own process (as
SuperCollider or a DAW would be; ``arrivals.py``), stamp each OSC datagram as ``recv`` returns and each
MIDI message in python-rtmidi's JACK input callback.

Matching: OSC by the step number in ``/gradbridge/step`` (parsed with python-osc). MIDI by value: the
model has a ``marker`` layer that takes no part in the forward pass; before each step its gradient is set
to the step number, and the preset maps norms 0–16383 linearly onto 14-bit pitch bend, so the marker's
channel carries ``step mod 16384`` in each message. Every OSC bundle's marker ``/layer`` norm must equal
its ``/step`` (the stamps and the frames count steps alike). The preset sends at once: OSC timetag
"immediately" (``[osc] latency_s = 0``), chord layout (every layer's message due on arrival, no musical
offset; a note-on would go out the same way), rate control off (``every`` 1, ``max_fps`` 0).

Variants, interleaved in blocks: ``load`` (zero_grad, forward, backward, step, back to back, torch on 2
threads: both cores busy), ``idle`` (torch on 1 thread, the loop sleeps between steps; the gradients of
the last backward stay, so the norm pass is the same). A last table times the follower's own part alone:
a record appended by one process to its arrival in another that follows the log (``FileTail``), woken
by the file watch, idle and with both cores busy.

JACK runs on the dummy driver, 48 kHz, 128-frame periods (2.67 ms), with ``--realtime`` where this
machine allows SCHED_FIFO (as JACK is meant to run; ``--jack-no-realtime`` to compare), else without.
JACK drops the MIDI of a period that a client did not finish in time (an xrun): such losses are counted
from jackd's log and excused in the check. Without ``jackd`` (Debian package jackd2) the MIDI part is
skipped with a note and OSC still runs.

    python benchmarks/latency.py            # 1.5 to 6 minutes, depending on the machine's load
    python benchmarks/latency.py --quick    # a smoke run: checks only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import harness
from arrivals import JACK_PERIOD, JACK_RATE, Receiver, jack_xruns, midi_arrivals, osc_arrivals
from jackserver import jack_server, realtime_allowed
from harness import Report, interleave
from probes import drain

import bridge
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.runlog import RunLogWriter
from bridge.watching import Watch

MARKER_SPAN = 16383  #: the marker's norm range, 0–16383: pitch bend carries it exactly (14 bits)
PRESET = f"""
[preset]
name = "latency"
description = "every step at once: chord layout, marker norm 0-{MARKER_SPAN} as 14-bit pitch bend"
[timing]
layout = "chord"
step_s = 0.1
note_s = 0.1
[pitch]
mode = "scale"
curve = "linear"
range = [0.0, {MARKER_SPAN}.0]
[midi]
mode = "pitchbend"
[live]
every = 1
max_fps = 0.0
[osc]
latency_s = 0.0
"""
DRAIN_S = 0.05  #: pause after each block so its last messages arrive before the next block starts


@dataclass
class Plan:
    """Steps per block, counted rounds, uncounted warm-up steps per variant first, the load model's size,
    the idle loop's sleep."""

    block_steps: int
    rounds: int
    warmup_steps: int
    width: int
    batch: int
    idle_sleep_s: float


QUICK = Plan(block_steps=20, rounds=2, warmup_steps=10, width=256, batch=64, idle_sleep_s=0.003)
FULL = Plan(block_steps=200, rounds=5, warmup_steps=50, width=256, batch=64, idle_sleep_s=0.003)


# -- the training side -----------------------------------------------------------------------------------

class LoadNet(nn.Module):
    """An MLP (width → width → width → 10) and ``marker``: a 1 × 1 weight outside the forward pass whose
    gradient the loop sets to the step number, so its norm names the step in every output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                  nn.Linear(width, 10))
        self.marker = nn.Linear(1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Trainer:
    """The watched training loop; ``called[k]`` and ``handed[k]`` stamp step k before and after the watch's
    optimizer pre-hook (monotonic ns)."""

    def __init__(self, plan: Plan, preset: Path, osc_port: str, midi_port: str | None) -> None:
        torch.manual_seed(0)
        self.plan = plan
        self.model = LoadNet(plan.width)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        self.x, self.y = torch.randn(plan.batch, plan.width), torch.randint(0, 10, (plan.batch,))
        self.called: list[int] = []
        self.handed: list[int] = []
        self.optimizer.register_step_pre_hook(lambda *_: self.called.append(time.monotonic_ns()))
        self.watch: Watch = bridge.watch(
            self.model, self.optimizer, mapping=preset, osc=f"127.0.0.1:{osc_port}",
            midi=midi_port, midi_api="jack" if midi_port else None,
            every=1, max_fps=0.0, announce=None)
        self.optimizer.register_step_pre_hook(lambda *_: self.handed.append(time.monotonic_ns()))
        self.marker_layer = self.watch.layer_names.index("marker")

    def load_step(self) -> int:
        """zero_grad, forward, backward, step: torch keeps both cores busy. Returns the step number."""
        self.optimizer.zero_grad()
        nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        return self._step()

    def idle_step(self) -> int:
        """Sleep, then step on the gradients of the last backward (the same norm pass, no load)."""
        time.sleep(self.plan.idle_sleep_s)
        return self._step()

    def _step(self) -> int:
        step = len(self.called)
        self.model.marker.weight.grad = torch.full((1, 1), float(step % (MARKER_SPAN + 1)))
        self.optimizer.step()
        return step


def run_blocks(trainer: Trainer, plan: Plan) -> dict[str, list[int]]:
    """Interleave the variants in blocks of ``plan.block_steps``; return the counted steps of each."""

    def block(step: Callable[[], int], threads: int, steps: int = plan.block_steps) -> Callable[[], list[int]]:
        def run() -> list[int]:
            torch.set_num_threads(threads)
            done = [step() for _ in range(steps)]
            drain(trainer.watch)
            time.sleep(DRAIN_S)
            return done
        return run

    for warm_up in (block(trainer.idle_step, 1, steps=plan.warmup_steps),
                    block(trainer.load_step, 2, steps=plan.warmup_steps)):
        warm_up()  # not counted: the first steps open connections, fill caches and start torch's threads
    variants = {"idle": block(trainer.idle_step, 1), "load": block(trainer.load_step, 2)}
    return interleave(variants, plan.rounds, warmup_rounds=0)  # type: ignore[arg-type]


# -- tables ----------------------------------------------------------------------------------------------

def spread_ms(values_ns: list[int]) -> dict[str, float]:
    """Median, p90, p99 (linear interpolation) and max, in ms."""
    if not values_ns:
        return {"median ms": float("nan"), "p90 ms": float("nan"), "p99 ms": float("nan"), "max ms": float("nan")}
    p50, p90, p99 = np.percentile(np.asarray(values_ns) / 1e6, [50, 90, 99])
    return {"median ms": float(p50), "p90 ms": float(p90), "p99 ms": float(p99), "max ms": max(values_ns) / 1e6}


def latency_rows(paths: dict[str, dict[int, int]], samples: dict[str, list[int]],
                 trainer: Trainer) -> list[dict[str, object]]:
    """Per path and variant: steps, lost, latency from the hand-off (median, p90, p99, max), from the step
    call (median, p99), the watch's hook (median) and the pace."""
    rows = []
    for path, arrivals in paths.items():
        for variant, steps in samples.items():
            got, counted = [s for s in steps if s in arrivals], set(steps)
            pace = [trainer.called[s + 1] - trainer.called[s] for s in steps if s + 1 in counted]
            from_call = spread_ms([arrivals[s] - trainer.called[s] for s in got])
            rows.append({"path": path, "variant": variant, "steps": len(steps), "lost": len(steps) - len(got),
                         **spread_ms([arrivals[s] - trainer.handed[s] for s in got]),
                         "from step call: median ms": from_call["median ms"],
                         "from step call: p99 ms": from_call["p99 ms"],
                         "hook median ms": spread_ms([trainer.handed[s] - trainer.called[s] for s in steps])
                         ["median ms"],
                         "steps per s": 1e9 / float(np.median(pace)) if pace else float("nan")})
    return rows


def follower_wakeups(folder: Path, plan: Plan) -> list[dict[str, object]]:
    """The follower's own part: a record appended here to its frame in another process that follows the log
    with ``FileTail`` (woken by the file watch) and stamps it; idle, then with torch busy on both cores."""
    import subprocess

    info = RunInfo(("a", "b"))
    path = folder / "wakeup.gbrun"
    writer = RunLogWriter(path, info)
    stamps = folder / "wakeups.txt"
    child = subprocess.Popen([sys.executable, "-c", WAKEUP_CHILD, str(path), str(stamps)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    child.stdout.readline()  # "following"
    written: dict[int, int] = {}
    x = torch.randn(512, 512)
    steps = 0
    for variant, busy in (("idle", False), ("both cores busy", True)):
        torch.set_num_threads(2)
        for _ in range(plan.block_steps * plan.rounds):
            if busy:
                x @ x  # noqa: B018 - load, nothing else
            else:
                time.sleep(plan.idle_sleep_s)
            written[steps] = time.monotonic_ns()
            writer.append(Frame(steps, time.time(), np.ones(2)))
            steps += 1
    writer.close()
    child.wait(timeout=30)
    arrived = {int(a): int(b) for a, b in (line.split() for line in stamps.read_text().splitlines())}
    rows, half = [], plan.block_steps * plan.rounds
    for variant, steps_of in (("idle", range(half)), ("both cores busy", range(half, 2 * half))):
        got = [arrived[s] - written[s] for s in steps_of if s in arrived]
        rows.append({"variant": variant, "records": len(steps_of), "arrived": len(got), **spread_ms(got)})
    return rows


WAKEUP_CHILD = r"""
import sys, time
from bridge.tail import FileTail
tail = FileTail(sys.argv[1])
print("following", flush=True)
with open(sys.argv[2], "w") as out:
    while not tail.finished:
        for frame in tail.read_new():
            out.write(f"{frame.step} {time.monotonic_ns()}\n")
        if not tail.finished:
            tail.wait(0.1)
"""


# -- the run ---------------------------------------------------------------------------------------------

def run(plan: Plan, report: Report, folder: Path, realtime: bool) -> None:
    preset = folder / "latency.toml"
    preset.write_text(PRESET, encoding="utf-8")
    period_ms = JACK_PERIOD / JACK_RATE * 1e3
    with jack_server(folder, prefix="gblatency", rate=JACK_RATE, period=JACK_PERIOD, realtime=realtime) as server:
        if server is None:
            report.note("MIDI skipped: jackd or jack_wait is missing (Debian package jackd2) or the server did "
                        "not start; OSC is still measured")
        osc_in = Receiver(folder, "osc")
        midi_in = Receiver(folder, "midi") if server is not None else None
        if midi_in is not None:
            report.note(f"JACK: jackd {'--realtime' if realtime else '--no-realtime'}, dummy driver, {JACK_RATE} Hz, "
                        f"{JACK_PERIOD}-frame periods = {period_ms:.3g} ms; the receiver's input "
                        f"{midi_in.address}, opened by name by the watch")
        try:
            trainer = Trainer(plan, preset, osc_in.address, midi_in.address if midi_in is not None else None)
            try:
                samples = run_blocks(trainer, plan)
            finally:
                stats = trainer.watch.remove()
            time.sleep(DRAIN_S)
        finally:
            datagrams = osc_in.stop()
            messages = midi_in.stop() if midi_in is not None else []
    xruns = jack_xruns(folder / f"{server}.log")
    arrangement = Mapping.load(str(preset)).arrange(trainer.watch.layer_names)
    paths = {"OSC": osc_arrivals(datagrams, MARKER_SPAN + 1)}  # type: ignore[arg-type]
    if server is not None:
        channel = arrangement.voices[trainer.marker_layer].channel
        paths["MIDI"] = midi_arrivals(messages, channel)  # type: ignore[arg-type]
    arrivals = {path: got for path, (got, _) in paths.items()}
    report.table(f"latency: the watch's pre-hook done (the frame handed on) to arrival in the receiver "
                 f"process, and from optimizer.step() (before the watch's hook: the norm pass included); "
                 f"{plan.block_steps}-step blocks, {plan.rounds} rounds interleaved after "
                 f"{plan.warmup_steps} warm-up steps idle and under load",
                 rows := latency_rows(arrivals, samples, trainer))
    report.table("the follower's wake-up alone: a record appended by this process to its frame read in another "
                 "process that follows the log (FileTail, woken by the file watch)", follower_wakeups(folder, plan))

    load = {row["path"]: row for row in rows if row["variant"] == "load"}
    osc = load["OSC"]
    report.goal("OSC under load, from the hand-off: median", "<= 0.3 ms", f"{osc['median ms']:.3g} ms", osc["median ms"] <= 0.3)
    report.goal("OSC under load, from the hand-off: p99", "<= 2 ms", f"{osc['p99 ms']:.3g} ms", osc["p99 ms"] <= 2.0)
    if "MIDI" in load:
        midi = load["MIDI"]
        report.goal("MIDI under load, from the hand-off: median", f"<= 1 ms + one JACK period = {1 + period_ms:.3g} ms",
                    f"{midi['median ms']:.3g} ms", midi["median ms"] <= 1.0 + period_ms)

    every_step = range(len(trainer.called))
    report.check("the watch dropped no frame and no output failed",
                 stats.frames_dropped == stats.frames_unreadable == 0 and stats.frames_done == stats.frames_in
                 == len(every_step) and not stats.errors, stats.summary())
    for path, (got, problems) in paths.items():
        lost = [s for s in every_step if s not in got]
        # JACK drops the MIDI of a period a client missed: each xrun excuses one run of consecutive steps
        # (all the steps that fell in that period) or one repeat
        excused = sum(xruns.values()) if path == "MIDI" else 0
        lost_runs = sum(1 for i, s in enumerate(lost) if i == 0 or lost[i - 1] != s - 1)
        repeated = sum(problem.startswith("repeated") for problem in problems)
        report.check(f"{path}: every step arrived once, in order, its number exact"
                     + (" (or was lost or repeated in a JACK xrun)" if path == "MIDI" else ""),
                     lost_runs + repeated <= excused and len(problems) == repeated
                     and len(got) + len(lost) == len(every_step),
                     f"{len(got)} of {len(every_step)} steps; lost {len(lost)} {lost[:8]}"
                     + (f"; JACK xruns (periods a client did not finish) {xruns}" if path == "MIDI" else "")
                     + (f"; {problems[:3]}" if problems else ""))
    late = [got[s] - trainer.called[s] for got in arrivals.values() for s in got if s < len(trainer.called)]
    report.check("every arrival is later than its step call (one clock in both processes)",
                 bool(late) and min(late) > 0, f"earliest {min(late) / 1e6 if late else float('nan'):.3g} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few blocks, checks only matter")
    parser.add_argument("--jack-no-realtime", action="store_true",
                        help="run jackd with --no-realtime even where realtime scheduling is allowed")
    parser.add_argument("--keep", type=Path, help="keep the preset, jackd's log and the receiver's stamps here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    torch.set_num_threads(2)
    realtime = not args.jack_no_realtime and realtime_allowed()
    harness.banner("gradbridge latency", args.quick)
    report = Report("latency", args.quick, settings={"plan": plan.__dict__, "jack_rate": JACK_RATE,
                                                     "jack_period": JACK_PERIOD, "preset": PRESET})
    report.note(f"load: MLP {plan.width}-{plan.width}-{plan.width}-10 at batch {plan.batch}, torch threads 2, "
                f"steps back to back; idle: torch threads 1, the loop sleeping {plan.idle_sleep_s * 1e3:g} ms "
                "instead of forward and backward; outputs: OSC to 127.0.0.1 and MIDI to JACK, nothing else")
    report.note("MIDI is the marker layer's pitch bend (sent at once, like a chord's note-on); OSC bundles are "
                "timetagged immediately")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(plan, report, args.keep, realtime)
    else:
        with tempfile.TemporaryDirectory(prefix="gradbridge-latency-") as tmp:
            run(plan, report, Path(tmp), realtime)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
