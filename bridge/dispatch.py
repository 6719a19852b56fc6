"""Delivery: hand each frame to every consumer in order, isolating their failures, and count what happened.

A follower (``bridge.follower``), an offline render and a replay all drive their consumers through one
``Delivery`` on their own thread: a consumer that raises is reported once, counted and switched off; the
others go on. ``close()`` closes every consumer (each gets its close, whatever the others do) and returns
the ``DispatchStats``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bridge.errors import UsageError
from bridge.frames import Frame

logger = logging.getLogger("bridge")


@runtime_checkable
class Consumer(Protocol):
    """Receives every frame in step order, then ``close`` once."""

    name: str

    def handle(self, frame: Frame) -> None:
        """Take one frame (sound it, render it, ...)."""

    def close(self) -> None:
        """Finish: flush and release resources."""


@dataclass
class DispatchStats:
    """What happened to a run's frames and outputs.

    Attributes:
        frames_in: frames captured (a watch) or read (a render, a follower).
        frames_dropped: frames that reached no output: lost by a full disk, or left when the outputs stopped.
        frames_done: frames handed to every output.
        frames_unreadable: damaged run log records skipped, or steps whose capture failed.
        consumers: the outputs, in delivery order.
        errors: failures per output (at most one while handling, plus one at close, plus one at open).
        first_errors: the first failure per output, as ``"at step 12 (PortClosed: ...)"``.
        first_unreadable: the first unreadable frame or record, in words, or ``None``.
        notes: what an output that did not fail has to say instead of "ok" (e.g. the run's alarms).
        remarks: further facts for the closing line (the follower's lag, a kept run log, ...).
        missed: per output switched off by a failure, the frames it did not get (the failing one included).
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
    remarks: list[str] = field(default_factory=list)
    missed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """The stats in plain words, e.g. ``"200 frames in, 0 dropped; wav: ok; midi: failed at step 12 (...),
        188 frame(s) missed"``: every output with its state, ok (or its note), failed at start (why), or failed
        later (when, why, and what it missed or how many times)."""
        parts = [f"{self.frames_in} frames in, {self.frames_dropped} dropped"]
        if self.frames_unreadable:
            parts.append(f"{self.frames_unreadable} unreadable ({self.first_unreadable})")
        for name in self.consumers:
            first = self.first_errors.get(name)
            if first is None:
                parts.append(f"{name}: {self.notes.get(name, 'ok')}")
            else:
                missed = self.missed.get(name, 0)
                parts.append(f"{name}: failed {first}" + (f", {missed} frame(s) missed" if missed else ""))
        parts.extend(self.remarks)
        return "; ".join(parts)

    def add_error(self, name: str, text: str, count: int = 1) -> None:
        """Count ``count`` failures of output ``name`` (listed if it was not), keeping the first text."""
        if name not in self.consumers:
            self.consumers = (*self.consumers, name)
        self.errors[name] = self.errors.get(name, 0) + count
        self.first_errors.setdefault(name, text)


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


class Delivery:
    """Feeds frames to consumers on the caller's thread, in order, and isolates their failures.

    Args:
        consumers: objects with ``name``, ``handle(frame)`` and ``close()``, served in this order.
    """

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._consumers = _check_consumers(consumers)
        self._stats = DispatchStats(consumers=tuple(c.name for c in self._consumers))
        self._failed: set[str] = set()
        self._delivered_before_failing: dict[str, int] = {}
        self._closed = False

    @property
    def stats(self) -> DispatchStats:
        """The counters so far (the live object: final after ``close``)."""
        return self._stats

    @property
    def live_consumers(self) -> int:
        """Consumers not switched off by a failure."""
        return sum(c.name not in self._failed for c in self._consumers)

    def deliver(self, frame: Frame) -> None:
        """Hand ``frame`` to every consumer still working."""
        if self._closed:
            raise UsageError("this delivery is closed; make a new one")
        self._stats.frames_in += 1
        for consumer in self._consumers:
            if consumer.name in self._failed:
                continue
            try:
                consumer.handle(frame)
            except Exception as exc:  # isolate: one broken output must not stop the others
                self._failed.add(consumer.name)
                self._delivered_before_failing[consumer.name] = self._stats.frames_in - 1
                self._record_error(consumer.name, f"at step {frame.step}", exc, report=True)
        self._stats.frames_done += 1

    def close(self) -> DispatchStats:
        """Close every consumer once (each, whatever the others do) and return the stats; idempotent."""
        if not self._closed:
            self._closed = True
            for consumer in self._consumers:
                try:
                    consumer.close()
                except Exception as exc:  # isolate: every consumer gets its close
                    self._record_error(consumer.name, "at close", exc, report=consumer.name not in self._failed)
                    self._failed.add(consumer.name)
            for name, delivered in self._delivered_before_failing.items():
                self._stats.missed[name] = self._stats.frames_in - delivered
        return self._stats

    def run(self, frames: Iterable[Frame]) -> DispatchStats:
        """Deliver every frame of ``frames``, then close, however the loop ends (Ctrl-C or an error while
        reading ``frames`` included), so files are finished and live notes silenced before it goes on."""
        try:
            for frame in frames:
                self.deliver(frame)
        finally:
            self.close()
        return self._stats

    def _record_error(self, name: str, where: str, exc: Exception, *, report: bool) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self._stats.add_error(name, f"{where} ({text})")
        if report:
            logger.warning("output %r failed %s (%s) and is switched off; the others go on", name, where, text)
        else:
            logger.debug("output %r also failed %s (%s)", name, where, text)
