"""The follower: reads a run log as it grows and drives every output from it.

One loop serves every way of listening: the process ``bridge.watch`` starts (``bridge.follower_process``),
``gradbridge follow`` (a log another process writes, or a stream on standard input), and a thread in the
training process for your own sinks. Files take every frame, in blocks, at musical time: they may lag
behind training and catch up. Live outputs sound on the live clock (``bridge.live``): each tick the
steps since the last, alarms always.

The loop ends, after delivering every frame the log holds, when the writer closes the log (its end record),
when the writer is gone (its lock released, or ``writer_gone`` says so: the watch's pipe ended), when a
stream ends, or when ``stop`` is set (SIGTERM, Ctrl-C in ``follow``). Then every output is closed: files
finished, MIDI notes silenced.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bridge.dispatch import Delivery, DispatchStats
from bridge.errors import UsageError
from bridge.frames import Frame
from bridge.pipeline import Outputs
from bridge.tail import LogTail

log = logging.getLogger("bridge")

#: Longest sleep between two looks at the writer's state, seconds (the log itself wakes the follower).
POLL_S = 0.1
#: While catching up, how often the follower looks whether it was asked to stop or the writer is gone, s.
_CHECK_BUSY_S = 0.5
#: How often ``progress`` hears how far a follower finishing its backlog got, seconds.
_PROGRESS_EVERY_S = 1.0
#: Progress marks kept to tell, at the end, how far behind the writer's close the follower was.
_MARKS = 100_000
_MARK_EVERY_S = 0.05


@dataclass
class FollowReport:
    """What a follower did.

    Attributes:
        stats: frames read and delivered, and each output's failures.
        reason: why it stopped, in words.
        frames_written: frames the writer says it wrote (its end record), ``None`` without an end record.
        lag_frames: frames delivered after the writer closed the log (how far behind the follower was).
        finish_s: seconds from the writer's close to the last output finished (0 when not after a close).
        damaged_records: damaged records skipped.
    """

    stats: DispatchStats
    reason: str = ""
    frames_written: int | None = None
    lag_frames: int = 0
    finish_s: float = 0.0
    damaged_records: int = 0
    remarks: list[str] = field(default_factory=list)


class Follower:
    """Drives ``outputs`` with the frames of ``tail``; ``run`` until the log ends or ``stop`` is set.

    Args:
        tail: the log to follow (``bridge.tail.FileTail`` or ``StreamTail``).
        outputs: the opened outputs (``bridge.outputs.open_outputs``).
        stop: set it to end the run after delivering what the log already holds.
        writer_gone: polled while idle; True ends the run like a closed log (e.g. the watch's pipe ended).
        wake_fds: descriptors that also wake the follower when readable (the watch's pipe).
        progress: while it delivers the last of the log after a stop, called about once a second with the
            frames delivered so far and the frames left (``None`` when unknown).
    """

    def __init__(self, tail: LogTail, outputs: Outputs, *, stop: threading.Event | None = None,
                 writer_gone: Callable[[], bool] | None = None, wake_fds: Sequence[int] = (),
                 progress: Callable[[int, int | None], None] | None = None) -> None:
        self.tail = tail
        self.outputs = outputs
        self.stop = stop or threading.Event()
        self._writer_gone = writer_gone
        self._wake_fds = tuple(wake_fds)
        self._progress = progress
        self._delivery = Delivery(outputs.consumers)
        self._marks: collections.deque[tuple[float, int]] = collections.deque(maxlen=_MARKS)

    @property
    def frames_done(self) -> int:
        """Frames delivered so far."""
        return self._delivery.stats.frames_done

    def run(self) -> FollowReport:
        """Follow until the log ends (see the module docstring), close every output, and report."""
        tail, reason = self.tail, ""
        checked = time.monotonic()
        try:
            while True:
                frames = tail.read_new()
                self._deliver(frames)
                if tail.finished:
                    reason = tail.reason
                    break
                now = time.monotonic()
                if not frames or now - checked >= _CHECK_BUSY_S:  # also while catching up
                    checked = now
                    if self.stop.is_set() or self._gone():
                        reason = "asked to stop" if self.stop.is_set() else "the writer is gone"
                        self._drain()
                        break
                if not frames:
                    tail.wait(POLL_S, self._wake_fds)
        finally:
            stats = self._delivery.close()
            done_s = time.time()
            self.outputs.finish_stats(stats)
            tail.close()
        return self._report(stats, reason or "stopped", done_s)

    def _drain(self) -> None:
        """Deliver what the log holds now (all of it, however fast the writer goes on), telling ``progress``."""
        tail = self.tail
        tail.freeze()
        told = time.monotonic()
        while frames := tail.read_new():
            self._deliver(frames)
            if self._progress is not None and time.monotonic() - told >= _PROGRESS_EVERY_S:
                told = time.monotonic()
                self._progress(self.frames_done, tail.frames_left())
        self._deliver(tail.read_new(final=True))

    def _deliver(self, frames: list[Frame]) -> None:
        deliver = self._delivery.deliver
        for frame in frames:
            deliver(frame)
        if frames:  # a mark says how many frames were delivered by then (at most one mark per _MARK_EVERY_S)
            now = time.time()
            if not self._marks or now - self._marks[-1][0] >= _MARK_EVERY_S:
                self._marks.append((now, self._delivery.stats.frames_done))

    def _gone(self) -> bool:
        if self._writer_gone is not None and self._writer_gone():
            return True
        return self.tail.writer_alive() is False

    def _report(self, stats: DispatchStats, reason: str, done_s: float) -> FollowReport:
        tail = self.tail
        report = FollowReport(stats, reason, tail.frames_written, damaged_records=tail.damage.records)
        if tail.damage.records:
            stats.frames_unreadable += tail.damage.records
            stats.first_unreadable = stats.first_unreadable or tail.damage.describe(tail.where)
        closed_s = tail.closed_at_s
        if closed_s is not None:
            before = [done for at, done in self._marks if at <= closed_s]
            report.lag_frames = stats.frames_done - (before[-1] if before else 0)
            report.finish_s = max(0.0, done_s - closed_s)
        if tail.frames_written is not None:
            missing = tail.frames_written - tail.skipped_at_start - stats.frames_done - tail.damage.records
            if missing:
                report.remarks.append(f"{missing} frame(s) the writer wrote were not read back")
        return report


class FollowerThread:
    """A follower on a thread of this process, for outputs that must stay here (your own ``sinks=``, or
    ``watch(process=False)``): the same loop, competing with training for the interpreter lock.

    ``start()`` then, once the writer has closed the log, ``join()`` returns the report.
    """

    def __init__(self, follower: Follower, name: str = "gradbridge-follower") -> None:
        self.follower = follower
        self._report: FollowReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "FollowerThread":
        """Start following; returns ``self``."""
        self._thread.start()
        return self

    def join(self) -> FollowReport:
        """Wait until the follower has delivered the whole log and closed its outputs; its report."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C: stop delivering, still close the outputs
            self.follower.stop.set()
            self._thread.join()
            raise
        if self._error is not None:
            raise self._error
        if self._report is None:
            raise UsageError("the follower thread ended without a report")
        return self._report

    def _run(self) -> None:
        try:
            self._report = self.follower.run()
        except BaseException as exc:  # handed to join(), on the thread that waits
            self._error = exc
