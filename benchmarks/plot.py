"""Plot speed: ``gradbridge plot`` of a million-step, 64-layer run, against reading the run alone.

The run: log-normal norms (float32 values, as a run log keeps them) drifting over the run, a loss and a
learning rate, 200 scattered +Inf alarms and, over the last 5 % of the steps, an eighth of the layers gone
NaN. It is written twice, as a CSV (``bridge.runcsv.write_csv``, what ``gradbridge export`` writes) and as
a run log (``RunLogWriter``). Variants, interleaved, medians:

- reading every frame through ``bridge.runlog.open_run`` (the baseline: what any command must do first);
- reading and mapping every frame with ``Mapping.map_frames`` in blocks, keeping nothing (run log only);
- ``read_plot_data``: reading and mapping every frame, keeping the arrays a plot draws;
- drawing only: ``build_figure`` and writing the PNG from the mapped run in memory (decimation included);
- ``gradbridge plot RUN -o run.png`` as a subprocess, start-up included.

Also, on the first 100 000 rows of the CSV, where reading one goes: splitting lines into cells
(``csv.reader``), then also parsing the cells as floats (``numpy.array``), then ``open_run``.

Checks (exit status): the PNG has the asked size; each layer's line holds, per pixel column, exactly the
lowest and highest finite norm (checked with a plain loop on two layers); every alarm is drawn; the CSV and
the run log give the same plot data. Run: ``python benchmarks/plot.py`` (about 18 minutes here) or
``--quick`` (a smoke run: small sizes, checks only matter).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import harness
from harness import Report, interleave, median

from bridge.frames import Frame, RunInfo
from bridge.runcsv import write_csv
from bridge.runlog import RunLogWriter, open_run

WIDTH_PX, HEIGHT_PX = 1600, 1000
PRESET = "pentatonic"


def make_norms(steps: int, layers: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Norms ``(steps, layers)`` with their alarms, and the loss and learning rate of each step."""
    rng = np.random.default_rng(seed)
    drift = np.linspace(0.0, 2.0, steps)[:, np.newaxis]
    norms = np.exp(rng.normal(0.0, 0.5, size=(steps, layers)) + drift - np.arange(layers) / layers)
    norms = norms.astype(np.float32).astype(np.float64)
    norms[rng.integers(0, steps, 200), rng.integers(0, layers, 200)] = np.inf
    norms[steps - steps // 20:, : max(1, layers // 8)] = np.nan
    loss = (2.3 * np.exp(-np.arange(steps) / steps)).astype(np.float32).astype(np.float64)
    lr = np.full(steps, 0.01)
    return norms, loss, lr


def write_runs(folder: Path, steps: int, layers: int) -> tuple[Path, Path, np.ndarray]:
    norms, loss, lr = make_norms(steps, layers)
    info = RunInfo(tuple(f"blocks.{i}.fc" for i in range(layers)), {"mapping": PRESET})

    def frames() -> object:
        return (Frame(step, 1.0e9 + step * 0.01, norms[step], loss[step], lr[step]) for step in range(steps))

    csv_path, log_path = folder / "run.csv", folder / "run.gbrun"
    write_csv(csv_path, info, frames())  # type: ignore[arg-type]
    with RunLogWriter(log_path, info) as writer:  # one os.write a frame: the run log as the hook writes it
        for frame in frames():  # type: ignore[attr-defined]
            writer.append(frame)
    return csv_path, log_path, norms


def command() -> list[str]:
    found = shutil.which("gradbridge")
    return [found] if found else [sys.executable, "-m", "bridge"]


def time_read(path: Path, steps: int) -> list[float]:
    start = time.perf_counter()
    count = sum(1 for _ in open_run(path)[1])
    took = time.perf_counter() - start
    if count != steps:
        raise RuntimeError(f"read {count} frames of {path}, expected {steps}")
    return [took]


def map_only(path: Path) -> None:
    """Read every frame and map it in blocks, as ``read_plot_data`` does, keeping nothing."""
    from bridge.mapping import Mapping
    from bridge.plot_data import BLOCK_FRAMES

    info, frames = open_run(path)
    mapping = Mapping.load(PRESET)
    mapping.arrange(info.layer_names)
    block: list[Frame] = []
    for frame in frames:
        block.append(frame)
        if len(block) == BLOCK_FRAMES:
            mapping.map_frames(block)
            block = []
    mapping.map_frames(block)


def time_call(function: Callable[[], object]) -> list[float]:
    start = time.perf_counter()
    function()
    return [time.perf_counter() - start]


def time_command(run: Path, out: Path, reported: list[float]) -> list[float]:
    start = time.perf_counter()
    done = subprocess.run([*command(), "plot", str(run), "-o", str(out), "--width", str(WIDTH_PX), "--height",
                           str(HEIGHT_PX)], capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"gradbridge plot failed: {done.stderr[-2000:]}")
    match = re.search(r"in ([0-9.]+) s", done.stderr)
    reported.append(float(match.group(1)) if match else float("nan"))
    return [took]


def bench(report: Report, folder: Path, steps: int, layers: int, rounds: int) -> None:
    from bridge.plot import build_figure, save_figure
    from bridge.plot_data import read_plot_data

    started = time.perf_counter()
    csv_path, log_path, norms = write_runs(folder, steps, layers)
    report.note(f"wrote the {steps}-step, {layers}-layer run in {time.perf_counter() - started:.0f} s: CSV "
                f"{csv_path.stat().st_size / 1e6:.0f} MB, run log {log_path.stat().st_size / 1e6:.0f} MB")
    from_log = read_plot_data(log_path)
    reported: dict[str, list[float]] = {"csv": [], "log": []}
    variants = {
        "read CSV (open_run, every frame)": lambda: time_read(csv_path, steps),
        "read + map CSV (read_plot_data)": lambda: time_call(lambda: read_plot_data(csv_path)),
        "gradbridge plot CSV -o run.png": lambda: time_command(csv_path, folder / "csv.png", reported["csv"]),
        "read run log (open_run, every frame)": lambda: time_read(log_path, steps),
        "read + Mapping.map_frames run log (events dropped)": lambda: time_call(lambda: map_only(log_path)),
        "read + map run log (read_plot_data)": lambda: time_call(lambda: read_plot_data(log_path)),
        "gradbridge plot run log -o run.png": lambda: time_command(log_path, folder / "log.png", reported["log"]),
        "draw only (build_figure + PNG, from memory)": lambda: time_call(
            lambda: save_figure(build_figure(from_log, width_px=WIDTH_PX, height_px=HEIGHT_PX), folder / "mem.png")),
    }
    samples = interleave(variants, rounds, warmup_rounds=0)
    baseline = median(samples["read CSV (open_run, every frame)"])
    rows = []
    for name, values in samples.items():
        rows.append({"variant": name, "runs": len(values), "median s": median(values),
                     "vs reading the CSV": median(values) / baseline, "steps per s": steps / median(values)})
    report.table(f"{steps} steps x {layers} layers, {PRESET}, {WIDTH_PX}x{HEIGHT_PX} px; medians of {rounds} "
                 "interleaved runs (no warm-up: each run reads the files anew)", rows)
    report.note(f"time gradbridge plot reports for itself (start-up excluded): CSV {median(reported['csv']):.2f} s, "
                f"run log {median(reported['log']):.2f} s")
    draw_s = median(samples["draw only (build_figure + PNG, from memory)"])
    report.goal(f"draw {steps} x {layers} (decimate, draw, write PNG) in seconds", "<= 5 s", f"{draw_s:.2f} s",
                draw_s <= 5.0)
    plot_s = median(samples["gradbridge plot CSV -o run.png"])
    report.goal(f"gradbridge plot of a {steps}-step, {layers}-layer CSV within 1.5 x reading it",
                f"<= {1.5 * baseline:.1f} s", f"{plot_s:.1f} s ({plot_s / baseline:.2f} x)", plot_s <= 1.5 * baseline)
    where_reading_goes(report, csv_path, min(steps, 100_000))
    check(report, folder, from_log, read_plot_data(csv_path), norms)


def where_reading_goes(report: Report, csv_path: Path, rows: int) -> None:
    """Split reading the first ``rows`` rows of the CSV into its parts (one run each)."""
    def cells() -> None:
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for _ in zip(range(rows), reader):
                pass

    def floats() -> None:
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for _, row in zip(range(rows), reader):
                np.array(row, dtype=np.float64)

    def frames() -> None:
        for _ in zip(range(rows), open_run(csv_path)[1]):
            pass

    parts = {"split lines into cells (csv.reader)": cells, "and parse the cells as floats (numpy.array)": floats,
             "open_run: all that, checks and a Frame per row": frames}
    times = {name: min(time_call(part)[0] for _ in range(2)) for name, part in parts.items()}
    total = times["open_run: all that, checks and a Frame per row"]
    report.table(f"where reading the CSV goes: its first {rows} rows, best of 2",
                 [{"part": name, "s": value, "share of open_run": value / total, "µs per row": value / rows * 1e6}
                  for name, value in times.items()])


def check(report: Report, folder: Path, data: object, from_csv: object, norms: np.ndarray) -> None:
    from bridge.plot import build_figure

    for name in ("csv.png", "log.png", "mem.png"):
        head = (folder / name).read_bytes()[:24]
        size = struct.unpack(">II", head[16:24])
        report.check(f"{name}: a PNG of {WIDTH_PX}x{HEIGHT_PX} px", head[:8] == b"\x89PNG\r\n\x1a\n"
                     and size == (WIDTH_PX, HEIGHT_PX), f"{size[0]}x{size[1]}")
    same = (np.array_equal(data.steps, from_csv.steps) and np.array_equal(data.norms, from_csv.norms, equal_nan=True)  # type: ignore[attr-defined]
            and np.array_equal(data.note_pitch, from_csv.note_pitch)  # type: ignore[attr-defined]
            and np.array_equal(data.alarm_kind, from_csv.alarm_kind))  # type: ignore[attr-defined]
    report.check("the CSV and the run log give the same norms, notes and alarms", same)
    figure = build_figure(data, width_px=WIDTH_PX, height_px=HEIGHT_PX)  # type: ignore[arg-type]
    axes = {ax.get_label(): ax for ax in figure.axes}
    steps = data.steps  # type: ignore[attr-defined]
    column = (steps - steps[0]) * WIDTH_PX // (steps[-1] - steps[0] + 1)
    bounds = np.searchsorted(column, np.arange(WIDTH_PX + 1))
    layers = norms.shape[1]
    for layer in (0, layers - 1):
        line = next(a for a in axes["norms"].lines if a.get_gid() == f"norm-{layer}")
        x, y = line.get_xdata(), line.get_ydata()
        expected_x, expected_y = [], []
        for c in range(WIDTH_PX):  # a plain loop: each column's first lowest and first highest finite norm
            values = norms[bounds[c]:bounds[c + 1], layer]
            finite = np.flatnonzero(np.isfinite(values))
            if bounds[c] == bounds[c + 1]:
                continue
            if finite.size == 0:
                expected_x.append(steps[bounds[c]])
                expected_y.append(np.nan)
                continue
            picks = sorted({finite[np.argmin(values[finite])], finite[np.argmax(values[finite])]})
            expected_x += [steps[bounds[c] + p] for p in picks]
            expected_y += [values[p] for p in picks]
        report.check(f"layer {layer}: the line is each pixel column's lowest and highest norm",
                     np.array_equal(x, expected_x) and np.array_equal(y, expected_y, equal_nan=True),
                     f"{len(x)} points for {len(steps)} steps")
    drawn = 0
    for artist in axes["alarms"].get_children():
        gid = artist.get_gid() or ""
        if gid.startswith("alarm-runs-"):
            drawn += sum(int(np.searchsorted(steps, x1, "right") - np.searchsorted(steps, x0, "left"))
                         for (x0, _), (x1, _) in artist.get_segments())
    if drawn == 0:  # drawn one marker each
        drawn = sum(len(a.get_offsets()) for a in axes["alarms"].get_children()
                    if (a.get_gid() or "").startswith("alarms-"))
    alarms = int((~np.isfinite(norms)).sum())
    report.check("every alarm is drawn", drawn == alarms, f"{drawn} of {alarms}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, checks only matter")
    args = parser.parse_args(argv)
    harness.banner("gradbridge plot", args.quick)
    harness.quiet_shared_channels()
    plan = ({"steps": 20_000, "layers": 8, "rounds": 1} if args.quick
            else {"steps": 1_000_000, "layers": 64, "rounds": 3})
    report = Report("plot", args.quick, settings=dict(plan, width_px=WIDTH_PX, height_px=HEIGHT_PX, preset=PRESET))
    os.environ.setdefault("MPLBACKEND", "Agg")
    with tempfile.TemporaryDirectory(prefix="gradbridge-plot-") as tmp:
        bench(report, Path(tmp), plan["steps"], plan["layers"], plan["rounds"])
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
