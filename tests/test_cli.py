"""The gradbridge command, run as a user would, and the post's sound reproduced through the whole pipe."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.cli import main
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.runlog import RunLogWriter, read_run
from bridge.sinks.synth import render_events


def write_run(path: Path, norms: list[list[float]], names: tuple[str, ...] = ("a", "b")) -> None:
    with RunLogWriter(path, RunInfo(names, {"mapping": "perone2019"})) as writer:
        for step, row in enumerate(norms):
            writer.append(Frame(step=step, time_s=1000.0 + step, norms=row, loss=1.0, lr=0.1))


def read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path)) as f:
        params = f.getparams()
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32767
    return params, data.reshape(-1, params.nchannels)


def post_samples(norms: list[list[float]]) -> np.ndarray:
    """Christian Perone's 2019 loop (section 2 of the reference), for a given sequence of norms."""
    fs, duration, f = 44100, 0.01, 200.0
    frames = []
    for step_norms in norms:
        for norm in step_norms:
            tone = (np.float32(f) + np.float32(norm) * np.float32(100.0)).astype(np.float32)
            samples = (np.sin(2 * np.pi * np.arange(fs * duration) * tone / fs)).astype(np.float32) * 0.1
            frames.append(samples)
        frames.append(np.zeros(samples.shape[0] * 2, dtype=np.float32))
    return np.concatenate(frames)


def test_perone2019_reproduces_the_posts_samples() -> None:
    rng = np.random.default_rng(7)
    norms = rng.uniform(0.01, 5.0, size=(12, 4)).astype(np.float32).astype(np.float64).tolist()
    mapping = Mapping.load("perone2019")
    arrangement = mapping.arrange(["conv1", "conv2", "fc1", "fc2"])
    ours = render_events(arrangement, (mapping.map_frame(Frame(s, 0.0, row)) for s, row in enumerate(norms)))
    theirs = post_samples(norms)
    assert ours.shape == (12 * (4 * 441 + 882), 1)
    assert np.max(np.abs(ours[:, 0] - theirs)) <= 1e-6


def test_render_midi_export_import_no_torch(tmp_path: Path) -> None:
    run = tmp_path / "run.gbrun"
    write_run(run, [[0.5, 1.0]] * 3)
    script = textwrap.dedent(f"""
        import sys
        from bridge.cli import main
        d = {str(tmp_path)!r}
        assert main(["render", d + "/run.gbrun", "-o", d + "/run.wav"]) == 0
        assert main(["midi", d + "/run.gbrun", "-o", d + "/run.mid"]) == 0
        assert main(["export", d + "/run.gbrun", "-o", d + "/run.csv"]) == 0
        assert main(["render", d + "/run.csv", "-o", d + "/csv.wav", "-m", "perone2019"]) == 0
        print("torch imported:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch imported: False" in out.stdout
    # the run's own preset (perone2019), 2 layers: 3 steps x (2 x 441 + 882) samples
    params, _ = read_wav(tmp_path / "run.wav")
    assert (params.nchannels, params.sampwidth, params.framerate, params.nframes) == (1, 2, 44100, 3 * 1764)
    assert (tmp_path / "run.wav").read_bytes() == (tmp_path / "csv.wav").read_bytes()
    assert (tmp_path / "run.csv").read_text().splitlines()[0] == "step,wall_time,loss,lr,a,b"


def test_rendered_pitch_matches_the_mapping_within_5_cents(tmp_path: Path) -> None:
    preset = tmp_path / "long.toml"
    preset.write_text(textwrap.dedent("""
        [timing]
        layout = "chord"
        step_s = 0.5
        note_s = 0.5
        [pitch]
        mode = "linear_hz"
        base_hz = 200.0
        hz_per_unit = 100.0
        curve = "linear"
        [sound]
        channels = 1
        attack_s = 0.01
        release_s = 0.01
    """))
    csv = tmp_path / "norms.csv"
    csv.write_text("step,fc\n0,2.37\n1,2.37\n2,2.37\n3,2.37\n")
    assert main(["render", str(csv), "-o", str(tmp_path / "out.wav"), "-m", str(preset)]) == 0
    params, samples = read_wav(tmp_path / "out.wav")
    assert (params.nchannels, params.nframes) == (1, 4 * 22050)
    x = samples[:, 0] * np.hanning(samples.shape[0])
    spectrum = np.abs(np.fft.rfft(x, n=8 * x.size))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1: k + 2])
    peak = k + 0.5 * (a - c) / (a - 2 * b + c)  # parabolic interpolation of the log spectrum
    measured_hz = peak * 44100 / (8 * x.size)
    expected_hz = 200.0 + 100.0 * float(np.float32(2.37))
    assert abs(1200 * math.log2(measured_hz / expected_hz)) < 5


def test_demo_writes_its_three_files(tmp_path: Path) -> None:
    assert main(["demo", "--steps", "4", "--out-dir", str(tmp_path), "--name", "t"]) == 0
    info, frames = read_run(tmp_path / "t.gbrun")
    assert info.layer_names == ("conv1", "conv2", "fc1", "fc2")
    assert [f.step for f in frames] == [0, 1, 2, 3]
    assert all(math.isfinite(f.loss) for f in frames) and frames[0].lr == pytest.approx(0.01)
    params, samples = read_wav(tmp_path / "t.wav")
    assert (params.nchannels, params.nframes) == (1, 4 * (4 * 441 + 882))
    assert 0.09 < np.abs(samples).max() <= 0.1 + 1 / 32767  # the post's amplitude, 0.1
    import mido

    midi = mido.MidiFile(str(tmp_path / "t.mid"))
    assert [t.name for t in midi.tracks[1:]] == ["conv1", "conv2", "fc1", "fc2"]


def test_bad_input_exits_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run.gbrun"
    write_run(run, [[0.5, 1.0]])
    assert main(["render", str(run), "-o", str(tmp_path / "x.wav"), "-m", "pentatonc"]) == 1
    assert 'unknown mapping preset "pentatonc" (did you mean "pentatonic"?)' in capsys.readouterr().err
    (tmp_path / "junk.txt").write_text("hello\n")
    assert main(["render", str(tmp_path / "junk.txt"), "-o", str(tmp_path / "x.wav")]) == 1
    assert "junk.txt" in capsys.readouterr().err
    assert main(["render", str(run), "-o", str(tmp_path / "missing" / "x.wav")]) == 1
    assert "missing" in capsys.readouterr().err


CHILD = """
import sys, time, torch
from torch import nn
import bridge
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
w = bridge.watch(model, optimizer, mapping="perone2019", record=sys.argv[1], announce=None)
for step in range(100000):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
    loss.backward()
    w.record_loss(loss)
    optimizer.step()
    while w.stats.frames_done < step + 1:   # the frame is on disk once the dispatcher has handled it
        time.sleep(0.0005)
    print(step, flush=True)
"""


def test_kill_9_mid_training_leaves_a_log_that_renders(tmp_path: Path) -> None:
    run = tmp_path / "run.gbrun"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], stdout=subprocess.PIPE, text=True)
    printed = -1
    assert child.stdout is not None
    for line in child.stdout:
        printed = int(line)
        if printed >= 40:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    info, frames = read_run(run)
    steps = [f.step for f in frames]
    assert steps == list(range(len(steps))) and len(steps) >= printed + 1
    assert all(math.isfinite(f.loss) and f.lr == pytest.approx(0.05) for f in frames)
    assert main(["render", str(run), "-o", str(tmp_path / "after.wav")]) == 0
    params, _ = read_wav(tmp_path / "after.wav")
    assert params.nframes == len(frames) * (2 * 441 + 882)
