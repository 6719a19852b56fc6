"""Tests of the OSC sink against real receivers (liblo's oscdump, Pure Data, sclang) and its own failure modes.

Expected values are worked out by hand from the ``perone2019`` preset: a layer with norm n plays
200 + 100·n Hz, the nearest MIDI note is round(69 + 12·log2(f / 440)), velocity 100, amplitude 0.1, pan 0,
10 ms per layer with the layers 10 ms apart, and a step lasts 4 × 0.01 + 0.02 = 0.06 s for 4 layers.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pythonosc.osc_bundle import OscBundle

from bridge.errors import SinkError
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs
from bridge.replay import replay
from bridge.sinks.base import Sink
from bridge.sinks.osc import OscSink, pack_bundles, parse_osc_target, seconds_to_timetag
from tests.conftest import end_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = ["conv1", "conv2", "fc1", "fc2"]
NTP_OFFSET = 2208988800  # seconds from 1900 to 1970


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (CI installs it; see .ci/run)")
    return path


class Peer:
    """A receiving program whose output lines a thread collects; ``stop`` ends it (terminate, then kill)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []  # (time read, line)
        self.port = 0
        self._ignore: str | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.time(), line.rstrip("\n")))

    def wait_for(self, done: Callable[[list[str]], bool], timeout_s: float = 5.0,
                 poke: Callable[[], None] | None = None) -> list[str]:
        """Collect lines until ``done(lines so far)``, calling ``poke`` about every 50 ms meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not done([text for _, text in self.seen]):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s; received: {[t for _, t in self.seen][-30:]}")
            if poke is not None:
                poke()
            try:
                read_s, line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if self._ignore is None or self._ignore not in line:
                self.seen.append((read_s, line))
        return [text for _, text in self.seen]

    def wait_ready(self, port: int, probe: bytes, marker: str) -> None:
        """Send ``probe`` to ``port`` until a line shows ``marker``; later probe lines are ignored."""
        def poke() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(probe, ("127.0.0.1", port))
        self.wait_for(lambda lines: any(marker in line for line in lines), timeout_s=10, poke=poke)
        self.port, self._ignore = port, marker
        self.seen.clear()

    def stop(self) -> None:
        end_process(self.process)
        self._thread.join(timeout=5)


# a bare OSC message /ready with no arguments: address and typetag, each NUL-padded to 4 bytes
READY = b"/ready\x00\x00" + b",\x00\x00\x00"
# /gradbridge/norms with one float, -1.0 (0xbf800000): what the Pd patch prints as "gradbridge-norms: -1"
PD_READY = b"/gradbridge/norms\x00\x00\x00" + b",f\x00\x00" + struct.pack(">f", -1.0)


@pytest.fixture
def oscdump():
    need("oscdump")
    port = free_udp_port()
    peer = Peer(["oscdump", "-L", str(port)])
    try:
        peer.wait_ready(port, READY, "/ready")
        yield peer
    finally:
        peer.stop()


def perone_sink(port: int, *, latency_s: float = 0.0, names: list[str] = NAMES) -> tuple[OscSink, Mapping]:
    mapping = Mapping.load("perone2019")
    arrangement = dataclasses.replace(mapping.arrange(names), osc_latency_s=latency_s)
    sink = OscSink("127.0.0.1", port)
    sink.open(arrangement)
    return sink, mapping


FRAMES = [
    Frame(step=10, time_s=0.0, norms=[1.0, 2.0, 0.5, 0.25], loss=0.5, lr=0.1),
    Frame(step=11, time_s=0.0, norms=[2.0, math.nan, 1e40, -math.inf], loss=0.25, lr=0.1),
    Frame(step=12, time_s=0.0, norms=[0.5, 1.0, math.inf, 3.0]),  # loss and lr unknown: NaN
]

# what oscdump prints after the timetag: address, type tags, arguments (floats with %f, strings quoted)
L = "/gradbridge/layer isfffiiffff"
OSCDUMP_EXPECTED = [
    # step 10 starts the run at 0 s; first frame: each layer's range is one point, value 0.5
    "/gradbridge/step ifffifii 10 0.500000 0.100000 0.000000 4 0.060000 10 10",
    f'{L} 0 "conv1" 1.000000 0.500000 300.000000 62 100 0.100000 0.000000 0.010000 0.000000',  # 62.37
    f'{L} 1 "conv2" 2.000000 0.500000 400.000000 67 100 0.100000 0.000000 0.010000 0.010000',  # 67.35
    f'{L} 2 "fc1" 0.500000 0.500000 250.000000 59 100 0.100000 0.000000 0.010000 0.020000',  # 59.21
    f'{L} 3 "fc2" 0.250000 0.500000 225.000000 57 100 0.100000 0.000000 0.010000 0.030000',  # 57.39
    "/gradbridge/norms ffff 1.000000 2.000000 0.500000 0.250000",
    # step 11 at 0.06 s: conv1 at the top of its range 1–2; 1e40 overflows float32 to inf and its pitch is
    # clipped to max_frequency_hz 20000 (note 69 + 12·log2(20000/440) = 135, clipped to 127)
    "/gradbridge/step ifffifii 11 0.250000 0.100000 0.060000 4 0.060000 11 11",
    f'{L} 0 "conv1" 2.000000 1.000000 400.000000 67 100 0.100000 0.000000 0.010000 0.000000',
    f'{L} 2 "fc1" inf 1.000000 20000.000000 127 100 0.100000 0.000000 0.010000 0.020000',
    '/gradbridge/alarm issff 1 "conv2" "nan" 0.010000 0.010000',
    '/gradbridge/alarm issff 3 "fc2" "-inf" 0.010000 0.030000',
    "/gradbridge/norms ffff 2.000000 nan inf -inf",
    # step 12 at 0.12 s: conv1 0.5 is the new low of 0.5–2 (value 0); conv2 1.0 the low of 1–2 (value 0);
    # fc2 3.0 the high of 0.25–3 (value 1), 500 Hz = note 71.21
    "/gradbridge/step ifffifii 12 nan nan 0.120000 4 0.060000 12 12",
    f'{L} 0 "conv1" 0.500000 0.000000 250.000000 59 100 0.100000 0.000000 0.010000 0.000000',
    f'{L} 1 "conv2" 1.000000 0.000000 300.000000 62 100 0.100000 0.000000 0.010000 0.010000',
    f'{L} 3 "fc2" 3.000000 1.000000 500.000000 71 100 0.100000 0.000000 0.010000 0.030000',
    '/gradbridge/alarm issff 2 "fc1" "+inf" 0.010000 0.020000',
    "/gradbridge/norms ffff 0.500000 1.000000 inf 3.000000",
]


def split_oscdump(line: str) -> tuple[float, str]:
    """An oscdump line → (its timetag as Unix seconds, the rest)."""
    tag, rest = line.split(" ", 1)
    seconds, fraction = (int(part, 16) for part in tag.split("."))
    return seconds - NTP_OFFSET + fraction / 2**32, rest


def test_osc_sink_is_a_sink() -> None:
    assert isinstance(OscSink(), Sink)
    assert OscSink().name == "osc"


def test_oscdump_decodes_every_message_as_worked_out(oscdump: Peer) -> None:
    sink, mapping = perone_sink(oscdump.port)
    before = time.time()
    for frame in FRAMES:
        sink.send(mapping.map_frame(frame))
    lines = oscdump.wait_for(lambda seen: len(seen) >= len(OSCDUMP_EXPECTED))
    sink.close()
    decoded = [split_oscdump(line) for line in lines]
    assert [rest for _, rest in decoded] == OSCDUMP_EXPECTED
    assert (sink.sent, sink.dropped, sink.errors) == (3, 0, 0)
    # "immediately": liblo dispatches at once and prints the time it did so, between our send and our read
    arrived = [t for t, _ in oscdump.seen]
    for (timetag_s, _), read_s in zip(decoded, arrived):
        assert before - 0.001 <= timetag_s <= read_s + 0.001


def test_oscdump_holds_a_latency_bundle_until_its_timetag(oscdump: Peer) -> None:
    latency_s = 0.25
    sink, mapping = perone_sink(oscdump.port, latency_s=latency_s)
    before = time.time()
    sink.send(mapping.map_frame(FRAMES[0]))
    after = time.time()
    oscdump.wait_for(lambda seen: len(seen) >= 6)
    sink.close()
    for read_s, line in oscdump.seen:
        timetag_s, _ = split_oscdump(line)
        # the timetag is the send time + latency, and liblo held the bundle until then (it dispatches held
        # bundles up to 10 ms early, its polling step; an "immediately" bundle would come 250 ms sooner)
        assert before + latency_s - 1e-6 <= timetag_s <= after + latency_s + 1e-6
        assert read_s >= timetag_s - 0.02


def test_bundle_bytes_timetag_and_custom_prefix() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        mapping = Mapping.load("perone2019")
        sink = OscSink("127.0.0.1", receiver.getsockname()[1], prefix="/run1/gb")
        sink.open(mapping.arrange(["a"]))
        sink.send(mapping.map_frame(Frame(step=3, time_s=0.0, norms=[0.5], loss=1.0, lr=0.5)))
        sink.close()
        datagram = receiver.recv(65536)
    step = (b"/run1/gb/step\x00\x00\x00" + b",ifffifii\x00\x00\x00" + struct.pack(">i", 3) + struct.pack(">f", 1.0)
            + struct.pack(">f", 0.5) + struct.pack(">f", 0.0) + struct.pack(">i", 1) + struct.pack(">f", 0.03)
            + struct.pack(">ii", 3, 3))  # the first and last step a tick stands for: this one step
    layer = (b"/run1/gb/layer\x00\x00" + b",isfffiiffff\x00\x00\x00\x00" + struct.pack(">i", 0) + b"a\x00\x00\x00"
             + struct.pack(">fffiiffff", 0.5, 0.5, 250.0, 59, 100, 0.1, 0.0, 0.01, 0.0))
    norms = b"/run1/gb/norms\x00\x00" + b",f\x00\x00" + struct.pack(">f", 0.5)
    expected = b"#bundle\x00" + b"\x00" * 7 + b"\x01"  # timetag 1: "immediately"
    for message in (step, layer, norms):
        expected += struct.pack(">i", len(message)) + message
    assert datagram == expected


def test_timetag_of_unix_seconds() -> None:
    assert seconds_to_timetag(0.0) == NTP_OFFSET << 32
    assert seconds_to_timetag(1.5) == ((NTP_OFFSET + 1) << 32) | 2**31
    assert seconds_to_timetag(1.25) == ((NTP_OFFSET + 1) << 32) | 2**30


def test_many_layers_are_split_into_decodable_bundles(oscdump: Peer) -> None:
    names = [f"layer{i:03d}" for i in range(300)]
    norms = np.linspace(0.0, 2.99, 300)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        mapping = Mapping.load("perone2019")
        arrangement = mapping.arrange(names)
        events = mapping.map_frame(Frame(step=0, time_s=0.0, norms=norms))
        local = OscSink("127.0.0.1", receiver.getsockname()[1])
        dumped = OscSink("127.0.0.1", oscdump.port)
        for sink in (local, dumped):
            sink.open(arrangement)
            sink.send(events)
            sink.close()
        datagrams = [receiver.recv(65536) for _ in range(local.sent)]
    # a layer message: address 20 + type tags 16 + index 4 + "layerNNN" 12 + 9 values × 4 = 88 bytes, plus
    # its 4-byte size: 92. Bundle head 16, step element 4 + 20 + 12 + 32 = 68: the first bundle holds
    # (8192 − 16 − 68) // 92 = 88 layers, the next ones (8192 − 16) // 92 = 88, the last 300 − 264 = 36
    # and the norms (4 + 20 + 304 type tags + 1200 = 1528 bytes).
    assert [len(d) for d in datagrams] == [16 + 68 + 88 * 92, 16 + 88 * 92, 16 + 88 * 92, 16 + 36 * 92 + 1528]
    contents = [[(message.address, message.params) for message in OscBundle(d)] for d in datagrams]
    assert contents[0][0][0] == "/gradbridge/step" and contents[0][0][1][0] == 0
    assert all(d[8:16] == b"\x00" * 7 + b"\x01" for d in datagrams)
    layers = [params for part in contents for address, params in part if address == "/gradbridge/layer"]
    assert [p[0] for p in layers] == list(range(300))
    assert [p[1] for p in layers] == names
    assert [p[4] for p in layers] == pytest.approx(200 + 100 * norms, rel=1e-6)
    assert contents[-1][-1][0] == "/gradbridge/norms"
    assert contents[-1][-1][1] == pytest.approx(norms.astype(np.float32).tolist())
    lines = oscdump.wait_for(lambda seen: len(seen) >= 302)
    assert sum(" /gradbridge/layer " in line for line in lines) == 300


def test_pack_bundles_puts_an_oversized_message_alone() -> None:
    small, big = b"s" * 8, b"b" * 100
    bundles = pack_bundles([small, big, small], timetag=1, max_bytes=64)
    head = b"#bundle\x00" + struct.pack(">Q", 1)
    size = struct.pack(">i", 8)
    assert bundles == [head + size + small, head + struct.pack(">i", 100) + big, head + size + small]


def test_nan_and_inf_everywhere_give_decodable_messages() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        mapping = Mapping.load("pentatonic")
        sink = OscSink("127.0.0.1", receiver.getsockname()[1])
        sink.open(mapping.arrange(NAMES))
        sink.send(mapping.map_frame(Frame(step=2**40, time_s=0.0, norms=[math.nan, math.inf, -math.inf, math.nan],
                                          loss=math.inf, lr=math.nan)))
        sink.close()
        content = [(m.address, m.params) for m in OscBundle(receiver.recv(65536))]
    step, *alarms, norms = content
    assert step[0] == "/gradbridge/step" and step[1][0] == 2**31 - 1  # clamped to int32
    assert math.isinf(step[1][1]) and math.isnan(step[1][2])
    assert [(a, p[0], p[1], p[2]) for a, p in alarms] == [
        ("/gradbridge/alarm", 0, "conv1", "nan"), ("/gradbridge/alarm", 1, "conv2", "+inf"),
        ("/gradbridge/alarm", 2, "fc1", "-inf"), ("/gradbridge/alarm", 3, "fc2", "nan")]
    assert norms[0] == "/gradbridge/norms"
    assert [repr(v) for v in norms[1]] == ["nan", "inf", "-inf", "nan"]


def test_a_receiver_that_is_down_is_counted_and_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    port = free_udp_port()  # bound then closed: nothing listens there
    sink, mapping = perone_sink(port)
    events = mapping.map_frame(FRAMES[0])
    deadline = time.monotonic() + 3
    with caplog.at_level(logging.INFO, logger="bridge"):
        while sink.errors < 3 and time.monotonic() < deadline:
            sink.send(events)  # must never raise
            time.sleep(0.01)
        sink.close()
        sink.close()
    assert sink.errors >= 3
    assert sink.dropped == 0  # each refusal reports an earlier datagram; the retry hands the current one on
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"is sclang/Pd/Max listening on 127.0.0.1:{port}?" in warnings[0].getMessage()
    assert "ConnectionRefusedError" in warnings[0].getMessage()
    assert any(f"{sink.errors} send error(s)" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


class FullBuffer:
    """Stands in for a socket whose send buffer is full."""

    closed = False

    def send(self, datagram: bytes) -> int:
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    def close(self) -> None:
        self.closed = True


def test_a_full_send_buffer_drops_steps_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    sink, mapping = perone_sink(free_udp_port())
    sink._socket.close()  # type: ignore[union-attr]
    stand_in = FullBuffer()
    sink._socket = stand_in  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="bridge"):
        for frame in FRAMES:
            sink.send(mapping.map_frame(frame))
    sink.close()
    assert (sink.sent, sink.dropped, sink.errors) == (0, 3, 3)
    assert stand_in.closed
    assert len(caplog.records) == 1 and "send buffer is full" in caplog.records[0].getMessage()


def test_open_send_close_errors() -> None:
    mapping = Mapping.load("perone2019")
    arrangement = mapping.arrange(NAMES)
    with pytest.raises(SinkError, match=r"'no-such-host\.invalid' does not resolve.*127\.0\.0\.1"):
        OscSink("no-such-host.invalid", 9000).open(arrangement)
    with pytest.raises(SinkError, match=r"'a\.\.b' does not resolve \(not a valid host name\)"):
        OscSink("a..b", 9000).open(arrangement)
    sink = OscSink("127.0.0.1", free_udp_port())
    with pytest.raises(SinkError, match="not open"):
        sink.send(mapping.map_frame(FRAMES[0]))
    sink.open(arrangement)
    with pytest.raises(SinkError, match="already open"):
        sink.open(arrangement)
    sink.close()
    sink.close()
    with pytest.raises(SinkError, match="not open"):
        sink.send(mapping.map_frame(FRAMES[1]))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"port": 0}, ValueError, "from 1 to 65535, got 0"),
    ({"port": 65536}, ValueError, "from 1 to 65535, got 65536"),
    ({"port": "57120"}, TypeError, "port must be an int"),
    ({"port": True}, TypeError, "port must be an int"),
    ({"host": ""}, ValueError, "host is empty"),
    ({"host": None}, TypeError, "host must be a str"),
    ({"prefix": "gradbridge"}, ValueError, "prefix must look like"),
    ({"prefix": "/gradbridge/"}, ValueError, "prefix must look like"),
    ({"prefix": "/grad bridge"}, ValueError, "prefix must look like"),
    ({"prefix": "/grad*"}, ValueError, "prefix must look like"),
])
def test_constructor_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        OscSink(**kwargs)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:57120", ("127.0.0.1", 57120)),
    ("localhost:9000", ("localhost", 9000)),
    (":57120", ("127.0.0.1", 57120)),
    ("[::1]:9000", ("::1", 9000)),
    (" osc.udp://localhost:7000/ ", ("localhost", 7000)),
    ("synth.local:1", ("synth.local", 1)),
])
def test_parse_osc_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_osc_target(text) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("localhost", "has no port"),
    ("localhost:", "has no port after ':'"),
    ("localhost:0", "from 1 to 65535, got '0'"),
    ("localhost:65536", "from 1 to 65535, got '65536'"),
    ("localhost:abc", "whole number from 1 to 65535, got 'abc'"),
    ("localhost:-1", "got '-1'"),
    ("::1:9000", "IPv6 address in brackets"),
    ("[::1]", r"has no port; write it after the brackets, e.g. '\[::1\]:57120'"),
    ("[::1:9000", "needs closing brackets"),
    ("57120", "has no host; for this machine write ':57120'"),
    ("", "is not HOST:PORT"),
    ("local host:9000", "is not HOST:PORT"),
    ("osc.tcp://localhost:9000", "only UDP"),
])
def test_parse_osc_target_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_osc_target(text)
    with pytest.raises(TypeError, match="must be a str"):
        parse_osc_target(57120)  # type: ignore[arg-type]


# --- the patches --------------------------------------------------------------------------------------------

PD_EXPECTED = [
    "gradbridge-step: 10 0.5 0.1 0 4 0.06 10 10",
    "gradbridge-layer: 0 conv1 1 0.5 300 62 100 0.1 0 0.01 0",
    "gradbridge-layer: 1 conv2 2 0.5 400 67 100 0.1 0 0.01 0.01",
    "gradbridge-layer: 2 fc1 0.5 0.5 250 59 100 0.1 0 0.01 0.02",
    "gradbridge-layer: 3 fc2 0.25 0.5 225 57 100 0.1 0 0.01 0.03",
    "gradbridge-norms: 1 2 0.5 0.25",
    "gradbridge-step: 11 0.25 0.1 0.06 4 0.06 11 11",
    "gradbridge-layer: 0 conv1 2 1 400 67 100 0.1 0 0.01 0",
    "gradbridge-layer: 2 fc1 0 1 20000 127 100 0.1 0 0.01 0.02",  # Pd turns inf into 0
    "gradbridge-alarm: 1 conv2 nan 0.01 0.01",  # the kind is a symbol: kept
    "gradbridge-alarm: 3 fc2 -inf 0.01 0.03",
    "gradbridge-norms: 2 0 0 0",  # Pd turns NaN and ±inf floats into 0
]


def test_pd_patch_prints_what_was_sent(tmp_path: Path) -> None:
    need("pd")
    shipped = (EXAMPLES / "pd" / "gradbridge.pd").read_text()
    assert shipped.count("gradbridge-osc 57120;") == 1  # the port is the abstraction's argument
    port = free_udp_port()
    patch = tmp_path / "gradbridge.pd"
    patch.write_text(shipped.replace("gradbridge-osc 57120;", f"gradbridge-osc {port};"))
    peer = Peer(["pd", "-nogui", "-nosound", "-stderr", "-path", str(EXAMPLES / "pd"), "-open", str(patch)])
    try:
        peer.wait_ready(port, PD_READY, "gradbridge-norms: -1")
        sink, mapping = perone_sink(port)
        for frame in FRAMES[:2]:
            sink.send(mapping.map_frame(frame))
        sink.close()
        lines = peer.wait_for(lambda seen: len(seen) >= len(PD_EXPECTED))
    finally:
        peer.stop()
    assert lines == PD_EXPECTED
    problems = [line for _, line in peer.seen if "error" in line.lower() or "couldn't create" in line]
    assert problems == []


def test_sclang_runs_the_supercollider_file(tmp_path: Path) -> None:
    need("sclang")
    port = free_udp_port()
    script = EXAMPLES / "supercollider" / "gradbridge.scd"
    wrapper = tmp_path / "run.scd"
    wrapper.write_text(f"~gradbridgePort = {port}; ~gradbridgePost = true; ~gradbridgeBoot = false;\n"
                       f"{json.dumps(str(script))}.load;\n\"gradbridge test: loaded\".postln;\n")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(runtime), QT_QPA_PLATFORM="offscreen",
               QTWEBENGINE_DISABLE_SANDBOX="1")  # Qt's web engine refuses to start as root otherwise
    # -u: sclang's own port, a free one, so the test neither takes 57120 nor hears others' traffic there
    peer = Peer(["sclang", "-u", str(free_udp_port()), str(wrapper)], env=env)
    try:
        startup = peer.wait_for(lambda lines: "gradbridge test: loaded" in lines, timeout_s=20)
        assert not [line for line in startup if line.startswith("ERROR")]
        assert any(line.startswith("gradbridge: listening for OSC") and str(port) in line for line in startup)
        peer.seen.clear()
        sink, mapping = perone_sink(port)
        for frame in FRAMES[:2]:
            sink.send(mapping.map_frame(frame))
        sink.close()
        lines = peer.wait_for(lambda seen: any(line.startswith("gradbridge norms [ 2.0") for line in seen))
    finally:
        peer.stop()
    assert lines[0].startswith("gradbridge step 10 loss 0.5 lr 0.1")
    assert lines[1].startswith("gradbridge layer 0 conv1 norm 1.0 value 0.5 freq 300.0 note 62 velocity 100 ")
    assert "gradbridge layer 2 fc1 norm inf value 1.0 freq 20000.0 note 127 velocity 100 " in " ".join(lines) + " "
    assert "gradbridge ALARM layer 1 conv2 is nan" in lines
    assert "gradbridge ALARM layer 3 fc2 is -inf" in lines
    assert lines[-1] == "gradbridge norms [ 2.0, nan, inf, -inf ]"


def max_patcher(name: str) -> tuple[dict[str, dict], dict[str, str], list[tuple[list, list]]]:
    """A Max patch's boxes by id, the ids of its objects by text, and its wires; every wire joins an existing
    outlet to an existing inlet."""
    patcher = json.loads((EXAMPLES / "max" / name).read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    by_text = {b.get("text", ""): box_id for box_id, b in boxes.items() if b["maxclass"] in ("newobj", "message")}
    wires = [(w["patchline"]["source"], w["patchline"]["destination"]) for w in patcher["lines"]]
    for (source, outlet), (destination, inlet) in wires:
        assert outlet < boxes[source]["numoutlets"] and inlet < boxes[destination]["numinlets"]
    return boxes, by_text, wires


def test_max_patch_is_valid_json_wired_to_our_addresses() -> None:
    boxes, by_text, wires = max_patcher("gradbridge.maxpat")
    receive = by_text["udpreceive 57120"]
    route = by_text["route /gradbridge/layer /gradbridge/step /gradbridge/alarm /gradbridge/norms /gradbridge/spike"]
    assert ([receive, 0], [route, 0]) in wires
    # each route outlet feeds the unpack for that message's type tags (s = string) and a print
    for outlet, unpack, printer in [(0, "unpack i s f f f i i f f f f", "print gradbridge-layer"),
                                    (1, "unpack i f f f i f i i", "print gradbridge-step"),
                                    (2, "unpack i s s f f", "print gradbridge-alarm"),
                                    (4, "unpack i s f f f", "print gradbridge-spike")]:
        assert ([route, outlet], [by_text[unpack], 0]) in wires
        assert ([route, outlet], [by_text[printer], 0]) in wires
    assert ([route, 3], [by_text["print gradbridge-norms"], 0]) in wires
    # polyphonic: every layer's frequency, amplitude, pan, duration and offset go, as a "note", to a free voice of
    # [poly~ gradbridge-voice 64], both of whose outlets reach the speaker
    layer, pack = by_text["unpack i s f f f i i f f f f"], by_text["pack f f f f f"]
    poly = by_text["poly~ gradbridge-voice 64"]
    assert ([layer, 4], [pack, 0]) in wires and ([layer, 7], [pack, 1]) in wires and ([layer, 8], [pack, 2]) in wires
    assert ([pack, 0], [by_text["prepend note"], 0]) in wires and ([by_text["prepend note"], 0], [poly, 0]) in wires
    dac = next(box_id for box_id, b in boxes.items() if b["maxclass"] == "ezdac~")
    assert ([poly, 0], [dac, 0]) in wires and ([poly, 1], [dac, 1]) in wires
    voice_boxes, voice, voice_wires = max_patcher("gradbridge-voice.maxpat")
    assert (boxes[poly]["numinlets"], boxes[poly]["numoutlets"]) == (
        sum(b.get("text", "").startswith("in ") for b in voice_boxes.values()),
        sum(b.get("text", "").startswith("out~ ") for b in voice_boxes.values()))
    # the voice is busy (thispoly~ 1) from arrival, and free (0) after its offset, duration and 5 ms of release
    busy = [voice_boxes[source]["text"] for (source, _), (dest, _) in voice_wires if dest == voice["thispoly~"]]
    assert sorted(busy) == ["0", "1"]
    # the sine, times its envelope, then its two pan gains, reaches out~ 1 and out~ 2
    enveloped = [d for src, (d, _) in voice_wires if src == [voice["cycle~"], 0]]
    assert [voice_boxes[d]["text"] for d in enveloped] == ["*~"]
    panned = [d for src, (d, _) in voice_wires if src == [enveloped[0], 0]]
    outs = sorted(voice_boxes[d]["text"] for p in panned for src, (d, _) in voice_wires if src == [p, 0])
    assert outs == ["out~ 1", "out~ 2"]


def test_oscdump_decodes_a_spike_after_the_alarms(oscdump: Peer) -> None:
    # pentatonic, one layer: four steps at 1, then 8 (8 times the median of the window: above 5, a spike)
    mapping = Mapping.load("pentatonic")
    sink = OscSink("127.0.0.1", oscdump.port)
    sink.open(mapping.arrange(["fc1", "fc2"]))
    for step, norms in enumerate([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [8.0, math.nan]]):
        sink.send(mapping.map_frame(Frame(step, 0.0, norms)))
    lines = oscdump.wait_for(lambda seen: sum("/gradbridge/norms" in line for line in seen) == 5)
    sink.close()
    last = [rest for _, rest in map(split_oscdump, lines)][-4:]
    # step 4 at 0.5 s: fc1 8 is 12 × log10(8) = 10.8 semitones above the centre, 66 → 76.8: value (76.8 - 48) / 36
    assert last[0].startswith("/gradbridge/layer isfffiiffff 0 \"fc1\" 8.000000 0.801")
    assert last[1] == '/gradbridge/alarm issff 1 "fc2" "nan" 0.120000 0.000000'
    assert last[2] == '/gradbridge/spike isfff 0 "fc1" 8.000000 0.120000 0.000000'  # ratio 8 / median(1, 1, 1, 1)
    assert last[3] == "/gradbridge/norms ff 8.000000 nan"


def run_sclang_with_server(tmp_path: Path, script: Path, steps: int) -> tuple[list[str], Path, int]:
    """Boot scsynth (on the test's JACK server) from sclang with the patch loaded, record the server's output,
    replay ``steps`` perone2019 steps to the patch at musical time; sclang's output lines, the recording and
    the number of synths the patch scheduled."""
    port = free_udp_port()
    recording = tmp_path / "played.wav"
    wrapper = tmp_path / "run.scd"
    wrapper.write_text(
        f"~gradbridgePort = {port}; ~gradbridgeBoot = true;\n{json.dumps(str(script))}.load;\n"
        "s.doWhenBooted({ fork { 1.wait; s.recHeaderFormat = \"wav\"; s.recSampleFormat = \"int16\";\n"
        f"  s.record({json.dumps(str(recording))}); 0.5.wait; \"gradbridge test: recording\".postln }} }});\n"
        "OSCdef(\\testReport, { fork { s.stopRecording; 0.5.wait;\n"
        "  (\"gradbridge test: scheduled \" ++ ~gradbridgeScheduled).postln; s.quit } }, '/gradbridge-test/report');\n")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(runtime), QT_QPA_PLATFORM="offscreen",
               QTWEBENGINE_DISABLE_SANDBOX="1")
    peer = Peer(["sclang", "-u", str(free_udp_port()), str(wrapper)], env=env)
    try:
        peer.wait_for(lambda lines: "gradbridge test: recording" in lines, timeout_s=30)
        mapping = Mapping.load("perone2019")
        frames = [Frame(s, 0.0, [1.0, 2.0, 0.5, 3.0]) for s in range(steps)]
        outputs = build_outputs(mapping, RunInfo(tuple(NAMES)), [], live_sinks=[OscSink("127.0.0.1", port)])
        stats = replay(frames, outputs)
        assert stats.frames_done == steps and not stats.errors
        time.sleep(1.0)  # the last synths play s.latency (0.2 s) after their step
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"/gradbridge-test/report\x00" + b",\x00\x00\x00", ("127.0.0.1", port))
        lines = peer.wait_for(lambda seen: any(line.startswith("gradbridge test: scheduled") for line in seen),
                              timeout_s=10)
        time.sleep(0.5)  # the server quits
    finally:
        peer.stop()
    count = next(line for line in lines if line.startswith("gradbridge test: scheduled")).split()[-1]
    return lines, recording, int(count) if count.isdigit() else -1


def test_sclang_schedules_with_server_latency_so_scsynth_plays_every_tone_in_time(tmp_path: Path,
                                                                                     jack_server: str) -> None:
    need("sclang")
    need("scsynth")
    lines, recording, scheduled = run_sclang_with_server(tmp_path, EXAMPLES / "supercollider" / "gradbridge.scd", 60)
    assert [line for line in lines if line.startswith("late ")] == []  # scsynth posts "late 0.0123" otherwise
    assert not [line for line in lines if line.startswith("ERROR")]
    assert scheduled == 60 * 4  # one synth per layer per step
    # what the server played: 60 steps of four 10 ms tones (300, 400, 250, 500 Hz) one after another, then
    # 20 ms of silence. Each tone has its envelope (1 ms up, 7 ms held, 2 ms down), so in 1 ms windows it is
    # about 8-9 ms above 20 % of its level, with a dip between tones (a few dips fall inside one window):
    # about 240 bursts, 2.0-2.2 s in all. Late bundles play a step's four tones at once: 60 bursts, 0.5 s
    with wave.open(str(recording)) as f:
        rate = f.getframerate()
        played = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").reshape(-1, f.getnchannels())[:, 0] / 32767
    window = rate // 1000  # 1 ms
    loud = np.abs(played[: played.size // window * window]).reshape(-1, window).max(axis=1) > 0.02
    bursts = int((np.diff(loud.astype(int)) == 1).sum())
    assert 200 <= bursts <= 240
    assert 1800 <= int(loud.sum()) <= 2400


def test_pd_patch_prints_a_spike_and_has_a_voice_per_layer(tmp_path: Path) -> None:
    need("pd")
    shipped = (EXAMPLES / "pd" / "gradbridge.pd").read_text()
    port = free_udp_port()
    patch = tmp_path / "gradbridge.pd"
    patch.write_text(shipped.replace("gradbridge-osc 57120;", f"gradbridge-osc {port};"))
    assert "clone gradbridge-voice 128;" in (EXAMPLES / "pd" / "gradbridge-osc.pd").read_text()
    peer = Peer(["pd", "-nogui", "-nosound", "-stderr", "-path", str(EXAMPLES / "pd"), "-open", str(patch)])
    try:
        peer.wait_ready(port, PD_READY, "gradbridge-norms: -1")
        mapping = Mapping.load("pentatonic")
        sink = OscSink("127.0.0.1", port)
        sink.open(mapping.arrange(["fc1", "fc2"]))
        for step, norms in enumerate([[1.0, 1.0]] * 4 + [[8.0, 1.0]]):  # 8 times its median: a spike
            sink.send(mapping.map_frame(Frame(step, 0.0, norms)))
        sink.close()
        lines = peer.wait_for(lambda seen: sum(line.startswith("gradbridge-norms") for line in seen) == 5)
    finally:
        peer.stop()
    assert [line for line in lines if "spike" in line] == ["gradbridge-spike: 0 fc1 8 0.12 0"]
    problems = [line for _, line in peer.seen if "error" in line.lower() or "couldn't create" in line]
    assert problems == []
