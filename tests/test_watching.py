"""bridge.watch end to end: real training, real files read back by programs we did not write."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bridge
from bridge.runlog import read_run
from bridge.sinks.base import Sink

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, w: bridge.watching.Watch | None = None,
          *, blow_up_at: int | None = None) -> list[dict[str, torch.Tensor]]:
    """A few real SGD steps; returns each step's gradients as the optimizer saw them."""
    torch.manual_seed(1)
    seen = []
    for step in range(steps):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if blow_up_at is not None and step >= blow_up_at:
            first = next(model.parameters())
            first.grad.fill_(math.nan)
        if w is not None:
            w.record_loss(loss)
        seen.append({name: p.grad.detach().clone() for name, p in model.named_parameters()})
        optimizer.step()
    return seen


def test_watch_records_every_step_with_the_norms_the_optimizer_saw(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with bridge.watch(model, optimizer, mapping="perone2019", record=tmp_path / "run.gbrun",
                      announce=None) as w:
        grads = train(model, optimizer, 6, w)
    assert w.layer_names == ("0", "2")
    assert (w.stats.frames_in, w.stats.frames_dropped, w.stats.frames_done) == (6, 0, 6)
    info, frames = read_run(tmp_path / "run.gbrun")
    assert info.layer_names == ("0", "2")
    assert info.metadata["mapping"] == "perone2019"
    assert [f.step for f in frames] == list(range(6))
    for frame, g in zip(frames, grads):
        # a layer's norm: sqrt(|dW|^2 + |db|^2), stored as float32
        expected = [math.sqrt(g["0.weight"].norm() ** 2 + g["0.bias"].norm() ** 2),
                    math.sqrt(g["2.weight"].norm() ** 2 + g["2.bias"].norm() ** 2)]
        assert list(frame.norms) == pytest.approx(expected, rel=1e-6)
        assert frame.lr == pytest.approx(0.1)
        assert math.isfinite(frame.loss)


def test_watch_writes_wav_and_midi_file(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    announce = io.StringIO()
    with bridge.watch(model, optimizer, mapping="perone2019", wav=tmp_path / "run.wav",
                      midi_file=tmp_path / "run.mid", params="weights", announce=announce):
        train(model, optimizer, 5)
    assert "perone2019" in announce.getvalue()
    assert "5 frames in, 0 dropped" in announce.getvalue()
    with wave.open(str(tmp_path / "run.wav")) as f:
        # 2 layers: per step 2 tones of 441 samples, then 882 samples of silence
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 44100)
        assert f.getnframes() == 5 * (2 * 441 + 882)
    import mido

    midi = mido.MidiFile(str(tmp_path / "run.mid"))
    assert midi.type == 1
    assert [t.name for t in midi.tracks[1:]] == ["0", "2"]
    ons = [m for t in midi.tracks for m in t if m.type == "note_on" and m.velocity > 0]
    offs = [m for t in midi.tracks for m in t if m.type == "note_off" or (m.type == "note_on" and m.velocity == 0)]
    assert len(ons) == len(offs) == 10


def test_nan_run_renders_finite_wav_and_a_midi_file_fluidsynth_plays(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with bridge.watch(model, optimizer, mapping="pentatonic", record=tmp_path / "run.gbrun",
                      wav=tmp_path / "run.wav", midi_file=tmp_path / "run.mid", announce=None) as w:
        train(model, optimizer, 8, w, blow_up_at=4)
    _, frames = read_run(tmp_path / "run.gbrun")
    assert [math.isnan(f.norms[0]) for f in frames] == [False] * 4 + [True] * 4
    with wave.open(str(tmp_path / "run.wav")) as f:
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        assert f.getnchannels() == 2
    assert samples.size > 0 and np.abs(samples).max() > 1000  # audible, and int16 cannot hold NaN
    import mido

    tracks = mido.MidiFile(str(tmp_path / "run.mid")).tracks
    alarm_track = [t for t in tracks if t.name == "alarms"]
    assert len(alarm_track) == 1
    alarm_notes = [m for m in alarm_track[0] if m.type == "note_on" and m.velocity > 0]
    assert len(alarm_notes) == 4 and {m.channel for m in alarm_notes} == {9} and {m.note for m in alarm_notes} == {49}
    if shutil.which("fluidsynth") is None or not SOUNDFONT.is_file():
        pytest.skip("fluidsynth or the TimGM6mb soundfont is not installed (apt-get install fluidsynth timgm6mb-soundfont)")
    out = tmp_path / "fluid.wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-F", str(out), "-r", "44100", str(SOUNDFONT),
                    str(tmp_path / "run.mid")], check=True, capture_output=True, timeout=60)
    with wave.open(str(out)) as f:
        rendered = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32768
    assert np.sqrt(np.mean(rendered ** 2)) > 1e-3


class BrokenSink:
    """A sink that fails on its third step."""

    name = "broken"

    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    def open(self, arrangement: object) -> None:
        """Nothing to open: this stand-in sink only records what it is sent."""

    def send(self, events: object) -> None:
        self.sent += 1
        if self.sent == 3:
            raise OSError("receiver went away")

    def close(self) -> None:
        self.closed = True


class UnopenableSink(BrokenSink):
    name = "unopenable"

    def open(self, arrangement: object) -> None:
        raise OSError("no such port")


def test_a_failing_sink_does_not_stop_training_or_the_other_outputs(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    broken, unopenable = BrokenSink(), UnopenableSink()
    assert isinstance(broken, Sink)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with bridge.watch(model, optimizer, mapping="daw", record=tmp_path / "run.gbrun", sinks=[broken, unopenable],
                      clock="free", announce=None) as w:  # each step as it arrives, the third one breaks
        train(model, optimizer, 7, w)
    stats = w.stats
    assert (stats.frames_done, stats.errors) == (7, {"broken": 1, "unopenable": 1})
    assert "at step 2" in stats.first_errors["broken"] and "receiver went away" in stats.first_errors["broken"]
    assert "no such port" in stats.first_errors["unopenable"]
    assert broken.sent == 3 and broken.closed
    assert len(read_run(tmp_path / "run.gbrun")[1]) == 7
    assert caplog.text.count("broken") == 1


def test_explicit_step_form_without_hook(tmp_path: Path) -> None:
    model = small_model()
    w = bridge.watch(model, None, mapping="daw", record=tmp_path / "run.gbrun", auto=False, announce=None)
    for _ in range(3):
        model.zero_grad()
        loss = model(torch.ones(2, 4)).sum()
        loss.backward()
        w.step(loss=loss)
    w.remove()
    frames = read_run(tmp_path / "run.gbrun")[1]
    assert [f.step for f in frames] == [0, 1, 2]
    assert frames[0].loss == pytest.approx(float(small_model()(torch.ones(2, 4)).sum().detach()), rel=1e-6)


def test_keyboard_interrupt_still_writes_every_output(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        with bridge.watch(model, optimizer, mapping="perone2019", record=tmp_path / "run.gbrun",
                          wav=tmp_path / "run.wav", midi_file=tmp_path / "run.mid", announce=None) as w:
            train(model, optimizer, 4, w)
            raise KeyboardInterrupt
    assert len(read_run(tmp_path / "run.gbrun")[1]) == 4
    with wave.open(str(tmp_path / "run.wav")) as f:
        assert f.getnframes() == 4 * (2 * 441 + 882)
    import mido

    messages = [m for t in mido.MidiFile(str(tmp_path / "run.mid")).tracks for m in t]
    assert sum(m.type == "note_on" for m in messages) == sum(m.type == "note_off" for m in messages) == 8


def test_nothing_is_left_on_the_model_or_optimizer(tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = (set(vars(model)), set(vars(optimizer)), len(optimizer._optimizer_step_pre_hooks))
    w = bridge.watch(model, optimizer, record=tmp_path / "run.gbrun", announce=None)
    train(model, optimizer, 2)
    w.remove()
    w.remove()  # idempotent
    assert (set(vars(model)), set(vars(optimizer)), len(optimizer._optimizer_step_pre_hooks)) == before
    train(model, optimizer, 2)
    assert len(read_run(tmp_path / "run.gbrun")[1]) == 2


def test_wrong_model_type() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        bridge.watch("model", None)  # type: ignore[arg-type]


class StuckSink:
    """A live sink that blocks in send until released: the slowest sink there is."""

    name = "stuck"

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.threads: set[int] = set()
        self.sent = 0

    def open(self, arrangement: object) -> None:
        """Nothing to open: this stand-in sink only records what it is sent."""

    def send(self, events: object) -> None:
        import threading

        self.threads.add(threading.get_ident())
        self.release.wait(timeout=60)
        self.sent += 1

    def close(self) -> None:
        """Nothing to release."""


def test_a_stuck_sink_never_holds_training_back_and_catches_up_from_the_log_losing_nothing(tmp_path: Path) -> None:
    import os
    import threading

    stuck = StuckSink()
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    w = bridge.watch(model, optimizer, mapping="daw", sinks=[stuck], clock="free", announce=None)  # every step
    temporary = w.run_log
    assert temporary is not None and os.path.exists(temporary)  # no record=: a temporary run log is the bus
    train(model, optimizer, 1, w)
    for _ in range(6000):  # wait (at most 60 s) until the follower thread sits inside the stuck sink
        if stuck.threads:
            break
        time.sleep(0.01)
    train(model, optimizer, 49, w)  # completes while the sink has not finished even one step
    assert stuck.sent == 0
    stuck.release.set()
    stats = w.remove()
    # the follower read every frame from the run log once the sink moved again: nothing was dropped
    assert (stats.frames_in, stats.frames_done, stats.frames_dropped) == (50, 50, 0)
    assert stuck.sent == 50
    assert threading.get_ident() not in stuck.threads
    assert not os.path.exists(temporary)  # removed at close, everything having been delivered
