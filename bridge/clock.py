"""The live clocks: when the gathered steps sound, as one ``Tick`` on every live output.

``TempoClock`` is a thread of the follower. Its source (``bridge.beatgrid.GridSteps`` on the preset's tempo
or an Ableton Link session, or ``bridge.clock_in.ClockInSteps`` on an incoming MIDI clock) says when the
next step falls. ``LEAD_S`` before that moment the thread maps what the follower gathered since the last
tick (``bridge.ticks.TickGatherer``), hands the tick to the outputs that schedule ahead (the MIDI port
writes it at the step's moment, beside the MIDI clock's pulse), waits for the moment and hands it to the
others (OSC, the speakers, your own sinks). When nothing arrived, the tick is silent; when training is
slower than the tempo, each step sounds on the next tick after it arrives. Deadlines come from the grid,
never from accumulated sleeps, so a late wake-up moves nothing after it.

``FreeClock`` has no thread: each step sounds as it arrives, on the follower's thread, thinned by the
rate control (``every``, ``max_fps``); what it held back sounds with the next one that passes.

At ``stop`` both sound what is still gathered (on the next step of a tempo clock, at most a few steps
away; at once when its source has stopped), so an alarm is never lost with the run's end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from bridge.beatgrid import Plan, StepSource
from bridge.events import StepEvents
from bridge.frames import Frame
from bridge.rate import RateControl
from bridge.ticks import Tick, TickGatherer

log = logging.getLogger("bridge")

#: How long before a step's moment the tempo clock gathers, maps and hands it to the MIDI port, seconds.
LEAD_S = 0.010
#: A tick handed to the scheduling outputs later than this after its moment counts as late, seconds.
LATE_S = 0.002
#: Frames waiting to be mapped that wake the clock's thread to map them before the tick (bounds its work).
ABSORB_AT = 256
#: Between ticks the clock's thread maps what arrived about this often, seconds, so that little is left to map
#: when a tick is prepared; never closer than ``_ABSORB_MARGIN_S`` to the moment it prepares one.
ABSORB_EVERY_S = 0.02
_ABSORB_MARGIN_S = 0.003
_IDLE_S = 0.25  # longest wait with no step planned (a stopped incoming clock), seconds
_FINAL_STEPS = 4  # at stop, the last gathered steps wait at most this many steps for their tick
_JOIN_S = 10.0

Deliver = Callable[[Tick], None]


class TempoClock:
    """The tempo clock's thread: ``start``, ``offer`` each frame (the follower's thread), ``stop``.

    Args:
        gatherer: gathers and maps the frames between ticks.
        source: when each step falls.
        ahead: called with each tick ``lead_s`` before its moment (outputs that schedule).
        on_time: called with each tick at its moment (the other outputs).
        lead_s: seconds between preparing a tick and its moment (at most half a step).
    """

    def __init__(self, gatherer: TickGatherer, source: StepSource, ahead: Sequence[Deliver],
                 on_time: Sequence[Deliver], *, lead_s: float = LEAD_S) -> None:
        self.gatherer = gatherer
        self.source = source
        self._ahead, self._on_time = list(ahead), list(on_time)
        self.lead_s = lead_s
        self._wake = threading.Event()
        self._stopping = self._abort = False
        self._thread = threading.Thread(target=self._run, name="gradbridge-clock", daemon=True)
        self._music_s = 0.0  # musical time of the step after the last one sounded: the clock starts at step 0
        self._last_step = -1
        self.ticks = 0  # ticks that sounded something
        self.silent = 0  # steps with nothing new to sound
        self.late = 0  # ticks prepared after their moment
        self.error: BaseException | None = None

    def start(self) -> "TempoClock":
        """Start the thread; returns ``self``."""
        self.source.set_waker(self._wake)
        self._thread.start()
        return self

    def offer(self, frame: Frame) -> None:
        """A new frame, for the next tick (the follower's thread)."""
        if self.gatherer.add(frame) >= ABSORB_AT:
            self._wake.set()

    def stop(self) -> None:
        """Sound what is gathered on the next step (or at once), stop the thread. A Ctrl-C meanwhile gives
        the last step up and stops at once."""
        self._stopping = True
        self._wake.set()
        try:
            if self._thread.is_alive():
                self._thread.join(_JOIN_S)
        except KeyboardInterrupt:
            self._abort = True
            self._wake.set()
            self._thread.join(1.0)
        self.source.set_waker(None)
        if self._thread.is_alive():
            log.warning("the live clock did not stop within %g s", _JOIN_S)

    def _run(self) -> None:
        try:
            while not self._abort:
                self._wake.clear()
                now = time.monotonic()
                plan = self.source.upcoming(now)
                if self._stopping:
                    self._finish(plan, now)
                    return
                wait_s = _IDLE_S if plan is None else plan.due_s - self._lead(plan) - now
                if wait_s <= 0 and plan is not None:
                    self._sound(plan)
                elif self.gatherer.waiting and wait_s > _ABSORB_MARGIN_S:
                    self.gatherer.absorb()
                    self._wake.wait(min(wait_s - _ABSORB_MARGIN_S, ABSORB_EVERY_S))
                else:
                    self._wake.wait(min(wait_s, _IDLE_S))
        except Exception as exc:  # reported by the live side at close; the files go on regardless
            self.error = exc
            log.warning("the live clock stopped: %s: %s", type(exc).__name__, exc)

    def _finish(self, plan: Plan | None, now: float) -> None:
        """Stopping: the last gathered steps sound on the next step when it is near, else at once."""
        if not self.gatherer.pending:
            return
        planned = plan is not None and plan.due_s - now <= _FINAL_STEPS * max(plan.length_s, 0.0)
        if not planned:
            plan = Plan(self._last_step + 1, now + self.lead_s,
                        plan.length_s if plan is not None else self.gatherer.arrangement.seconds_per_step)
        wait_s = plan.due_s - self._lead(plan) - time.monotonic()
        while wait_s > 0 and not self._abort:
            self._wake.wait(wait_s)
            self._wake.clear()
            wait_s = plan.due_s - self._lead(plan) - time.monotonic()
        if not self._abort:
            self._sound(plan, planned)

    def _lead(self, plan: Plan) -> float:
        """How long before ``plan``'s moment its tick is prepared: ``lead_s``, or half a step when shorter."""
        return min(self.lead_s, max(plan.length_s, 0.0) / 2)

    def _sound(self, plan: Plan, planned: bool = True) -> None:
        """Make the tick of ``plan`` from what was gathered and hand it out (silent when nothing was);
        ``planned``: the plan is the source's (else one made up at the end, when the source has none)."""
        steps = max(plan.step - self._last_step, 1)  # a source that starts again (Start) goes on counting
        start_s = self._music_s + (steps - 1) * plan.length_s
        self._music_s = start_s + plan.length_s
        self._last_step = plan.step
        taken = self.gatherer.take(start_s=start_s, duration_s=plan.length_s)
        if planned:
            self.source.done(plan.step)
        if taken is None:
            self.silent += 1
            return
        events, first, last, count = taken
        tick = Tick(events, first, last, count, plan.step, plan.due_s)
        if time.monotonic() > plan.due_s + LATE_S:
            self.late += 1
        for deliver in self._ahead:
            deliver(tick)
        wait_s = plan.due_s - time.monotonic()
        while wait_s > 0 and not self._abort:
            time.sleep(wait_s)
            wait_s = plan.due_s - time.monotonic()
        for deliver in self._on_time:
            deliver(tick)
        self.ticks += 1

    def summary(self) -> str:
        """The clock's work in words, for the closing summary."""
        text = f"{self.ticks} ticks, {self.source.describe()}"
        skipped = getattr(self.source, "skipped", 0)
        extra = [f"{self.late} late"] if self.late else []
        extra += [f"{skipped} steps skipped (the clock's thread woke too late)"] if skipped else []
        extra += [f"stopped: {type(self.error).__name__}: {self.error}"] if self.error is not None else []
        return text + (f" ({'; '.join(extra)})" if extra else "")


class FreeClock:
    """Each step sounds as it arrives, on the caller's thread, thinned by ``rate`` (``every``, ``max_fps``)."""

    def __init__(self, gatherer: TickGatherer, rate: RateControl, deliver: Sequence[Deliver]) -> None:
        self.gatherer = gatherer
        self.rate = rate
        self._deliver = list(deliver)
        self.ticks = 0
        self.error: BaseException | None = None

    def start(self) -> "FreeClock":
        return self

    def offer(self, frame: Frame) -> None:
        """A new frame: sound it (with those held back) now if the rate control lets it through."""
        gatherer = self.gatherer
        if self.rate.passes_everything and not gatherer.pending:  # each step as it is: no gathering at all
            gatherer.frames_in += 1
            self._tick(gatherer.mapping.map_frame(frame), frame.step, frame.step, 1)
            return
        gatherer.add(frame)
        if self.rate.arrived():
            self._sound()

    def stop(self) -> None:
        """Sound what the rate control still holds back."""
        if self.gatherer.pending:
            self._sound()

    def _sound(self) -> None:
        taken = self.gatherer.take()
        if taken is not None:
            self._tick(*taken)

    def _tick(self, events: StepEvents, first: int, last: int, count: int) -> None:
        tick = Tick(events, first, last, count, self.ticks, time.monotonic())
        self.ticks += 1
        for deliver in self._deliver:
            deliver(tick)

    def summary(self) -> str:
        rate = self.rate
        limits = [f"every {rate.every} steps"] if rate.every > 1 else []
        limits += [f"at most {1 / rate.min_interval_s:g} a second"] if rate.min_interval_s else []
        return f"{self.ticks} ticks, free: each step as it arrives{', ' + ' and '.join(limits) if limits else ''}"
