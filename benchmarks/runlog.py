"""Run log cost: bytes per step per layer, write cost per step, and read speed.

- Size: frames written with ``RunLogWriter``; (file size − header − the end record) / steps against
  ``bridge.runlog.record_bytes`` (40 + 4 × layers), for 4 and 128 layers; the CSV of the same frames
  (``bridge.runcsv.write_csv``) for comparison.
- Write: ``RunLogWriter.append`` (what the training hook does each step: encode, CRC, one ``os.write``)
  timed call by call, 4 and 128 layers, interleaved in blocks.
- Read: ``RunLogReader`` (the run log streamed frame by frame, each record checked) and ``open_run`` on
  the CSV, frames a second and megabytes a second, interleaved; 80 000 steps of 4 layers, 2 500 of 128.

Run: ``python benchmarks/runlog.py`` (about a minute) or ``--quick`` (a smoke run that exits 1 if a
correctness check fails). Results: ``benchmarks/results/runlog[-quick].json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import Report, interleave, median

from bridge.frames import Frame, RunInfo
from bridge.runcsv import write_csv
from bridge.runlog import RunLogReader, RunLogWriter, open_run, record_bytes

LAYER_COUNTS = (4, 128)


def make_frames(steps: int, layers: int, seed: int) -> list[Frame]:
    """Frames with log-normal norms, a loss and a learning rate, one second apart."""
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(-2.0, 1.5, size=(steps, layers)))
    losses = rng.uniform(0.1, 3.0, size=steps)
    return [Frame(i, 1.7e9 + i, norms[i], float(losses[i]), 0.01) for i in range(steps)]


def info_for(layers: int) -> RunInfo:
    return RunInfo(tuple(f"block{i}.fc" for i in range(layers)), {"mapping": "pentatonic"})


def bench_size(report: Report, folder: Path, steps: int) -> dict[int, list[Frame]]:
    frames_by_layers = {}
    rows = []
    for layers in LAYER_COUNTS:
        frames = frames_by_layers[layers] = make_frames(steps, layers, layers)
        path = folder / f"size{layers}.gbrun"
        with RunLogWriter(path, info_for(layers)) as writer:
            for frame in frames:
                writer.append(frame)
        header = RunLogReader(path).header_bytes
        per_step = (path.stat().st_size - header - record_bytes(layers)) / steps  # less the end record
        csv_path = folder / f"size{layers}.csv"
        write_csv(csv_path, info_for(layers), frames)
        csv_per_step = csv_path.stat().st_size / steps
        rows.append({"layers": layers, "steps": steps, "header B": header, "bytes per step": per_step,
                     "record_bytes()": record_bytes(layers), "bytes per step per layer": per_step / layers,
                     "CSV bytes per step": csv_per_step, "CSV / run log": csv_per_step / per_step})
        report.check(f"{layers} layers: file size = header + (steps + 1 end record) x record_bytes",
                     per_step == record_bytes(layers),
                     f"{per_step:g} B per step, record_bytes {record_bytes(layers)}")
        check_read_back(report, path, frames, layers)
    report.table("size on disk", rows)
    return frames_by_layers


def check_read_back(report: Report, path: Path, frames: list[Frame], layers: int) -> None:
    back = list(RunLogReader(path))
    same = len(back) == len(frames) and all(
        a.step == b.step and a.time_s == b.time_s and a.loss == b.loss and a.lr == b.lr
        and np.array_equal(a.norms, b.norms.astype(np.float32).astype(np.float64)) for a, b in zip(back, frames))
    report.check(f"{layers} layers: read back equals what was written (norms as float32)", same,
                 f"{len(back)} of {len(frames)} frames")


def bench_write(report: Report, folder: Path, frames_by_layers: dict[int, list[Frame]], block: int,
                rounds: int) -> None:
    writers: dict[str, tuple[RunLogWriter, list[Frame]]] = {}
    for layers in LAYER_COUNTS:
        name = f"{layers} layers"
        writers[name] = (RunLogWriter(folder / f"write{layers}.gbrun", info_for(layers)),
                         frames_by_layers[layers][:block])
    clock = time.perf_counter

    def run(name: str) -> list[float]:
        writer, frames = writers[name]
        out = []
        for frame in frames:
            start = clock()
            writer.append(frame)
            out.append(clock() - start)
        return out

    samples = interleave({name: (lambda n=name: run(n)) for name in writers}, rounds)
    rows = []
    for name, values in samples.items():
        writer = writers[name][0]
        writer.close()
        rows.append({"config": name, "appends": len(values), "median µs": median(values) * 1e6,
                     "mean µs": sum(values) / len(values) * 1e6,
                     "p99 µs": sorted(values)[int(len(values) * 0.99)] * 1e6,
                     "frames per s": len(values) / sum(values)})
        report.check(f"{name}: every append reached the file", writer.written == len(values) + block,
                     f"{writer.written} written")
    report.table(f"RunLogWriter.append, timed call by call; {rounds} interleaved rounds of {block} appends "
                 "(after one warm-up round)", rows)


def bench_read(report: Report, folder: Path, frame_values: int, rounds: int) -> None:
    """Read runs of ``frame_values`` norms each (steps × layers), so every file is about as long to read."""
    variants = {}
    sizes = {}
    steps_of = {}
    for layers in LAYER_COUNTS:
        steps = steps_of[layers] = frame_values // layers
        frames = make_frames(steps, layers, 7 + layers)
        path, csv_path = folder / f"read{layers}.gbrun", folder / f"read{layers}.csv"
        with RunLogWriter(path, info_for(layers)) as writer:
            for frame in frames:
                writer.append(frame)
        write_csv(csv_path, info_for(layers), frames)
        sizes[f"run log, {layers} layers"] = path.stat().st_size
        sizes[f"CSV, {layers} layers"] = csv_path.stat().st_size
        variants[f"run log, {layers} layers"] = lambda p=path, n=steps: _time_read(lambda: RunLogReader(p), n)
        variants[f"CSV, {layers} layers"] = lambda p=csv_path, n=steps: _time_read(lambda: open_run(p)[1], n)
    samples = interleave(variants, rounds)
    rows = []
    for name, values in samples.items():
        steps = steps_of[int(name.split(", ")[1].split()[0])]
        rows.append({"file": name, "steps": steps, "MB": sizes[name] / 1e6, "median s": median(values),
                     "frames per s": steps / median(values), "MB per s": sizes[name] / 1e6 / median(values)})
    report.table(f"reading every frame (iterating, frames made), medians of {rounds} interleaved reads", rows)


def _time_read(opener: object, steps: int) -> list[float]:
    start = time.perf_counter()
    count = sum(1 for _ in opener())  # type: ignore[operator]
    took = time.perf_counter() - start
    if count != steps:
        raise RuntimeError(f"read {count} frames, expected {steps}")
    return [took]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few frames, checks only matter")
    args = parser.parse_args(argv)
    harness.banner("gradbridge run log", args.quick)
    plan = ({"size_steps": 500, "write_block": 200, "write_rounds": 2, "read_values": 8000, "read_rounds": 2}
            if args.quick else
            {"size_steps": 5000, "write_block": 2000, "write_rounds": 12, "read_values": 320_000, "read_rounds": 5})
    report = Report("runlog", args.quick, settings=plan)
    report.note(f"temporary files in {tempfile.gettempdir()} (page cache; no fsync)")
    with tempfile.TemporaryDirectory(prefix="gradbridge-runlog-") as tmp:
        folder = Path(tmp)
        frames = bench_size(report, folder, max(plan["size_steps"], plan["write_block"]))
        bench_write(report, folder, frames, plan["write_block"], plan["write_rounds"])
        bench_read(report, folder, plan["read_values"], plan["read_rounds"])
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
