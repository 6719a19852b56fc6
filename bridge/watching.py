"""``bridge.watch``: attach to a model and optimizer, and hear the run.

    with bridge.watch(model, optimizer, mapping="pentatonic", record="run.gbrun", wav="run.wav",
                      midi_file="run.mid") as w:
        for x, y in data:
            loss = loss_fn(model(x), y)
            loss.backward()
            w.record_loss(loss)      # optional: the loss travels with the step's norms
            optimizer.step()
            optimizer.zero_grad()

The training thread computes the norms (one fused pass) and appends the step's record to the run log (one
``os.write``): nothing else, no thread of ours. A follower process (``bridge.follower_process``) reads the
log as it grows and drives every output. Closing (the end of the ``with``, ``remove()``, Ctrl-C, an
exception, SIGTERM) writes the log's end record, waits for the follower to finish the files and silence
every note, and prints what happened.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping as MappingType
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch

from bridge.capture import Capture, find_layers
from bridge.dispatch import DispatchStats
from bridge.distributed import participation
from bridge.errors import RunLogError
from bridge.follower import Follower, FollowerThread, FollowReport
from bridge.follower_link import FollowerGone, FollowerProcess
from bridge.frames import RunInfo
from bridge.mapping import Mapping
from bridge.outputs import OutputSpec, open_outputs, page_of
from bridge.runlog import RunLogWriter
from bridge.signals import SigtermGuard
from bridge.sinks.base import Sink
from bridge.tail import FileTail
from bridge.watch_summary import Ending, summarize
from bridge.wire import FollowerSetup

PathLike = str | os.PathLike[str]

log = logging.getLogger("bridge")

#: While the follower catches up at the end, how often ``watch`` says how far it is, seconds.
PROGRESS_EVERY_S = 5.0


class Watch:
    """A running watch: the optimizer hook, the run log and its followers. Close it with ``remove()``.

    Works as a context manager; ``record_loss(loss)`` attaches the loss to the next frame; with
    ``auto=False`` no hook is registered and ``step(loss)`` captures a frame explicitly.
    """

    def __init__(self, capture: Capture, writer: RunLogWriter | None, *, process: FollowerProcess | None = None,
                 thread: FollowerThread | None = None, temporary: bool = False, description: str = "",
                 announce: TextIO | None = None, guard: SigtermGuard | None = None,
                 page_url: str | None = None) -> None:
        self._capture = capture
        self.page_url = page_url  #: the address of the page serving the run (``serve=``), token included
        self._writer = writer
        self._process = process
        self._thread = thread
        self._temporary = temporary
        self._announce = announce
        self._guard = guard
        self._stats: DispatchStats | None = None
        self._report: FollowReport | None = None
        self._progress_said = -math.inf
        self.description = description

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The layers being measured, in channel order."""
        return self._capture.layer_names

    @property
    def run_log(self) -> str | None:
        """The run log's path (a temporary file when no ``record=`` was given), ``None`` on a silent rank."""
        return None if self._writer is None else self._writer.path

    def record_loss(self, loss: float | torch.Tensor) -> None:
        """Attach ``loss`` to the next captured frame (a tensor is not synchronised on this thread)."""
        self._capture.record_loss(loss)

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """Capture a frame now (for ``auto=False``): call after ``backward()``, before ``zero_grad()``."""
        self._capture.step(loss)

    @property
    def stats(self) -> DispatchStats:
        """What happened so far: until ``remove()``, frames in are the frames captured and done the frames in
        the run log; after it, done are the frames every output took, and each output's state is there."""
        if self._stats is not None:
            return self._stats
        writer = self._writer
        if writer is None:
            return DispatchStats()
        return DispatchStats(frames_in=writer.appended, frames_dropped=writer.dropped, frames_done=writer.written,
                             frames_unreadable=self._capture.errors, consumers=("run log",))

    @property
    def outputs_report(self) -> FollowReport | None:
        """After ``remove()``: the follower process's own report (its lag when training closed the log, its
        time to finish, its outputs); ``None`` before, or when it failed or none ran."""
        return self._report

    @property
    def outputs_pid(self) -> int | None:
        """The process id of the follower process that drives the outputs, or ``None``."""
        return None if self._process is None else self._process.pid

    def remove(self) -> DispatchStats:
        """Detach from the optimizer, finish every output, and return what happened. Idempotent."""
        if self._stats is not None:
            return self._stats
        ending = Ending()
        if self._guard is not None:
            self._guard.finishing()
        try:
            self._finish(ending)
        finally:
            if self._guard is not None:
                self._guard.release()
            self._stats = summarize(self._writer, self._capture, ending, temporary=self._temporary)
            self._report = ending.process
            if self._announce is not None:
                print(f"gradbridge: {self._stats.summary()}", file=self._announce)
        if ending.interrupted:
            raise KeyboardInterrupt
        return self._stats

    close = remove

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _finish(self, ending: Ending) -> None:
        self._capture.remove()
        if self._writer is not None:
            try:
                self._writer.close()
            except RunLogError as exc:
                ending.run_log_error = str(exc)
        if self._process is not None:
            try:
                ending.process = self._process.finish(progress=self._progress)
            except FollowerGone as exc:
                ending.process_failure = f"when it {exc}"
            except KeyboardInterrupt:
                ending.interrupted = True
                ending.process_failure = "when a second Ctrl-C stopped it while it finished the files"
        if self._thread is not None:
            try:
                ending.thread = self._thread.join()
            except KeyboardInterrupt:
                ending.interrupted = True

    def _progress(self, done: int, left: int | None) -> None:
        """Say, every ``PROGRESS_EVERY_S`` seconds, how far the follower is while it catches up at the end."""
        now = time.monotonic()
        if self._announce is not None and left and now - self._progress_said >= PROGRESS_EVERY_S:
            self._progress_said = now
            print(f"gradbridge: finishing the outputs: {done} frames done, {left} to go", file=self._announce)


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
    serve: int | None = None,
    serve_host: str = "127.0.0.1",
    serve_token: str | None = None,
    sinks: Sequence[Sink] = (),
    midi_api: str | None = None,
    midi_virtual: bool = False,
    every: int | None = None,
    max_fps: float | None = None,
    aggregate: str | None = None,
    clock: str | None = None,
    midi_clock: bool | str = False,
    clock_in: str | None = None,
    link: bool = False,
    wav_format: str = "int16",
    layers: str | None = None,
    params: str = "all",
    groups: MappingType[str, str] | None = None,
    depth: int | None = None,
    auto: bool = True,
    ranks: int | str = 0,
    process: bool = True,
    announce: TextIO | None = sys.stderr,
) -> Watch:
    """Start listening to ``model``'s gradient norms at every step of ``optimizer``.

    Outputs (any mix; see ``bridge.outputs.OutputSpec``):
        record: path of the run log (``.gbrun``) the hook writes, every step, for replay and re-rendering;
            without it a temporary one (in the system's temporary folder) is used and removed at close.
        wav: path of a WAV file rendered by the built-in synth.
        midi_file: path of a Standard MIDI File (type 1, one track per layer).
        midi: live MIDI output port, by name or a unique part of it (``gradbridge ports`` lists them);
            ``midi_api`` (``"alsa"``, ``"jack"``, ``"coremidi"``, ``"winmm"``) and ``midi_virtual`` (create a
            virtual port named ``midi``, or "gradbridge", for a DAW to connect to) go with it.
        osc: live OSC receiver as ``"host:port"``, e.g. ``"127.0.0.1:57120"`` for SuperCollider.
        play: play live through the built-in synth on the default audio output (needs PyAudio).
        serve: serve a web page that plays, plots and routes the run to Web MIDI on this TCP port (0: any
            free one), from the follower process (needs the ``serve`` extra, aiohttp); ``Watch.page_url`` and
            the start-up line give its address. ``serve_host`` (default ``"127.0.0.1"``: this machine only,
            reach it through an SSH tunnel) and ``serve_token`` (default: random) go with it. The page stops
            when the run ends; ``gradbridge serve RUN`` keeps serving a finished run.
        sinks: your own live sinks; they run on a thread of this process (see ``process``).
        every, max_fps, aggregate: live rate control, overriding the preset's ``[live]`` table: on the free
            clock, sound every Nth step, at most ``max_fps`` steps a second; on both, fold the steps between
            two ticks by ``"max"`` or ``"mean"``.
        clock: ``"tempo"`` (every live output ticks at the preset's step length, each tick the aggregate of
            the steps since the last; the default of the musical presets) or ``"free"`` (each step as it
            arrives); ``None``: the preset's ``[live] clock``.
        midi_clock: send MIDI clock (24 a quarter note at the preset's tempo; Song Position and Start when
            the outputs open, Stop at close): ``True`` on the live ``midi`` port, or a port name of its own.
        clock_in: follow the MIDI clock arriving from this MIDI output (a DAW's): its tempo, Start and Stop.
        link: follow an Ableton Link session: its tempo and beats (``pip install "gradbridge[link]"``).
        wav_format: ``"int16"`` (16-bit PCM) or ``"float32"``.

    What is measured:
        mapping: a preset name (``gradbridge mappings`` lists them), a ``.toml`` path, or a ``Mapping``.
        layers: regex; keep only layers whose name matches.
        params: ``"all"`` parameters of each layer, or ``"weights"`` only (as the 2019 post did).
        groups: {channel name: regex}: modules matching a regex sound as one layer.
        depth: group modules by the first ``depth`` parts of their dotted name.
        auto: register the optimizer hook (``False``: call ``step()`` yourself).
        ranks: in a ``torch.distributed`` run, the rank that sounds (the others open no output and,
            unless gradients are sharded, do nothing), or ``"all"``: every rank sounds and writes its
            files as ``NAME.rank<N>.EXT``. Ignored outside a distributed run.

    How:
        process: ``True`` (default): the outputs run in a follower process (``python -m
            bridge.follower_process``, no torch, 0.3-1 s to start, at a lower priority), which reads the
            run log as it grows; the training process keeps only the hook. ``False``: the same follower runs
            on a thread here, competing with training for the interpreter lock. Your own ``sinks`` always
            follow the log on a thread here.
        announce: stream for the start-up description and the closing summary (``None``: silent).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"watch needs a torch.nn.Module as model, got {type(model).__name__}")
    if not isinstance(process, bool):
        raise TypeError(f"process must be True (outputs in a follower process) or False (on a thread here), "
                        f"got {process!r}")
    if announce is not None and not callable(getattr(announce, "write", None)):
        raise TypeError(f"announce must be a text stream such as sys.stderr, or None (silent); got "
                        f"{type(announce).__name__}")
    chosen = mapping if isinstance(mapping, Mapping) else Mapping.load(mapping)
    found = find_layers(model, include=layers, params=params, groups=groups, depth=depth)
    part = participation(ranks, model, found)
    if not part.sounds:  # no run log, no follower; joins the norm reduction if gradients are sharded
        capture = Capture(model, optimizer, found, _ignore, auto=auto, participation=part)
        return Watch(capture, None, description=f"rank {part.rank} is silent (rank {ranks} sounds)")
    spec = OutputSpec(record=part.path_for(record), wav=part.path_for(wav), midi_file=part.path_for(midi_file),
                      wav_format=wav_format, midi=midi, midi_api=midi_api, midi_virtual=midi_virtual, osc=osc,
                      play=play, serve=serve, serve_host=serve_host, serve_token=serve_token, every=every,
                      max_fps=max_fps, aggregate=aggregate, clock=clock, midi_clock=midi_clock, clock_in=clock_in,
                      link=link)
    if serve is not None:
        from bridge.serve import require_aiohttp

        require_aiohttp()
    spec.check_paths()
    spec.live_for(chosen)  # a bad every / max_fps / aggregate / clock is refused here, before anything starts
    sinks = list(sinks)
    run_info = RunInfo(tuple(layer.name for layer in found), {"mapping": chosen.preset.name})
    log_path, temporary = spec.record, spec.record is None
    if temporary:
        handle, log_path = tempfile.mkstemp(prefix="gradbridge-", suffix=".gbrun")
        os.close(handle)
    writer = RunLogWriter(log_path, run_info)
    follower = thread = page_url = None
    description = ""
    try:
        # a follower runs even with no output asked for: it reads the log to say what the run's alarms were
        if process:
            follower = FollowerProcess.start(FollowerSetup(writer.path, chosen.preset, spec))
            description, page_url = follower.description, follower.page_url
        if sinks or not process:
            own = spec if not process else OutputSpec(every=every, max_fps=max_fps, aggregate=aggregate, clock=clock,
                                                       midi_api=midi_api, clock_in=clock_in, link=link)
            origin_s = follower.clock_origin_s if follower is not None else None  # one grid for both
            outputs = open_outputs(own, chosen, run_info, extra_live_sinks=sinks, clock_origin_s=origin_s,
                                   run_name=os.path.basename(writer.path))
            description = description or outputs.arrangement.description
            page = page_of(outputs)
            page_url = page_url if page is None else page.url
            thread = FollowerThread(Follower(FileTail(writer.path), outputs)).start()
        capture = Capture(model, optimizer, found, writer.append, auto=auto, participation=part)
    except BaseException:
        _abandon(writer, follower, thread, log_path if temporary else None)
        raise
    description = description or Mapping(chosen.preset).arrange(run_info.layer_names).description
    if announce is not None:
        print(f"gradbridge: {description}", file=announce)
        if page_url is not None:
            from bridge.serve import reach_hint

            print(f"gradbridge: serving {page_url}   ({reach_hint(page_url)})", file=announce)
    return Watch(capture, writer, process=follower, thread=thread, temporary=temporary, description=description,
                 announce=announce, guard=SigtermGuard.install(), page_url=page_url)


def _ignore(frame: object) -> None:
    """A silent rank's frames go nowhere (it measures only to join the reduction)."""


def _abandon(writer: RunLogWriter, follower: FollowerProcess | None, thread: FollowerThread | None,
             temporary: str | None) -> None:
    """Undo a watch that could not start: close the log (its followers then end) and remove a temporary one."""
    try:
        writer.close()
    except RunLogError as exc:  # the start-up error that got us here is the one to raise
        log.debug("closing the run log of a watch that could not start: %s", exc)
    if follower is not None:
        try:
            follower.finish()
        except FollowerGone as exc:
            log.debug("the follower of a watch that could not start: %s", exc)
    if thread is not None:
        thread.join()
    if temporary is not None and os.path.exists(temporary):
        os.remove(temporary)
