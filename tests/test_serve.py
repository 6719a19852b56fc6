"""The page server without a browser: what it sends (against the run log's own bytes and the MIDI port
output's messages), its token, where it listens, a stalled client, a page joining mid-run, ``watch(serve=)``
and the command line. The page itself, in Chromium, is tested in ``test_serve_page.py``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the page server needs aiohttp (pip install 'gradbridge[serve]')")
import aiohttp  # noqa: E402

from bridge.events import Arrangement  # noqa: E402
from bridge.frames import Frame, RunInfo  # noqa: E402
from bridge.mapping import Mapping  # noqa: E402
from bridge.outputs import OutputSpec  # noqa: E402
from bridge.runlog import RunLogWriter  # noqa: E402
from bridge.serve.history import FrameHistory, SpikeHistory  # noqa: E402
from bridge.serve.pacing import SoundPacer  # noqa: E402
from bridge.serve.protocol import (ALARM, MIDI, NOTE, SOUND_HEAD, SPIKE, SPIKE_MARK, SPIKES_HEAD,  # noqa: E402
                                   sound_message, spike_marks)
from bridge.sinks.midi_port import MidiPortSink  # noqa: E402
from tests.serve_helpers import TIMEOUT_S, collect, norms_of, serve_run, write_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def perone_steps(norms: list[list[float]]) -> tuple[Arrangement, list]:
    mapping = Mapping.load("perone2019")
    arrangement = mapping.arrange(["a", "b"])
    return arrangement, [mapping.map_frame(Frame(i, 100.0 + i, row)) for i, row in enumerate(norms)]


def decode(message: bytes) -> tuple[tuple, np.ndarray, np.ndarray, np.ndarray]:
    head, notes, alarms, _, midi = decode_all(message)
    return head, notes, alarms, midi


def decode_all(message: bytes) -> tuple[tuple, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A sound message's header, notes, alarms, spike alarms and MIDI messages."""
    head = SOUND_HEAD.unpack_from(message)
    at = SOUND_HEAD.size
    notes = np.frombuffer(message, NOTE, head[3], at)
    at += NOTE.itemsize * head[3]
    alarms = np.frombuffer(message, ALARM, head[4], at)
    at += ALARM.itemsize * head[4]
    spikes = np.frombuffer(message, SPIKE, head[11], at)
    at += SPIKE.itemsize * head[11]
    midi = np.frombuffer(message, MIDI, head[5], at)
    assert at + MIDI.itemsize * head[5] == len(message)
    return head, notes, alarms, spikes, midi


# -- what the page is sent ---------------------------------------------------------------------------------

def test_sound_message_carries_the_notes_alarm_and_the_midi_port_bytes() -> None:
    # perone2019, two layers: 200 Hz + 100 Hz per unit of norm, 10 ms each, one after the other; a NaN alarms
    arrangement, (events,) = perone_steps([[1.0, float("nan")]])
    head, notes, alarms, midi = decode(sound_message(events, arrangement, 5, sent_s=123.5))
    assert head[:6] == (2, 2, 0, 1, 1, 4) and head[6:] == (0, 100.0, 123.5, pytest.approx(0.04), 5, 0, 0)
    assert SOUND_HEAD.size == 56 and NOTE.itemsize == 32 and NOTE.fields["frequency_hz"][1] == 24  # float64, aligned
    assert notes["layer"].tolist() == [0] and notes["frequency_hz"].tolist() == [300.0]
    assert notes["offset_s"].tolist() == [0.0] and notes["duration_s"].tolist() == [pytest.approx(0.01)]
    assert notes["midi_note"].tolist() == [62] and notes["velocity"].tolist() == [100]  # 300 Hz: D4 (62.37)
    assert alarms[["layer", "kind", "midi_note", "velocity"]].tolist() == [(1, 0, 49, 120)]
    assert alarms["offset_s"].tolist() == [pytest.approx(0.01)]
    # layer 0's note on channel 1, then the alarm's crash cymbal on channel 10 at 10 ms; offs first at one time
    assert [tuple(m) for m in midi[["status", "data1", "data2"]].tolist()] == [
        (0x90, 62, 100), (0x80, 62, 0), (0x99, 49, 120), (0x89, 49, 0)]
    assert midi["offset_s"].tolist() == pytest.approx([0.0, 0.01, 0.01, 0.02])
    assert midi["note"].tolist() == [1, 1, 2, 2] and midi["order"].tolist() == [1, 0, 1, 0]


def test_sound_message_carries_the_spike_alarms_and_their_cowbell() -> None:
    # pentatonic: a spike when a norm is above 5 x the median of the layer's last 10 (at least 3) norms
    mapping = Mapping.load("pentatonic")
    arrangement = mapping.arrange(["a", "b"])
    rows = [[1.0, 1.0]] * 4 + [[1.0, 20.0]]
    steps = [mapping.map_frame(Frame(i, 100.0 + i, row)) for i, row in enumerate(rows)]
    head, notes, alarms, spikes, midi = decode_all(sound_message(steps[4], arrangement, 4, sent_s=1.0))
    assert head[3:6] == (2, 0, 6) and head[11] == 1 and not alarms.shape[0]  # 2 notes, 1 spike, 3 on/off pairs
    assert notes["frequency_hz"].tolist() == steps[4].notes.frequency_hz.tolist()  # float64: the very same
    # layer 1, 20 times its median, from the step's start for a note's length (120 ms): cowbell, velocity 120
    assert spikes[["layer", "ratio", "midi_note", "velocity"]].tolist() == [(1, 20.0, 56, 120)]
    assert spikes["offset_s"].tolist() == [0.0] and spikes["duration_s"].tolist() == [pytest.approx(0.12)]
    on_off = [tuple(m) for m in midi[["status", "data1", "data2"]].tolist() if m[0] & 0x0F == 9]
    assert on_off == [(0x99, 56, 120), (0x89, 56, 0)]
    marks = spike_marks(steps[4])
    assert marks.dtype == SPIKE_MARK and marks.tolist() == [(4, 1, 20.0)]
    assert all(not events.spikes for events in steps[:4])


def test_midi_rows_are_what_the_midi_port_sink_plays() -> None:
    arrangement, steps = perone_steps([[1.0, 2.0], [0.5, float("inf")], [3.0, 0.0]])
    port = MidiPortSink("unused")
    port._channels, port._mode, port._cc = [0, 1], "notes", 20  # as open() sets them, without a port
    for events in steps:
        heap = sorted(port._messages_of(events, 0.0))
        expected = [(item[3], item[4], item[5], item[6]) for item in heap]
        _, _, _, midi = decode(sound_message(events, arrangement, 0))
        kinds = {0x90: 1, 0x80: 0}
        got = [(kinds[row["status"] & 0xF0], row["status"] & 0x0F, row["data1"], row["data2"]) for row in midi]
        assert got == expected
        assert midi["offset_s"].tolist() == pytest.approx([item[0] for item in heap])


def test_history_keeps_every_frame_then_every_second_and_every_alarm() -> None:
    history = FrameHistory(capacity=6)
    for position in range(10):
        history.add(bytes([position]), alarm=position == 5)
    # 7 records overflow 6: stride 2 keeps 0 2 4 6 and the alarm at 5; then 8 joins, 7 and 9 do not
    assert [r[0] for r in history.records()] == [0, 2, 4, 5, 6, 8] and history.stride == 2
    history.add(bytes([10]), alarm=False)  # 7 records again: stride 4 keeps 0 4 8, the alarm 5
    assert [r[0] for r in history.records()] == [0, 4, 5, 8] and history.stride == 4


def test_pacer_keeps_one_second_queued_and_never_loses_an_alarm() -> None:
    now = [0.0]
    pacer = SoundPacer(max_backlog_s=0.98, clock=lambda: now[0])
    arrangement, steps = perone_steps([[1.0, 1.0]] * 40 + [[1.0, float("nan")]] + [[1.0, 1.0]] * 30)
    # 40 ms steps arriving all at once: the 26th would start 1.0 s from now, past 0.98 s
    admitted = [events.step for events in steps[:41] if pacer.admit(events) is not None]
    assert admitted == list(range(25)) and pacer.thinned == 16
    now[0] = 0.5  # room again: step 41 sounds in the alarm's place
    sent = pacer.admit(steps[41])
    assert sent is not None and sent.step == 40 and sent.alarms
    assert pacer.admit(steps[42]) is not None and pacer.held_alarm() is None


def test_pacer_holds_a_spike_as_an_alarm_but_never_in_place_of_a_nan() -> None:
    now = [0.0]
    pacer = SoundPacer(max_backlog_s=0.98, clock=lambda: now[0])
    mapping = Mapping.load("pentatonic")  # 125 ms steps: 8 fill the second, a spike at 5 x the median
    mapping.arrange(["a", "b"])
    rows = [[1.0, 1.0]] * 10 + [[1.0, 50.0], [1.0, 1.0], [float("nan"), 1.0], [1.0, 50.0]]
    steps = [mapping.map_frame(Frame(i, 100.0 + i, row)) for i, row in enumerate(rows)]
    assert [i for i, e in enumerate(steps) if e.spikes] == [10, 13]
    assert [i for i, e in enumerate(steps) if e.alarms] == [12]
    admitted = [events.step for events in steps[:11] if pacer.admit(events) is not None]
    assert admitted == list(range(8))  # the 9th would start 1 s from now; the spike step waits
    now[0] = 0.1  # room for one more (it starts 0.9 s from now): the step after sounds the spike in its place
    sent = pacer.admit(steps[11])
    assert sent is not None and sent.step == 10 and sent.spikes and pacer.thinned == 4
    assert pacer.admit(steps[12]) is None  # no room (1.025 s): the NaN waits
    assert pacer.admit(steps[13]) is None  # a spike that comes while the NaN waits does not take its place
    assert pacer.held_alarm() is steps[12] and pacer.held_alarm() is None


def test_spike_history_keeps_the_first_marks() -> None:
    history = SpikeHistory(size=3)
    for step, layers in ((2, [0]), (5, [1, 2]), (9, [0, 1])):
        history.add(np.array([(step, layer, 6.0) for layer in layers], dtype=SPIKE_MARK))
    assert history.marks().tolist() == [(2, 0, 6.0), (5, 1, 6.0), (5, 2, 6.0)] and history.seen == 5


# -- the server ----------------------------------------------------------------------------------------------

@pytest.fixture
def finished(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "run.gbrun"
    frames = write_run(path, 40)
    served = serve_run(path)
    served.join()
    yield path, frames, served
    served.page.stop()


def test_every_request_needs_the_token(finished) -> None:  # type: ignore[no-untyped-def]
    _, _, served = finished
    base = f"http://127.0.0.1:{served.port}"

    async def check() -> dict[str, int]:
        got = {}
        async with aiohttp.ClientSession() as session:
            for name, url, headers in [
                    ("page", "/", {}), ("page, wrong token", "/?token=" + "0" * 48, {}),
                    ("file", "/static/app.js", {}), ("worklet", "/static/synth-worklet.js?token=nope", {}),
                    ("page with token", f"/?token={served.token}", {}),
                    ("file with token", f"/static/app.js?token={served.token}", {}),
                    ("header", "/static/store.js", {"Authorization": f"token {served.token}"}),
                    ("post", f"/?token={served.token}", None), ("missing", f"/static/nope.js?token={served.token}", {})]:
                method = session.post if headers is None else session.get
                async with method(base + url, headers=headers or {}) as response:
                    got[name] = response.status
                    if name == "page with token":
                        page = await response.text()
                        assert f'src="static/app.js?token={served.token}"' in page
                        assert response.headers["Referrer-Policy"] == "no-referrer"
            for name, url in [("ws", "/ws"), ("ws, wrong token", "/ws?token=abcdefgh")]:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(base + url)
                got[name] = refused.value.status
        return got

    assert asyncio.run(check()) == {"page": 403, "page, wrong token": 403, "file": 403, "worklet": 403,
                                    "page with token": 200, "file with token": 200, "header": 200, "post": 405,
                                    "missing": 404, "ws": 403, "ws, wrong token": 403}


def test_a_finished_run_arrives_whole_as_the_run_logs_own_records(finished) -> None:  # type: ignore[no-untyped-def]
    path, frames, served = finished
    got = asyncio.run(collect(served.port, served.token))
    data = path.read_bytes()
    size = 40 + 4 * 3
    on_disk = [data[i:i + size] for i in range(len(data) - size * 41, len(data) - size, size)]
    assert got.records == on_disk  # every frame, byte for byte as the log holds it
    assert got.hello["layer_names"] == ["layer0", "layer1", "layer2"]
    assert got.hello["arrangement"]["description"] == Mapping.load("pentatonic").arrange(
        ["layer0", "layer1", "layer2"]).description
    assert got.hello["midi"]["programs"] == [[0xC0, 0], [0xC1, 11], [0xC2, 48]]  # pentatonic's first programs
    assert got.texts[-1] == {"type": "end", "frames": 40}
    assert all(message[0] == 3 for message in got.sounds)  # sounded before this page came: for the roll only


def test_what_a_client_sends_changes_nothing(finished) -> None:  # type: ignore[no-untyped-def]
    path, _, served = finished
    before = path.read_bytes()

    async def meddle() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{served.port}/ws?token={served.token}") as ws:
                await ws.send_str('{"type": "stop"}')
                await ws.send_bytes(b"\x01" + b"\x00" * 200)
                await ws.send_str("x" * 5000)  # over the 4 KiB a page may send: the server closes it

    asyncio.run(meddle())
    got = asyncio.run(collect(served.port, served.token))
    assert len(got.records) == 40 and got.texts[-1] == {"type": "end", "frames": 40}
    assert path.read_bytes() == before and served.page.server.stats.frames == 40


def test_a_page_joining_mid_run_gets_the_history_then_plays_from_then(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("layer0", "layer1", "layer2"), {"mapping": "pentatonic"}))
    served = serve_run(path, linger=False)
    for step in range(50):
        writer.append(Frame(step, time.time(), norms_of(step, 3)))
    while served.page.server.stats.frames < 50:
        time.sleep(0.01)
    time.sleep(1.2)  # the first steps' sound is over; later ones find room again

    async def join_then_write() -> object:
        task = asyncio.ensure_future(collect(served.port, served.token))
        await asyncio.sleep(0.5)
        for step in range(50, 60):
            writer.append(Frame(step, time.time(), norms_of(step, 3)))
            await asyncio.sleep(0.13)
        writer.close()
        return await task

    got = asyncio.run(join_then_write())
    served.join()
    assert [int.from_bytes(r[4:12], "little") for r in got.records] == list(range(60))  # type: ignore[attr-defined]
    live = [SOUND_HEAD.unpack_from(m)[6] for m in got.sounds if m[0] == 2]  # type: ignore[attr-defined]
    past = [SOUND_HEAD.unpack_from(m)[6] for m in got.sounds if m[0] == 3]  # type: ignore[attr-defined]
    assert past and max(past) < 50 and live == list(range(50, 60))


def test_a_page_joining_after_a_spike_gets_it_for_its_plots(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    norms = [[1.0, 1.0, 1.0] for _ in range(20)]
    norms[12][2] = 100.0  # 100 x layer 2's median: a spike alarm under pentatonic (5 x)
    with RunLogWriter(path, RunInfo(("layer0", "layer1", "layer2"), {"mapping": "pentatonic"})) as writer:
        for step, row in enumerate(norms):
            writer.append(Frame(step, 1_700_000_000.0 + step, row))
    served = serve_run(path, spec=OutputSpec(serve=0, clock="free"))  # each step sounds as itself
    try:
        served.join()
        got = asyncio.run(collect(served.port, served.token))
    finally:
        served.page.stop()
    spikes = [m for m in got.sounds if m[0] == 4]
    assert len(spikes) == 1 and SPIKES_HEAD.unpack_from(spikes[0]) == (4, 1)
    assert np.frombuffer(spikes[0], SPIKE_MARK, 1, SPIKES_HEAD.size).tolist() == [(12, 2, 100.0)]
    # it comes before the steps that sounded, which carry it too (drawn in the piano roll only)
    kinds = [m[0] for m in got.sounds]
    assert kinds[0] == 4 and set(kinds[1:]) == {3}
    past = [decode_all(m) for m in got.sounds[1:]]
    sounded = [(int(h[6]), s[["layer", "ratio", "midi_note", "velocity"]].tolist()) for h, _, _, s, _ in past if len(s)]
    assert sounded == [(12, [(2, 100.0, 56, 120)])]


def stalled_client(port: int, token: str) -> socket.socket:
    """A WebSocket client that connects, takes the handshake's answer and then reads nothing (a tiny receive
    buffer, so the server's writes back up at once)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += client.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return client


def test_a_stalled_client_never_holds_up_the_follower_or_another_page(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # 1064 bytes a record, 4.3 MB in all: more than the stalled client's 2 MiB queue, the socket's 0.5 MiB and
    # aiohttp's 64 KiB buffer
    layers, steps = 256, 4000
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(tuple(f"l{i}" for i in range(layers)), {"mapping": "pentatonic"}))
    served = serve_run(path, linger=True)
    served.page.server.max_client_bytes = 2 << 20
    stalled = stalled_client(served.port, served.token)

    def write() -> None:
        for step in range(steps):  # about 4000 steps a second
            writer.append(Frame(step, time.time(), np.full(layers, 1.0 + step % 7)))
            if step % 4 == 3:
                time.sleep(0.001)
        writer.close()

    async def run() -> object:
        reader = asyncio.ensure_future(collect(served.port, served.token, layers=layers))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(write)  # the reading page reads meanwhile
        return await reader

    got = asyncio.run(run())
    report = served.join()
    assert report.stats.frames_done == steps and not report.stats.errors
    assert [int.from_bytes(r[4:12], "little") for r in got.records] == list(range(steps))  # type: ignore[attr-defined]
    assert served.page.server.stats.clients_dropped == 1
    assert "page 1 fell 2 MiB of frames behind and was disconnected" in caplog.text
    stalled.settimeout(TIMEOUT_S)
    received = 0
    while chunk := stalled.recv(1 << 16):  # what it was sent before the server let it go, then the end
        received += len(chunk)
    assert received > 0  # and recv gave b"" rather than timing out: the server closed the connection
    stalled.close()
    served.page.stop()


def test_listens_on_loopback_only_by_default(finished) -> None:  # type: ignore[no-untyped-def]
    _, _, served = finished
    assert OutputSpec(serve=0).serve_host == "127.0.0.1" and served.page.server.host == "127.0.0.1"
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == served.port]
    assert [fields[1].split(":")[0] for fields in listening] == ["0100007F"]  # 127.0.0.1, nothing else
    others = [a for a in _own_addresses() if not a.startswith("127.")]
    for address in others:  # this machine's other addresses refuse it
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.settimeout(2)
            probe.connect((address, served.port))


def _own_addresses() -> list[str]:
    found = set()
    with contextlib.suppress(socket.gaierror):  # a host name that does not resolve: no address from it
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, contextlib.suppress(OSError):  # no route: none
        udp.connect(("192.0.2.1", 9))  # the address a route out would use
        found.add(udp.getsockname()[0])
    return sorted(found)


def test_another_host_warns_who_can_listen(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_run(path, 5)
    process = subprocess.Popen([sys.executable, "-m", "bridge", "serve", str(path), "--port", "0", "--host",
                                "0.0.0.0"], stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)
    lines = []
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        if "still serving" in line:
            break
    os.killpg(process.pid, signal.SIGINT)
    process.wait(TIMEOUT_S)
    text = "".join(lines)
    port = int(text.split("http://0.0.0.0:")[1].split("/")[0])
    assert (f"serving on 0.0.0.0: anyone who can reach this machine on port {port} and has the token can listen "
            "to the run, and the token travels unencrypted") in text
    assert process.returncode == 0


def test_watch_serves_the_run_from_its_follower_process(tmp_path: Path) -> None:
    import torch

    from bridge.watching import watch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    w = watch(model, optimizer, serve=0, announce=None, record=tmp_path / "run.gbrun")
    assert w.page_url is not None and w.page_url.startswith("http://127.0.0.1:")
    port, token = int(w.page_url.split(":")[2].split("/")[0]), w.page_url.split("token=")[1]
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(collect(port, token, layers=2))))
    thread.start()
    time.sleep(0.5)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        w.record_loss(loss)
        optimizer.step()
        optimizer.zero_grad()
    w.remove()
    thread.join(TIMEOUT_S)
    got = result[0]
    assert got.hello["layer_names"] == list(w.layer_names) == ["0", "2"]  # type: ignore[attr-defined]
    assert [int.from_bytes(r[4:12], "little") for r in got.records] == list(range(20))  # type: ignore[attr-defined]
    assert got.texts[-1] == {"type": "end", "frames": 20}  # type: ignore[attr-defined]


# -- the command line and the settings --------------------------------------------------------------------

@pytest.mark.parametrize("args, error", [
    (["--port", "70000"], "serve must be a TCP port from 0 to 65535 (0: any free one), got 70000"),
    (["--token", "bad token!"], "serve_token must be 8-256 letters, digits, '-' or '_'"),
])
def test_bad_port_and_token_are_named(tmp_path: Path, args: list[str], error: str) -> None:
    path = tmp_path / "run.gbrun"
    write_run(path, 3)
    run = subprocess.run([sys.executable, "-m", "bridge", "serve", str(path), *args], capture_output=True, text=True,
                         env=env(), timeout=TIMEOUT_S)
    assert run.returncode == 1 and error in run.stderr


def test_without_aiohttp_one_line_names_the_extra(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_run(path, 3)
    code = f"import sys; sys.modules['aiohttp'] = None; from bridge.cli import main; sys.exit(main(['serve', {str(path)!r}]))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=TIMEOUT_S)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        'gradbridge: error: serving a page needs aiohttp, which is not installed. Fix: pip install '
        '"gradbridge[serve]" (or pip install aiohttp)']


def test_the_page_settings_travel_to_the_follower_process() -> None:
    from bridge.presets import load_preset
    from bridge.wire import FollowerSetup

    spec = OutputSpec(serve=8765, serve_host="0.0.0.0", serve_token="abcdefgh12")
    setup = FollowerSetup("run.gbrun", load_preset("pentatonic"), spec)
    assert FollowerSetup.from_json(setup.to_bytes()[4:]).outputs == spec
    assert spec.has_live
    with pytest.raises(TypeError, match="serve must be a TCP port"):
        OutputSpec(serve=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="serve_host must be an address"):
        OutputSpec(serve=1, serve_host=" ")
