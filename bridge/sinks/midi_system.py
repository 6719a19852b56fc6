"""The MIDI system under the port sink: which API (ALSA, JACK, CoreMIDI, Windows MM), which output ports
exist, matching a port by name, and a watch on the JACK server.

Ports are listed through mido's rtmidi backends (``MIDO_BACKENDS``). A stopped JACK server cannot be seen
through python-rtmidi, which then blocks the whole interpreter once its buffer fills; so on JACK a
port-less client of the same libjack (``JackWatch``) watches for the server's shutdown.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import mido
import rtmidi

from bridge.errors import SinkError

log = logging.getLogger("bridge")

RtMidiPort = TypeVar("RtMidiPort", rtmidi.MidiIn, rtmidi.MidiOut)

#: Our API names → mido backend names (``mido.Backend(MIDO_BACKENDS["jack"])``).
MIDO_BACKENDS = {"alsa": "mido.backends.rtmidi/LINUX_ALSA", "jack": "mido.backends.rtmidi/UNIX_JACK",
                 "coremidi": "mido.backends.rtmidi/MACOSX_CORE", "winmm": "mido.backends.rtmidi/WINDOWS_MM"}
#: Our API names as people know them.
API_LABELS = {"alsa": "ALSA", "jack": "JACK", "coremidi": "CoreMIDI", "winmm": "Windows MM"}
#: Our API names → python-rtmidi's API constants.
RTMIDI_APIS = {name: getattr(rtmidi, "API_" + backend.rsplit("/", 1)[1]) for name, backend in MIDO_BACKENDS.items()}
#: The device ALSA MIDI needs; containers and machines without a sound driver lack it.
ALSA_SEQ_DEVICE = "/dev/snd/seq"

STACK_FIX = ("Fix: start JACK (`jackd -d dummy &` runs without a sound card) and pick it with api=\"jack\" "
        "(--midi-api jack); or send OSC instead (--osc HOST:PORT); or write a MIDI file "
        "(midi_file=\"run.mid\" in bridge.watch, or `gradbridge midi RUN`).")
NO_OUTPUTS_FIX = "Fix: start the synth or DAW first, or create a virtual output (virtual=True, --virtual)."


def available_apis() -> list[str]:
    """The MIDI APIs this python-rtmidi was built with, by our names (e.g. ``["alsa", "jack"]``)."""
    return [name for api in rtmidi.get_compiled_api() for name, value in RTMIDI_APIS.items() if value == api]


def check_api(api: str | None) -> str | None:
    """``api`` itself when it names a MIDI API we know (or is ``None``); ``TypeError``/``ValueError`` else."""
    if api is not None and not isinstance(api, str):
        raise TypeError(f"api must be a str or None, got {type(api).__name__}")
    if api is not None and api not in RTMIDI_APIS:
        raise ValueError(f"api must be one of {', '.join(map(repr, RTMIDI_APIS))} or None (the platform's own); "
                         f"got {api!r}")
    return api


def stack_error(api: str | None, detail: str = "") -> SinkError:
    """The plain-words error for a MIDI system that cannot start."""
    if api == "alsa":
        why = (f"ALSA MIDI cannot start: the ALSA sequencer device {ALSA_SEQ_DEVICE} does not exist (no sound "
               "driver loaded, or a container started without /dev/snd; `sudo modprobe snd-seq` loads it).")
    elif api == "jack":
        why = ("JACK MIDI cannot start: no JACK server is running "
               f"(server name {os.environ.get('JACK_DEFAULT_SERVER', 'default')!r}).")
    elif api is None:
        why = f"MIDI cannot start here: {ALSA_SEQ_DEVICE} does not exist (no ALSA) and no JACK server is running."
    else:
        why = f"{API_LABELS[api]} MIDI cannot start."
    return SinkError(f"{why}{f' ({detail})' if detail else ''} {STACK_FIX}")



def open_rtmidi(kind: type[RtMidiPort], api: str, client_name: str, connect: Callable[[RtMidiPort], None],
                what: Callable[[], str]) -> RtMidiPort:
    """A python-rtmidi ``kind`` (``rtmidi.MidiIn`` or ``rtmidi.MidiOut``) on ``api``, handed to ``connect``
    to open its port. A MIDI system that cannot start raises ``stack_error``; a port that fails to open
    deletes the handle and raises ``SinkError`` naming ``what()`` (asked after ``connect`` tried)."""
    try:
        handle = kind(RTMIDI_APIS[api], client_name)
    except rtmidi.RtMidiError as exc:
        raise stack_error(api, str(exc)) from exc
    try:
        connect(handle)
    except BaseException as exc:
        handle.delete()
        if isinstance(exc, rtmidi.RtMidiError):
            raise SinkError(f"could not open {what()} on {API_LABELS[api]}: {exc}") from exc
        raise
    return handle

def _jack_server_answers() -> bool:
    try:
        rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "gradbridge-probe").delete()
    except rtmidi.SystemError:  # this is the answer: no server
        return False
    return True


def resolve_api(api: str | None) -> str:
    """``api`` checked against what is compiled in, or the platform's default; SinkError when none can start."""
    compiled = available_apis()
    if api is not None:
        if api not in compiled:
            raise SinkError(f"python-rtmidi here was built without {API_LABELS[api]} MIDI (api={api!r}); it has "
                            f"{', '.join(compiled) or 'none'}. Fix: pick one of those, or leave api unset.")
        if api == "alsa" and sys.platform.startswith("linux") and not os.path.exists(ALSA_SEQ_DEVICE):
            raise stack_error("alsa")
        return api
    if sys.platform.startswith("linux"):
        if "alsa" in compiled and os.path.exists(ALSA_SEQ_DEVICE):
            return "alsa"
        if "jack" in compiled and _jack_server_answers():
            return "jack"
        raise stack_error(None)
    for wanted, platform in (("coremidi", "darwin"), ("winmm", "win32")):
        if sys.platform == platform and wanted in compiled:
            return wanted
    if compiled:
        return compiled[0]
    raise SinkError("python-rtmidi here was built without any MIDI API. Fix: reinstall python-rtmidi.")


def list_output_ports(api: str | None = None) -> list[str]:
    """The MIDI output ports of ``api`` (``None``: the platform's own); SinkError if that MIDI cannot start."""
    name = resolve_api(check_api(api))
    try:
        return list(mido.Backend(MIDO_BACKENDS[name]).get_output_names())
    except rtmidi.RtMidiError as exc:
        raise stack_error(name, str(exc)) from exc


def describe_ports(api: str | None = None) -> str:
    """Plain text: the MIDI API in use and its outputs, or why MIDI cannot start (never raises for that)."""
    built = f"(built with: {', '.join(available_apis()) or 'no MIDI API'})"
    try:
        name = resolve_api(check_api(api))
        ports = list_output_ports(name)
    except SinkError as exc:
        return f"{exc}\n{built}"
    try:  # other programs' outputs, which an incoming MIDI clock comes from (--clock-in)
        sources = list(mido.Backend(MIDO_BACKENDS[name]).get_input_names())
    except rtmidi.RtMidiError as exc:
        log.debug("listing MIDI inputs: %s", exc)
        sources = []
    clock_in = ["MIDI clock sources for --clock-in (other programs' outputs):"] + \
        [f"  {i}. {port}" for i, port in enumerate(sources, 1)] if sources else []
    if not ports:
        return "\n".join([f"MIDI API: {API_LABELS[name]} {built}",
                          f"No MIDI outputs on {API_LABELS[name]}. {NO_OUTPUTS_FIX}", *clock_in])
    return "\n".join([f"MIDI API: {API_LABELS[name]} {built}", "MIDI outputs (pass a name, or a unique part of it):"]
                     + [f"  {i}. {port}" for i, port in enumerate(ports, 1)] + clock_in)


def match_port(wanted: str, ports: list[str], api: str) -> str:
    """The port named ``wanted`` exactly, else the one port whose name contains it (any case)."""
    hits = [wanted] if wanted in ports else [p for p in ports if wanted.casefold() in p.casefold()]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise SinkError(f"MIDI port {wanted!r} matches {len(hits)} outputs on {API_LABELS[api]}: "
                        f"{', '.join(map(repr, hits))}. Fix: give more of the name (`gradbridge ports` lists them).")
    if not ports:
        raise SinkError(f"no MIDI output matches {wanted!r}: there are none on {API_LABELS[api]}. {NO_OUTPUTS_FIX}")
    raise SinkError(f"no MIDI output matches {wanted!r} on {API_LABELS[api]}; the outputs are: "
                    f"{', '.join(map(repr, ports))}. Fix: pass one of these names or a unique part of it "
                    "(`gradbridge ports` lists them).")


def _loaded_libjack() -> str | None:
    """The libjack python-rtmidi loaded (Linux, from ``/proc/self/maps``); a second copy deadlocked on close."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for fields in (line.split(maxsplit=5) for line in maps):
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libjack"):
                    return fields[5].strip()
    except OSError as exc:
        log.debug("cannot read /proc/self/maps (%s)", exc)
    return None


class JackWatch:
    """A port-less JACK client that notices the server stopping (``gone``) and knows the period length."""

    _SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def __init__(self, client_name: str) -> None:
        self.gone = threading.Event()
        self.period_s = 0.0
        self._lib: ctypes.CDLL | None = None
        self._client: int | None = None
        path = _loaded_libjack()
        if path is None:
            log.debug("python-rtmidi's libjack not found; a stopped JACK server will not be noticed")
            return
        lib = ctypes.CDLL(path)
        lib.jack_client_open.restype = ctypes.c_void_p
        lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.jack_on_shutdown.argtypes = [ctypes.c_void_p, self._SHUTDOWN, ctypes.c_void_p]
        lib.jack_get_buffer_size.argtypes = lib.jack_get_sample_rate.argtypes = [ctypes.c_void_p]
        lib.jack_get_buffer_size.restype = lib.jack_get_sample_rate.restype = ctypes.c_uint32
        lib.jack_client_close.argtypes = [ctypes.c_void_p]
        status = ctypes.c_int(0)
        client = lib.jack_client_open(f"{client_name}-watch"[:60].encode(), 1, ctypes.byref(status))  # 1: no start
        if not client:
            log.debug("could not open a JACK watch client (status %#x)", status.value)
            return
        self._callback = self._SHUTDOWN(lambda _arg: self.gone.set())  # kept alive as long as the client
        lib.jack_on_shutdown(client, self._callback, None)
        rate = lib.jack_get_sample_rate(client)
        self.period_s = lib.jack_get_buffer_size(client) / rate if rate else 0.0
        self._lib, self._client = lib, client

    def close(self) -> None:
        if self._lib is not None and self._client is not None:
            self._lib.jack_client_close(self._client)
            self._client = None
