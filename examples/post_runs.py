"""Re-run the 2019 post's five runs and a tiny GPT's two, hear each in every preset, and measure the files.

    python examples/post_runs.py [--steps 200] [--gpt-steps 60] [--out-dir post_runs] [--quick]

Each post run trains with ``gradbridge demo`` settings (the post's CNN on scikit-learn's digits) and is
recorded; the tiny GPT (``examples/tiny_gpt.py``, tied embeddings) trains healthily (SGD lr 0.1) and with
a learning rate that explodes (lr 0.7). Every run log is then rendered in every built-in preset to a WAV
and a MIDI file, and measured from those files alone (``examples/measure.py``):

- pitch: for ``perone2019`` the median pitch of its 10 ms tones (FFT peak of each, NaN slots left out),
  as a MIDI pitch; for the musical presets the median over time of the WAV's pitch (FFT, each moment's
  energy-median pitch); and for all, the velocity-weighted median note of the MIDI file (mido);
- alarms: the MIDI file's percussion notes: NaN/Inf alarms (notes 49, 52) and spike alarms (56);
- peak: the WAV's loudest sample, dBFS.

Then it checks that the sound tells the truth, per preset and per group (post, GPT): each diverging run
(sgd-lr1.0, sgd-lr1.0-bs256, gpt-sgd-lr0.7) is heard going the way its norms went, read from its own run
log. Where a run started is its total norm at the first step, or the median of its first 16 if lower
(as the musical presets place each layer). A run whose norms turn NaN or Inf, or whose total norm stays
above 3 times where it started for most of the run, *explodes*: it must sound higher than every healthy
run of its group (a higher WAV pitch, and a MIDI note, a whole number, no lower) and sound more alarms
(NaN/Inf and spike alarms) than each. One whose total norm stays below a third of it for most of the run
*vanishes*: it must sound lower than every healthy run. Exit status 1 when an order fails. ``--quick``
(for tests) trains the healthy and the exploding runs only, 20 post steps and the GPT's 60.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from measure import midi_notes, peak, tone_pitches, wav_pitch
from tiny_gpt import RUNS as GPT_RUNS
from tiny_gpt import STEPS as GPT_STEPS
from tiny_gpt import train_tiny_gpt

from bridge.cli import main as gradbridge
from bridge.demo import POST_RUNS
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs, render_frames
from bridge.presets import builtin_names, load_preset
from bridge.runlog import read_run
from bridge.sinks.midi_file import MidiFileSink
from bridge.sinks.wav import WavSink

HEALTHY = ("sgd-lr0.01", "sgd-lr0.1", "adam-lr0.01", GPT_RUNS[0][0])
DIVERGING = ("sgd-lr1.0", "sgd-lr1.0-bs256", GPT_RUNS[1][0])


@dataclass(frozen=True)
class Heard:
    """One run in one preset, measured from its files."""

    run: str
    group: str
    preset: str
    wav_pitch: float  #: MIDI pitch, from the WAV
    midi_pitch: float  #: MIDI note, from the MIDI file (velocity-weighted median)
    alarms: int  #: NaN/Inf alarm notes in the MIDI file
    spikes: int  #: spike alarm notes in the MIDI file
    peak_dbfs: float


def train_post_run(name: str, steps: int, out_dir: Path) -> Path:
    """Train one of the post's runs with ``gradbridge demo``; its run log."""
    config = replace(POST_RUNS[name], steps=steps)
    argv = ["demo", "--optimizer", config.optimizer, "--lr", str(config.lr), "--momentum", str(config.momentum),
            "--batch-size", str(config.batch_size), "--steps", str(steps), "--out-dir", str(out_dir),
            "--name", name]
    if gradbridge(argv) != 0:
        raise SystemExit(f"the {name} run failed")
    return out_dir / f"{name}.gbrun"


def train_gpt_run(name: str, optimizer: str, lr: float, steps: int, out_dir: Path) -> Path:
    """Train one of the tiny GPT's runs, recording it; its run log."""
    path = out_dir / f"{name}.gbrun"
    train_tiny_gpt(optimizer, lr, steps, record=path, announce=None)
    return path


def hear(run_log: Path, preset: str, group: str) -> Heard:
    """Render ``run_log`` in ``preset`` to a WAV and a MIDI file beside it, and measure them."""
    info, frames = read_run(run_log)
    wav, mid = (run_log.with_name(f"{run_log.stem}.{preset}{suffix}") for suffix in (".wav", ".mid"))
    render_frames(frames, build_outputs(Mapping.load(preset), info, [WavSink(wav), MidiFileSink(mid)]))
    notes = midi_notes(mid)
    p = load_preset(preset)
    alarms = notes.percussion.get(p.nan_note, 0) + (notes.percussion.get(p.inf_note, 0) if p.inf_note != p.nan_note
                                                    else 0)
    spikes = notes.percussion.get(p.spike_note, 0) if p.spike_detect else 0
    if p.mode == "linear_hz":
        norms = np.stack([f.norms for f in frames])
        tones = tone_pitches(wav, norms.shape[1])[np.isfinite(norms).reshape(-1)[: norms.size]]
        pitch, midi_pitch = float(69 + 12 * np.log2(np.median(tones) / 440.0)), notes.median_pitch()
    else:
        pitch, midi_pitch = wav_pitch(wav), notes.median_pitch()
    loudest = peak(wav)
    return Heard(run_log.stem, group, preset, pitch, midi_pitch, alarms, spikes,
                 20 * math.log10(loudest) if loudest > 0 else -math.inf)


def direction(run_log: Path) -> str:
    """Where a run's total norm went, from its run log: "explodes", "vanishes" or "holds" (see the docstring)."""
    _, frames = read_run(run_log)
    totals = np.array([float(np.sqrt(np.sum(np.square(f.norms)))) for f in frames])
    if not np.isfinite(totals).all():
        return "explodes"
    start = min(totals[0], float(np.median(totals[:16])))  # where the run started, as the presets' reference
    with np.errstate(divide="ignore"):  # a total of 0 is -inf: vanished
        ratio = float(np.median(np.log10(totals / start)))
    return "explodes" if ratio > math.log10(3) else ("vanishes" if ratio < -math.log10(3) else "holds")


def check(heard: list[Heard], directions: dict[str, str]) -> list[str]:
    """The orders that hold and fail, in words ("ok: ..." or "FAILED: ...")."""
    lines = []
    for preset in sorted({h.preset for h in heard}):
        for sick in (h for h in heard if h.preset == preset and h.run in DIVERGING):
            well = [h for h in heard if h.preset == preset and h.group == sick.group and h.run in HEALTHY]
            way = directions[sick.run]
            if way == "holds" or not well:
                continue
            pitches = ", ".join(f"{h.run} ({h.wav_pitch:.1f}, {h.midi_pitch:.1f})" for h in well)
            if way == "explodes":
                ok = all(sick.wav_pitch > h.wav_pitch and sick.midi_pitch >= h.midi_pitch for h in well)
                lines.append(f"{'ok' if ok else 'FAILED'}: {preset}: {sick.run} explodes and sounds higher "
                             f"({sick.wav_pitch:.1f}, {sick.midi_pitch:.1f}) than {pitches}")
                alarms = sick.alarms + sick.spikes
                ok = all(alarms > h.alarms + h.spikes for h in well)
                lines.append(f"{'ok' if ok else 'FAILED'}: {preset}: {sick.run} sounds more alarms ({alarms}) than "
                             + ", ".join(f"{h.run} ({h.alarms + h.spikes})" for h in well))
            else:
                ok = all(sick.wav_pitch < h.wav_pitch and sick.midi_pitch <= h.midi_pitch for h in well)
                lines.append(f"{'ok' if ok else 'FAILED'}: {preset}: {sick.run} vanishes and sounds lower "
                             f"({sick.wav_pitch:.1f}, {sick.midi_pitch:.1f}) than {pitches}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="steps of each post run (the post: 200)")
    parser.add_argument("--gpt-steps", type=int, default=GPT_STEPS, help="steps of each tiny GPT run")
    parser.add_argument("--out-dir", default="post_runs")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 12 post steps, two runs each")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(exist_ok=True)
    post = ("sgd-lr0.01", "sgd-lr1.0-bs256") if args.quick else tuple(POST_RUNS)
    steps, gpt_steps = (20, GPT_STEPS) if args.quick else (args.steps, args.gpt_steps)
    logs = {name: ("post", train_post_run(name, steps, out_dir)) for name in post}
    logs.update({name: ("gpt", train_gpt_run(name, opt, lr, gpt_steps, out_dir)) for name, opt, lr in GPT_RUNS})
    directions = {name: direction(path) for name, (_, path) in logs.items()}
    heard = [hear(path, preset, group) for name, (group, path) in logs.items() for preset in builtin_names()]
    print(f"\n{'run':<18} {'norms':<9} {'preset':<11} {'WAV pitch':>9} {'MIDI note':>9} {'NaN/Inf':>8} "
          f"{'spikes':>7} {'peak dBFS':>9}")
    print("(WAV pitch: the median over time of each moment's pitch, by FFT; MIDI note: the velocity-weighted median "
          "note; both MIDI note numbers, 60 = C4)")
    for h in heard:
        print(f"{h.run:<18} {directions[h.run]:<9} {h.preset:<11} {h.wav_pitch:>9.1f} {h.midi_pitch:>9.1f} "
              f"{h.alarms:>8} {h.spikes:>7} {h.peak_dbfs:>9.1f}")
    lines = check(heard, directions)
    print("\n" + "\n".join(lines))
    return 1 if any(line.startswith("FAILED") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
