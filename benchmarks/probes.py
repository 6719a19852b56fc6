"""Probes for the benchmarks: a spy on host reads, a local OSC receiver, waiting for the followers, and
looks at this process (resident memory, threads, each thread's CPU time) and at its output files.

Importing it does not change anything until a probe is used. The process probes read ``/proc`` (Linux).
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import torch

from bridge.dispatch import Delivery, DispatchStats
from bridge.frames import Frame
from bridge.pipeline import Outputs
from bridge.runlog import RunLogWriter
from bridge.watching import Watch


def drain(watch: Watch, timeout_s: float = 120.0) -> None:
    """Wait until the watch's followers are idle: its follower process, and a follower thread of this process
    (``sinks=`` or ``process=False``), have used no CPU for a moment. The hook writes the run log itself, so
    every frame is in the log already; this waits for the outputs to catch up."""
    deadline = time.monotonic() + timeout_s
    if watch.outputs_pid is not None:
        wait_idle(watch.outputs_pid, deadline)
    for thread in threading.enumerate():
        if thread.name == "gradbridge-follower" and thread.native_id is not None:
            wait_idle(os.getpid(), deadline, task=thread.native_id)
    if time.monotonic() >= deadline:
        raise RuntimeError(f"the followers did not catch up within {timeout_s} s")


def process_cpu_ticks(pid: int, task: int | None = None) -> int:
    """User + system CPU time of process ``pid`` (or of its thread ``task``) so far, in clock ticks (``/proc``)."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, deadline: float, quiet_s: float = 0.03, task: int | None = None) -> None:
    """Wait until process ``pid`` (or its thread ``task``) has used no CPU for ``quiet_s`` seconds (or until
    ``deadline``).

    A follower renders file outputs 64 frames at a time, so the frames of an unfinished block are still
    rendered later, in whatever block runs then.
    """
    last, quiet_since = process_cpu_ticks(pid, task), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.005)
        now = process_cpu_ticks(pid, task)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


class OscReceiver:
    """A UDP socket on 127.0.0.1 (port chosen by the OS) that counts and discards datagrams on its own thread.

    ``close()`` keeps reading until the socket has been quiet for 0.1 s, so ``packets`` counts every
    datagram sent before it.
    """

    def __init__(self, receive_buffer_bytes: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if receive_buffer_bytes is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.packets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="benchmark-udp-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
                self.packets += 1
            except socket.timeout:
                if self._stop.is_set():
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class HostReadSpy:
    """Counts calls that read a tensor's value on the host, made on the thread that entered the spy.

    Counted: ``item``, ``tolist``, ``numpy``, ``cpu``, ``float()``/``int()``/``bool()`` of a tensor, and a
    ``to``/``copy_`` that moves data from a device to the host.
    """

    NAMES = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "to", "copy_")

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, object] = {}

    def __enter__(self) -> "HostReadSpy":
        self._thread = threading.get_ident()
        for name in self.NAMES:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        return self

    def _wrap(self, name: str, original: Callable[..., object]) -> Callable[..., object]:
        spy = self

        def counted(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
            result = original(tensor, *args, **kwargs)
            if threading.get_ident() == spy._thread:
                if name == "to":
                    moved = isinstance(result, torch.Tensor) and result.device.type == "cpu" != tensor.device.type
                    spy.counts[name] += moved
                elif name == "copy_":
                    source = args[0] if args else kwargs.get("src")
                    spy.counts[name] += isinstance(source, torch.Tensor) and \
                        tensor.device.type == "cpu" != source.device.type
                else:
                    spy.counts[name] += 1
            return result

        return counted

    def __exit__(self, *exc: object) -> None:
        for name, saved in self._saved.items():
            if saved is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)


def resident_bytes() -> int:
    """This process's resident memory (VmRSS), bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status (the benchmark needs Linux)")


def native_threads() -> int:
    """Threads of this process as the OS sees them (Python's and those of C libraries such as libjack)."""
    return len(os.listdir("/proc/self/task"))


def thread_cpu_ns() -> dict[int, int]:
    """{OS thread id: nanoseconds it has run on a CPU} for every thread of this process (``schedstat``).

    Waiting for the interpreter lock or for I/O is not running, so it does not count. A thread that ends
    between listing and reading is left out.
    """
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as stat:
                out[int(tid)] = int(stat.read().split()[0])
        except FileNotFoundError:
            continue
    return out


def thread_names() -> dict[int, str]:
    """{OS thread id: name}: Python threads by their ``threading`` name, the others by their OS name."""
    names = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as comm:
                names[int(tid)] = f"native: {comm.read().strip()}"
        except FileNotFoundError:
            continue
    for thread in threading.enumerate():
        if thread.native_id is not None:
            names[thread.native_id] = thread.name
    return names


def wav_frame_count(path: Path) -> int:
    """Sample frames in a WAV, from its header (the file may be far too big to read)."""
    with wave.open(str(path)) as f:
        return f.getnframes()


def midi_track_count(path: Path) -> int:
    """Tracks in a Standard MIDI File, after checking that its chunks fill the file exactly; -1 if they do not.

    Only the chunk headers are read: a long run's file holds millions of notes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(14)
        if len(head) != 14 or head[:8] != b"MThd\x00\x00\x00\x06":
            return -1
        declared, offset, tracks = int.from_bytes(head[10:12], "big"), 14, 0
        while offset < size:
            f.seek(offset)
            chunk = f.read(8)
            if len(chunk) != 8 or chunk[:4] != b"MTrk":
                return -1
            offset += 8 + int.from_bytes(chunk[4:], "big")
            tracks += 1
    return tracks if offset == size and tracks == declared else -1


def deliver_all(frames: list[Frame], outputs: Outputs, writer: RunLogWriter | None) -> DispatchStats:
    """What the hook and a follower do with ``frames``, on this thread: append each to ``writer`` (if any) and
    hand it to every output, then close them; the stats (for timing an output's work per frame offline)."""
    delivery = Delivery(outputs.consumers)
    for frame in frames:
        if writer is not None:
            writer.append(frame)
        delivery.deliver(frame)
    stats = delivery.close()
    if writer is not None:
        writer.close()
    return stats
