"""``OscSink``: each step as OSC bundles over UDP, for SuperCollider, Pd, Max or any OSC tool.

Under a prefix (``/gradbridge`` by default) every step sends, in this order (types in OSC notation;
``docs/osc.md`` lists every argument):

- ``/step  ,ifffifii``  step, loss, lr, start_s, layer_count, duration_s, first_step, last_step (the
  steps a live clock's tick stands for; both ``step`` for a single step)
- ``/layer ,isfffiiffff`` index, name, norm, value, frequency_hz, midi_note, velocity, amplitude, pan,
  duration_s, offset_s — one per sounding layer
- ``/alarm ,issff`` index, name, kind (``"nan"``, ``"+inf"``, ``"-inf"``), duration_s, offset_s — one per
  NaN/Inf layer
- ``/spike ,isfff`` index, name, ratio (the norm over the median of its recent norms), duration_s,
  offset_s — one per layer whose norm jumped (it sends its ``/layer`` message as well)
- ``/norms ,f…`` every raw norm, one float per layer (NaN and ±Inf as measured)

The messages go in one bundle per step, timetagged "immediately" or send time + ``osc_latency_s``. A
bundle over ``MAX_BUNDLE_BYTES`` is split into several bundles with the same timetag, the step message
first. Floats travel as float32: a finite norm above 3.4e38 arrives as +Inf.

Messages are encoded here with ``struct`` (OSC 1.0 is four byte-aligned types): python-osc's builder took
about 50 µs a message, 15 ms a step for 300 layers, on the thread that feeds every sink.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents

if TYPE_CHECKING:
    from bridge.ticks import Tick

log = logging.getLogger("bridge")

#: sclang's default port: where the SuperCollider example listens.
DEFAULT_PORT = 57120

#: Default host: this machine.
DEFAULT_HOST = "127.0.0.1"

#: Default address prefix of every message.
DEFAULT_PREFIX = "/gradbridge"

#: Largest bundle a step is packed into, in bytes (macOS refuses UDP datagrams over 9216 bytes by default).
MAX_BUNDLE_BYTES = 8192

#: OSC timetag meaning "immediately" (NTP 0.000…1).
IMMEDIATELY = 1

_NTP_EPOCH_OFFSET_S = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_RESERVED = set(" #*,?[]{}")  # characters an OSC address part may not hold
_BUNDLE_HEAD = b"#bundle\x00"
_STEP_TAIL = struct.Struct(">ifffifii")
_LAYER_TAIL = np.dtype([("norm", ">f4"), ("value", ">f4"), ("frequency_hz", ">f4"), ("midi_note", ">i4"),
                        ("velocity", ">i4"), ("amplitude", ">f4"), ("pan", ">f4"), ("duration_s", ">f4"),
                        ("offset_s", ">f4")])
_ALARM_TAIL = struct.Struct(">ff")
_SPIKE_TAIL = struct.Struct(">fff")


def osc_string(text: str) -> bytes:
    """``text`` as an OSC string: UTF-8, NUL-terminated, padded with NULs to a multiple of 4 bytes."""
    data = text.replace("\x00", "?").encode("utf-8")
    return data + b"\x00" * (4 - len(data) % 4)


def seconds_to_timetag(time_s: float) -> int:
    """Unix time in seconds → 64-bit OSC/NTP timetag (upper 32 bits seconds since 1900, lower the fraction)."""
    whole = math.floor(time_s)
    fraction = int((time_s - whole) * 2**32)
    return ((whole + _NTP_EPOCH_OFFSET_S) << 32) | min(fraction, 2**32 - 1)


def parse_osc_target(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``.

    Accepts ``"127.0.0.1:57120"``, ``"localhost:9000"``, ``":57120"`` (this machine, 127.0.0.1),
    ``"[::1]:9000"`` (IPv6 in brackets) and liblo's ``"osc.udp://host:port/"``. Raises ``ValueError``
    naming what is missing or wrong; the port must be 1–65535.
    """
    if not isinstance(text, str):
        raise TypeError(f"an OSC target must be a str like '127.0.0.1:57120', got {type(text).__name__}")
    target = text.strip()
    if target.lower().startswith("osc.udp://"):
        target = target[len("osc.udp://"):].rstrip("/")
    elif "://" in target:
        raise ValueError(f"OSC target {text!r}: only UDP is supported; write HOST:PORT, e.g. '127.0.0.1:57120'")
    if not target or any(c.isspace() for c in target):
        raise ValueError(f"OSC target {text!r} is not HOST:PORT; write e.g. '127.0.0.1:57120' or ':57120'")
    if target.startswith("["):
        host, bracket, rest = target[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"OSC target {text!r}: an IPv6 address needs closing brackets, e.g. '[::1]:9000'")
        if not rest.startswith(":") or rest == ":":
            raise ValueError(f"OSC target {text!r} has no port; write it after the brackets, e.g. '[{host}]:57120'")
        port_text = rest[1:]
    else:
        if target.isdigit():
            raise ValueError(f"OSC target {text!r} has no host; for this machine write ':{target}' "
                             f"or '127.0.0.1:{target}'")
        if target.count(":") > 1:
            raise ValueError(f"OSC target {text!r}: write an IPv6 address in brackets, e.g. '[::1]:9000'")
        host, colon, port_text = target.rpartition(":")
        if not colon:
            raise ValueError(f"OSC target {text!r} has no port; write HOST:PORT, e.g. '{target}:57120'")
        if not port_text:
            raise ValueError(f"OSC target {text!r} has no port after ':'; write e.g. '{host}:57120'")
        host = host or DEFAULT_HOST
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"OSC target {text!r}: port must be a whole number from 1 to 65535, got {port_text!r}; "
                         "SuperCollider's sclang listens on 57120")
    return host, int(port_text)


class OscSink:
    """Sends each step's events as OSC bundles over UDP; it only sends, nothing listens.

    Args:
        host: receiver's host name or IP address (IPv4 or IPv6); resolved at ``open``.
        port: receiver's UDP port, 1–65535 (sclang: 57120).
        prefix: address prefix of every message, e.g. ``"/gradbridge"`` → ``/gradbridge/layer``.

    Sending never blocks and never raises for a receiver that is down or slow: failures are counted and the
    first one is logged once as a warning on the ``"bridge"`` logger. Counters, reset at ``open``:

    - ``sent``: datagrams handed to the OS (UDP does not say whether they arrived);
    - ``dropped``: steps with at least one datagram the OS would not take (send buffer full, error);
    - ``errors``: socket errors, including refusals that tell an earlier datagram found no listener.

    ``failures()`` tells the closing summary about them: how many, from which step, and why.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, prefix: str = DEFAULT_PREFIX) -> None:
        if not isinstance(host, str):
            raise TypeError(f"OscSink host must be a str such as '127.0.0.1', got {type(host).__name__}")
        if not host.strip():
            raise ValueError("OscSink host is empty; give a host name or IP address such as '127.0.0.1'")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"OscSink port must be an int from 1 to 65535, got {type(port).__name__}")
        if not 1 <= port <= 65535:
            raise ValueError(f"OscSink port must be from 1 to 65535, got {port}; sclang listens on {DEFAULT_PORT}")
        if not isinstance(prefix, str):
            raise TypeError(f"OscSink prefix must be a str such as '/gradbridge', got {type(prefix).__name__}")
        parts = prefix.split("/")
        if not prefix.startswith("/") or any(not p or _RESERVED & set(p) for p in parts[1:]):
            raise ValueError(f"OscSink prefix must look like '/gradbridge' or '/run1/gradbridge' (starts with '/', "
                             f"no empty part, no trailing '/', none of ' #*,?[]{{}}'); got {prefix!r}")
        self.name = "osc"
        self.host = host.strip()
        self.port = port
        self.prefix = prefix
        self._socket: socket.socket | None = None
        self._latency_s = 0.0
        self._pans = np.zeros(0)
        self._layer_heads: list[bytes] = []
        self._alarm_heads: list[bytes] = []
        self._spike_heads: list[bytes] = []
        self._step_head = osc_string(prefix + "/step") + osc_string(",ifffifii")
        self._warned = False
        self._step = 0  # the step being sent
        self._first_failure: str | None = None
        self.sent = 0
        self.dropped = 0
        self.errors = 0

    @property
    def target(self) -> str:
        """The receiver as ``"host:port"`` (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def open(self, arrangement: Arrangement) -> None:
        """Resolve the host, make a non-blocking UDP socket aimed at it, and lay out each layer's messages."""
        if self._socket is not None:
            raise SinkError(f"OSC sink to {self.target} is already open; close it before opening it again")
        latency_s = float(arrangement.osc_latency_s)
        if not math.isfinite(latency_s) or latency_s < 0:
            raise SinkError(f"osc_latency_s must be 0 or more seconds, got {latency_s}; set [osc] latency_s "
                            "in the preset to 0 (play on arrival) or e.g. 0.2")
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        except (socket.gaierror, UnicodeError) as error:
            reason = error.strerror if isinstance(error, socket.gaierror) else "not a valid host name"
            raise SinkError(f"OSC host {self.host!r} does not resolve ({reason}); give an IP address such "
                            f"as 127.0.0.1 or a name this machine knows, e.g. --osc 127.0.0.1:{self.port}") from error
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.connect(address)  # a connected UDP socket reports "port unreachable" as ECONNREFUSED
        except OSError as error:
            sock.close()
            raise SinkError(f"cannot send OSC to {self.target} ({error.strerror or error}); check the address "
                            "and that this machine has a route to it") from error
        self._socket = sock
        self._latency_s = latency_s
        self._pans = np.array([v.pan for v in arrangement.voices], dtype=np.float64)
        layer_head = osc_string(self.prefix + "/layer") + osc_string(",isfffiiffff")
        alarm_head = osc_string(self.prefix + "/alarm") + osc_string(",issff")
        self._layer_heads = [layer_head + struct.pack(">i", v.index) + osc_string(v.name) for v in arrangement.voices]
        self._alarm_heads = [alarm_head + struct.pack(">i", v.index) + osc_string(v.name) for v in arrangement.voices]
        spike_head = osc_string(self.prefix + "/spike") + osc_string(",isfff")
        self._spike_heads = [spike_head + struct.pack(">i", v.index) + osc_string(v.name) for v in arrangement.voices]
        self._warned = False
        self._first_failure = None
        self.sent = self.dropped = self.errors = 0

    def send(self, events: StepEvents) -> None:
        """Send one step as one bundle (several when it exceeds ``MAX_BUNDLE_BYTES``); never blocks."""
        self._send(events, events.step, events.step, time.time())

    def send_tick(self, tick: Tick) -> None:
        """Send a live clock's tick like a step, its ``/step`` carrying the first and last step it stands for."""
        self._send(tick.events, tick.first_step, tick.last_step, time.time() + (tick.due_s - time.monotonic()))

    def _send(self, events: StepEvents, first_step: int, last_step: int, at_s: float) -> None:
        if self._socket is None:
            raise SinkError(f"OSC sink to {self.target} is not open: send() came before open() or after close()")
        timetag = IMMEDIATELY if self._latency_s == 0 else seconds_to_timetag(at_s + self._latency_s)
        self._step = last_step
        messages = self._encode(events, first_step, last_step)
        handed_on = [self._send_datagram(datagram) for datagram in pack_bundles(messages, timetag)]
        if not all(handed_on):
            self.dropped += 1

    def failures(self) -> tuple[int, str] | None:
        """The sends that failed while the sink went on (refused, or not taken by the OS): their count and,
        in words, from which step and why; ``None`` when every send went out."""
        if not self.errors:
            return None
        lost = f"; {self.dropped} step(s) not sent" if self.dropped else ""
        return self.errors, f"{self.errors} time(s) from step {self._first_failure}{lost}"

    def close(self) -> None:
        """Close the socket and log what was lost, if anything. Idempotent."""
        sock, self._socket = self._socket, None
        if sock is None:
            return
        sock.close()
        if self.errors:
            log.info("OSC to %s: %d datagram(s) sent, %d step(s) dropped, %d send error(s)",
                     self.target, self.sent, self.dropped, self.errors)

    # -- internals ----------------------------------------------------------------------------------------

    def _encode(self, events: StepEvents, first_step: int, last_step: int) -> list[bytes]:
        """The step's OSC messages, in sending order: step, layers, alarms, spikes, norms (float64 → float32
        here)."""
        raw = np.asarray(events.norms, dtype=np.float64)
        notes = events.notes
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range → ±inf, as documented
            norms = raw.astype(">f4")
            tails = np.empty(len(notes), dtype=_LAYER_TAIL)
            tails["norm"] = raw[notes.layer]
            tails["value"] = notes.value
            tails["frequency_hz"] = notes.frequency_hz
            tails["midi_note"] = notes.midi_note
            tails["velocity"] = notes.velocity
            tails["amplitude"] = notes.amplitude
            tails["pan"] = self._pans[notes.layer]
            tails["duration_s"] = notes.duration_s
            tails["offset_s"] = notes.start_s - events.start_s
            step_values = np.array([events.loss, events.lr, events.start_s, events.duration_s]).astype(np.float32)
        loss, lr, start_s, duration_s = (float(v) for v in step_values)
        step, first, last = (min(max(s, _INT32_MIN), _INT32_MAX) for s in (events.step, first_step, last_step))
        messages = [self._step_head + _STEP_TAIL.pack(step, loss, lr, start_s, norms.size, duration_s, first, last)]
        tail_bytes = tails.tobytes()
        width = _LAYER_TAIL.itemsize
        messages += [self._layer_heads[layer] + tail_bytes[k * width:(k + 1) * width]
                     for k, layer in enumerate(notes.layer.tolist())]
        for alarm in events.alarms:
            with np.errstate(over="ignore"):
                duration, offset = np.array([alarm.duration_s, alarm.start_s - events.start_s]).astype(np.float32)
            messages.append(self._alarm_heads[alarm.layer] + osc_string(alarm.kind)
                            + _ALARM_TAIL.pack(float(duration), float(offset)))
        for spike in events.spikes:
            with np.errstate(over="ignore"):  # a ratio beyond float32's range arrives as +Inf
                ratio, duration, offset = np.array([spike.ratio, spike.duration_s,
                                                    spike.start_s - events.start_s]).astype(np.float32)
            messages.append(self._spike_heads[spike.layer] + _SPIKE_TAIL.pack(float(ratio), float(duration),
                                                                              float(offset)))
        messages.append(osc_string(self.prefix + "/norms") + osc_string("," + "f" * norms.size) + norms.tobytes())
        return messages

    def _send_datagram(self, datagram: bytes) -> bool:
        """Hand one datagram to the OS: True if it was; count and report (once) what fails, never raise."""
        if self._socket is None:
            raise SinkError(f"OSC sink to {self.target} is not open")
        try:
            self._socket.send(datagram)
        except ConnectionRefusedError as refused:
            # an earlier datagram found no listener (ICMP port unreachable); this one was not sent: retry once
            self._report(refused)
            try:
                self._socket.send(datagram)
            except OSError as error:
                self._report(error)
                return False
        except OSError as error:
            self._report(error)
            return False
        self.sent += 1
        return True

    def _report(self, error: OSError) -> None:
        self.errors += 1
        if self._warned:
            return
        self._warned = True
        why = (f"refused: nothing listens on {self.target}" if isinstance(error, ConnectionRefusedError)
               else f"{type(error).__name__}: {error.strerror or error}, sending to {self.target}")
        self._first_failure = f"{self._step} ({why})"
        if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            fix = ("the send buffer is full: the receiver or network cannot keep up; lower the rate with the "
                   "preset's [live] every or max_fps")
        elif error.errno == errno.EMSGSIZE:
            fix = ("a bundle is too large for one datagram on this system; group layers "
                   "(watch(..., groups=... or depth=...))")
        else:
            fix = (f"is sclang/Pd/Max listening on {self.target}? Start the receiving patch (see docs/osc.md) "
                   "or point the OSC target at the port it listens on")
        log.warning("OSC to %s failed (%s: %s); %s. Training goes on; further OSC errors are counted, not reported.",
                    self.target, type(error).__name__, error.strerror or error, fix)


def pack_bundles(messages: Sequence[bytes], timetag: int, max_bytes: int = MAX_BUNDLE_BYTES) -> list[bytes]:
    """Pack ``messages`` in order into as few bundles of at most ``max_bytes`` as fit, all with ``timetag``.

    A message too large for a bundle of ``max_bytes`` on its own travels alone in a larger bundle.
    """
    head = _BUNDLE_HEAD + struct.pack(">Q", timetag)
    bundles: list[bytes] = []
    parts: list[bytes] = [head]
    size = len(head)
    for message in messages:
        element = struct.pack(">i", len(message)) + message
        if size + len(element) > max_bytes and len(parts) > 1:
            bundles.append(b"".join(parts))
            parts, size = [head], len(head)
        parts.append(element)
        size += len(element)
    if len(parts) > 1:
        bundles.append(b"".join(parts))
    return bundles
