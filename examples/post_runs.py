"""Re-run the five runs of the 2019 post and compare how they sound, measured from the WAV files.

    python examples/post_runs.py [--steps 200] [--out-dir post_runs]

For each run it trains with ``gradbridge demo`` settings (perone2019 preset), then cuts each WAV into the
post's 10 ms tone slots and measures every tone's pitch by FFT. The table shows the median and 95th
percentile pitch, how many slots were alarms (NaN/Inf norms) and the final loss.
"""

from __future__ import annotations

import argparse
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np

from bridge.cli import main as gradbridge
from bridge.demo import POST_RUNS
from bridge.runlog import read_run

TONE = 441  # samples per 10 ms tone at 44.1 kHz


def tone_pitches(wav_path: Path, layers: int) -> np.ndarray:
    """Pitch in Hz of every tone slot of a perone2019 WAV (zero-padded FFT peak), in time order."""
    with wave.open(str(wav_path)) as f:
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32767
    step = (layers + 2) * TONE
    steps = samples.size // step
    slots = samples[: steps * step].reshape(steps, layers + 2, TONE)[:, :layers].reshape(-1, TONE)
    spectrum = np.abs(np.fft.rfft(slots * np.hanning(TONE), n=16 * TONE, axis=1))
    return np.argmax(spectrum, axis=1) * 44100 / (16 * TONE)


def run(name: str, steps: int, out_dir: Path) -> tuple[str, float, float, int, int, float]:
    config = replace(POST_RUNS[name], steps=steps)
    argv = ["demo", "--optimizer", config.optimizer, "--lr", str(config.lr), "--momentum", str(config.momentum),
            "--batch-size", str(config.batch_size), "--steps", str(steps), "--out-dir", str(out_dir),
            "--name", name]
    if gradbridge(argv) != 0:
        raise SystemExit(f"the {name} run failed")
    info, frames = read_run(out_dir / f"{name}.gbrun")
    norms = np.stack([f.norms for f in frames])
    alarms = int((~np.isfinite(norms)).sum())
    pitches = tone_pitches(out_dir / f"{name}.wav", len(info.layer_names))
    finite_slots = np.isfinite(norms).reshape(-1)
    pitches = pitches[finite_slots]
    return (name, float(np.median(pitches)), float(np.percentile(pitches, 95)), alarms, norms.size,
            frames[-1].loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out-dir", default="post_runs")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(exist_ok=True)
    rows = [run(name, args.steps, out_dir) for name in POST_RUNS]
    print(f"\n{'run':<18} {'median pitch Hz':>15} {'p95 pitch Hz':>13} {'alarm slots':>12} {'final loss':>11}")
    for name, median, p95, alarms, total, loss in rows:
        print(f"{name:<18} {median:>15.0f} {p95:>13.0f} {f'{alarms}/{total}':>12} {loss:>11.4g}")


if __name__ == "__main__":
    main()
