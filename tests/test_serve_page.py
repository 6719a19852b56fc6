"""The page in a real browser: Debian's Chromium, headless, driven by Playwright.

- the token: refused without it (the page and its WebSocket), and with it the page shows the preset, the
  layers and every frame of a finished run;
- the page's synth, rendered in an OfflineAudioContext, against the built-in synth: pitch per tone by FFT
  on both (within 5 cents), stereo placement, the alarm's two tones; a spike alarm's two tones through the
  limiter, and the spike on the plot and in the page's count;
- Web MIDI, through a stand-in MIDIAccess: the bytes the page sends equal what the MIDI port output sent to a
  JACK receiver from the same follower;
- a second page and a stalled client do not hold up the first; a real training run served by ``watch``,
  whose screenshot is ``docs/serve.png`` (written there when ``GRADBRIDGE_SCREENSHOT`` names that path).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the page server needs aiohttp (pip install 'gradbridge[serve]')")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (Debian package chromium); the page's tests need a real browser",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from bridge.frames import Frame, RunInfo  # noqa: E402
from bridge.mapping import Mapping  # noqa: E402
from bridge.outputs import OutputSpec  # noqa: E402
from bridge.presets import load_preset  # noqa: E402
from bridge.runlog import RunLogWriter  # noqa: E402
from bridge.sinks.playable import SPIKE_FREQUENCIES_HZ  # noqa: E402
from bridge.sinks.synth import LIMIT_KNEE, PEAK, render_events  # noqa: E402
from tests.conftest import MidiDump  # noqa: E402
from tests.serve_helpers import TIMEOUT_S, norms_of, serve_run, write_run  # noqa: E402
from tests.test_serve import env, stalled_client  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-background-networking"]
WAIT_MS = int(TIMEOUT_S * 1000)

# Three layers one after another, 100 ms each then 50 ms of silence, three waveforms, spread left to right.
TONES = """
[preset]
name = "tones"
description = "three long tones a step, for measuring pitch"
[timing]
layout = "sequential"
note_s = 0.1
gap_s = 0.05
[pitch]
mode = "linear_hz"
base_hz = 200.0
hz_per_unit = 100.0
curve = "linear"
[sound]
sample_rate = 44100
channels = 2
waveforms = ["sine", "triangle", "saw"]
amplitude = 0.2
attack_s = 0.005
release_s = 0.01
phase = "continuous"
pan = "spread"
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, bypass_csp=True)  # lets tests evaluate strings
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors


def open_page(page, port: int, token: str):  # type: ignore[no-untyped-def]
    response = page.goto(f"http://127.0.0.1:{port}/?token={token}")
    assert response.status == 200
    page.wait_for_function("window.gradbridge.stats.state === 'live' || window.gradbridge.stats.state === 'ended'",
                           timeout=WAIT_MS)
    return response


def test_without_the_token_nothing_with_it_the_whole_run(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.gbrun"
    frames = write_run(path, 40)
    served = serve_run(path)
    served.join()
    try:
        assert page.goto(f"http://127.0.0.1:{served.port}/").status == 403
        assert page.goto(f"http://127.0.0.1:{served.port}/?token=not-the-token").status == 403
        open_page(page, served.port, served.token)
        page.wait_for_function("window.gradbridge.stats.ended", timeout=WAIT_MS)
        refused = page.evaluate("""(port) => new Promise((done) => {
            const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
            ws.onopen = () => done('opened'); ws.onclose = (e) => done('closed ' + e.code); })""", served.port)
        assert refused == "closed 1006"  # the handshake was refused (403): it never opened
        description = Mapping.load("pentatonic").arrange(["layer0", "layer1", "layer2"]).description
        assert page.text_content("#preset") == description
        assert page.locator("#layers li").all_text_contents() == [
            "layer0 · ch 1 · sine", "layer1 · ch 2 · triangle", "layer2 · ch 3 · saw"]
        held = page.evaluate("window.gradbridge.store.frameList()")
        assert [row["step"] for row in held] == list(range(40)) and {row["frames"] for row in held} == {1}
        for row, frame in zip(held, frames):
            expected = np.asarray(frame.norms, dtype=np.float32).astype(np.float64)
            got = np.array([math.nan if v is None else v for v in row["norms"]])
            np.testing.assert_array_equal(got, expected)  # float32 as stored, NaN where the alarm is
        assert page.evaluate("window.gradbridge.store.alarms") == [{"step": 7, "layer": 1, "kind": "nan"}]
        assert page.text_content("#steps") == "40"
    finally:
        served.page.stop()


def test_the_page_reconnects_by_itself(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.gbrun"
    write_run(path, 30)
    first = serve_run(path)
    first.join()
    port, token = first.port, first.token
    open_page(page, port, token)
    page.wait_for_function("window.gradbridge.stats.ended", timeout=WAIT_MS)
    first.page.stop()  # the server goes away: the page says so and keeps trying
    page.wait_for_function("window.gradbridge.stats.state === 'down'", timeout=WAIT_MS)
    assert page.text_content("#state").startswith("disconnected")
    second = serve_run(path, spec=OutputSpec(serve=port, serve_token=token))  # back, on the same address
    try:
        second.join()
        page.wait_for_function("window.gradbridge.stats.connections === 2 && window.gradbridge.stats.ended",
                               timeout=WAIT_MS)
        assert page.evaluate("window.gradbridge.stats.framesReceived") == 30
    finally:
        second.page.stop()


def peak_hz(samples: np.ndarray, sample_rate: int) -> float:
    """The strongest frequency of a tone: Hann window, zero-padded FFT, parabolic interpolation of the peak."""
    windowed = samples * np.hanning(samples.shape[0])
    size = 1 << 18
    spectrum = np.abs(np.fft.rfft(windowed, size))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sample_rate / size


def played_on_the_page(page, tmp_path: Path, preset: str, rows: list[list[float]], pace_s: float):  # type: ignore[no-untyped-def]
    """Serve a run log of three layers under ``preset`` (TOML text) to ``page`` playing it, writing ``rows``
    one step every ``pace_s`` (the pace they sound, so that every step is sent). Returns the frames, the
    page's offline rendering of every step it played (float64, (frames, channels)) and the server."""
    preset_path = tmp_path / "preset.toml"
    preset_path.write_text(preset)
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a", "b", "c"), {"mapping": str(preset_path)}))
    served = serve_run(path, linger=True)  # the offline render loads the synth from the server again
    open_page(page, served.port, served.token)
    page.click("#play")
    page.wait_for_function("window.gradbridge.player.playing", timeout=WAIT_MS)
    frames = [Frame(step, time.time(), row) for step, row in enumerate(rows)]
    for frame in frames:
        writer.append(frame)
        time.sleep(pace_s)
    writer.close()
    served.join()
    page.wait_for_function(f"window.gradbridge.stats.soundPlayed === {len(rows)}", timeout=WAIT_MS)
    rendered = page.evaluate("""async () => {
        const GB = window.gradbridge, steps = GB.sounds.steps.filter((s) => !s.past);
        const channels = await GB.renderOffline(GB.hello, steps, 0);
        return channels.map((c) => Array.from(c)); }""")
    return frames, np.array(rendered, dtype=np.float64).T, served


def test_the_pages_synth_sounds_the_built_in_synths_pitches(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    rows = [[1.0, 2.5, 4.0], [1.7, 0.2, 6.33], [3.0, math.nan, 0.5], [0.05, 8.1, 2.2], [5.5, 1.25, 7.0]]
    frames, page_audio, served = played_on_the_page(page, tmp_path, TONES, rows, 0.4)  # a step sounds 350 ms
    served.page.stop()

    mapping = Mapping(load_preset(tmp_path / "preset.toml"))
    arrangement = mapping.arrange(("a", "b", "c"))
    built_in = render_events(arrangement, [mapping.map_frame(f) for f in frames]).astype(np.float64)
    sr, tone = 44100, 4410
    step_n = int(round(arrangement.seconds_per_step * sr))
    assert page_audio.shape == (len(rows) * step_n, 2) and built_in.shape == page_audio.shape
    checked = 0
    for step, row in enumerate(rows):
        for layer, norm in enumerate(row):
            low = step * step_n + layer * tone
            ours, theirs = page_audio[low:low + tone], built_in[low:low + tone]
            if math.isnan(norm):  # the alarm: a square at 1760 Hz, then 1320 Hz
                for half, hz in ((slice(0, tone // 2), 1760.0), (slice(tone // 2, tone), 1320.0)):
                    assert abs(1200 * math.log2(peak_hz(ours[half, 0], sr) / hz)) < 5
                    assert abs(1200 * math.log2(peak_hz(theirs[half, 0], sr) / hz)) < 5
                continue
            expected = 200.0 + 100.0 * norm
            mine, builtin = peak_hz(ours.sum(axis=1), sr), peak_hz(theirs.sum(axis=1), sr)
            assert abs(1200 * math.log2(mine / builtin)) < 5, (step, layer, mine, builtin)
            assert abs(1200 * math.log2(builtin / expected)) < 5
            # the same place left to right: each channel's level within 0.5 dB of the built-in synth's
            for channel in (0, 1):
                level = 20 * math.log10(np.sqrt(np.mean(ours[:, channel] ** 2)) / np.sqrt(np.mean(theirs[:, channel] ** 2)))
                assert abs(level) < 0.5, (step, layer, channel, level)
            checked += 1
    assert checked == 14
    # the same waveforms, phases and envelopes: the two renderings agree sample for sample, but for samples
    # that fall exactly on a saw's or a square's jump (e.g. 420 Hz at 44.1 kHz: every 105th), which each puts on
    # its own side of it
    apart = np.abs(page_audio - built_in) > 1e-3
    assert apart.mean() < 0.002 and np.abs(page_audio - built_in)[~apart].max() < 1e-3


# Three sines at once, loud enough that the mix goes through the limiter; a spike alarm when a norm is above
# 3 times the median of the layer's last 2 steps (from the second step on).
SPIKY = """
[preset]
name = "spiky"
description = "three loud sines at once, a spike alarm at three times the recent median"
[timing]
layout = "chord"
note_s = 0.1
step_s = 0.15
[pitch]
mode = "linear_hz"
base_hz = 200.0
hz_per_unit = 100.0
curve = "linear"
[sound]
sample_rate = 44100
channels = 2
waveforms = ["sine"]
amplitude = 0.4
attack_s = 0.005
release_s = 0.01
phase = "continuous"
pan = "spread"
[spike]
ratio = 3.0
window = 2
warmup = 1
"""


def peak_hz_above(samples: np.ndarray, sample_rate: int, low_hz: float) -> float:
    """``peak_hz`` of what sounds above ``low_hz``: the tones below it are filtered out first (in the spectrum)."""
    size = 1 << 18
    spectrum = np.fft.rfft(samples * np.hanning(samples.shape[0]), size)
    spectrum[:int(low_hz * size / sample_rate)] = 0.0
    return peak_hz(np.fft.irfft(spectrum, size)[:samples.shape[0]] / np.maximum(np.hanning(samples.shape[0]), 1e-3),
                   sample_rate)


def test_a_spike_sounds_as_the_built_in_synths_and_is_marked_on_the_plot(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    rows = [[1.0, 1.0, 1.0], [1.0, 10.0, 1.5], [2.0, 1.5, 1.0]]  # layer 1 spikes at step 1: 10 > 3 x 1.0
    frames, page_audio, served = played_on_the_page(page, tmp_path, SPIKY, rows, 0.2)  # a step sounds 150 ms

    mapping = Mapping(load_preset(tmp_path / "preset.toml"))
    arrangement = mapping.arrange(("a", "b", "c"))
    events = [mapping.map_frame(f) for f in frames]
    assert [(e.step, [(s.layer, s.ratio) for s in e.spikes]) for e in events] == [(0, []), (1, [(1, 10.0)]), (2, [])]
    built_in = render_events(arrangement, events).astype(np.float64)
    sr, step_n, half = 44100, 6615, 2205
    assert page_audio.shape == built_in.shape == (3 * step_n, 2)
    # the beep: a square at C#7 for the note's first half, then at F#7, from the start of step 1, on both
    for number, hz in enumerate(SPIKE_FREQUENCIES_HZ):
        low = step_n + number * half
        for audio in (page_audio, built_in):
            assert abs(1200 * math.log2(peak_hz_above(audio[low:low + half].sum(axis=1), sr, 1500.0) / hz)) < 5
    # three loud sines and the beep go through the limiter (well past its knee, never past -1 dBFS) on both
    assert np.abs(built_in).max() > LIMIT_KNEE + 0.1 and np.abs(page_audio).max() <= PEAK + 1e-6
    # and the two renderings agree sample for sample, but for samples on a square's jump
    apart = np.abs(page_audio - built_in) > 1e-3
    assert apart.mean() < 0.002 and np.abs(page_audio - built_in)[~apart].max() < 1e-3

    # on the plot and in the page's count: one spike alarm, layer 1 at step 1, ten times its median
    assert page.evaluate("window.gradbridge.store.spikes") == [{"step": 1, "layer": 1, "ratio": 10.0}]
    assert page.evaluate("window.gradbridge.stats.spikes") == 1 and page.text_content("#spikes") == "1"
    page.wait_for_function("window.gradbridge.plots.drawn.spikes.length === 1", timeout=WAIT_MS)
    x, colour = page.evaluate("""() => {
        const canvas = document.getElementById('norms'), ratio = window.devicePixelRatio || 1;
        const x = window.gradbridge.plots.drawn.spikes[0].x;
        const pixel = canvas.getContext('2d').getImageData(Math.floor(x * ratio), Math.round(12 * ratio), 1, 1).data;
        return [x, Array.from(pixel)]; }""")
    box = page.locator("#norms").bounding_box()
    assert x == pytest.approx(56 + (box["width"] - 56 - 56) / 2, abs=1)  # step 1 of 0-2: the plot's middle
    assert colour == [255, 176, 0, 255]  # the spike's amber triangle at the top
    served.page.stop()


STAND_IN_MIDI = """
(() => {
  const sent = [];
  const output = {id: 'stand-in', name: 'Stand-in synth', manufacturer: 'tests', type: 'output', state: 'connected',
                  connection: 'open', send(data, timestamp) { sent.push(Array.from(data)); }, clear() {},
                  open: async () => output, close: async () => output};
  const access = {outputs: new Map([['stand-in', output]]), inputs: new Map(), sysexEnabled: false, onstatechange: null};
  navigator.requestMIDIAccess = async () => access;
  window.midiSent = sent;
})();
"""


def test_web_midi_sends_the_midi_port_outputs_bytes(tmp_path: Path, page, midi_dump) -> None:  # type: ignore[no-untyped-def]
    dump: MidiDump = midi_dump()
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a", "b", "c"), {"mapping": "perone2019"}))
    follower = subprocess.Popen([sys.executable, "-m", "bridge", "follow", str(path), "--from-start", "--serve", "0",
                                 "--midi", dump.port, "--midi-api", "jack"], stderr=subprocess.PIPE, text=True, env=env())
    assert follower.stderr is not None
    url = next(line for line in follower.stderr if "serving http" in line).split()[2]
    page.add_init_script(STAND_IN_MIDI)
    page.goto(url)
    page.wait_for_function("window.gradbridge.stats.state === 'live'", timeout=WAIT_MS)
    page.click("#midi-enable")
    page.wait_for_selector("#midi option[value='stand-in']", state="attached", timeout=WAIT_MS)
    page.select_option("#midi", "stand-in")
    page.click("#play")
    page.wait_for_function("window.gradbridge.player.playing", timeout=WAIT_MS)
    for step in range(12):  # perone2019 with 3 layers: 50 ms a step; one every 80 ms, a NaN at step 7
        writer.append(Frame(step, time.time(), norms_of(step, 3)))
        time.sleep(0.08)
    time.sleep(0.3)  # the last step's notes have all been played before the port closes
    writer.close()
    follower.communicate(timeout=TIMEOUT_S)
    assert follower.returncode == 0
    page.wait_for_function("window.gradbridge.stats.ended && window.gradbridge.player.midiQueue.length === 0",
                           timeout=WAIT_MS)
    sent = [tuple(message) for message in page.evaluate("window.midiSent")]
    port = [message for _, message in dump.wait_for(lambda got: got.count((0xB0, 123, 0)) == 1 and len(got) > 10)]
    notes = [m for m in port if m[0] & 0xF0 in (0x80, 0x90)]
    assert len(notes) == 2 * (12 * 3 - 1 + 1)  # each step's 3 notes on and off, the NaN layer's as an alarm
    assert (0x99, 49, 120) in port  # the alarm: crash cymbal on channel 10
    assert sent == port


def test_a_second_page_and_a_stalled_client_do_not_hold_up_the_first(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    layers, steps = 128, 8000  # 552 bytes a record, 4.4 MB: past the stalled client's 2 MiB and its buffers
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(tuple(f"l{i}" for i in range(layers)), {"mapping": "pentatonic"}))
    served = serve_run(path, linger=True)
    served.page.server.max_client_bytes = 2 << 20
    stalled = stalled_client(served.port, served.token)
    contexts = [browser.new_context(bypass_csp=True) for _ in range(2)]
    try:
        pages = [context.new_page() for context in contexts]
        for opened in pages:
            open_page(opened, served.port, served.token)
        for step in range(steps):  # about 5000 steps a second
            writer.append(Frame(step, time.time(), np.full(layers, 1.0 + step % 5)))
            if step % 5 == 4:
                time.sleep(0.001)
        writer.close()
        report = served.join()
        for opened in pages:
            opened.wait_for_function(f"window.gradbridge.stats.framesReceived === {steps}", timeout=WAIT_MS)
            assert opened.evaluate("window.gradbridge.stats.connections") == 1  # never dropped, never reconnected
        assert report.stats.frames_done == steps and not report.stats.errors
        assert served.page.server.stats.clients_dropped == 1  # the stalled one, alone
    finally:
        stalled.close()
        for context in contexts:
            context.close()
        served.page.stop()


def digits_run(lr_growth: float = 1.04) -> tuple[object, object, object, object]:
    """A real run: a small MLP on scikit-learn's handwritten digits, SGD whose learning rate grows each step
    (a learning-rate range test) until training blows up."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_growth ** step)
    return model, optimizer, schedule, (x, y)


def test_a_real_training_run_served_by_watch(tmp_path: Path, page) -> None:  # type: ignore[no-untyped-def]
    import torch

    from bridge.watching import watch

    model, optimizer, schedule, (x, y) = digits_run()
    steps = 200
    w = watch(model, optimizer, mapping="pentatonic", serve=0, record=tmp_path / "digits.gbrun", announce=None)
    try:
        page.set_viewport_size({"width": 1280, "height": 1000})
        open_page(page, int(w.page_url.split(":")[2].split("/")[0]), w.page_url.split("token=")[1])
        page.click("#play")
        generator = torch.Generator().manual_seed(0)
        for step in range(steps):
            batch = torch.randint(0, x.shape[0], (32,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            w.record_loss(loss)
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
            time.sleep(0.015)  # a training step of 15 ms or so, as a larger model would take
        page.wait_for_function(f"window.gradbridge.stats.framesReceived === {steps}", timeout=WAIT_MS)
        page.wait_for_timeout(400)  # the plots redraw at most four times a second
        assert page.evaluate("window.gradbridge.stats.soundPlayed") > 10
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        target = os.environ.get("GRADBRIDGE_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
    finally:
        w.remove()
