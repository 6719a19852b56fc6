"""``AudioSink``: the live synth played on an audio output through PyAudio (callback mode).

The timing, the ring buffer and underruns are ``bridge.sinks.live_player``'s; this module finds and opens
the device, keeps PortAudio's chatter out of the terminal, and drains the stream at close.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents
from bridge.sinks.live_player import LivePlayer, seconds_in_range

log = logging.getLogger("bridge")

#: What to do instead when there is no sound output, appended to every "cannot play" message.
NO_AUDIO_HINT = ("render to a file instead (wav='run.wav' in bridge.watch, or `gradbridge render RUN -o "
                 "run.wav`), or start a JACK server (jackd) and play through it (device='jack')")

_DRAIN_POLL_S = 0.005
_PA_ERRORS = {-9985: "busy", -9997: "rate", -9998: "channels"}  # paDeviceUnavailable, paInvalidSampleRate, ...


def _counter(read: Callable[[LivePlayer], int], doc: str) -> property:
    """A read-only counter of the sink's player."""
    return property(lambda sink: read(sink._player) if sink._player is not None else 0, doc=doc)


class AudioSink:
    """Plays the run live through the built-in synth on an audio output (PyAudio, callback mode).

    Args:
        device: ``None`` for the default output, a PortAudio device index, or (a part of) a device's name.
        latency_s: seconds from a step's arrival to when its first frame goes to the device, 0–10 (the device
            adds its own output latency, ``output_latency_s``). Longer is safer from underruns.
        frames_per_buffer: frames per audio callback, 0 (the device chooses) to 16384.
        max_backlog_s: seconds a step may wait behind steps queued before it, 0–3600; beyond, it is dropped.
    """

    name = "audio"

    def __init__(self, *, device: int | str | None = None, latency_s: float = 0.1, frames_per_buffer: int = 512,
                 max_backlog_s: float = 1.0) -> None:
        if device is not None and (isinstance(device, bool) or not isinstance(device, (int, str))):
            raise TypeError("AudioSink device must be None, an int index or a str name; "
                            f"got {type(device).__name__}")
        if isinstance(device, int) and device < 0:
            raise ValueError(f"AudioSink device index must be >= 0; got {device}. Use None for the default output")
        if isinstance(frames_per_buffer, bool) or not isinstance(frames_per_buffer, int) or \
                not 0 <= frames_per_buffer <= 16384:
            raise ValueError("AudioSink frames_per_buffer must be a whole number from 0 (the device chooses) to "
                             f"16384; got {frames_per_buffer!r}. 512 is a good start")
        self.device = device
        self.latency_s = seconds_in_range("latency_s", latency_s, 10.0)
        self.max_backlog_s = seconds_in_range("max_backlog_s", max_backlog_s, 3600.0)
        self.frames_per_buffer = frames_per_buffer
        self.device_name = ""
        self.output_latency_s = math.nan
        self._player: LivePlayer | None = None
        self._pa: Any = None
        self._stream: Any = None

    # -- counters (0 before open; kept after close) -------------------------------------------------------
    underruns = _counter(lambda p: p.buffer.underruns,
                         "Audio callbacks that played silence where notes were due but not rendered yet.")
    late_frames = _counter(lambda p: p.buffer.late_frames,
                           "Rendered frames that came after their place was played (dropped).")
    frames_played = _counter(lambda p: p.buffer.read_position,
                             "Frames handed to the device (a frame: one sample per channel).")
    steps_received = _counter(lambda p: p.steps_received, "Steps given to ``send``.")
    steps_dropped = _counter(lambda p: p.steps_dropped,
                             "Steps not played: backlog full (``max_backlog_s``) or out of order.")

    # -- the Sink interface -------------------------------------------------------------------------------
    def open(self, arrangement: Arrangement) -> None:
        """Open the output stream for ``arrangement``'s sample rate and channels, and start it (silent)."""
        if self._stream is not None:
            raise SinkError("the live audio output is already open; close it before opening it again")
        player = LivePlayer(arrangement, latency_s=self.latency_s, max_backlog_s=self.max_backlog_s)
        pyaudio = _import_pyaudio()
        with _backend_chatter():
            try:
                pa = pyaudio.PyAudio()
            except OSError as error:
                raise SinkError(f"the audio system (PortAudio) failed to start: {error}; "
                                f"{NO_AUDIO_HINT}") from error
            try:
                index, info = _pick_device(pa, self.device, player.synth.audio_channels)
                stream = _open_stream(pyaudio, pa, index, info, player, self.frames_per_buffer)
            except BaseException:
                pa.terminate()
                raise
        self._player, self._pa, self._stream = player, pa, stream
        self.device_name = str(info["name"])
        self.output_latency_s = float(stream.get_output_latency())
        try:
            stream.start_stream()
        except OSError as error:
            self._stream = self._pa = None
            with _backend_chatter():
                stream.close()
                pa.terminate()
            raise SinkError(f"cannot start the audio output {self.device_name!r}: {error}; "
                            f"{NO_AUDIO_HINT}") from error

    def send(self, events: StepEvents) -> None:
        """Render one step into the play queue (returns at once; the stream plays it ``latency_s`` later)."""
        if self._player is None or self._stream is None:
            raise SinkError("AudioSink.send called before open() or after close(); open it first")
        if not self._stream.is_active():
            raise SinkError(f"the audio output {self.device_name!r} stopped playing (device unplugged or taken "
                            f"by another program?); {NO_AUDIO_HINT}")
        self._player.send(events)

    def close(self) -> None:
        """Let what is queued play out (bounded: ``latency_s + max_backlog_s``), stop the stream, release the
        device. Idempotent."""
        stream, pa, player = self._stream, self._pa, self._player
        self._stream = self._pa = None
        if stream is None or player is None:
            return
        try:
            player.finish()
            self._drain(stream, player)
        finally:
            with _backend_chatter():
                try:
                    stream.stop_stream()
                except OSError as error:
                    raise SinkError(f"the audio output {self.device_name!r} failed to stop: {error}") from error
                finally:
                    try:
                        stream.close()
                    finally:
                        pa.terminate()
        if player.buffer.underruns or player.steps_dropped:
            log.warning("live audio: %d underruns (%d frames of silence where notes were due), %d of %d steps "
                        "dropped; a longer latency_s or rate control (every=, max_fps=) helps",
                        player.buffer.underruns, player.buffer.underrun_frames, player.steps_dropped,
                        player.steps_received)

    def _drain(self, stream: Any, player: LivePlayer) -> None:
        """Wait until the callback has handed out everything written, or the bound passes."""
        target = player.buffer.written_end
        bound_s = self.latency_s + self.max_backlog_s + 4 * self.frames_per_buffer / player.sample_rate + 0.05
        deadline = time.monotonic() + bound_s
        while player.buffer.read_position < target and time.monotonic() < deadline and stream.is_active():
            time.sleep(_DRAIN_POLL_S)


def _open_stream(pyaudio: Any, pa: Any, index: int, info: dict[str, Any], player: LivePlayer,
                 frames_per_buffer: int) -> Any:
    """Open (not start) a float32 callback stream on device ``index``; SinkError in plain words if it fails."""
    sr, channels, name = player.sample_rate, player.synth.audio_channels, info["name"]
    try:
        return pa.open(format=pyaudio.paFloat32, channels=channels, rate=sr, output=True,
                       output_device_index=index, frames_per_buffer=frames_per_buffer,
                       stream_callback=player.buffer.callback, start=False)
    except OSError as error:
        kind = _PA_ERRORS.get(error.errno if isinstance(error.errno, int) else 0)
        if kind == "busy":
            what = f"the audio output {name!r} is busy or unavailable (is another program using it?)"
        elif kind == "rate":
            what = (f"the audio output {name!r} cannot play {sr} Hz; set sample_rate in the preset's [sound] to "
                    f"one it plays (its default is {info.get('defaultSampleRate', 0):g} Hz)")
        elif kind == "channels":
            what = (f"the audio output {name!r} cannot play {channels} channels; set channels in the preset's "
                    "[sound]")
        else:
            what = f"cannot open the audio output {name!r}: {error}"
        raise SinkError(f"{what}; {NO_AUDIO_HINT}") from error


def _pick_device(pa: Any, device: int | str | None, channels: int) -> tuple[int, dict[str, Any]]:
    """The PortAudio index and info of the output to open; SinkError listing the outputs when none fits."""
    outputs = [info for info in (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
               if int(info["maxOutputChannels"]) > 0]
    if not outputs:
        raise SinkError("no audio output device (no sound card?): the audio system lists none; "
                        f"{NO_AUDIO_HINT}")
    listing = ", ".join(f"{info['index']}: {info['name']!r}" for info in outputs)
    if device is None:
        try:
            info = pa.get_default_output_device_info()
        except OSError as error:
            raise SinkError(f"no audio output device (no sound card?): there is no default output ({error}); "
                            f"pick one with device= (outputs: {listing}), or {NO_AUDIO_HINT}") from error
    elif isinstance(device, int):
        found = [info for info in outputs if int(info["index"]) == device]
        if not found:
            raise SinkError(f"audio device {device} is not an output device; the outputs are {listing}")
        info = found[0]
    else:
        wanted = device.casefold()
        found = [info for info in outputs if str(info["name"]).casefold() == wanted] or \
            [info for info in outputs if wanted in str(info["name"]).casefold()]
        if not found:
            raise SinkError(f"no audio output named like {device!r}; the outputs are {listing}")
        info = found[0]
    if int(info["maxOutputChannels"]) < channels:
        raise SinkError(f"the audio output {info['name']!r} has {info['maxOutputChannels']} channel(s) but the "
                        f"preset plays {channels}; set channels = 1 in the preset's [sound], or pick another "
                        f"output ({listing})")
    return int(info["index"]), info


def _import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as error:
        raise SinkError("live audio needs PyAudio, which is not installed: install the audio extra: pip install "
                        "'gradbridge[audio]' (on Debian/Ubuntu first: apt install portaudio19-dev); or "
                        f"{NO_AUDIO_HINT}") from error
    return pyaudio


@contextlib.contextmanager
def _backend_chatter() -> Iterator[None]:
    """While the device opens and closes, send what PortAudio, ALSA and JACK print on stderr to the debug log.

    The C libraries write to file descriptor 2 directly, so it is swapped for a temporary file meanwhile;
    anything else printed to stderr in that moment (a few milliseconds) goes to the debug log too.
    """
    try:
        saved = os.dup(2)
    except OSError as error:  # no stderr to protect: let the libraries print where they will
        log.debug("audio: stderr left as is (%s)", error)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            said = capture.read().decode("utf-8", "replace").strip()
            if said:
                log.debug("the audio system said:\n%s", said)
