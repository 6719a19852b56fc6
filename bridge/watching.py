"""``bridge.watch``: attach to a model and optimizer, and hear the run.

    with bridge.watch(model, optimizer, mapping="pentatonic", record="run.gbrun", wav="run.wav",
                      midi_file="run.mid") as w:
        for x, y in data:
            loss = loss_fn(model(x), y)
            loss.backward()
            w.record_loss(loss)      # optional: the loss travels with the step's norms
            optimizer.step()
            optimizer.zero_grad()

The training thread only computes the norms (one fused pass) and hands a frame to the dispatcher thread,
which records it, maps it to events and feeds the sinks; with ``process=True`` that thread only forwards
each frame to a separate outputs process, which does the rest. Closing (the end of the ``with``, ``remove()``,
Ctrl-C, an exception) drains what is queued, writes the files and prints what happened.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping as MappingType
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch

from bridge.capture import Capture, Layer, find_layers
from bridge.dispatch import Dispatcher, DispatchStats
from bridge.distributed import Participation, participation
from bridge.frames import RunInfo
from bridge.health import RunHealth
from bridge.mapping import Mapping
from bridge.outputs import file_sinks, live_sinks
from bridge.outputs_process import OutputsSetup
from bridge.pipeline import Outputs, build_outputs, rate_for
from bridge.process_link import OutputsProcess
from bridge.rate import RateControl
from bridge.runlog import RunLogWriter
from bridge.sinks.base import Sink

PathLike = str | os.PathLike[str]


class Watch:
    """A running watch: the optimizer hook, the dispatcher and the outputs. Close it with ``remove()``.

    Works as a context manager; ``record_loss(loss)`` attaches the loss to the next frame; with
    ``auto=False`` no hook is registered and ``step(loss)`` captures a frame explicitly.
    """

    def __init__(self, capture: Capture, dispatcher: Dispatcher, outputs: Outputs | None,
                 description: str, announce: TextIO | None, process: OutputsProcess | None = None,
                 health: RunHealth | None = None) -> None:
        self._health = health
        self._capture = capture
        self._dispatcher = dispatcher
        self._outputs = outputs
        self._process = process
        self._announce = announce
        self._stats: DispatchStats | None = None
        self.description = description

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The layers being measured, in channel order."""
        return self._capture.layer_names

    def record_loss(self, loss: float | torch.Tensor) -> None:
        """Attach ``loss`` to the next captured frame (a tensor is not synchronised on this thread)."""
        self._capture.record_loss(loss)

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """Capture a frame now (for ``auto=False``): call after ``backward()``, before ``zero_grad()``."""
        self._capture.step(loss)

    @property
    def stats(self) -> DispatchStats:
        """Frames in, dropped and done, and errors per output, so far (final after ``remove()``).

        With ``process=True``, until ``remove()`` these are the training side's: frames done are the frames
        handed to the outputs process (or dropped when its pipe was full).
        """
        return self._stats if self._stats is not None else self._dispatcher.stats

    @property
    def outputs_pid(self) -> int | None:
        """The process id of the outputs process (``process=True``), else ``None``."""
        return None if self._process is None else self._process.pid

    def remove(self) -> DispatchStats:
        """Detach from the optimizer, finish every output, and return what happened. Idempotent."""
        if self._stats is None:
            self._capture.remove()
            stats = self._dispatcher.close()
            if self._process is not None:
                stats = self._process.finish(stats)
            if self._outputs is not None:
                stats = self._outputs.count_open_failures(stats)
            if self._health is not None:  # the alarms and spikes of the run, in the closing summary
                stats.notes[self._health.name] = self._health.summary()
            self._stats = stats
            if self._announce is not None:
                print(f"gradbridge: {stats.summary()}", file=self._announce)
        return self._stats

    close = remove

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def watch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    mapping: str | Path | Mapping = "pentatonic",
    record: PathLike | None = None,
    wav: PathLike | None = None,
    midi_file: PathLike | None = None,
    midi: str | None = None,
    osc: str | None = None,
    play: bool = False,
    sinks: Sequence[Sink] = (),
    midi_api: str | None = None,
    midi_virtual: bool = False,
    every: int | None = None,
    max_fps: float | None = None,
    aggregate: str | None = None,
    layers: str | None = None,
    params: str = "all",
    groups: MappingType[str, str] | None = None,
    depth: int | None = None,
    auto: bool = True,
    ranks: int | str = 0,
    queue_size: int = 1024,
    flush_every: int = 1,
    wav_format: str = "int16",
    announce: TextIO | None = sys.stderr,
    process: bool = False,
) -> Watch:
    """Start listening to ``model``'s gradient norms at every step of ``optimizer``.

    Args:
        model: the network; every module that owns parameters is a layer (see ``layers``, ``groups``).
        optimizer: its optimizer; the hook runs just before each ``optimizer.step()``. ``None`` needs
            ``auto=False`` and explicit ``step()`` calls.
        mapping: a preset name (``gradbridge mappings`` lists them), a ``.toml`` path, or a ``Mapping``.
        record: path of the run log (``.gbrun``) to write, for replay and re-rendering later.
        wav: path of a WAV file rendered by the built-in synth.
        midi_file: path of a Standard MIDI File (type 1, one track per layer).
        midi: live MIDI output port, by name or a unique part of it (``gradbridge ports`` lists them).
        osc: live OSC receiver as ``"host:port"``, e.g. ``"127.0.0.1:57120"`` for SuperCollider.
        play: play live through the built-in synth on the default audio output (needs PyAudio).
        sinks: further live sinks (your own), rate-controlled like ``midi``, ``osc`` and ``play``.
        midi_api: ``"alsa"``, ``"jack"``, ``"coremidi"`` or ``"winmm"``; ``None``: the platform's own.
        midi_virtual: create a virtual MIDI output named ``midi`` (or "gradbridge") for a DAW to connect to.
        every, max_fps, aggregate: live rate control, overriding the preset's ``[live]`` table: sound
            every Nth step, at most ``max_fps`` steps a second, folding the rest by ``"max"`` or ``"mean"``.
        layers: regex; keep only layers whose name matches.
        params: ``"all"`` parameters of each layer, or ``"weights"`` only (as the 2019 post did).
        groups: {channel name: regex}: modules matching a regex sound as one layer.
        depth: group modules by the first ``depth`` parts of their dotted name.
        auto: register the optimizer hook (``False``: call ``step()`` yourself).
        ranks: in a ``torch.distributed`` run, the rank that sounds (the others open no output and,
            unless gradients are sharded, do nothing), or ``"all"``: every rank sounds and writes its
            files as ``NAME.rank<N>.EXT``. Ignored outside a distributed run.
        queue_size: frames that may wait for the dispatcher before new ones are dropped (and counted).
        flush_every: frames per write of the run log (1 loses nothing on ``kill -9``).
        wav_format: ``"int16"`` (16-bit PCM) or ``"float32"``.
        announce: stream for the start-up description and the closing summary (``None``: silent).
        process: run the outputs (run log, WAV, MIDI file, ``midi``, ``osc``, ``play``) in a separate
            process, ``python -m bridge.outputs_process``, so their work never holds this process's
            interpreter lock. It imports no torch and starts in about as long as NumPy takes to import
            (0.3-1 s); ``watch`` waits until its outputs are open. This process keeps the hook and a thread
            that writes each frame (32 + 8 bytes per layer) into a 1 MiB pipe; when the outputs process
            falls that far behind, frames are dropped and counted: training never waits. Your own ``sinks``
            stay on that thread in this process. ``False``: everything runs on the thread here.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"watch needs a torch.nn.Module as model, got {type(model).__name__}")
    chosen = mapping if isinstance(mapping, Mapping) else Mapping.load(mapping)
    found = find_layers(model, include=layers, params=params, groups=groups, depth=depth)
    part = participation(ranks, model, found)
    if not part.sounds:  # no outputs, no thread, no files; joins the norm reduction if gradients are sharded
        silent = Dispatcher([])
        capture = Capture(model, optimizer, found, silent.submit, auto=auto, participation=part)
        return Watch(capture, silent, None, f"rank {part.rank} is silent (rank {ranks} sounds)", None)
    if not isinstance(process, bool):
        raise TypeError(f"process must be True (outputs in a separate process) or False, got {process!r}")
    if process and os.name != "posix":
        raise ValueError(f"process=True needs a POSIX system (Linux, macOS) for its non-blocking pipe; this is "
                         f"{os.name!r}: pass process=False")
    record, wav, midi_file = part.path_for(record), part.path_for(wav), part.path_for(midi_file)
    run_info = RunInfo(tuple(layer.name for layer in found), {"mapping": chosen.preset.name})
    rate = rate_for(chosen, every, max_fps, aggregate)
    if process:
        setup = OutputsSetup(run_info, chosen.preset, record=_path_text(record, "record"), flush_every=flush_every,
                             wav=_path_text(wav, "wav"), wav_format=wav_format,
                             midi_file=_path_text(midi_file, "midi_file"), midi=midi, midi_api=midi_api,
                             midi_virtual=midi_virtual, osc=osc, play=play,
                             rate={"every": every, "max_fps": max_fps, "aggregate": aggregate})
        return _watch_in_process(model, optimizer, found, chosen, run_info, setup, sinks, rate,
                                 auto=auto, part=part, queue_size=queue_size, announce=announce)
    files = file_sinks(wav=wav, midi_file=midi_file, wav_format=wav_format)
    live = live_sinks(midi=midi, midi_api=midi_api, midi_virtual=midi_virtual, osc=osc, play=play) + list(sinks)
    writer = RunLogWriter(record, run_info, flush_every=flush_every) if record is not None else None
    outputs = build_outputs(chosen, run_info, files, record=writer, live_sinks=live, rate=rate)
    health = RunHealth(run_info.layer_names, chosen.preset)
    dispatcher = Dispatcher([*outputs.consumers, health], queue_size=queue_size).start()
    try:
        capture = Capture(model, optimizer, found, dispatcher.submit, auto=auto, participation=part)
    except BaseException:
        dispatcher.close()
        raise
    description = outputs.arrangement.description
    if announce is not None:
        print(f"gradbridge: {description}", file=announce)
    return Watch(capture, dispatcher, outputs, description, announce, health=health)


def _path_text(path: PathLike | None, field_name: str) -> str | None:
    if path is None or isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        return os.fspath(path)
    raise TypeError(f"{field_name} must be a path (str or os.PathLike) or None, got {type(path).__name__}")


def _watch_in_process(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, found: list[Layer],
                      chosen: Mapping, run_info: RunInfo, setup: OutputsSetup, sinks: Sequence[Sink],
                      rate: RateControl, *, auto: bool, part: Participation, queue_size: int,
                      announce: TextIO | None) -> Watch:
    """``watch`` with the outputs in a separate process; the user's own sinks stay on the thread here."""
    child = OutputsProcess.start(setup)
    try:
        outputs = build_outputs(chosen, run_info, [], live_sinks=list(sinks), rate=rate)
        health = RunHealth(run_info.layer_names, chosen.preset)
        dispatcher = Dispatcher([child.forwarder, *outputs.consumers, health], queue_size=queue_size).start()
    except BaseException:
        child.finish(DispatchStats())
        raise
    try:
        capture = Capture(model, optimizer, found, dispatcher.submit, auto=auto, participation=part)
    except BaseException:
        child.finish(dispatcher.close())
        raise
    if announce is not None:
        print(f"gradbridge: {child.description}", file=announce)
    return Watch(capture, dispatcher, outputs, child.description, announce, child, health)
