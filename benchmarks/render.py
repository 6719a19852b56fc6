"""Render speed on one core: seconds of audio made per second of compute ("x real time").

1. ``perone2019``, 4 layers, against the 2019 post's own loop (each tone made with ``np.sin``, float32,
   concatenated; reference section 2) on the same norms, in the same run; the samples must agree within
   1e-6.
2. ``pentatonic`` with 64 layers: stereo, envelopes, pan, 4 timbres.
3. ``gradbridge render`` of a 5000-step CSV as a subprocess, start-up included (4 layers and 64 layers,
   the CSV's default preset ``pentatonic``; and 4 layers with ``perone2019``).

In-process figures go from the norms to float32 samples, two ways: chunked, as offline renders do
(``Mapping.map_frames`` where it exists, else ``Mapping.map_frame`` per frame; ``Synth.render_many`` over
chunks of 64 steps, ``pop_ready`` after each), and step by step, as a live watch does (``map_frame``,
``Synth.render``, ``pop_ready`` per frame); "synth only" starts from already mapped events and "mapping
only" stops at the events, so each part is visible. The goals are judged on the chunked path. BLAS and
OpenMP are held to one thread. Run: ``python benchmarks/render.py`` (a few minutes) or ``--quick`` (a smoke run that
exits 1 if a correctness check fails); ``--profile`` adds a pyinstrument profile of each in-process case.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before NumPy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import harness  # noqa: E402
from harness import Report, interleave, median  # noqa: E402

from bridge.events import Arrangement, StepEvents  # noqa: E402
from bridge.frames import Frame  # noqa: E402
from bridge.mapping import Mapping  # noqa: E402
from bridge.sinks.synth import CHUNK_STEPS, Synth  # noqa: E402


def post_render(norms: np.ndarray) -> np.ndarray:
    """The post's loop (reference section 2) over float32 norms ``(steps, layers)``: mono float32 samples."""
    fs, duration, f = 44100, 0.01, 200.0

    def generate_tone(fs: int, freq: np.ndarray, duration: float) -> np.ndarray:
        npsin = np.sin(2 * np.pi * np.arange(fs * duration) * freq / fs)
        samples = npsin.astype(np.float32)
        return 0.1 * samples

    frames = []
    for step_norms in norms:
        for norm_grad in step_norms:  # a float32 scalar, as ``layer.weight.grad.norm().numpy()`` gave
            tone = f + (norm_grad * 100.0)
            tone = tone.astype(np.float32)
            samples = generate_tone(fs, tone, duration)
            frames.append(samples)
        silence = np.zeros(samples.shape[0] * 2, dtype=np.float32)
        frames.append(silence)
    return np.concatenate(frames)


def map_all(mapping: Mapping, norms: np.ndarray) -> list[StepEvents]:
    """Each step's events: ``Mapping.map_frames`` over all frames where the mapping has it, else ``map_frame``
    frame by frame."""
    frames = [Frame(step, 0.0, row) for step, row in enumerate(norms)]
    map_frames = getattr(mapping, "map_frames", None)
    return list(map_frames(frames)) if map_frames is not None else [mapping.map_frame(f) for f in frames]


def synth_per_step(arrangement: Arrangement, events: list[StepEvents]) -> np.ndarray:
    """The live path: ``Synth.render`` and ``pop_ready`` step by step; float32 (n, channels)."""
    synth = Synth(arrangement)
    chunks = []
    for step_events in events:
        synth.render(step_events)
        chunks.append(synth.pop_ready())
    chunks.append(synth.finish())
    return np.concatenate(chunks)


def synth_chunked(arrangement: Arrangement, events: list[StepEvents]) -> np.ndarray:
    """The offline path: ``Synth.render_many`` over chunks of ``CHUNK_STEPS`` steps, ``pop_ready`` after each."""
    synth = Synth(arrangement)
    chunks = []
    for first in range(0, len(events), CHUNK_STEPS):
        synth.render_many(events[first:first + CHUNK_STEPS])
        chunks.append(synth.pop_ready())
    chunks.append(synth.finish())
    return np.concatenate(chunks)


def arranged(mapping_name: str, layers: int) -> tuple[Mapping, Arrangement]:
    """A fresh mapping (its running statistics at their start) arranged for ``layers`` layers."""
    mapping = Mapping.load(mapping_name)
    return mapping, mapping.arrange([f"layer{i}" for i in range(layers)])


def render_norms(mapping_name: str, norms: np.ndarray, chunked: bool = True) -> np.ndarray:
    """gradbridge from norms to samples: map, render, pop what is ready; float32 (n, channels)."""
    mapping, arrangement = arranged(mapping_name, norms.shape[1])
    if chunked:
        return synth_chunked(arrangement, map_all(mapping, norms))
    synth = Synth(arrangement)  # map and render frame by frame, as a live watch does
    chunks = []
    for step, row in enumerate(norms):
        synth.render(mapping.map_frame(Frame(step, 0.0, row)))
        chunks.append(synth.pop_ready())
    chunks.append(synth.finish())
    return np.concatenate(chunks)


def mapped(mapping_name: str, norms: np.ndarray) -> tuple[Arrangement, list[StepEvents], float]:
    """The arrangement, the events already mapped, and the audio seconds they make."""
    mapping, arrangement = arranged(mapping_name, norms.shape[1])
    return arrangement, map_all(mapping, norms), norms.shape[0] * arrangement.seconds_per_step


def speed_rows(samples: dict[str, list[float]], audio_s: float, baseline: str | None) -> list[dict[str, object]]:
    base = median(samples[baseline]) if baseline else float("nan")
    return [{"variant": name, "runs": len(values), "median s": median(values),
             "x real time": audio_s / median(values),
             **({"vs post": base / median(values)} if baseline else {})} for name, values in samples.items()]


def timed_once(function: Callable[[], object]) -> list[float]:
    start = time.perf_counter()
    function()
    return [time.perf_counter() - start]


def random_norms(steps: int, layers: int, seed: int) -> np.ndarray:
    """Log-normal norms rounded to float32 (what a float32 gradient norm is), then widened to float64."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(-1.0, 1.2, size=(steps, layers))).astype(np.float32).astype(np.float64)


def mapping_path(mapping_name: str) -> str:
    return "Mapping.map_frames" if hasattr(Mapping.load(mapping_name), "map_frames") else "Mapping.map_frame per frame"


def in_process_variants(mapping_name: str, norms: np.ndarray) -> dict[str, Callable[[], list[float]]]:
    """The in-process variants timed for a preset: mapping alone, the synth alone (per step and chunked),
    and both end to end (frame by frame, as live; chunked, as offline)."""
    arrangement, events, _ = mapped(mapping_name, norms)
    return {
        f"map + synth, chunked ({mapping_path(mapping_name)}, render_many x {CHUNK_STEPS})":
            lambda: timed_once(lambda: render_norms(mapping_name, norms)),
        "synth only, chunked (render_many)": lambda: timed_once(lambda: synth_chunked(arrangement, events)),
        f"mapping only ({mapping_path(mapping_name)})":
            lambda: timed_once(lambda: map_all(arranged(mapping_name, norms.shape[1])[0], norms)),
        "map + synth, step by step (map_frame, render)":
            lambda: timed_once(lambda: render_norms(mapping_name, norms, chunked=False)),
        "synth only, step by step (render)": lambda: timed_once(lambda: synth_per_step(arrangement, events)),
    }


def check_chunked_equals_per_step(report: Report, mapping_name: str, norms: np.ndarray) -> None:
    arrangement, events, _ = mapped(mapping_name, norms)
    chunked, per_step = synth_chunked(arrangement, events), synth_per_step(arrangement, events)
    same = chunked.shape == per_step.shape and bool(np.array_equal(chunked, per_step))
    report.check(f"{mapping_name} {norms.shape[1]} layers: render_many in chunks of {CHUNK_STEPS} equals render "
                 "step by step, bit for bit", same, f"{per_step.shape[0]} frames x {per_step.shape[1]}")


def bench_post(report: Report, steps: int, rounds: int) -> None:
    norms = random_norms(steps, 4, 0)
    norms32 = norms.astype(np.float32)
    theirs = post_render(norms32)
    for chunked in (True, False):
        ours = render_norms("perone2019", norms, chunked)
        same_shape = ours.shape == (theirs.shape[0], 1)
        diff = float(np.max(np.abs(ours[:, 0] - theirs))) if same_shape else float("inf")
        report.check(f"perone2019 samples ({'chunked' if chunked else 'step by step'}) equal the post's within "
                     "1e-6", diff <= 1e-6, f"{theirs.shape[0]} samples, max |diff| {diff:.1e}")
    check_chunked_equals_per_step(report, "perone2019", norms)
    audio_s = mapped("perone2019", norms)[2]
    post = "post's loop (np.sin per tone)"
    samples = interleave({post: lambda: timed_once(lambda: post_render(norms32)),
                          **in_process_variants("perone2019", norms)}, rounds)
    rows = speed_rows(samples, audio_s, post)
    report.table(f"perone2019, 4 layers, {steps} steps ({audio_s:g} s of mono audio), one thread; medians of "
                 f"{rounds} interleaved runs", rows)
    for row in rows[1:3]:
        ratio = float(row["vs post"])  # type: ignore[arg-type]
        report.goal(f"perone2019 4 layers, {row['variant']} >= 2 x the post's loop", ">= 2 x", f"{ratio:.2f} x",
                    ratio >= 2.0)


def bench_pentatonic(report: Report, steps: int, rounds: int) -> None:
    norms = random_norms(steps, 64, 1)
    audio_s = mapped("pentatonic", norms)[2]
    out = render_norms("pentatonic", norms)
    expected = round(audio_s * 44100)
    report.check("pentatonic 64 layers: stereo, full length, finite, within [-1, 1]",
                 out.shape[1] == 2 and abs(out.shape[0] - expected) <= 1 and bool(np.isfinite(out).all())
                 and float(np.abs(out).max()) <= 1.0 and float(np.abs(out).max()) > 0.0,
                 f"{out.shape}, expected {expected} frames")
    check_chunked_equals_per_step(report, "pentatonic", norms)
    samples = interleave(in_process_variants("pentatonic", norms), rounds)
    rows = speed_rows(samples, audio_s, None)
    report.table(f"pentatonic, 64 layers, stereo, {steps} steps ({audio_s:g} s of audio), one thread; medians of "
                 f"{rounds} interleaved runs", rows)
    for row in rows[:2]:
        speed = float(row["x real time"])  # type: ignore[arg-type]
        report.goal(f"pentatonic 64 layers, {row['variant']} >= 300 x real time", ">= 300 x", f"{speed:.0f} x",
                    speed >= 300)


def write_norms_csv(path: Path, norms: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["step", *(f"layer{i}" for i in range(norms.shape[1]))])
        for step, row in enumerate(norms):
            out.writerow([step, *map(repr, row.tolist())])


def command() -> tuple[list[str], str]:
    found = shutil.which("gradbridge")
    if found:
        return [found], "gradbridge"
    return [sys.executable, "-m", "bridge"], "python -m bridge"


def bench_cli(report: Report, steps: int, rounds: int, folder: Path) -> None:
    exe, shown = command()
    env = dict(os.environ)
    runs = {"4 layers, pentatonic": (4, None, 0.125), "64 layers, pentatonic": (64, None, 0.125),
            "4 layers, perone2019": (4, "perone2019", 0.06)}
    norms = {layers: random_norms(steps, layers, 2) for layers, _, _ in runs.values()}
    for layers, values in norms.items():
        write_norms_csv(folder / f"norms{layers}.csv", values)
    times: dict[str, list[float]] = {}
    inner: dict[str, list[float]] = {name: [] for name in runs}

    def render(name: str) -> list[float]:
        layers, preset, _ = runs[name]
        out = folder / f"{name.split(',')[0].replace(' ', '')}-{preset or 'pentatonic'}.wav"
        argv = [*exe, "render", str(folder / f"norms{layers}.csv"), "-o", str(out)]
        argv += ["-m", preset] if preset else []
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        found = re.search(r"of music in ([0-9.]+) s", done.stderr)
        inner[name].append(float(found.group(1)) if found else float("nan"))
        return [took]

    variants: dict[str, Callable[[], list[float]]] = {name: (lambda n=name: render(n)) for name in runs}
    variants["start-up only (--help)"] = lambda: timed_once(
        lambda: subprocess.run([*exe, "render", "--help"], capture_output=True, check=True))
    times = interleave(variants, rounds)
    rows = []
    for name, values in times.items():
        if name not in runs:
            rows.append({"run": name, "median wall s": median(values)})
            continue
        layers, preset, step_s = runs[name]
        music_s = steps * step_s
        rows.append({"run": name, "music s": music_s, "median wall s": median(values),
                     "x real time": music_s / median(values), "render itself s": median(inner[name]),
                     "x real time (render itself)": music_s / median(inner[name])})
    report.table(f"`{shown} render` of a {steps}-step CSV, subprocess, start-up included; medians of {rounds} "
                 "interleaved runs", rows)
    for row in rows[:2]:
        speed = float(row["x real time"])  # type: ignore[arg-type]
        report.goal(f"gradbridge render, {row['run']}, {steps}-step CSV >= 100 x real time", ">= 100 x",
                    f"{speed:.0f} x", speed >= 100)
    check_cli_outputs(report, folder, steps, norms[4])


def check_cli_outputs(report: Report, folder: Path, steps: int, norms4: np.ndarray) -> None:
    for name, step_s, channels in (("64layers-pentatonic", 0.125, 2), ("4layers-pentatonic", 0.125, 2)):
        with wave.open(str(folder / f"{name}.wav")) as f:
            frames, got_channels = f.getnframes(), f.getnchannels()
        expected = round(steps * step_s * 44100)
        report.check(f"render {name}: WAV length and channels", abs(frames - expected) <= 1 and
                     got_channels == channels, f"{frames} frames x {got_channels}, expected {expected} x {channels}")
    with wave.open(str(folder / "4layers-perone2019.wav")) as f:
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32767
    theirs = post_render(norms4.astype(np.float32))
    diff = float(np.max(np.abs(data - theirs))) if data.shape == theirs.shape else float("inf")
    report.check("render perone2019 CSV: int16 WAV equals the post's samples (within rounding)",
                 diff <= 0.5 / 32767 + 1e-6, f"max |diff| {diff:.2e}")


def profile(report: Report, steps: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        report.note("--profile needs pyinstrument: pip install pyinstrument")
        return
    for name, layers in (("perone2019", 4), ("pentatonic", 64)):
        norms = random_norms(steps, layers, 3)
        profiler = Profiler(interval=0.0005)
        profiler.start()
        render_norms(name, norms)
        profiler.stop()
        print(f"\nprofile: {name}, {layers} layers, {steps} steps (map + synth)")
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    from bridge.cli import main as gradbridge
    with tempfile.TemporaryDirectory(prefix="gradbridge-render-") as tmp:
        write_norms_csv(Path(tmp) / "norms.csv", random_norms(steps, 64, 4))
        profiler = Profiler(interval=0.0005)
        profiler.start()
        gradbridge(["render", str(Path(tmp) / "norms.csv"), "-o", str(Path(tmp) / "out.wav")])
        profiler.stop()
    print(f"\nprofile: gradbridge render (in process), 64 layers, {steps} steps, pentatonic")
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short renders, checks only matter")
    parser.add_argument("--profile", action="store_true", help="also profile the in-process renders (pyinstrument)")
    args = parser.parse_args(argv)
    harness.banner("gradbridge render speed", args.quick)
    plan = {"post_steps": 300, "post_rounds": 3, "penta_steps": 40, "penta_rounds": 3, "cli_steps": 1000,
            "cli_rounds": 1} if args.quick else {"post_steps": 2000, "post_rounds": 9, "penta_steps": 400,
                                                 "penta_rounds": 7, "cli_steps": 5000, "cli_rounds": 3}
    report = Report("render", args.quick, settings=plan)
    harness.quiet_shared_channels()
    report.note("one thread: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS = 1 (also for the subprocess)")
    bench_post(report, plan["post_steps"], plan["post_rounds"])
    bench_pentatonic(report, plan["penta_steps"], plan["penta_rounds"])
    with tempfile.TemporaryDirectory(prefix="gradbridge-render-") as tmp:
        bench_cli(report, plan["cli_steps"], plan["cli_rounds"], Path(tmp))
    if args.profile:
        profile(report, plan["penta_steps"] * 5)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
