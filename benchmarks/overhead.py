"""Training overhead of gradbridge: step time with ``bridge.watch`` attached against the same loop without it.

Two cases: (a) the 2019 post's CNN (``bridge.demo.PostNet``) at batch 64 on random 28×28 inputs, and
(b) a deep, narrow network (128 × Linear(32, 32) + ReLU, 256 parameters) at batch 8, where the hook's own
cost dominates. Variants, interleaved in blocks in the same run, each on its own copy of the same model:

- ``baseline``: zero_grad, forward, backward, optimizer.step(); nothing else.
- ``watch``: the same with ``bridge.watch`` attached (pentatonic preset; run log, MIDI file, WAV through the
  synth, and OSC to a local receiver), plus ``w.record_loss(loss)``: the hook writes the run log, the
  follower process reads it and drives the outputs.
- ``watch_thread``: the same outputs with ``process=False``: the follower runs on a thread of the training
  process instead.
- ``watch_log_only``: the run log alone (the hook and its ``os.write``, no follower).
- ``post``: the 2019 post's method, on all parameters (weights and biases): for each parameter
  ``p.grad.norm()`` then ``.numpy()``, one by one; combined per layer on the host.
- ``tensor_hooks``: ``p.register_hook`` on every parameter computes each gradient's norm as backward
  produces it; after backward the step's norms are stacked and copied out once.
- ``floor``: one fused read of every gradient, ``torch.stack(torch._foreach_norm(grads))``, alone.

Run: ``python benchmarks/overhead.py`` (a few minutes) or ``--quick`` (a smoke run, well under a minute,
that exits 1 if a correctness check fails). Results: ``benchmarks/results/overhead[-quick].json``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import harness
from harness import Report, interleave, median
from probes import HostReadSpy, OscReceiver, deliver_all
from variants import Case, CaptureOnly, Floor, PostMethod, TensorHooks, Trainer, Watched, make_cases

import bridge
from bridge.capture import Capture, find_layers
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.norms import NormReader
from bridge.outputs import OutputSpec, open_outputs
from bridge.runlog import RunLogWriter, read_run

DEFAULT_THREADS = torch.get_num_threads()
#: The norms are read on the host once a step; on a CPU a second read gives the float64 sums of the norms
#: a float32 sum may have got wrong (``NormReader.repair``: vanishing or overflowing layers).
MAX_READS_PER_STEP = 2


def host_reads(trainer: Trainer, steps: int) -> float:
    """Host reads per step on the training thread, over ``steps`` untimed steps."""
    with HostReadSpy() as spy:
        for _ in range(steps):
            trainer.step()
    return sum(spy.counts.values()) / steps


@dataclass
class Plan:
    """How much to run: steps per block, counted rounds, warm-up steps, untimed spy steps, micro repeats."""

    block: dict[str, int]
    rounds: int
    warmup_steps: int
    spy_steps: int
    micro_repeat: int
    micro_rounds: int
    background_frames: int
    background_rounds: int
    default_threads_rounds: int


QUICK = Plan({"a": 3, "b": 6}, 2, 2, 2, 8, 2, 20, 1, 2)
FULL = Plan({"a": 10, "b": 16}, 12, 5, 3, 90, 10, 60, 5, 4)


def pct(value: float, base: float) -> float:
    return (value / base - 1.0) * 100.0


def step_rows(samples: dict[str, list[float]], trainers: dict[str, Trainer]) -> list[dict[str, object]]:
    base = median(samples["baseline"])
    rows = []
    for name, values in samples.items():
        ordered = sorted(values)
        inner = trainers[name].inner
        rows.append({"variant": name, "steps": len(values), "median ms": median(values) * 1e3,
                     "p25 ms": ordered[len(ordered) // 4] * 1e3, "p75 ms": ordered[3 * len(ordered) // 4] * 1e3,
                     "vs baseline %": pct(median(values), base),
                     "in-step read µs": median(inner) * 1e6 if inner else float("nan")})
    return rows


def micro(case: Case, plan: Plan) -> dict[str, float]:
    """Medians (seconds) of the floor, ``NormReader.read()`` and the Capture hook path, each timed as the
    first read right after a fresh backward (as in training), interleaved, ``micro_repeat`` samples each."""
    trainer = Trainer(case)
    params, reader = trainer.params, NormReader(trainer.layers)
    capture = Capture(trainer.model, trainer.optimizer, trainer.layers, collections.deque(maxlen=1).append, auto=False)

    def floor() -> None:
        torch.stack(torch._foreach_norm([p.grad for p in params]))

    def after_backward(read: Callable[[], object]) -> list[float]:
        out = []
        for _ in range(plan.micro_repeat // plan.micro_rounds):
            trainer.optimizer.zero_grad()
            case.loss_fn(trainer.model(case.x), case.y).backward()
            start = time.perf_counter()
            read()
            out.append(time.perf_counter() - start)
        return out

    samples = interleave({"floor: stack(_foreach_norm(grads))": lambda: after_backward(floor),
                          "NormReader.read()": lambda: after_backward(reader.read),
                          "Capture hook path (read, combine, frame)": lambda: after_backward(capture.step)},
                         plan.micro_rounds)
    return {name: median(values) for name, values in samples.items()}


def agreement(case: Case) -> float:
    """Largest relative difference between the per-layer norms of the four ways, on one backward."""
    trainer = TensorHooks(case)
    per_param: dict[int, float] = {}
    trainer._on_grad = lambda g: trainer.produced.append(g.norm())  # type: ignore[method-assign]
    trainer.optimizer.zero_grad()
    case.loss_fn(trainer.model(case.x), case.y).backward()
    trainer.close()
    reader = NormReader(trainer.layers).read().numpy()
    fused = torch._foreach_norm([p.grad for p in trainer.params])
    for p, norm in zip(trainer.params, fused):
        per_param[id(p)] = float(norm)
    hooked = sorted(float(v) for v in trainer.produced)
    post = [math.sqrt(sum(float(p.grad.norm().numpy()) ** 2 for p in layer.parameters)) for layer in trainer.layers]
    floor = [math.sqrt(sum(per_param[id(p)] ** 2 for p in layer.parameters)) for layer in trainer.layers]
    # compared with float64 norms: the reader sums in float32 on a CPU but sums again in float64 where
    # float32 would be wrong (vanishing layers underflow below ~1e-23 per element)
    exact = [math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in layer.parameters)) for layer in trainer.layers]
    worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(reader, exact))
    worst = max(worst, *(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(floor, post)))
    worst = max(worst, *(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(hooked, sorted(per_param.values()))))
    return worst


def watch_end_to_end(case: Case, folder: Path) -> tuple[float, int]:
    """Norms in the run log against the post's method, 3 steps: (largest relative difference, frames)."""
    trainer = Trainer(case)
    path = folder / "check.gbrun"
    w = bridge.watch(trainer.model, trainer.optimizer, record=str(path), announce=None)
    expected = []
    for _ in range(3):
        trainer.optimizer.zero_grad()
        loss = case.loss_fn(trainer.model(case.x), case.y)
        loss.backward()
        w.record_loss(loss)
        expected.append([math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in layer.parameters))
                         for layer in trainer.layers])  # float64: float32 sums differ by up to ~1e-5
        trainer.optimizer.step()
    w.remove()
    _, frames = read_run(path)
    worst = max(abs(float(a) - b) / max(b, 1e-30) for f, row in zip(frames, expected) for a, b in zip(f.norms, row))
    return worst, len(frames)


def background_costs(case: Case, folder: Path, frames: int, rounds: int, osc: OscReceiver | None) -> dict[str, float]:
    """CPU seconds per frame of each output's work in a follower (mapping included), measured offline in
    this process with ``open_outputs`` and ``Delivery``; the run log is the hook's ``append``. CPU time, not
    wall time: at close a live output's clock waits for the moment of its last tick. Medians over
    ``rounds`` interleaved rounds."""
    names = tuple(layer.name for layer in find_layers(case.model))
    rng = np.random.default_rng(1)
    norms = np.exp(rng.normal(-2.0, 1.0, size=(frames, len(names))))
    batch = [Frame(i, 1.7e9 + i, norms[i], 1.0, 0.01) for i in range(frames)]
    sets = {"run log (in the hook)": ("record",), "WAV (synth)": ("wav",), "MIDI file": ("midi_file",)}
    if osc is not None:
        sets["OSC (127.0.0.1)"] = ("osc",)
    sets["all of them"] = tuple(w for ws in sets.values() for w in ws)

    def block(outputs: tuple[str, ...]) -> list[float]:
        mapping, info = Mapping.load("pentatonic"), RunInfo(names, {"mapping": "pentatonic"})
        spec = OutputSpec(wav=folder / "bg.wav" if "wav" in outputs else None,
                          midi_file=folder / "bg.mid" if "midi_file" in outputs else None,
                          osc=f"127.0.0.1:{osc.port}" if "osc" in outputs and osc is not None else None)
        writer = RunLogWriter(folder / "bg.gbrun", info) if "record" in outputs else None
        built = open_outputs(spec, mapping, info)
        start = time.process_time()
        stats = deliver_all(batch, built, writer)
        if stats.first_errors or built.failed_to_open:
            raise RuntimeError(f"background cost run failed: {stats.summary()} {built.failed_to_open}")
        return [(time.process_time() - start) / frames]

    samples = interleave({name: (lambda o=o: block(o)) for name, o in sets.items()}, rounds)
    return {name: median(values) for name, values in samples.items()}


def run_case(case: Case, plan: Plan, report: Report, folder: Path, osc: OscReceiver | None) -> None:
    key = case.name[0]
    layer_count = len(find_layers(case.model))
    torch.set_num_threads(1)
    watched = Watched(case, folder, None if osc is None else f"127.0.0.1:{osc.port}")
    threaded = Watched(case, folder, None if osc is None else f"127.0.0.1:{osc.port}", process=False)
    trainers: dict[str, Trainer] = {
        "baseline": Trainer(case), "watch": watched,
        "watch_thread": threaded,
        "watch_log_only": Watched(case, folder, None, "log"),
        "hook_only": CaptureOnly(case),
        "post": PostMethod(case), "tensor_hooks": TensorHooks(case), "floor": Floor(case)}
    for trainer in trainers.values():
        trainer.block(plan.warmup_steps)
        trainer.inner.clear()
    steps = plan.block[key]
    samples = interleave({name: (lambda t=t: t.block(steps)) for name, t in trainers.items()}, plan.rounds, 0)
    rows = step_rows(samples, trainers)
    base_s = median(samples["baseline"])
    report.table(f"{case.name}: {case.description}, {layer_count} layers, {len(watched.params)} parameters; "
                 f"torch threads 1; step time, medians ({plan.rounds} rounds of {steps} steps)", rows)
    reads = []
    for name, trainer in trainers.items():
        per_step = host_reads(trainer, plan.spy_steps)
        reads.append({"variant": name, "host reads per step": per_step, "per layer": per_step / layer_count})
    report.table(f"{case.name}: host reads on the training thread (spy on item, tolist, numpy, cpu, float(), "
                 "int(), bool(), to/copy_ from a device)", reads)
    for trainer in trainers.values():
        trainer.close()
    m = micro(case, plan)
    floor_s, hook = m["floor: stack(_foreach_norm(grads))"], m["Capture hook path (read, combine, frame)"]
    hook_rows = [{"what": name, "µs": value * 1e6, "x floor": value / floor_s} for name, value in m.items()]
    for name in ("floor", "hook_only", "watch_log_only", "watch", "watch_thread"):
        inner = median(trainers[name].inner)
        hook_rows.append({"what": f"in the {name} loop: {'the floor' if name == 'floor' else 'the hook'}"
                                  f"{'' if name == 'floor' else ' (pre-hook to pre-hook)'}",
                          "µs": inner * 1e6, "x floor": inner / floor_s})
    report.table(f"{case.name}: the hook's own cost; first 3 rows: one call right after a "
                 f"fresh backward, {plan.micro_repeat} samples each, interleaved; then the same timed inside the "
                 "training loops above (medians)", hook_rows)
    costs = background_costs(case, folder, plan.background_frames, plan.background_rounds, osc)
    report.table(f"{case.name}: CPU time per frame in a follower, per output (pentatonic; measured offline with "
                 f"open_outputs and Delivery over {plan.background_frames} frames, mapping included)",
                 [{"output": name, "µs per frame": cost * 1e6, "% of a baseline step": cost / base_s * 100}
                  for name, cost in costs.items()])
    bound = 1.2 * floor_s + 30e-6
    overhead = pct(median(samples["watch"]), base_s)
    direct = median(trainers["hook_only"].inner) / base_s * 100
    report.goal(f"{case.name}: watch overhead <= {case.goal_pct:g} %", f"<= {case.goal_pct:g} %",
                f"{overhead:+.2f} % (run log only: {pct(median(samples['watch_log_only']), base_s):+.2f} %; "
                f"follower on a thread here: {pct(median(samples['watch_thread']), base_s):+.2f} %; "
                f"the hook alone, timed in the step: {direct:.2f} %)", overhead <= case.goal_pct)
    report.goal(f"{case.name}: hook <= 1.2 x floor + 30 µs", f"<= {bound * 1e6:.0f} µs",
                f"{hook * 1e6:.0f} µs ({hook / floor_s:.2f} x floor)", hook <= bound)
    reads_of = {row["variant"]: row["host reads per step"] for row in reads}
    watch_reads = reads_of["watch"]
    report.goal(f"{case.name}: host reads per step on the training thread",
                f"<= {MAX_READS_PER_STEP} per step, none per layer", f"{watch_reads:g} per step",
                watch_reads <= MAX_READS_PER_STEP)
    check_watch_outputs(case, report, watched, watch_reads)
    check_watch_outputs(case, report, threaded, reads_of["watch_thread"], "watch_thread")
    if plan.default_threads_rounds:
        torch.set_num_threads(DEFAULT_THREADS)
        pair = {"baseline": Trainer(case), "watch": Watched(case, folder / "threads", None)}
        for trainer in pair.values():
            trainer.block(plan.warmup_steps)
        half = max(1, steps // 2)
        samples = interleave({n: (lambda t=t: t.block(half)) for n, t in pair.items()},
                             plan.default_threads_rounds, 0)
        for trainer in pair.values():
            trainer.close()
        report.table(f"{case.name}: torch default threads ({DEFAULT_THREADS}), watch without OSC; step time, "
                     f"medians ({plan.default_threads_rounds} rounds of {half} steps)", step_rows(samples, pair))
        torch.set_num_threads(1)


def check_watch_outputs(case: Case, report: Report, watched: Watched, watch_reads: float,
                        variant: str = "watch") -> None:
    stats = watched.stats
    report.check(f"{case.name}: {variant} makes no per-layer host read", watch_reads <= MAX_READS_PER_STEP,
                 f"{watch_reads:g} per step")
    report.check(f"{case.name}: {variant} lost no frame", stats is not None and stats.frames_dropped == 0
                 and not stats.errors, stats.summary() if stats else "no stats")
    _, frames = read_run(watched.paths["record"])
    report.check(f"{case.name}: {variant}'s run log holds every frame",
                 len(frames) == (stats.frames_done if stats else -1), f"{len(frames)} frames")
    sizes = {k: p.stat().st_size for k, p in watched.paths.items()}
    report.check(f"{case.name}: {variant}'s WAV and MIDI written", sizes["wav"] > 44 and sizes["midi_file"] > 14,
                 f"{sizes['wav']} B WAV, {sizes['midi_file']} B MIDI")
    if variant != "watch":
        return
    worst = agreement(case)
    report.check(f"{case.name}: reader, post, tensor hooks and floor agree", worst <= 1e-5, f"max rel diff {worst:.1e}")
    folder = watched.paths["record"].parent
    worst, count = watch_end_to_end(case, folder)
    report.check(f"{case.name}: run log norms equal the post's method", count == 3 and worst <= 1e-5,
                 f"{count} frames, max rel diff {worst:.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny blocks, checks only matter")
    parser.add_argument("--default-threads", action="store_true",
                        help="also compare baseline and watch with torch's default thread count")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if not args.default_threads:
        plan = dataclasses.replace(plan, default_threads_rounds=0)
    harness.banner("gradbridge training overhead", args.quick)
    report = Report("overhead", args.quick, settings={"plan": plan.__dict__, "torch_default_threads": DEFAULT_THREADS})
    report.note(f"torch.set_num_threads(1) for the main tables (default here: {DEFAULT_THREADS}); "
                "variants interleaved in blocks, each on its own copy of the same model; SGD lr 0.01 momentum 0.5")
    has_osc = importlib.util.find_spec("bridge.sinks.osc") is not None
    report.note("watch outputs: run log, MIDI file, WAV (pentatonic preset), OSC to a local UDP receiver; the "
                "follower process's own CPU time is not in the step times, but it shares the machine's cores")
    report.note("post = p.grad.norm().numpy() for every parameter (weights and biases), combined per layer; "
                "tensor_hooks = per-parameter norms, stacked and copied out once per step")
    harness.quiet_shared_channels()
    osc = OscReceiver() if has_osc else None
    try:
        with tempfile.TemporaryDirectory(prefix="gradbridge-bench-") as tmp:
            folder = Path(tmp)
            (folder / "threads").mkdir()
            for case in make_cases():
                run_case(case, plan, report, folder, osc)
    finally:
        if osc is not None:
            osc.close()
            report.note(f"OSC receiver got {osc.packets} packets")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
