"""Throughput: a stand-in training loop paced at 2000 steps/s, 128 layers, every output at once, for a minute.

The loop really goes through the product's hook: a ``ModuleList`` of 128 modules, each owning one small
parameter (16 floats), and SGD (lr 1e-4, no momentum, ``foreach=True``: the loop alone must fit in 500 µs).
Each step writes fresh gradients in place (every ``.grad`` is a row of one buffer, filled by one
``torch.mul`` of unit vectors by the stand-in norms of ``standins.Norms``: a random walk, NaN and Inf now
and then), then calls ``optimizer.step()``, where the watch's pre-hook reads every norm in its fused pass
and appends the step's record to the run log (one ``os.write``). Steps follow a deadline schedule (step i
is due at start + i / rate); a step that starts more than one period after its due time counts as late.

Variants, each with its own model and optimizer, in blocks of a quarter of ``--seconds``, ordered
without, with, with, without, twice (after a warm-up of each):

- ``without``: the loop alone (the follower has caught up before each such block, untimed).
- ``with``: the loop with one ``bridge.watch`` for the whole run: run log, WAV (the soak preset, 2 ms
  chords at 8 kHz: a minute at 2000 steps/s is 240 s of audio, 3.8 MB), MIDI file, OSC to a UDP reader on
  127.0.0.1, and live MIDI to a virtual port on a dummy JACK server started for the run (left out, with a
  note, when jackd is absent), all driven by the follower process from the log (``--thread``: by a follower
  thread in the training process, ``process=False``). No ``play``: there is no sound card here.

Reported: the loop body's time (gradient writes + ``optimizer.step()``, ``perf_counter_ns``) per variant
(median, p90, p99, p99.9, max, steps over 5 x the ``without`` median), the hook's share of it (two
timing pre-hooks around the watch's), steps/s and late steps; frames captured, in the log and delivered;
the follower's lag when training closed the log and its time to finish; each thread's CPU time and the
follower process's; each output's work per frame in a follower; resident memory of the training process
after the warm-up, in the middle and at the end; threads.

Checks (exit status 1 if one fails): every frame captured is in the run log, with the norms the loop wrote;
the WAV (``wave``) lasts exactly frames x seconds per step; the MIDI file's chunks are whole, it has a
track per layer, and (read by ``midicsv``) a chord starts at every step's time; OSC arrived; no
output error; no thread of ours in the training process while watching (``--thread`` aside) and none
left after close. Timing and memory goals are reported, never enforced.

    python benchmarks/throughput.py              # 60 s per variant, about 4 minutes in all
    python benchmarks/throughput.py --quick      # about 3 s per variant
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import harness
from harness import Report, median
from jackserver import jack_server
from probes import (OscReceiver, deliver_all, drain, midi_track_count, native_threads, process_cpu_ticks,
                    resident_bytes, thread_cpu_ns, thread_names, wav_frame_count)
from standins import LAYER_SIZE, PRESET, STEP_SAMPLES, Norms, StandInLoop, Steps

from bridge.dispatch import DispatchStats
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.outputs import OutputSpec, open_outputs
from bridge.runlog import RunLogReader, RunLogWriter

RATE, LAYERS = 2000.0, 128
MIB = 1024 * 1024
STALL_FACTOR = 5.0  # a step longer than this many times the ``without`` median is a stall
RATE_RATIO, P99_RATIO, MAX_GROWTH_MIB = 0.95, 1.5, 4.0
ORDER = ("without", "with", "with", "without")


def percentiles_row(name: str, steps: Steps, stall_ns: float) -> dict[str, object]:
    body, hook = steps.all()
    stalls = body > stall_ns
    q = np.percentile(body, [50, 90, 99, 99.9]) / 1e3
    return {"variant": name, "steps": len(body), "steps/s": len(body) / steps.seconds,
            "late %": 100 * steps.late / len(body), "median µs": q[0], "p90 µs": q[1], "p99 µs": q[2],
            "p99.9 µs": q[3], "max µs": body.max() / 1e3, f"stalls (> {STALL_FACTOR:g} x without median)":
            int(stalls.sum()), "over 10 ms": int((body > 10e6).sum()),
            "hook median µs": float(np.median(hook)) / 1e3, "hook p99 µs": float(np.percentile(hook, 99)) / 1e3,
            "stall time in the hook %": 100 * float(hook[stalls].sum()) / max(float(body[stalls].sum()), 1.0)}


def run(args: argparse.Namespace, report: Report, folder: Path, jack: str | None) -> None:
    quick, layers, rate = args.quick, args.layers, args.rate
    block_s = args.seconds / len(ORDER)  # each variant runs in half of the 2 x len(ORDER) blocks
    warmup_s = 0.25 if quick else 2.0
    preset = folder / "soak.toml"
    preset.write_text(PRESET, encoding="utf-8")
    threads_before, os_threads_before = set(threading.enumerate()), native_threads()
    osc = OscReceiver(receive_buffer_bytes=8 * MIB)
    paths = {"record": folder / "run.gbrun", "wav": folder / "run.wav", "midi_file": folder / "run.mid"}
    live: dict[str, object] = {"midi": "gradbridge-throughput", "midi_api": "jack", "midi_virtual": True} if jack else {}
    if args.max_fps is not None:
        live["max_fps"] = args.max_fps
    loops = {"without": StandInLoop(layers), "with": StandInLoop(layers)}
    watch = loops["with"].attach(mapping=preset, osc=f"127.0.0.1:{osc.port}", process=not args.thread, **live,
                                 **{k: str(v) for k, v in paths.items()})
    follower = watch.outputs_pid  # the follower process, whose CPU time is counted apart
    follower_ticks = {name: 0 for name in loops}
    for loop in loops.values():
        loop.ready()
    ours_while_watching = sorted(t.name for t in set(threading.enumerate()) - threads_before
                                 if t.name.startswith("gradbridge"))
    os_threads_running = native_threads()
    per_variant = int(args.seconds * rate) + 2 * len(ORDER) + 2  # half of each variant's blocks, and spare
    steps = {name: Steps(per_variant) for name in loops}
    cpu: dict[str, dict[int, int]] = {name: {} for name in loops}
    for name in ("without", "with"):
        loops[name].run(warmup_s, rate, Steps(int(warmup_s * rate) + 2))
    drain(watch)
    rss = {"start": resident_bytes() / MIB}
    blocks = []
    for index, name in enumerate(ORDER + ORDER[::-1]):
        if name == "without":
            drain(watch)  # untimed: the follower catches up, so its work stays out of the without blocks
        before, ran_before = thread_cpu_ns(), len(steps[name].blocks)
        follower_before = process_cpu_ticks(follower) if follower is not None else 0
        loops[name].run(block_s, rate, steps[name])
        for tid, ns in thread_cpu_ns().items():
            cpu[name][tid] = cpu[name].get(tid, 0) + ns - before.get(tid, ns)
        if follower is not None:
            follower_ticks[name] += process_cpu_ticks(follower) - follower_before
        body = steps[name].block(ran_before)
        blocks.append({"block": index + 1, "variant": name, "steps": len(body), "steps/s": len(body) / block_s,
                       "median µs": float(np.median(body)) / 1e3,
                       "p99 µs": float(np.percentile(body, 99)) / 1e3, "max µs": body.max() / 1e3})
        if name == "with" and sum(b["variant"] == "with" for b in blocks) in (2, 4):
            rss["middle" if "middle" not in rss else "end"] = resident_bytes() / MIB
    names = thread_names()
    closing = time.perf_counter()
    stats = watch.remove()
    close_s = time.perf_counter() - closing
    followed = watch.outputs_report
    osc.close()
    rss["after close"] = resident_bytes() / MIB
    for loop in loops.values():
        loop.close()
    time.sleep(0.2)  # let finished threads be reaped before looking
    left = sorted(t.name for t in set(threading.enumerate()) - threads_before)
    os_threads_after = native_threads()

    stall_ns = STALL_FACTOR * float(np.median(steps["without"].all()[0]))
    rows = [percentiles_row(name, steps[name], stall_ns) for name in ("without", "with")]
    report.table(f"the training thread's step time (gradient writes + optimizer.step()), {layers} layers, "
                 f"paced at {rate:g} steps/s, {len(ORDER)} blocks of {block_s:g} s per variant", rows)
    report.table("per block (interleaved: without, with, with, without, then the reverse)", blocks)
    report.table("frames (Watch.stats after close) and the follower's ending", [{
        "captured": stats.frames_in, "in the run log": watch_log_frames(paths["record"]),
        "delivered to every output": stats.frames_done, "missing": stats.frames_dropped,
        "unreadable": stats.frames_unreadable, "output errors": stats.first_errors or "none",
        "follower lag at close (frames)": followed.lag_frames if followed else "n/a",
        "follower time to finish (s)": followed.finish_s if followed else "n/a",
        "remove() took (s)": close_s}])
    growth = rss["end"] - rss["start"]
    report.table("resident memory of the training process (VmRSS, MiB)", [{**rss, "growth start to end": growth}])
    report.table("threads", [{"Python before": len(threads_before),
                              "of ours while watching": ours_while_watching or "none",
                              "Python left after close": left or "none", "OS before": os_threads_before,
                              "OS while watching": os_threads_running, "OS after close": os_threads_after}])
    cpu_rows = []
    for tid in sorted(set(cpu["with"]) | set(cpu["without"]), key=lambda t: -cpu["with"].get(t, 0)):
        row: dict[str, object] = {"thread": names.get(tid, f"ended ({tid})")}
        for name in ("without", "with"):
            row[f"{name}: % of a core"] = 100 * cpu[name].get(tid, 0) / 1e9 / steps[name].seconds
        if row["without: % of a core"] >= 0.5 or row["with: % of a core"] >= 0.5:
            cpu_rows.append(row)
    if follower is not None:  # clock ticks of the whole process (all its threads), not schedstat
        tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        row = {"thread": f"follower process (pid {follower}, all threads)"}
        for name in ("without", "with"):
            row[f"{name}: % of a core"] = 100 * follower_ticks[name] * tick_s / steps[name].seconds
        cpu_rows.append(row)
    report.table("CPU time per thread of the training process during the timed blocks (schedstat), and of the "
                 "follower process (during the without blocks it is catching up)", cpu_rows)
    judge(report, rows, stats, paths, layers, rate, growth, left, os_threads_after - os_threads_before,
          ours_while_watching if not args.thread else [], osc.packets)
    frames = 100 if quick else 500
    report.table(f"each output's work per frame in a follower, alone ({frames} frames, CPU time of the thread "
                 f"that delivers them and of any thread the output adds; medians; a step at {rate:g} steps/s is "
                 f"{1e6 / rate:.0f} µs)", output_costs(folder, layers, preset, jack, frames, 1 if quick else 3))


def watch_log_frames(path: Path) -> int:
    """Frames the run log holds (each record checked)."""
    return sum(1 for _ in RunLogReader(path))


def output_costs(folder: Path, layers: int, preset: Path, jack: str | None, frames: int,
                 rounds: int) -> list[dict[str, object]]:
    """Each output's work per frame, alone: opened with ``open_outputs`` as a follower opens it, ``frames``
    stand-in frames delivered on this thread, then closed; the CPU time of this thread (and of any thread the
    output adds, such as the MIDI port's scheduler) per frame; medians over ``rounds``."""
    osc = OscReceiver(receive_buffer_bytes=8 * MIB)
    info = RunInfo(tuple(f"layer{i}" for i in range(layers)), {"mapping": "soak"})
    norms = Norms(layers)
    batch = [Frame(i, 1.7e9 + i / RATE, norms.at(i), 1.0, 0.01) for i in range(frames)]
    sets: dict[str, dict[str, object]] = {"run log (the hook's append)": {"record": "alone.gbrun"},
                                          "WAV (synth)": {"wav": "alone.wav"}, "MIDI file": {"midi_file": "alone.mid"},
                                          "OSC (127.0.0.1)": {"osc": f"127.0.0.1:{osc.port}"}}
    if jack:
        sets["live MIDI (JACK)"] = {"midi": "gradbridge-throughput-alone", "midi_api": "jack", "midi_virtual": True}
    sets["all of them"] = {k: v for outputs in sets.values() for k, v in outputs.items()}
    samples: dict[str, dict[str, list[float]]] = {name: {"follower": [], "others": []} for name in sets}
    for index in range(rounds):
        for name in list(sets) if index % 2 == 0 else list(sets)[::-1]:
            chosen = {k: str(folder / v) if k in ("record", "wav", "midi_file") else v for k, v in sets[name].items()}
            spec = OutputSpec(**chosen)  # type: ignore[arg-type]
            writer = RunLogWriter(spec.record, info) if spec.record is not None else None
            tids_before, here = set(thread_cpu_ns()), threading.get_native_id()
            outputs = open_outputs(spec, Mapping.load(str(preset)), info)
            before, own_before = thread_cpu_ns(), time.thread_time_ns()
            stats = deliver_all(batch, outputs, writer)
            own, after = time.thread_time_ns() - own_before, thread_cpu_ns()
            others = set(after) - tids_before - {here}
            samples[name]["follower"].append(own / frames / 1e3)
            samples[name]["others"].append(sum(after[t] - before.get(t, after[t]) for t in others) / frames / 1e3)
            if stats.errors or outputs.failed_to_open:
                raise RuntimeError(f"output cost run {name!r} failed: {stats.summary()} {outputs.failed_to_open}")
    osc.close()
    rows = []
    for name, got in samples.items():
        work = median(got["follower"])
        rows.append({"output": name, "follower µs per frame": work, "other threads µs per frame":
                     median(got["others"]), "frames/s a follower can take": 1e6 / work})
    return rows


def midi_note_times(path: Path) -> int | None:
    """How many distinct times hold a melodic note-on (velocity > 0, not on the percussion channel) in the
    MIDI file, read by ``midicsv``: one a step, each step's chord starting at its own tick (``None``: midicsv
    is not installed). Layers that share a channel and a pitch at one tick strike it once, so this counts
    the steps, not the notes."""
    if shutil.which("midicsv") is None:
        return None
    times: set[int] = set()
    with subprocess.Popen(["midicsv", str(path)], stdout=subprocess.PIPE, text=True, encoding="latin-1") as reader:
        for line in reader.stdout:  # type: ignore[union-attr]
            if ", Note_on_c, " in line:
                _, at, _, channel, _, velocity = line.split(", ")
                if int(velocity) > 0 and int(channel) != 9:
                    times.add(int(at))
    return len(times)


def judge(report: Report, rows: list[dict[str, object]], stats: DispatchStats, paths: dict[str, Path], layers: int,
          rate: float, growth: float, left: list[str], os_left: int, ours: list[str], osc_packets: int) -> None:
    """Goals (reported only) and correctness checks."""
    without, with_ = rows
    achieved, bare = float(with_["steps/s"]), float(without["steps/s"])  # type: ignore[arg-type]
    report.goal(f"steps/s with the bridge >= {RATE_RATIO:.0%} of the bare loop's", f">= {RATE_RATIO * bare:.0f}",
                f"{achieved:.0f} = {achieved / bare:.1%} (bare loop: {bare:.0f}, paced at {rate:g})",
                achieved >= RATE_RATIO * bare)
    ratio = float(with_["p99 µs"]) / float(without["p99 µs"])  # type: ignore[arg-type]
    report.goal(f"training thread p99 with the bridge <= {P99_RATIO:g} x without", f"<= {P99_RATIO:g} x",
                f"{ratio:.2f} x ({with_['p99 µs']:.0f} vs {without['p99 µs']:.0f} µs)", ratio <= P99_RATIO)
    report.goal(f"training process memory growth <= {MAX_GROWTH_MIB:g} MiB", f"<= {MAX_GROWTH_MIB:g} MiB",
                f"{growth:+.1f} MiB", growth <= MAX_GROWTH_MIB)

    s = stats
    report.check("every frame captured was delivered to every output", s.frames_in == s.frames_done
                 and s.frames_dropped == 0 and s.frames_unreadable == 0,
                 f"{s.frames_in} captured, {s.frames_done} delivered, {s.frames_dropped} missing")
    report.check("no output error", not s.errors, str(s.first_errors or "none"))
    expected, count, last, worst_rel, wrong = Norms(layers), 0, -1, 0.0, 0
    for frame in RunLogReader(paths["record"]):  # every record's CRC is checked on the way
        want = expected.at(frame.step)
        got = np.asarray(frame.norms, dtype=np.float64)
        finite = np.isfinite(want)
        wrong += frame.step != last + 1 or not np.array_equal(np.isnan(got), np.isnan(want)) \
            or not np.array_equal(np.isinf(got), np.isinf(want))
        worst_rel = max(worst_rel, float(np.max(np.abs(got[finite] - want[finite]) / want[finite])))
        count, last = count + 1, frame.step
    report.check("the run log holds every frame captured, in order, with the norms written (0 missing)",
                 count == s.frames_in and wrong == 0 and worst_rel <= 1e-5, f"{count} frames, last step {last}, "
                 f"{wrong} missing, out of order or with misplaced NaN/Inf, max relative difference {worst_rel:.1e}")
    wav_frames = wav_frame_count(paths["wav"])
    report.check("the WAV lasts exactly frames x seconds per step (0 missing)", wav_frames == count * STEP_SAMPLES,
                 f"{wav_frames} sample frames, {count * STEP_SAMPLES} expected ({STEP_SAMPLES} a step)")
    tracks = midi_track_count(paths["midi_file"])
    chords = midi_note_times(paths["midi_file"])
    detail = f"{tracks} tracks, {paths['midi_file'].stat().st_size / MIB:.1f} MiB"
    whole = 1 + layers <= tracks <= 3 + layers  # tempo, a track per layer, alarms and spikes if any sounded
    if chords is not None:
        detail += f"; midicsv: notes start at {chords} distinct times, {count} steps"
        whole = whole and chords == count
    report.check("the MIDI file is whole, a track per layer, a chord every step (0 missing)", whole, detail)
    report.check("OSC arrived", osc_packets > 0, f"{osc_packets} datagrams")
    report.check("no thread of ours in the training process while watching", not ours, str(ours or "none"))
    report.check("no thread left after close", not left and os_left <= 0,
                 f"Python {left or 'none'}; OS threads {os_left:+d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 3 s per variant; only the checks matter")
    parser.add_argument("--seconds", type=float, help="seconds per variant (default 60; --quick: 3)")
    parser.add_argument("--rate", type=float, default=RATE, help=f"steps a second (default {RATE:g})")
    parser.add_argument("--layers", type=int, default=LAYERS, help=f"layers (default {LAYERS})")
    parser.add_argument("--switch-interval", type=float,
                        help="sys.setswitchinterval, seconds (default: Python's, 0.005), to see GIL hand-over stalls")
    parser.add_argument("--max-fps", type=float, help="live outputs (MIDI port, OSC) sound at most this many steps "
                        "a second (watch's max_fps; default: every step, as the preset says)")
    parser.add_argument("--thread", action="store_true", help="run the follower on a thread of the training "
                        "process (watch's process=False); results go to throughput-thread.json")
    parser.add_argument("--blas-threads", type=int, help="limit NumPy's BLAS to this many threads (threadpoolctl)")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 60.0)
    if args.layers < 2 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--layers must be >= 2, --rate and --seconds > 0")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    limits = None
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.blas_threads, "blas")
    torch.set_num_threads(1)
    harness.banner("gradbridge throughput", args.quick)
    harness.quiet_shared_channels()
    report = Report("throughput-thread" if args.thread else "throughput", args.quick, settings={
        "follower": "thread" if args.thread else "process",
        "rate": args.rate, "layers": args.layers, "layer_size": LAYER_SIZE, "seconds_per_variant": args.seconds,
        "switch_interval_s": sys.getswitchinterval(), "live_max_fps": args.max_fps, "blas_threads": args.blas_threads or "default",
        "torch_threads": 1, "preset": "soak (standins.PRESET)"})
    report.note(f"no play=: there is no sound card here; GIL switch interval {sys.getswitchinterval() * 1e3:g} ms")
    with tempfile.TemporaryDirectory(prefix="gradbridge-throughput-") as tmp:
        folder = Path(tmp)
        with jack_server(folder, prefix="gbbench") as jack:
            report.note(f"live MIDI: a virtual port on JACK server {jack!r} (dummy driver, no receiver connected)"
                        if jack else "live MIDI skipped: jackd (Debian package jackd2) is absent or did not start")
            run(args, report, folder, jack)
    if limits is not None:
        limits.restore_original_limits()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
