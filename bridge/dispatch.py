"""Dispatch: hand frames from the training thread to consumers on one background thread.

The training thread only calls ``Dispatcher.submit``, which never blocks: when the bounded queue is
full the frame is dropped and counted. The dispatcher thread resolves each frame once and gives it to
every consumer in order. A consumer that raises is reported once, counted and switched off; the others
and training go on. ``close()`` drains the queue, closes every consumer and reports what happened.

For offline rendering (run logs, CSV imports) ``run_sync(frames)`` drives the same consumers, with the
same failure isolation, on the caller's thread and without a queue.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bridge.frames import Frame

logger = logging.getLogger("bridge")

_STOP = object()
_EXIT_TIMEOUT_S = 5.0
_POLL_S = 0.5


class FrameSource(Protocol):
    """Anything handed to ``submit``: a ``Frame`` or a capture's ``PendingFrame``."""

    def resolve(self) -> Frame: ...


@runtime_checkable
class Consumer(Protocol):
    """Receives every frame in step order on the dispatcher thread, then ``close`` once."""

    name: str

    def handle(self, frame: Frame) -> None:
        """Take one frame (sound it, record it, ...)."""

    def close(self) -> None:
        """Finish: flush and release resources."""


@dataclass
class DispatchStats:
    """What a dispatcher did.

    Attributes:
        frames_in: frames offered to ``submit`` (or ``run_sync``).
        frames_dropped: frames not queued because the queue was full or the dispatcher closed.
        frames_done: frames resolved and given to the consumers.
        frames_unreadable: frames whose ``resolve()`` raised (skipped).
        consumers: consumer names, in delivery order.
        errors: failures per consumer name (at most one while handling, plus one at close).
        first_errors: the first failure per consumer, as ``"at step 12 (PortClosed: ...)"``.
        first_unreadable: the first ``resolve()`` failure, or ``None``.
        notes: what a consumer that did not fail has to say instead of "ok" (e.g. the run's alarms).
    """

    frames_in: int = 0
    frames_dropped: int = 0
    frames_done: int = 0
    frames_unreadable: int = 0
    consumers: tuple[str, ...] = ()
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)
    first_unreadable: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The stats in plain words, e.g. ``"200 frames in, 0 dropped; wav: ok; midi: failed at step 12 (...)"``."""
        head = f"{self.frames_in} frames in, {self.frames_dropped} dropped"
        if self.frames_dropped:
            head += " (the outputs fell behind: raise queue_size, or sound fewer steps with every= or max_fps=)"
        parts = [head]
        if self.frames_unreadable:
            parts.append(f"{self.frames_unreadable} unreadable ({self.first_unreadable})")
        for name in self.consumers:
            first = self.first_errors.get(name)
            parts.append(f"{name}: {self.notes.get(name, 'ok')}" if first is None else f"{name}: failed {first}")
        return "; ".join(parts)


def _check_consumers(consumers: Sequence[Consumer]) -> list[Consumer]:
    if isinstance(consumers, (str, bytes)) or not isinstance(consumers, Sequence):
        raise TypeError(f"consumers must be a sequence of consumers; got {type(consumers).__name__}")
    seen: set[str] = set()
    for consumer in consumers:
        if not isinstance(consumer, Consumer) or not isinstance(consumer.name, str):
            raise TypeError(
                f"each consumer needs a str `name`, `handle(frame)` and `close()`; got {type(consumer).__name__}"
            )
        if consumer.name in seen:
            raise ValueError(f"consumer names must be unique; {consumer.name!r} appears twice: rename one")
        seen.add(consumer.name)
    return list(consumers)


class Dispatcher:
    """Background thread with a bounded queue that feeds frames to consumers and isolates their failures.

    Args:
        consumers: objects with ``name``, ``handle(frame)`` and ``close()``, served in this order.
        queue_size: frames that may wait (>= 1); beyond that ``submit`` drops and counts.
        name: the thread's name.
    """

    def __init__(
        self, consumers: Sequence[Consumer], *, queue_size: int = 1024, name: str = "gradbridge-dispatch"
    ) -> None:
        self._consumers = _check_consumers(consumers)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise TypeError(f"queue_size must be an int >= 1; got {type(queue_size).__name__}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 (frames waiting); got {queue_size}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=str(name), daemon=True)
        self._lock = threading.Lock()  # guards the submit-side counters and the state flags
        self._stats = DispatchStats(consumers=tuple(c.name for c in self._consumers))
        self._failed: set[str] = set()
        self._started = False
        self._closed = False
        self._synced = False

    @property
    def stats(self) -> DispatchStats:
        """A snapshot of the counters so far."""
        with self._lock:
            s = self._stats
            return DispatchStats(
                s.frames_in, s.frames_dropped, s.frames_done, s.frames_unreadable,
                s.consumers, dict(s.errors), dict(s.first_errors), s.first_unreadable, dict(s.notes),
            )

    @property
    def is_alive(self) -> bool:
        """Whether the dispatcher thread is running."""
        return self._thread.is_alive()

    def start(self) -> "Dispatcher":
        """Start the thread (once); returns ``self``."""
        with self._lock:
            if self._closed or self._synced:
                raise RuntimeError("this dispatcher was closed or used by run_sync; make a new one")
            if self._started:
                return self
            self._started = True
        self._thread.start()
        atexit.register(self._close_at_exit)
        return self

    def submit(self, item: FrameSource) -> bool:
        """Queue a frame without blocking; return False (and count a drop) when full or closed."""
        with self._lock:
            self._stats.frames_in += 1
            if not self._closed:
                try:
                    self._queue.put_nowait(item)
                    return True
                except queue.Full:
                    pass
            self._stats.frames_dropped += 1
            return False

    def __call__(self, item: FrameSource) -> None:
        """``submit`` with no result, so a dispatcher can be given as a capture's ``on_frame``."""
        self.submit(item)

    def close(self, timeout_s: float | None = None) -> DispatchStats:
        """Drain the queue, close every consumer, join the thread and return the stats; idempotent.

        ``timeout_s`` bounds the wait in seconds (``None``: wait until everything queued is done).
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            atexit.unregister(self._close_at_exit)
            if self._started:
                try:
                    self._queue.put(_STOP, timeout=timeout_s)
                except queue.Full:
                    logger.warning("dispatcher still busy after %s s; leaving it to finish in the background", timeout_s)
            else:  # never started: serve what was queued here, then close the consumers
                self._drain_here()
        if self._started:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning(
                    "dispatcher did not finish within %s s (%d frames still queued); outputs may be incomplete",
                    timeout_s, self._queue.qsize(),
                )
        return self.stats

    def run_sync(self, frames: Iterable[FrameSource]) -> DispatchStats:
        """Feed ``frames`` to the consumers on this thread, close them, return the stats (offline use).

        The consumers are closed however the loop ends (Ctrl-C or an error while reading ``frames``
        included), so files are finished and live notes silenced before the exception goes on.
        """
        with self._lock:
            if self._started or self._closed or self._synced:
                raise RuntimeError("run_sync needs a fresh dispatcher (not started, not closed, not run before)")
            self._synced = True
        try:
            for item in frames:
                with self._lock:
                    self._stats.frames_in += 1
                self._deliver(item)
        finally:
            with self._lock:
                self._closed = True
            self._close_consumers()
        return self.stats

    def __enter__(self) -> "Dispatcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_at_exit(self) -> None:
        self.close(timeout_s=_EXIT_TIMEOUT_S)

    def _drain_here(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._deliver(item)
        self._close_consumers()

    def _run(self) -> None:
        while True:
            try:  # blocks; wakes on the stop marker, or now and then to see a close that timed out
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._closed:
                    break
                continue
            if item is _STOP:
                break
            self._deliver(item)
        self._close_consumers()

    def _deliver(self, item: object) -> None:
        try:
            frame = item.resolve()  # type: ignore[attr-defined]
        except Exception as exc:  # an unreadable frame is skipped; the next one may be fine
            with self._lock:
                self._stats.frames_unreadable += 1
                first = self._stats.first_unreadable is None
                if first:
                    self._stats.first_unreadable = f"{type(exc).__name__}: {exc}"
            if first:
                logger.warning("a frame could not be read (%s: %s); skipping it, training goes on",
                               type(exc).__name__, exc)
            return
        for consumer in self._consumers:
            if consumer.name in self._failed:
                continue
            try:
                consumer.handle(frame)
            except Exception as exc:  # isolate: one broken output must not stop the others
                self._failed.add(consumer.name)
                self._record_error(consumer.name, f"at step {frame.step}", exc, report=True)
        with self._lock:
            self._stats.frames_done += 1

    def _close_consumers(self) -> None:
        for consumer in self._consumers:
            try:
                consumer.close()
            except Exception as exc:  # isolate: every consumer gets its close
                self._record_error(consumer.name, "at close", exc, report=consumer.name not in self._failed)
                self._failed.add(consumer.name)

    def _record_error(self, name: str, where: str, exc: Exception, *, report: bool) -> None:
        text = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._stats.errors[name] = self._stats.errors.get(name, 0) + 1
            self._stats.first_errors.setdefault(name, f"{where} ({text})")
        if report:
            logger.warning("output %r failed %s (%s) and is switched off; training goes on", name, where, text)
        else:
            logger.debug("output %r also failed %s (%s)", name, where, text)
