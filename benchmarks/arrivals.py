"""The far end of the latency benchmark: receivers that stamp what arrives, a JACK server, and matching
the stamps to steps.

Each receiver runs in its own process, as SuperCollider or a DAW would, so it does not wait for the
training process's interpreter lock. It stamps each UDP datagram as ``recv`` returns and each MIDI
message in python-rtmidi's JACK input callback, with ``time.monotonic_ns()``: CLOCK_MONOTONIC, one clock
for every process on the machine, so its stamps compare with the training process's.

    python benchmarks/arrivals.py osc OUT.json    # prints "READY <udp port>", stops on a line on stdin
    python benchmarks/arrivals.py midi OUT.json   # prints "READY gblatency:in" (JACK_DEFAULT_SERVER's server)
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.parsing.osc_types import IMMEDIATELY

#: JACK client name of the receiver; its MIDI input port is ``gblatency:in``.
CLIENT = "gblatency"
#: Sample rate (Hz) and period (frames) of the JACK server: MIDI moves once a period, 128 / 48000 s.
JACK_RATE, JACK_PERIOD = 48000, 128
_START_S = 10.0

Stamped = tuple[int, list[int]]  #: (monotonic ns, MIDI bytes)


def receive_osc(out_path: Path) -> int:
    """Stamp every datagram on a free 127.0.0.1 UDP port; print ``READY <port>``, run until a line (or
    EOF) on stdin, then write [[ns, hex of the datagram], ...] to ``out_path``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    datagrams: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            datagrams.append((time.monotonic_ns(), data))

    reader = threading.Thread(target=read, name="arrivals-udp", daemon=True)
    reader.start()
    print(f"READY {sock.getsockname()[1]}", flush=True)
    sys.stdin.readline()
    stop.set()
    reader.join()
    sock.close()
    out_path.write_text(json.dumps([[t, data.hex()] for t, data in datagrams]), encoding="utf-8")
    return 0


def receive_midi(out_path: Path) -> int:
    """Stamp every message on JACK MIDI input ``gblatency:in`` in python-rtmidi's callback (JACK's process
    thread; nothing else in this process wants the interpreter lock); print ``READY gblatency:in``, run
    until a line (or EOF) on stdin, then write [[ns, [bytes]], ...] to ``out_path``."""
    import rtmidi

    messages: list[Stamped] = []
    midi_in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, CLIENT)
    midi_in.open_virtual_port("in")
    midi_in.set_callback(lambda event, _data: messages.append((time.monotonic_ns(), event[0])))
    print(f"READY {CLIENT}:in", flush=True)
    sys.stdin.readline()
    midi_in.cancel_callback()
    midi_in.close_port()
    midi_in.delete()
    out_path.write_text(json.dumps(messages), encoding="utf-8")
    return 0


def osc_arrivals(datagrams: list[tuple[int, bytes]], modulus: int) -> tuple[dict[int, int], list[str]]:
    """{step: arrival ns} from each bundle's ``/gradbridge/step``, and what was wrong: a timetag not
    "immediately", no step, a step twice, or the norm of the layer named ``marker`` not ``step % modulus``."""
    arrivals: dict[int, int] = {}
    problems: list[str] = []
    for stamp, datagram in datagrams:
        bundle = OscBundle(datagram)
        step = marker = None
        for item in bundle:
            if isinstance(item, OscMessage) and item.address == "/gradbridge/step":
                step = item.params[0]
            elif isinstance(item, OscMessage) and item.address == "/gradbridge/layer" and item.params[1] == "marker":
                marker = item.params[2]
        if bundle.timestamp != IMMEDIATELY:
            problems.append(f"step {step}: timetag {bundle.timestamp}, not immediately")
        if step is None or step in arrivals:
            problems.append(f"a datagram without /step or with a step seen before ({step})")
            continue
        if marker != step % modulus:
            problems.append(f"step {step}: the marker's norm is {marker}")
        arrivals[step] = stamp
    return arrivals, problems


def midi_arrivals(messages: list[Stamped], channel: int) -> tuple[dict[int, int], list[str]]:
    """{step: arrival ns} from the pitch bend on ``channel``, whose 14-bit value is the step (the run stays
    below 16384 steps), and what was wrong: a step out of order, or the last step again (``"repeated"``;
    seen only in runs where JACK logged xruns, so the benchmark counts it with the messages JACK lost)."""
    arrivals: dict[int, int] = {}
    problems: list[str] = []
    for stamp, message in messages:
        if len(message) == 3 and message[0] == 0xE0 | channel:
            step = message[1] | message[2] << 7
            if arrivals and step == max(arrivals):
                problems.append(f"repeated: step {step} arrived twice in a row")
            elif arrivals and step < max(arrivals):
                problems.append(f"step {step} arrived after step {max(arrivals)}")
            arrivals.setdefault(step, stamp)
    return arrivals, problems


class Receiver:
    """``receive_osc`` or ``receive_midi`` (``kind``) in a child process. ``address`` is what it listens on
    (the UDP port, or the JACK port's name); ``stop()`` ends it and returns its stamps."""

    def __init__(self, folder: Path, kind: str) -> None:
        if kind not in ("osc", "midi"):
            raise ValueError(f"kind must be 'osc' or 'midi', got {kind!r}")
        self.path = folder / f"arrivals-{kind}.json"
        command = [sys.executable, str(Path(__file__).resolve()), kind, str(self.path)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        said = self.process.stdout.readline().split() if self.process.stdout is not None else []
        if len(said) != 2 or said[0] != "READY":
            self.process.kill()
            self.process.wait(timeout=5)
            raise RuntimeError(f"the {kind} receiver did not start (it said {said!r}, exit status "
                               f"{self.process.poll()})")
        self.address = said[1]

    def stop(self) -> list[tuple[int, object]]:
        """End the child; its stamps: [(ns, datagram bytes)] for OSC, [(ns, [MIDI bytes])] for MIDI."""
        if self.process.stdin is not None:
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
        if self.process.wait(timeout=30) != 0:
            raise RuntimeError(f"the receiver exited with status {self.process.returncode}")
        stamps = json.loads(self.path.read_text(encoding="utf-8"))
        return [(t, bytes.fromhex(data) if isinstance(data, str) else data) for t, data in stamps]


def jack_xruns(log_path: Path) -> dict[str, int]:
    """Per JACK client, the periods it did not finish in time, from jackd's log ("JackEngine::XRun: client =
    NAME was not finished"); JACK drops the MIDI a late client should have taken in such a period."""
    counts: dict[str, int] = {}
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    for line in text.splitlines():
        _, found, rest = line.partition("JackEngine::XRun: client = ")
        if found:
            client = rest.split(" was not finished")[0]
            counts[client] = counts.get(client, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("osc", "midi"), help=f"a UDP port, or JACK MIDI input {CLIENT}:in")
    parser.add_argument("out", type=Path, help="where to write the stamps (JSON)")
    args = parser.parse_args(argv)
    return receive_osc(args.out) if args.kind == "osc" else receive_midi(args.out)


if __name__ == "__main__":
    sys.exit(main())
