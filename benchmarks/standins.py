"""Stand-ins for a fast training run, shared by ``soak.py`` and ``throughput.py``.

A cheap preset (2 ms chords at 8 kHz) so that a WAV of a long, fast run stays small; the norms of a
stand-in run (a random walk per layer, with a NaN and an Inf now and then); a live MIDI output on JACK;
and a JACK server of the benchmark's own on the dummy driver.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bridge.errors import SinkError
from bridge.sinks.base import Sink

#: Chord steps of 2 ms at 8 kHz mono: 16 samples a step keeps a long run's WAV small (10 min at 2000
#: steps a second is 1.2 M steps, 2400 s of audio, 38 MB).
PRESET = """
[preset]
name = "soak"
description = "2 ms chords at 8 kHz for soak tests"
[timing]
layout = "chord"
step_s = 0.002
note_s = 0.002
[pitch]
mode = "scale"
curve = "log"
range = "auto"
[sound]
sample_rate = 8000
channels = 1
waveforms = ["sine", "saw"]
attack_s = 0.0
release_s = 0.0
max_frequency_hz = 3900.0
"""
STEP_SAMPLES = 16  # 0.002 s at 8000 Hz
#: A NaN in layer 0 at every step ``NAN_EVERY - 1`` (mod ``NAN_EVERY``), an Inf in layer 1 likewise.
NAN_EVERY, INF_EVERY = 5000, 7000
JACK_WAIT_S = 10


class Norms:
    """Norms of a stand-in run: per layer a random walk in log space, made 4096 steps at a time; every
    5000th step layer 0 is NaN and every 7000th layer 1 (if any) is +Inf, so alarms sound too.

    ``at(step)`` must be asked for steps in increasing order (it walks forward a block at a time); the
    same ``seed`` gives the same norms, so a second ``Norms`` can check what a run recorded.
    """

    def __init__(self, layers: int, seed: int = 0) -> None:
        self.layers = layers
        self._rng = np.random.default_rng(seed)
        self._level = np.zeros(layers)
        self._block = np.empty((0, layers))
        self._start = 0

    def at(self, step: int) -> np.ndarray:
        """The norms of ``step`` (float64, one per layer; positive, or NaN/Inf at the alarm steps)."""
        while step - self._start >= self._block.shape[0]:
            walk = self._level + np.cumsum(self._rng.normal(0.0, 0.02, (4096, self.layers)), axis=0)
            self._level = walk[-1]
            self._start += self._block.shape[0]
            self._block = np.exp(walk)
        row = self._block[step - self._start].copy()
        if step % NAN_EVERY == NAN_EVERY - 1:
            row[0] = math.nan
        if step % INF_EVERY == INF_EVERY - 1 and self.layers > 1:
            row[1] = math.inf
        return row


def jack_midi_sink(name: str = "gradbridge-soak") -> tuple[Sink | None, str]:
    """A virtual MIDI output on JACK, or ``None`` and why not."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # asking must not start a server
    try:
        from bridge.sinks.midi_port import MidiPortSink, list_output_ports
    except ImportError as exc:
        return None, f"live MIDI skipped: bridge.sinks.midi_port cannot be imported ({exc})"
    try:
        list_output_ports("jack")
    except SinkError as exc:
        return None, f"live MIDI skipped: no JACK server answers ({str(exc).split(' Fix:')[0]})"
    return MidiPortSink(name, api="jack", virtual=True), "live MIDI: a virtual JACK output"


def _forget_dead_servers() -> None:
    """Drop JACK's server registry when no ``jackd`` runs at all (killed servers keep their slot, and
    after 8 of them none starts). With a ``jackd`` alive, or no ``pgrep`` to tell, it is left alone."""
    if shutil.which("pgrep") is None:
        return
    if subprocess.run(["pgrep", "-x", "jackd"], capture_output=True, check=False).returncode != 0:
        for stale in glob.glob("/dev/shm/jack-shm-registry") + glob.glob("/dev/shm/jack-[0-9]*-[0-9]*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)


@contextlib.contextmanager
def jack_server(log_dir: Path, prefix: str = "gbbench") -> Iterator[str | None]:
    """Run a JACK server of our own (dummy driver, 44.1 kHz, 256-frame periods, a unique name) for the block.

    Yields its name, with ``JACK_DEFAULT_SERVER`` naming it meanwhile, or ``None`` when ``jackd`` or
    ``jack_wait`` is not installed or the server did not answer within 10 s. The server is stopped and its
    files in ``/dev/shm`` removed afterwards.
    """
    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        yield None
        return
    _forget_dead_servers()
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_DEFAULT_SERVER=name)
    with open(log_dir / f"{name}.log", "wb") as log:
        process = subprocess.Popen(["jackd", "--no-realtime", "-n", name, "-d", "dummy", "-r", "44100", "-p", "256"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    before = os.environ.get("JACK_DEFAULT_SERVER")
    try:
        waited = subprocess.run(["jack_wait", "-w", "-t", str(JACK_WAIT_S)], env=env, capture_output=True, check=False,
                                timeout=JACK_WAIT_S + 5)
        answered = waited.returncode == 0 and process.poll() is None
        os.environ["JACK_DEFAULT_SERVER"] = name
        yield name if answered else None
    finally:
        if before is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = before
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for leftover in glob.glob(f"/dev/shm/jack_sem.*_{name}_*") + glob.glob(f"/dev/shm/jack_{name}_*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
